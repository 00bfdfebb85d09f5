"""How noisy the weight-free metrics are: two disjoint halves of the real (decoded) cache,
compared over 3 seeds. A perfect generator scores this floor; its spread is each number's noise
at this n. The models themselves are scored in the shoot-out."""

from __future__ import annotations

import statistics

from common import paintings_cache
from liquidgen.eval.metrics import compare
from liquidgen.pipeline.evaluate import _real_images


def run(full: bool = False, device: str = "auto") -> dict:
    cache = paintings_cache(128)
    n = 2000 if full else 500  # the whole cache on a GPU: 1,000 a side
    floors = []
    for seed in range(3):
        _, _, images = _real_images(str(cache), n, seed, "cpu")
        floors.append(compare(images[: n // 2], images[n // 2 :], seed=seed))
    return {"n_per_side": n // 2, "cache": "cache/paintings128", "floor": {k: [f[k] for f in floors] for k in floors[0]}}


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
"""
