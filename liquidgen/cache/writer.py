"""The shard writer: quantize, checksum and publish shards on a background thread, so the VAE
never waits on compression or disk (at most `max_pending` shards are in flight)."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from liquidgen.cache.shards import ShardData, dequantize, quantize, shard_files, write_shard
from liquidgen.cache.store import CacheDir


def channel_sums(x: np.ndarray) -> dict:
    """float64 per-channel sums over (N, H, W): merged across shards into mean/std."""
    x64 = x.astype(np.float64)
    return {
        "n": int(x.shape[0] * x.shape[2] * x.shape[3]),
        "sum": x64.sum(axis=(0, 2, 3)).tolist(),
        "sumsq": np.square(x64).sum(axis=(0, 2, 3)).tolist(),
    }


class ShardWriter:
    def __init__(self, cache: CacheDir, storage: dict, max_pending: int = 2):
        self.cache, self.storage = cache, storage
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self.pending: list[Future] = []
        self.max_pending = max_pending
        self.written = 0
        cache.shards_dir.mkdir(parents=True, exist_ok=True)
        cache.parts_dir.mkdir(parents=True, exist_ok=True)

    def submit(self, name: str, meta: dict, latents: np.ndarray, flipped: np.ndarray | None,
               labels: np.ndarray, indices: np.ndarray, keys: list[str]) -> None:
        """Queue one finished shard; blocks only when `max_pending` are still being written.
        An error in an earlier write is raised here."""
        while len(self.pending) >= self.max_pending:
            self.pending.pop(0).result()
        self.pending.append(self.pool.submit(self._write, name, meta, latents, flipped, labels, indices, keys))

    def _write(self, name, meta, latents, flipped, labels, indices, keys) -> None:
        dtype, quant = self.storage["dtype"], self.storage.get("quant")
        stored = quantize(latents, dtype, quant)
        data = ShardData(
            latents=stored,
            flipped=None if flipped is None else quantize(flipped, dtype, quant),
            labels=labels.astype(np.int32), indices=indices.astype(np.int64), keys=keys,
        )
        # Statistics of what a reader will see after dequantization, not of the float input.
        stats = channel_sums(dequantize(stored, dtype, quant)) if len(labels) else None
        path = self.cache.shard_path(name)
        sha, size = write_shard(path, data, self.storage["backend"])
        self.cache.write_record({**meta, "name": name, "count": len(labels), "bytes": size, "sha256": sha,
                                 "files": shard_files(path), "stats": stats})
        self.written += 1

    def close(self) -> None:
        try:
            for fut in self.pending:
                fut.result()
        finally:
            self.pending.clear()
            self.pool.shutdown(wait=True)
