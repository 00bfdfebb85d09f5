"""Training from a cache served over loopback HTTP against the same cache on local disk.
`train --cache URL` streams: shards are fetched, sha256-checked and read in the background while
earlier ones are trained on. The figures are end-to-end latents/s of a short run (start-up
included) streaming with nothing on disk, with the shards kept from an earlier run, and with
`--no-keep-shards`; and the throughput of `cache pull` for comparison."""

from __future__ import annotations

import functools
import http.server
import tempfile
import threading
import time
from pathlib import Path

import torch

from common import paintings_cache
from liquidgen.cache.remote import pull, push
from liquidgen.pipeline.train import TrainConfig, train


def _train(cache: str, out: Path, steps: int, batch: int, keep: bool = True) -> float:
    t0 = time.perf_counter()
    train(TrainConfig(cache=cache, out=str(out), model="nano", batch_size=batch, steps=steps, log_every=steps,
                      ckpt_every=steps, preview_every=0, progress=False, device="cpu", keep_shards=keep))
    return time.perf_counter() - t0


def run(full: bool = False, device: str = "auto") -> dict:
    import os

    cache = paintings_cache(128)  # built on first use, as the other sections do
    tmp = Path(tempfile.mkdtemp(prefix="lg-bench-"))
    push(str(cache), f"file://{tmp / 'www' / 'paintings'}", progress=False)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp / "www"))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/paintings"
    size = sum(p.stat().st_size for p in (tmp / "www" / "paintings" / "shards").rglob("*") if p.is_file())
    t0 = time.perf_counter()
    pull(url, str(tmp / "pulled"), progress=False)
    pull_s = time.perf_counter() - t0
    steps, batch = (200, 256) if full else (40, 64)
    os.environ["LIQUIDGEN_HOME"] = str(tmp / "home")
    _train(str(cache), tmp / "warm-up", 5, batch)  # first-run costs (imports, allocator) not timed
    local_s = _train(str(cache), tmp / "run-local", steps, batch)
    remote_s = _train(url, tmp / "run-remote", steps, batch)  # nothing on disk: streamed
    again_s = _train(url, tmp / "run-remote2", steps, batch)  # shards kept by the first run: verified, read
    os.environ["LIQUIDGEN_HOME"] = str(tmp / "home2")
    nokeep_s = _train(url, tmp / "run-remote3", steps, batch, keep=False)
    server.shutdown()
    lat = steps * batch
    return {"bytes": size, "pull_seconds": pull_s, "pull_mb_per_s": size / pull_s / 2**20, "steps": steps,
            "batch": batch, "latents_per_s_local": lat / local_s, "latents_per_s_remote_first": lat / remote_s,
            "latents_per_s_remote_cached": lat / again_s, "latents_per_s_remote_nokeep": lat / nokeep_s,
            "device": "cpu", "torch_threads": torch.get_num_threads()}


def markdown(r: dict) -> str:
    return f"""\
`cache/paintings128` (2,000 latents, {r['bytes'] / 2**20:.1f} MB of shards) served by Python's `http.server` on
127.0.0.1; `nano` model, {r['steps']} steps of batch {r['batch']} on the CPU, run start-up included, after
one untimed 5-step warm-up run.

| | latents/s | ratio to local |
|---|---|---|
| `--cache cache/paintings128` (local disk) | {r['latents_per_s_local']:.0f} | 1.00 |
| `--cache http://...` streamed, nothing on disk yet | {r['latents_per_s_remote_first']:.0f} | {r['latents_per_s_remote_first'] / r['latents_per_s_local']:.2f} |
| `--cache http://...` again (kept shards verified, not re-fetched) | {r['latents_per_s_remote_cached']:.0f} | {r['latents_per_s_remote_cached'] / r['latents_per_s_local']:.2f} |
| `--cache http://... --no-keep-shards` | {r['latents_per_s_remote_nokeep']:.0f} | {r['latents_per_s_remote_nokeep'] / r['latents_per_s_local']:.2f} |

For comparison, `liquidgen cache pull` of the same URL: {r['pull_mb_per_s']:.0f} MB/s ({r['pull_seconds']:.1f} s).
The local run holds the cache in memory; a streamed one keeps a buffer of 8 shards (here the
whole cache) and fetches the next buffer while training on the current one.
"""
