"""liquidgen's streaming loader beside litdata's on the same latents: 204,800 real TAEF2 latents
(32x16x16 fp16, 100 paintings at 128 px replicated), each library's cache written by its own
writer (liquidgen's cache builder; litdata's `optimize`), read in batches of 256 on the CPU.

Both are timed over the same number of batches from a cold start (opening included), alternated
round by round. litdata is not a dependency: `pip install --no-deps litdata lightning-utilities
boto3 botocore s3transfer jmespath` (its own requirements pull a CUDA torch). MosaicML streaming
0.13 imports transformers and torchvision at import time, whose wheels need a torch other than
the pinned CPU one, so it is not measured here.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from loader_speed import real_latents, replicated_cache

N, BATCH, BATCHES, ROUNDS = 204_800, 256, 200, 3
_REAL: np.ndarray | None = None  # what litdata's writer workers read (forked: no copy)


def _item(i: int) -> dict:
    return {"latent": _REAL[i % len(_REAL)], "label": 0}


def write_litdata(out: Path, real: np.ndarray) -> Path:
    from litdata import optimize

    global _REAL
    _REAL = real
    optimize(fn=_item, inputs=list(range(N)), output_dir=str(out), chunk_bytes="64MB", num_workers=2,
             mode="overwrite")
    return out


def time_liquidgen(root: Path | str, download_to: Path | None = None) -> float:
    """Local, or (a URL) over HTTP into an empty folder, each shard fetched, sha256-checked and
    deleted once read, as `train --cache URL --no-keep-shards` does."""
    from liquidgen.cache.loader import StreamingLatents
    from liquidgen.cache.remote import RemoteShards

    t0 = time.perf_counter()
    remote = RemoteShards(str(root), folder=download_to, keep=False) if download_to else None
    data = StreamingLatents(str(root), BATCH, remote=remote)
    for b, _ in zip(range(BATCHES), data.stored_batches(0)):
        pass
    seconds = time.perf_counter() - t0
    data.pool.shutdown(wait=False, cancel_futures=True)
    return BATCHES * BATCH / seconds


def time_litdata(root: Path, workers: int) -> float:
    from litdata import StreamingDataLoader, StreamingDataset

    t0 = time.perf_counter()
    loader = StreamingDataLoader(StreamingDataset(str(root), shuffle=True), batch_size=BATCH, num_workers=workers)
    it = iter(loader)
    for _ in range(BATCHES):
        next(it)
    seconds = time.perf_counter() - t0
    del it, loader
    return BATCHES * BATCH / seconds


def unavailable() -> str | None:
    try:
        import litdata  # noqa: F401
    except ImportError:
        return ("needs litdata: pip install --no-deps litdata lightning-utilities boto3 botocore s3transfer "
                "jmespath (or put them on PYTHONPATH)")
    return None


def run(full: bool = False, device: str = "auto") -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="lg-bench-libs-"))
    real, like = real_latents(tmp)
    real = real.astype(np.float16)
    ours = replicated_cache(tmp / "liquidgen", real, like, N, "zarr", "fp16")
    t0 = time.perf_counter()
    theirs = write_litdata(tmp / "litdata", real)
    write_s = time.perf_counter() - t0
    import functools
    import http.server
    import shutil
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/liquidgen"
    rates: dict[str, list[float]] = {"liquidgen": [], "liquidgen over loopback HTTP": [],
                                     "litdata, 0 workers": [], "litdata, 2 workers": []}
    for r in range(ROUNDS):  # alternated, so the machine's noise falls on all of them
        rates["liquidgen"].append(time_liquidgen(ours))
        rates["liquidgen over loopback HTTP"].append(time_liquidgen(url, tmp / f"download-{r}"))
        shutil.rmtree(tmp / f"download-{r}", ignore_errors=True)
        rates["litdata, 0 workers"].append(time_litdata(theirs, 0))
        rates["litdata, 2 workers"].append(time_litdata(theirs, 2))
    server.shutdown()
    import litdata

    return {"latents": N, "batch_size": BATCH, "batches": BATCHES, "rounds": ROUNDS, "litdata": litdata.__version__,
            "litdata_write_s": write_s, "rates": {k: [round(v) for v in vs] for k, vs in rates.items()}}


def markdown(r: dict) -> str:
    med = {k: statistics.median(v) for k, v in r["rates"].items()}
    ours = med["liquidgen"]
    rows = "\n".join(f"| {k} | {v:,.0f} | {ours / v:.2f} |" for k, v in med.items())
    return f"""\
{r['latents']:,} real TAEF2 latents (32x16x16 fp16), batches of {r['batch_size']}, the first {r['batches']} batches
from a cold start, one process, median of {r['rounds']} alternated rounds. liquidgen reads its
format-2 Zarr cache with `StreamingLatents` (batches at stored size); litdata {r['litdata']} reads the
chunks its own `optimize` wrote (64 MB chunks, {r['litdata_write_s']:.0f} s to write) through
`StreamingDataLoader`. Goal: liquidgen ÷ each litdata row ≥ 3. The HTTP row serves the same
cache from a loopback `http.server` into an empty folder, every shard sha256-checked on arrival
and deleted once read (goal: ÷ local ≥ 0.9; here it is {med['liquidgen over loopback HTTP'] / ours:.2f}).

| loader | latents/s | liquidgen ÷ it |
|---|---|---|
{rows}

MosaicML streaming is not in the table: version 0.13 imports transformers and torchvision when
imported, and their wheels need a torch other than the pinned CPU build.
"""
