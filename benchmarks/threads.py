"""Torch's intra-op threads on this machine: training steps/s of `liquidgen train` with
`--threads 1`, `2` and the default (one thread per core that other processes leave free,
measured at the start from /proc/stat), on an idle machine and on a busy one (another
process keeping one core busy, as a second job or a browser does on a laptop). Rounds alternate
the settings, so the machine's noise falls on all of them; each figure is the median of the
rounds, each round's rate the median of its logged windows after the first."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import TAEF2, subset
from liquidgen.pipeline.encode import EncodeConfig, encode

ROUNDS = 2
SETTINGS = ("1", "2", "auto")
SETTLE_S = 2  # the busy process is running before the first run looks at the cores
BUSY = "import time\nwhile True:\n    sum(range(10000))\n"


def _rate(cache: Path, out: Path, threads: str, model: str, batch: int, steps: int) -> float:
    args = [sys.executable, "-m", "liquidgen", "train", "--cache", str(cache), "--out", str(out), "--model", model,
            "--batch-size", str(batch), "--steps", str(steps), "--log-every", "3", "--ckpt-every", str(steps),
            "--preview-every", "0", "--warmup", "0"]
    if threads != "auto":
        args += ["--threads", threads]
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    windows = [json.loads(line)["steps_per_s"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(windows[1:])


def run(full: bool = False, device: str = "auto") -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="lg-bench-threads-"))
    cache = tmp / "cache"
    encode(EncodeConfig(str(subset(tmp / "images", 40)), str(cache), vae=str(TAEF2), resolution=128, workers=0,
                        progress=False))
    import torch

    out: dict = {"cores": os.cpu_count(), "torch_default_threads": torch.get_num_threads(), "rows": []}
    for model, batch, steps in (("nano", 64, 15),):
        rates: dict[str, dict[str, list[float]]] = {c: {s: [] for s in SETTINGS} for c in ("idle", "busy")}
        for r in range(ROUNDS):
            for condition in ("idle", "busy"):
                hog = subprocess.Popen([sys.executable, "-c", BUSY]) if condition == "busy" else None
                if hog:
                    time.sleep(SETTLE_S)
                try:
                    for setting in SETTINGS:
                        run_dir = tmp / f"run-{model}-{condition}-{setting}-{r}"
                        rates[condition][setting].append(_rate(cache, run_dir, setting, model, batch, steps))
                finally:
                    if hog:
                        hog.kill()
                        hog.wait()
        for condition, by in rates.items():
            out["rows"].append({"model": model, "batch": batch, "condition": condition,
                                "steps_per_s": {s: statistics.median(v) for s, v in by.items()}})
    return out


def markdown(r: dict) -> str:
    rows = "\n".join(
        f"| {x['model']} (batch {x['batch']}) | {x['condition']} | "
        + " | ".join(f"{x['steps_per_s'][s]:.2f}" for s in SETTINGS)
        + f" | {x['steps_per_s']['auto'] / max(x['steps_per_s']['1'], x['steps_per_s']['2']):.2f} |"
        for x in r["rows"])
    return f"""\
`liquidgen train` on 40 paintings at 128 px (latents 32x16x16), steps/s by `--threads`, on a machine
of {r['cores']} cores where torch's own default is {r['torch_default_threads']} threads. "Busy": another process keeps one
core busy the whole time. Median of {ROUNDS} alternated
rounds; each rate the median of the logged windows after the first.

| model | machine | --threads 1 | --threads 2 (torch's own default here) | default: free cores | default ÷ best of 1 and 2 |
|---|---|---|---|---|---|
{rows}

With every core free, more threads are faster; with one held by another process, a thread
per core makes every op wait for the one that is descheduled. The default takes as many threads
as the other processes leave cores free when training starts, so it follows the better row in both.
"""
