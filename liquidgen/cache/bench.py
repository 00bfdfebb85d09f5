"""`liquidgen cache bench`: will this cache keep a GPU fed? The loader's rate beside the rate
this machine reads the same files, seconds to the first batch, and peak memory, for the
resident and the streaming loader.

Peak memory is the growth of this process's peak RSS (Linux `VmHWM`, reset between
measurements through /proc/self/clear_refs) over what it held before, divided by the cache's
stored bytes: 1.0 means the cache is held once, at its stored size.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from liquidgen.cache.loader import InMemoryLatents, StreamingLatents
from liquidgen.cache.store import CacheDir, require_complete


def _status(field: str) -> int:
    """A /proc/self/status memory field in bytes (0 where there is no /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak() -> int:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status("VmRSS")


def sequential_read(root: str | Path) -> tuple[float, int]:
    """Seconds to read every shard file of the cache once, front to back, and the bytes read."""
    cache, manifest = CacheDir(root), require_complete(root)
    files = []
    for shard in manifest.shards:
        path = cache.shard_path(shard.name)
        files += [path / rel for rel in shard.files] if shard.files else [path]
    total, start = 0, time.perf_counter()
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(8 << 20):
                total += len(chunk)
    return time.perf_counter() - start, total


def _loader(make) -> tuple:
    """Build a loader and run one epoch: seconds to build it, to its first batch (from before
    it was built), and the epoch's rate, both of the host's part alone (batches gathered at
    stored size: what a GPU waits for) and of whole batches normalized here on the CPU."""
    start = time.perf_counter()
    data = make()
    built = time.perf_counter()
    n, first = 0, None
    for x, *_ in data.stored_batches(0):
        if first is None:
            first = time.perf_counter() - start
        n += len(x)
    host = time.perf_counter() - built
    t0, m = time.perf_counter(), 0
    for x, _ in data.batches(1):
        m += len(x)
    return data, {"start_s": built - start, "first_batch_s": first, "latents": n, "seconds": host,
                  "normalized_latents_per_s": m / (time.perf_counter() - t0)}


def gather_baseline(data: InMemoryLatents) -> dict:
    """The same epoch as a plain gather from the in-memory array at its stored size (what the
    resident loader hands the device, without its flips and labels): the most it can do."""
    order = torch.randperm(data.count, generator=torch.Generator().manual_seed(0)).to(data.device)
    start, n = time.perf_counter(), 0
    for b in range(data.steps_per_epoch()):
        x = data.latents[order[b * data.batch_size : (b + 1) * data.batch_size]]
        n += len(x)
    return {"latents": n, "seconds": time.perf_counter() - start}


def _round(root: str, batch_size: int, device, manifest) -> dict:
    stored = manifest.nbytes
    seconds, nbytes = sequential_read(root)
    out: dict = {"sequential": {"seconds": seconds, "bytes": nbytes, "latents_per_s": manifest.count / seconds}}
    base = _reset_peak()
    resident, out["resident"] = _loader(lambda: InMemoryLatents(root, batch_size, device=device))
    out["resident"]["peak_rss_over_stored"] = (_status("VmHWM") - base) / stored
    out["gather"] = gather_baseline(resident)
    del resident
    base = _reset_peak()
    streaming, out["streaming"] = _loader(lambda: StreamingLatents(root, batch_size, device=device))
    out["streaming"]["peak_rss_over_stored"] = (_status("VmHWM") - base) / stored
    streaming.pool.shutdown(wait=True, cancel_futures=True)
    for name in ("resident", "streaming", "gather"):
        r = out[name]
        r["latents_per_s"] = r["latents"] / r["seconds"]
        r["mb_per_s"] = r["latents_per_s"] * stored / manifest.count / 1e6
    return out


def bench_cache(root: str, batch_size: int = 256, device: str | torch.device = "cpu", rounds: int = 1) -> dict:
    """`rounds` rounds of (sequential read, resident, streaming) taken in turn; each figure is the
    median over the rounds, so a noisy moment moves one round, not a ratio."""
    manifest = require_complete(root)
    runs = [_round(root, batch_size, device, manifest) for _ in range(rounds)]
    out: dict = {"cache": str(root), "latents": manifest.count, "stored_bytes": manifest.nbytes, "rounds": rounds}
    for part in runs[0]:
        out[part] = {k: statistics.median(r[part][k] for r in runs) if isinstance(v, (int, float)) else v
                     for k, v in runs[0][part].items()}
    return out
