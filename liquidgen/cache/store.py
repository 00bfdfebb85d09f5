"""A cache directory: manifest.json, shards/, and the per-shard records of an unfinished encode.

Layout:
    manifest.json          the contract (see manifest.py); `complete` is true once finalized
    shards/s00-000000.zarr one shard per `shard_size` source items (.tar for WebDataset)
    .parts/<shard>.json    written after each shard is published; merged into the manifest at
                           the end and removed. A shard without a record is redone on resume.
    skipped.log            one line per skipped input: key and reason
"""

from __future__ import annotations

import json
from pathlib import Path

from liquidgen.cache.manifest import MANIFEST, merge_stats, read_manifest, write_json_atomic
from liquidgen.cache.shards import SUFFIX, ShardData, read_shard, shard_digest
from liquidgen.errors import LiquidgenError


class CacheDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.shards_dir = self.root / "shards"
        self.parts_dir = self.root / ".parts"

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def manifest(self) -> dict:
        return read_manifest(self.root)

    def write_manifest(self, manifest: dict) -> None:
        write_json_atomic(self.manifest_path, manifest)

    @staticmethod
    def shard_name(source: int, number: int, backend: str) -> str:
        return f"s{source:02d}-{number:06d}{SUFFIX[backend]}"

    def shard_path(self, name: str) -> Path:
        return self.shards_dir / name

    def records(self) -> dict[str, dict]:
        """Records of shards published since the last finalize (an encode in progress)."""
        out = {}
        if self.parts_dir.is_dir():
            for path in sorted(self.parts_dir.glob("*.json")):
                try:
                    record = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue  # torn record: the shard is redone
                if self.shard_path(record["name"]).exists():
                    out[record["name"]] = record
        return out

    def write_record(self, record: dict) -> None:
        write_json_atomic(self.parts_dir / f"{record['name']}.json", record)

    def finalize(self, manifest: dict) -> dict:
        """Merge the records into the manifest, mark it complete, drop the records."""
        records = self.records()
        known = {s["name"] for s in manifest["shards"]}
        for name in sorted(records):
            rec = records[name]
            if name not in known:
                manifest["shards"].append({k: rec[k] for k in ("name", "source", "first", "end", "count", "bytes", "sha256", "files", "rank", "stats")})
                manifest["skipped"] += rec["skipped"]
        manifest["shards"].sort(key=lambda s: s["name"])
        manifest["count"] = sum(s["count"] for s in manifest["shards"])
        for src in manifest["sources"]:
            mine = [s for s in manifest["shards"] if s["source"] == src["index"]]
            src["count"] = sum(s["count"] for s in mine)
            src["skipped"] = sum(1 for s in manifest["skipped"] if s["source"] == src["index"])
        manifest["stats"] = merge_stats([s["stats"] for s in manifest["shards"]])
        manifest["complete"] = True
        self.write_manifest(manifest)
        for path in self.parts_dir.glob("*.json"):
            path.unlink(missing_ok=True)
        if self.parts_dir.is_dir():
            self.parts_dir.rmdir()
        return manifest

    def read(self, name: str, backend: str) -> ShardData:
        return read_shard(self.shard_path(name), backend)


def verify_cache(root: str | Path) -> tuple[dict, list[str]]:
    """Check every shard against the manifest: present, same size, same sha256, same count.
    Returns the manifest and a list of problems (empty when the cache is sound)."""
    cache = CacheDir(root)
    manifest = cache.manifest()
    problems = []
    if not manifest["complete"]:
        problems.append("the encode did not finish: rerun the same `liquidgen encode` command to resume")
    for shard in manifest["shards"]:
        path = cache.shard_path(shard["name"])
        if not path.exists():
            problems.append(f"{shard['name']}: missing")
            continue
        sha, size = shard_digest(path)
        if size != shard["bytes"]:
            problems.append(f"{shard['name']}: {size} bytes, manifest says {shard['bytes']}")
        elif sha != shard["sha256"]:
            problems.append(f"{shard['name']}: sha256 mismatch (the shard is corrupt)")
    return manifest, problems


def require_complete(root: str | Path) -> dict:
    manifest = CacheDir(root).manifest()
    if not manifest["complete"]:
        raise LiquidgenError(f"{root}: the encode did not finish; rerun the same `liquidgen encode` command to resume")
    if manifest["count"] == 0:
        raise LiquidgenError(f"{root} holds no latents (every input was skipped?); see {root}/skipped.log")
    return manifest
