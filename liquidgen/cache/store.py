"""A cache directory: where its files are, and how to read and verify them. Writing is the
builder's (builder.py).

Layout:
    manifest.json          the contract (see manifest.py); `complete` is true once finalized
    shards/s00-000000.zarr one shard per piece of a source (see builder.py; .tar for WebDataset)
    .parts/<shard>.json    the builder's record of a published shard, merged into the manifest
                           when the encode finishes; a shard without a record is redone
    skipped.log            one line per skipped input: key and reason
"""

from __future__ import annotations

from pathlib import Path

from liquidgen.cache.manifest import MANIFEST, Manifest, read_manifest
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

    def manifest(self) -> Manifest:
        return read_manifest(self.root)

    def write_manifest(self, manifest: Manifest) -> None:
        manifest.write(self.manifest_path)

    @staticmethod
    def shard_name(source: int, number: int, backend: str) -> str:
        return f"s{source:02d}-{number:06d}{SUFFIX[backend]}"

    def shard_path(self, name: str) -> Path:
        return self.shards_dir / name

    def read(self, name: str, backend: str, into: dict | None = None) -> ShardData:
        return read_shard(self.shard_path(name), backend, into)


def verify_cache(root: str | Path) -> tuple[Manifest, list[str]]:
    """Check every shard against the manifest: present, same size, same sha256, same count.
    Returns the manifest and a list of problems (empty when the cache is sound)."""
    cache = CacheDir(root)
    manifest = cache.manifest()
    problems = []
    if not manifest.complete:
        problems.append("the encode did not finish: rerun the same `liquidgen encode` command to resume")
    for shard in manifest.shards:
        path = cache.shard_path(shard.name)
        if not path.exists():
            problems.append(f"{shard.name}: missing")
            continue
        sha, size = shard_digest(path)
        if size != shard.bytes:
            problems.append(f"{shard.name}: {size} bytes, manifest says {shard.bytes}")
        elif sha != shard.sha256:
            problems.append(f"{shard.name}: sha256 mismatch (the shard is corrupt)")
    return manifest, problems


def require_complete(root: str | Path) -> Manifest:
    manifest = CacheDir(root).manifest()
    if not manifest.complete:
        raise LiquidgenError(f"{root}: the encode did not finish; rerun the same `liquidgen encode` command to resume")
    if manifest.count == 0:
        raise LiquidgenError(f"{root} holds no latents (every input was skipped?); see {root}/skipped.log")
    return manifest
