"""A cache directory: where its files are, and how to read and verify them. Writing is the
builder's (builder.py).

Layout:
    manifest.json          the contract (see manifest.py); `complete` is true once finalized
    shards/s00-000000.zarr one shard per piece of a source (see builder.py; .tar for WebDataset)
    .parts/<shard>.json    the builder's record of a published shard, merged into the manifest
                           when the encode finishes; a shard without a record is redone
    .scratch/              what a source reads once for several ranks (a big row group's pieces);
                           kept across a killed run, removed when the cache is finished
    skipped.log            one line per skipped input: key and reason
    .verified.json         shards this machine hashed and checked, by size and mtime (see `Verified`)
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

from liquidgen.cache.manifest import MANIFEST, Manifest, Shard, parse_manifest, read_manifest, write_json_atomic
from liquidgen.cache.shards import SUFFIX, Expect, ShardData, check_finite, check_on_disk, disk_bytes, read_shard, shard_digest
from liquidgen.errors import LiquidgenError

VERIFIED = ".verified.json"
UPGRADING = "manifest.upgrade.json"  # `cache upgrade`'s manifest of the rewritten shards, until they are in


class CacheDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.shards_dir = self.root / "shards"
        self.parts_dir = self.root / ".parts"
        self.scratch_dir = self.root / ".scratch"

    def clear_scratch(self) -> None:
        import shutil

        shutil.rmtree(self.scratch_dir, ignore_errors=True)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def manifest(self) -> Manifest:
        """The manifest that describes the shards on disk. That is manifest.json, except in the
        moment `cache upgrade` has swapped in the rewritten shards and not yet replaced the
        manifest (or was killed there): then the pending one it wrote first describes them."""
        manifest = read_manifest(self.root)
        pending = self.root / UPGRADING
        if pending.is_file() and manifest.shards:
            upgraded = parse_manifest(pending.read_bytes(), str(pending))
            first = upgraded.shards[0] if upgraded.shards else None
            path = self.shard_path(first.name) if first else None
            if path is not None and path.exists() and first.bytes != manifest.shards[0].bytes \
                    and disk_bytes(path) == first.bytes:
                return upgraded
        return manifest

    def write_manifest(self, manifest: Manifest) -> None:
        manifest.write(self.manifest_path)

    @staticmethod
    def shard_name(source: int, number: int, backend: str) -> str:
        return f"s{source:02d}-{number:06d}{SUFFIX[backend]}"

    def shard_path(self, name: str) -> Path:
        return self.shards_dir / name

    def read(self, name: str, backend: str, into: dict | None = None, expect: Expect | None = None) -> ShardData:
        """A shard's arrays, checked against `expect` when given (`Verified.read`, the read every
        training and decoding path takes, gives it; without it nothing is compared)."""
        return read_shard(self.shard_path(name), backend, into, expect)


class Verified:
    """Checked reads of a cache's shards. Every read checks the shard against the manifest
    (size on disk, shapes, dtype, count, labels in range) before its data is used. The first
    read of a shard on this machine also hashes it against the manifest's sha256 and checks
    that its floats are finite; that is remembered in `.verified.json` by (size, mtime, inode,
    sha256), so a verified cache is not rehashed on every run, and a shard changed or copied
    since is hashed again.
    A cache folder that cannot be written keeps the record in memory for the run."""

    def __init__(self, cache: CacheDir, manifest: Manifest):
        self.cache, self.manifest = cache, manifest
        self.by_name = {s.name: s for s in manifest.shards}
        self.path = cache.root / VERIFIED
        self.lock = threading.Lock()
        self.stamps: dict[str, list] = {}
        self.written = 0.0
        try:
            raw = json.loads(self.path.read_text()) if self.path.is_file() and self.path.stat().st_size < 2**26 else {}
            self.stamps = {k: v for k, v in raw.items() if isinstance(v, list) and len(v) == 4} if isinstance(raw, dict) else {}
        except (OSError, ValueError):
            self.stamps = {}

    def _stat(self, path: Path) -> list:
        """What a stamp is keyed by: size, newest mtime, and the files' (device, inode), so a
        stamp copied along with a cache (tar, rsync keep mtimes) does not vouch for the copy."""
        files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
        stats = [f.stat() for f in files]
        where = hashlib.sha256(",".join(f"{st.st_dev}:{st.st_ino}" for st in stats).encode()).hexdigest()[:16]
        return [sum(st.st_size for st in stats), max((st.st_mtime_ns for st in stats), default=0), where]

    def read(self, name: str, into: dict | None = None) -> ShardData:
        shard = self.shard(name)
        path = self.cache.shard_path(name)
        where = f"{self.cache.root}: shard {name}"
        if path.is_symlink() or not path.resolve().is_relative_to(self.cache.shards_dir.resolve()):
            raise LiquidgenError(f"{where} is a link to a file outside the cache: refusing it")
        backend, dtype, expect = self.manifest.storage.backend, self.manifest.storage.dtype, self.manifest.expect(shard)
        check_on_disk(path, backend, expect)  # there, of its kind and size, before it is hashed
        stamp = self._stat(path) + [shard.sha256]
        known = self.stamps.get(name) == stamp
        if not known:
            sha, size = shard_digest(path)
            if (sha, size) != (shard.sha256, shard.bytes):
                raise LiquidgenError(f"{where} does not match its manifest ({'sha256' if size == shard.bytes else 'size'} "
                                     "differs): the shard is damaged; fetch or re-encode it, and run `liquidgen cache verify`")
        data = self.cache.read(name, backend, into, expect)
        if not known:
            check_finite(data, dtype, where)
            self._remember(name, stamp)
        return data

    def shard(self, name: str) -> Shard:
        try:
            return self.by_name[name]
        except KeyError:
            raise LiquidgenError(f"{self.cache.root}: its manifest lists no shard {name}") from None

    def _remember(self, name: str, stamp: list) -> None:
        with self.lock:
            self.stamps[name] = stamp
            # at most once a second, and once all are in: a cache of many shards is not rewritten per shard
            if time.monotonic() - self.written < 1 and len(self.stamps) < len(self.by_name):
                return
            self.written = time.monotonic()
            try:
                write_json_atomic(self.path, self.stamps)
            except LiquidgenError:  # a read-only cache: verified again next run
                pass


def verify_cache(root: str | Path) -> tuple[Manifest, list[str]]:
    """Check every shard against the manifest: present, same size, same sha256, then its arrays'
    shapes, dtype, count, label range and finite values.
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
        if path.is_dir() != (manifest.storage.backend == "zarr"):
            problems.append(f"{shard.name}: a {'folder' if path.is_dir() else 'file'} where the manifest says a "
                            f"{'file' if path.is_dir() else 'folder'}")
            continue
        sha, size = shard_digest(path)
        if size != shard.bytes:
            problems.append(f"{shard.name}: {size} bytes, manifest says {shard.bytes}")
        elif sha != shard.sha256:
            problems.append(f"{shard.name}: sha256 mismatch (the shard is corrupt)")
        else:  # the bytes are the ones published: are they what the manifest describes?
            try:
                check_finite(read_shard(path, manifest.storage.backend, expect=manifest.expect(shard)),
                             manifest.storage.dtype, str(path))
            except LiquidgenError as exc:
                problems.append(f"{shard.name}: {exc}")
    return manifest, problems


def require_complete(root: str | Path) -> Manifest:
    manifest = CacheDir(root).manifest()
    if not manifest.complete:
        raise LiquidgenError(f"{root}: the encode did not finish; rerun the same `liquidgen encode` command to resume")
    if manifest.count == 0:
        raise LiquidgenError(f"{root} holds no latents (every input was skipped?); see {root}/skipped.log")
    return manifest
