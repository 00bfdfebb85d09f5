"""The cache builder: the one owner of a cache while it is written.

    plan      which planned shards still need writing (the rest are published already)
    add/skip  rows and skipped inputs, routed to the shard of their piece
    end       a piece is finished: its count is checked, its shard written in the background
    finalize  the records merged into the manifest, every count checked, skipped.log written

A shard is published by an atomic rename and then a record in `.parts/` (one per shard, naming
the rank that wrote it); a shard without its record is redone. The records are merged by
`finalize`, so a killed encode resumes by rerunning it, and several ranks write one cache
without talking to each other: each writes the pieces it was given, rank 0 merges.

The builder knows nothing of images: a piece is any object with `number`, `unit`, `start` and
`length` (see `liquidgen.pipeline.sources.Piece`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from liquidgen.cache.lock import CacheLock, remove_stale
from liquidgen.cache.manifest import FORMAT_VERSION, Manifest, Shard, Skipped, Source, entry_from_json, merge_stats, write_json_atomic
from liquidgen.cache.shards import ShardData, dequantize, quantize, shard_files, write_shard
from liquidgen.cache.store import UPGRADING, CacheDir
from liquidgen.errors import LiquidgenError


class PieceLike(Protocol):
    number: int
    unit: str
    start: int
    length: int | None


def channel_sums(x: np.ndarray) -> dict:
    """float64 per-channel sums over (N, H, W): merged across shards into mean/std."""
    x64 = x.astype(np.float64)
    return {
        "n": int(x.shape[0] * x.shape[2] * x.shape[3]),
        "sum": x64.sum(axis=(0, 2, 3)).tolist(),
        "sumsq": np.square(x64).sum(axis=(0, 2, 3)).tolist(),
    }


@dataclass
class Record:
    """What `.parts/<shard>.json` says of a published shard until finalize merges it."""

    shard: Shard
    skipped: list[Skipped]


def records(root) -> dict[str, Record]:
    """Records of the shards published since the last finalize (an encode in progress)."""
    cache, out = CacheDir(root), {}
    if cache.parts_dir.is_dir():
        for path in sorted(cache.parts_dir.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                record = Record(entry_from_json(Shard, data.get("shard"), str(path)),
                                [entry_from_json(Skipped, s, str(path)) for s in data.get("skipped", [])])
            except (OSError, ValueError, AttributeError, LiquidgenError):
                continue  # torn or foreign record: the shard is redone
            if cache.shard_path(record.shard.name).exists():
                out[record.shard.name] = record
    return out


def _printable(text: str) -> str:
    """One line of skipped.log per input, whatever its name holds (newlines, tabs, escapes)."""
    return text.encode("unicode_escape").decode("ascii")


@dataclass
class _Open:
    """Rows of one piece gathered until the piece ends (they arrive in order, maybe in several batches)."""

    rows: list = field(default_factory=list)
    skipped: list = field(default_factory=list)


class CacheBuilder:
    def __init__(self, root, rank: int = 0, max_pending: int = 2):
        self.cache = CacheDir(root)
        self.rank = rank
        self.lock = CacheLock(self.cache.root)
        self.manifest: Manifest | None = None
        self.open: dict[int, _Open] = {}
        self.pool: ThreadPoolExecutor | None = None
        self.pending: list[Future] = []
        self.max_pending = max_pending
        self.written = 0

    # -- planning (rank 0 begins; every rank plans) ---------------------------------------------

    def begin(self, wanted: Manifest, source: Source, calibrate: Callable[[], dict] | None = None) -> None:
        """Take the cache for writing (rank 0 only): create or reopen it, refuse a mismatched
        contract or a changed source, and record the source. Writes the manifest only when
        something changed, so a rerun of a finished cache touches nothing."""
        try:
            self.cache.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LiquidgenError(f"cannot create {self.cache.root}: {exc.strerror or exc}") from None
        self.lock.acquire()
        remove_stale(self.cache.shards_dir)  # shards a killed run was writing when it died
        manifest = self.cache.manifest() if self.cache.exists() else wanted
        if manifest is not wanted and manifest.count == 0 and not any(r.shard.count for r in records(self.cache.root).values()):
            # no latent was ever published here (a run that failed at once, or every input skipped):
            # a new command, whatever its settings, starts over instead of being refused
            for folder in (self.cache.shards_dir, self.cache.parts_dir):
                shutil.rmtree(folder, ignore_errors=True)
            manifest = wanted
        manifest.check_contract(wanted, str(self.cache.root))
        before = manifest.dumps() if manifest is not wanted else None
        if wanted.storage.dtype == "uint8" and not manifest.storage.quant and calibrate:
            manifest.storage.quant = calibrate()
        self._register(manifest, source)
        self.manifest = manifest
        if before != manifest.dumps():
            self.cache.write_manifest(manifest)

    @staticmethod
    def _register(manifest: Manifest, source: Source) -> int:
        """The source's number in this cache: an existing entry (resume, rerun) or a new one
        (append). Its label names join the cache-wide `label_names`."""
        for entry in manifest.sources:
            if (entry.id, entry.kind, entry.split) == (source.id, source.kind, source.split):
                if entry.fingerprint != source.fingerprint:
                    raise LiquidgenError(
                        f"{source.id} changed since it was encoded into this cache (files added, removed or "
                        "resized); encode it into a new --out folder"
                    )
                entry.limit, entry.expected = source.limit, source.expected
                return entry.index
        for name in source.label_names or []:
            if name not in manifest.label_names:
                manifest.label_names.append(name)
        manifest.sources.append(dataclasses.replace(source, index=len(manifest.sources), count=0, skipped=0))
        return len(manifest.sources) - 1

    def source_index(self, source: Source) -> int:
        return self._register(self.manifest, source)

    def load(self) -> Manifest:
        self.manifest = self.cache.manifest()
        return self.manifest

    def shard_name(self, src: int, piece: PieceLike) -> str:
        return self.cache.shard_name(src, piece.number, self.manifest.storage.backend)

    def plan(self, src: int, pieces: list[PieceLike]) -> list[PieceLike]:
        """The pieces whose shard is not yet published with exactly this extent."""
        published = {s.name: s for s in self.manifest.shards} | {n: r.shard for n, r in records(self.cache.root).items()}
        todo = []
        for piece in pieces:
            have = published.get(self.shard_name(src, piece))
            if not have or (have.unit, have.start, have.length) != (piece.unit, piece.start, piece.length):
                todo.append(piece)
        return todo

    # -- writing (every rank, its own pieces) ------------------------------------------------------

    def add(self, piece: PieceLike, position: int, key: str, label: int, z: np.ndarray, zf: np.ndarray | None) -> None:
        self.open.setdefault(piece.number, _Open()).rows.append((position, key, label, z, zf))

    def skip(self, piece: PieceLike, src: int, key: str, reason: str) -> None:
        self.open.setdefault(piece.number, _Open()).skipped.append(Skipped(src, self.shard_name(src, piece), key, reason))

    def end(self, piece: PieceLike, src: int, seen: int) -> None:
        """All `seen` items of a piece have arrived: check the count, write its shard."""
        buf = self.open.pop(piece.number, _Open())
        got = len(buf.rows) + len(buf.skipped)
        if got != seen or (piece.length is not None and seen != piece.length):
            raise LiquidgenError(
                f"{piece.unit} gave {seen} items from position {piece.start} where {piece.length} were expected "
                f"({got} arrived): the source changed or could not be read to its end; rerun to redo that part"
            )
        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
            self.cache.shards_dir.mkdir(parents=True, exist_ok=True)
            self.cache.parts_dir.mkdir(parents=True, exist_ok=True)
        while len(self.pending) >= self.max_pending:  # the VAE waits only when writing falls behind
            self.pending.pop(0).result()
        rows = sorted(buf.rows, key=lambda r: r[0])
        shard = Shard(name=self.shard_name(src, piece), source=src, count=len(rows), bytes=0, sha256="",
                      unit=piece.unit, start=piece.start, length=piece.length, rank=self.rank)
        self.pending.append(self.pool.submit(self._write, shard, buf.skipped, rows))

    def _write(self, shard: Shard, skipped: list[Skipped], rows: list) -> None:
        st = self.manifest.storage
        dtype, quant, shape = st.dtype, st.quant, st.latent_shape
        empty = np.zeros((0, *shape), np.float32)
        latents = quantize(np.stack([r[3] for r in rows]) if rows else empty, dtype, quant)
        flipped = None
        if st.flip == "both":
            flipped = quantize(np.stack([r[4] for r in rows]) if rows else empty, dtype, quant)
        data = ShardData(latents=latents, flipped=flipped, labels=np.array([r[2] for r in rows], np.int32),
                         indices=np.array([r[0] for r in rows], np.int64), keys=[r[1] for r in rows])
        # Statistics of what a reader will see after dequantization, not of the float input.
        shard.stats = channel_sums(dequantize(latents, dtype, quant)) if rows else None
        path = self.cache.shard_path(shard.name)
        shard.sha256, shard.bytes = write_shard(path, data, st.backend)
        shard.files = shard_files(path)
        write_json_atomic(self.cache.parts_dir / f"{shard.name}.json",
                          {"shard": dataclasses.asdict(shard), "skipped": [dataclasses.asdict(s) for s in skipped]})
        self.written += 1

    def close(self) -> None:
        """Wait for every shard in flight; raises the first write error."""
        try:
            for fut in self.pending:
                fut.result()
        finally:
            self.pending.clear()
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
                self.pool = None

    # -- merging (rank 0) ---------------------------------------------------------------------------

    def finalize(self, src: int, pieces: list[PieceLike]) -> Manifest:
        """Merge the records into the manifest and mark it complete, after counting: every planned
        piece has its shard, and the source's items are all there, encoded or skipped."""
        manifest = self.load()
        recs = records(self.cache.root)
        missing = self.plan(src, pieces)
        if missing:
            raise LiquidgenError(
                f"{len(missing)} shard(s) of {self.cache.root} were not written (a rank failed?); "
                "rerun the same command to finish the cache"
            )
        # A redone shard replaces its old entry and the old entry's skipped inputs.
        manifest.shards = [s for s in manifest.shards if s.name not in recs]
        manifest.skipped = [s for s in manifest.skipped if s.shard not in recs]
        for name in sorted(recs):
            manifest.shards.append(recs[name].shard)
            manifest.skipped += recs[name].skipped
        manifest.shards.sort(key=lambda s: s.name)
        by_name = {s.name: s for s in manifest.shards}
        skipped_in: dict[str, int] = {}
        for s in manifest.skipped:
            skipped_in[s.shard] = skipped_in.get(s.shard, 0) + 1
        entry = manifest.sources[src]
        planned = [by_name[self.shard_name(src, p)] for p in pieces]
        seen = sum(s.count + skipped_in.get(s.name, 0) for s in planned)
        if entry.expected is not None and seen != entry.expected:
            raise LiquidgenError(
                f"{entry.id}: {seen} inputs accounted for (encoded or skipped) where the source holds "
                f"{entry.expected}; the cache is left incomplete: rerun to redo it"
            )
        manifest.count = sum(s.count for s in manifest.shards)
        for source in manifest.sources:
            source.count = sum(s.count for s in manifest.shards if s.source == source.index)
            source.skipped = sum(1 for s in manifest.skipped if s.source == source.index)
        manifest.stats = merge_stats([s.stats for s in manifest.shards])
        manifest.complete = True
        self.cache.write_manifest(manifest)
        log = "".join(f"{_printable(s.key)}\t{_printable(s.reason)}\n" for s in manifest.skipped)
        try:
            (self.cache.root / "skipped.log").write_text(log)
        except OSError as exc:
            raise LiquidgenError(f"cannot write {self.cache.root / 'skipped.log'}: {exc.strerror or exc}") from None
        for path in self.cache.parts_dir.glob("*.json"):
            path.unlink(missing_ok=True)
        if self.cache.parts_dir.is_dir():
            self.cache.parts_dir.rmdir()
        self.manifest = manifest
        return manifest

    def mark_incomplete(self) -> None:
        """Work is about to start: a reader must not take the cache as finished meanwhile."""
        if self.manifest.complete or self.manifest.format_version != FORMAT_VERSION:
            self.manifest.complete = False
            self.manifest.format_version = FORMAT_VERSION  # new shards are of this format; older ones still read
            self.cache.write_manifest(self.manifest)

    def release(self) -> None:
        self.lock.release()


