"""Training from a cache served over loopback HTTP against the same cache on local disk.
`train --cache URL` pulls a verified copy once (parallel, sha256-checked), then reads the disk:
the figures are the pull's throughput and the end-to-end latents/s of a short run, pull included
and excluded."""

from __future__ import annotations

import functools
import http.server
import tempfile
import threading
import time
from pathlib import Path

import torch

from common import ROOT
from liquidgen.cache.remote import pull, push
from liquidgen.pipeline.train import TrainConfig, train


def _train(cache: str, out: Path, steps: int, batch: int) -> float:
    t0 = time.perf_counter()
    train(TrainConfig(cache=cache, out=str(out), model="nano", batch_size=batch, steps=steps, log_every=steps,
                      ckpt_every=steps, preview_every=0, progress=False, device="cpu"))
    return time.perf_counter() - t0


def run(full: bool = False, device: str = "auto") -> dict:
    import os

    cache = ROOT / "cache" / "paintings128"
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
    remote_s = _train(url, tmp / "run-remote", steps, batch)  # includes its own pull
    again_s = _train(url, tmp / "run-remote2", steps, batch)  # the copy is there: verify only
    server.shutdown()
    lat = steps * batch
    return {"bytes": size, "pull_seconds": pull_s, "pull_mb_per_s": size / pull_s / 2**20, "steps": steps,
            "batch": batch, "latents_per_s_local": lat / local_s, "latents_per_s_remote_first": lat / remote_s,
            "latents_per_s_remote_cached": lat / again_s, "device": "cpu", "torch_threads": torch.get_num_threads()}


def markdown(r: dict) -> str:
    return f"""\
`cache/paintings128` (2,000 latents, {r['bytes'] / 2**20:.1f} MB of shards) served by Python's `http.server` on
127.0.0.1; `nano` model, {r['steps']} steps of batch {r['batch']} on the CPU, run start-up included, after
one untimed 5-step warm-up run.

| | latents/s | ratio to local |
|---|---|---|
| `--cache cache/paintings128` (local disk) | {r['latents_per_s_local']:.0f} | 1.00 |
| `--cache http://...` first time (pull + verify + train) | {r['latents_per_s_remote_first']:.0f} | {r['latents_per_s_remote_first'] / r['latents_per_s_local']:.2f} |
| `--cache http://...` again (copy verified, not re-fetched) | {r['latents_per_s_remote_cached']:.0f} | {r['latents_per_s_remote_cached'] / r['latents_per_s_local']:.2f} |

The pull alone: {r['pull_mb_per_s']:.0f} MB/s ({r['pull_seconds']:.1f} s). Training does not stream remote
shards yet: a run longer than this one amortises the one-time pull, and the steady state reads the
local copy.
"""
