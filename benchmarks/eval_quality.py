"""How noisy the weight-free metrics are: two disjoint halves of the real (decoded) cache,
compared over 3 seeds. A perfect generator scores this floor; its spread is each number's noise
at this n. The models themselves are scored in the shoot-out.

Also a yardstick for the held-out flow loss per t: what the best *per-element linear* guess of
the velocity from x_t scores (one slope and offset per channel and position and t, least squares
on the whole cache). A network that is not below it at some t has not yet learned even that."""

from __future__ import annotations

import statistics

import torch

from common import paintings_cache
from liquidgen.cache.loader import InMemoryLatents
from liquidgen.eval.metrics import compare
from liquidgen.pipeline.evaluate import _real_images


def run(full: bool = False, device: str = "auto") -> dict:
    cache = paintings_cache(128)
    n = 2000 if full else 500  # the whole cache on a GPU: 1,000 a side
    floors = []
    for seed in range(3):
        _, _, images = _real_images(str(cache), n, seed, "cpu")
        floors.append(compare(images[: n // 2], images[n // 2 :], seed=seed))
    return {"n_per_side": n // 2, "cache": "cache/paintings128", "floor": {k: [f[k] for f in floors] for k in floors[0]},
            "linear_flow_loss_per_t": linear_flow_loss(str(cache))}


def linear_flow_loss(cache: str, bins: int = 5, seed: int = 0) -> dict[str, float]:
    """Mean squared error of the least-squares per-element linear predictor of v = ε − x0 from x_t,
    at the t-bin centres `liquidgen eval` uses."""
    x0 = InMemoryLatents(cache, 1).latents.float()
    gen, out = torch.Generator().manual_seed(seed), {}
    for b in range(bins):
        t = (b + 0.5) / bins
        noise = torch.randn(x0.shape, generator=gen)
        xt, v = (1 - t) * x0 + t * noise, noise - x0
        xc, vc = xt - xt.mean(0), v - v.mean(0)
        slope = (xc * vc).mean(0) / (xc * xc).mean(0)
        out[f"t={t:.1f}"] = float(((vc - slope * xc) ** 2).mean())
    return out


def markdown(r: dict) -> str:
    rows = []
    for k, vals in r["floor"].items():
        rows.append(f"| {k} | {statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f} |")
    return f"""\
{r['n_per_side']} images a side, 128 px, from `{r['cache']}` decoded by TAEF2: two disjoint random halves
of the decoded cache, for seeds 0, 1, 2 (mean ± standard deviation). A perfect generator scores
here, and the spread is the noise of each number at this n (the shoot-out uses the same n).

| metric | real vs real (3 seeds) |
|---|---|
{chr(10).join(rows)}

SWD (×1e3, per Laplacian level and mean) compares local 7x7 patch statistics: colour and texture
at 128/64/32/16 px. FD and KID (×1e3) compare distributions of a fixed random CNN's features:
global structure. Precision is the share of samples that land among real images' neighbourhoods,
recall the share of real images covered by the samples (k=3). Precision in random features is
easily fooled: smooth, blurry samples sit inside the real neighbourhoods (0.99 for every model in
the shoot-out), so read it next to recall.

Flow loss of the best per-element linear predictor (a yardstick for `flow_loss_per_t`):
{" · ".join(f"{k}: {v:.2f}" for k, v in r["linear_flow_loss_per_t"].items()) if "linear_flow_loss_per_t" in r else "(not measured)"}
"""