# -- upgrading a cache in place ---------------------------------------------------------------------

def _exchange(a: Path, b: Path) -> None:
    """Swap two directories in one step (Linux renameat2 RENAME_EXCHANGE), so a reader finds one
    complete set of shards at every moment; where the kernel or filesystem cannot, two renames."""
    import ctypes
    import os

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0:  # AT_FDCWD, RENAME_EXCHANGE
            return
    except (AttributeError, OSError):
        pass
    aside = a.with_name(a.name + ".swap")
    os.replace(a, aside)
    os.replace(b, a)
    os.replace(aside, b)


def upgrade(root, progress: bool = True) -> int:
    """Rewrite a cache's format-1 shards in format 2, in place, keeping every latent bit for bit.
    The new shards are written beside the old (`shards.upgrade/`), swapped in with one rename,
    then the manifest is replaced: a reader finds a complete, readable cache at every moment, and
    a killed upgrade finishes when run again. Returns the number of shards rewritten."""
    from tqdm.auto import tqdm

    from liquidgen.cache.shards import read_shard, shard_digest

    cache = CacheDir(root)
    lock = CacheLock(cache.root)
    lock.acquire()
    try:
        manifest = cache.manifest()
        if not manifest.complete:
            raise LiquidgenError(f"{root}: the encode did not finish; finish it before upgrading")
        new_dir, pending = cache.root / "shards.upgrade", cache.root / UPGRADING
        if pending.exists() and new_dir.exists():
            done = Manifest.from_json(json.loads(pending.read_text()), str(pending))
            first = done.shards[0] if done.shards else None
            if first is None or shard_digest(cache.shard_path(first.name)) == (first.sha256, first.bytes):
                done.write(cache.manifest_path)  # killed between the swap and the manifest: finish
                pending.unlink()
                _remove_tree(new_dir)
                return 0
        _remove_tree(new_dir)
        pending.unlink(missing_ok=True)
        if manifest.format_version == FORMAT_VERSION:
            return 0
        new_dir.mkdir()
        upgraded = dataclasses.replace(manifest, format_version=FORMAT_VERSION, shards=[])
        for shard in tqdm(manifest.shards, desc=f"upgrade {cache.root.name}", unit="shard", disable=not progress):
            data = read_shard(cache.shard_path(shard.name), manifest.storage.backend, expect=manifest.expect(shard))
            path = new_dir / shard.name
            sha, size = write_shard(path, data, manifest.storage.backend)
            upgraded.shards.append(dataclasses.replace(shard, sha256=sha, bytes=size, files=shard_files(path)))
            if shard_digest(path) != (sha, size):
                raise LiquidgenError(f"{path} did not read back as written; the cache is unchanged")
        write_json_atomic(pending, upgraded.to_json())
        _exchange(cache.shards_dir, new_dir)  # shards/ now format 2, shards.upgrade/ the old ones
        upgraded.write(cache.manifest_path)
        pending.unlink()
        _remove_tree(new_dir)
        return len(upgraded.shards)
    finally:
        lock.release()


def _remove_tree(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
