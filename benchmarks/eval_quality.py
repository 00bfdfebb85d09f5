"""What the weight-free metrics say, and how noisy they are: two disjoint halves of the real
(decoded) cache compared over 3 seeds (the floor a perfect generator would reach, and its
spread), and the trained CPU run of docs/README.md scored by `liquidgen eval`."""

from __future__ import annotations

import statistics

import torch

from common import ROOT
from liquidgen.eval.metrics import compare
from liquidgen.pipeline.evaluate import EvalConfig, _real_images, evaluate


def run(full: bool = False, device: str = "auto") -> dict:
    cache, run_dir = ROOT / "cache" / "paintings128", ROOT / "runs" / "paintings"
    n = 2000 if full else 500
    floors = []
    for seed in range(3):
        _, _, images = _real_images(str(cache), n, seed, "cpu")
        floors.append(compare(images[: n // 2], images[n // 2 :], seed=seed))
    scored = evaluate(EvalConfig(run=str(run_dir), cache=str(cache), n=n // 2, steps=25, seed=0,
                                 out=str(run_dir / "eval.json")))
    keys = list(floors[0])
    return {
        "n_per_side": n // 2, "cache": "cache/paintings128", "run": "runs/paintings (tiny, 600 steps)",
        "floor": {k: [f[k] for f in floors] for k in keys}, "run_metrics": scored["metrics"],
        "flow_loss_per_t": scored["flow_loss_per_t"], "steps": 25,
    }


def markdown(r: dict) -> str:
    rows = []
    for k, vals in r["floor"].items():
        mean, sd = statistics.mean(vals), statistics.stdev(vals)
        rows.append(f"| {k} | {mean:.3f} ± {sd:.3f} | {r['run_metrics'][k]:.3f} |")
    losses = ", ".join(f"{k}: {v:.3f}" for k, v in r["flow_loss_per_t"].items())
    return f"""\
{r['n_per_side']} images a side, 128 px, from `{r['cache']}` decoded by TAEF2. "Real vs real" compares
two disjoint random halves of the decoded cache, for seeds 0, 1, 2 (mean ± standard deviation):
a perfect generator scores there, and the spread is the noise of each number at this n.
"{r['run']}" is `liquidgen eval` of the CPU run in [README.md](README.md), {r['steps']} Euler steps, no guidance.

| metric | real vs real (3 seeds) | {r['run']} |
|---|---|---|
{chr(10).join(rows)}

SWD (×1e3, per Laplacian level and mean) compares local 7x7 patch statistics: colour and texture
at 128/64/32/16 px. FD and KID (×1e3) compare distributions of a fixed random CNN's features:
global structure. Precision is the share of samples that land among real images' neighbourhoods,
recall the share of real images covered by the samples (k=3). Flow loss per t (fixed noise, the
EMA model, on cache latents): {losses}.
"""
