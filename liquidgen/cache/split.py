"""The held-out part of a cache (`train --val-fraction`): which latents training never sees.

Chosen from the manifest alone, so every process, every loader and a resumed run agree
without reading a shard: a seeded permutation of all the cache's rows (shards in manifest
order, rows in shard order) whose first round(fraction × count) rows are held out. Rows are
picked across the whole cache, not whole shards, so the held-out part has the cache's class
mix even when shards were written one class folder at a time.
"""

from __future__ import annotations

import numpy as np

from liquidgen.errors import LiquidgenError

VAL_SEED_OFFSET = 7_777_777  # the split's seed is the run's seed plus this: it does not share a stream


def held_out(manifest, fraction: float, seed: int = 0) -> dict[str, np.ndarray]:
    """Shard name -> sorted row numbers held out of training (only shards that lose any);
    empty for fraction 0. The order of `rows` lists the held-out rows in their seeded order,
    so the first k of them are a seeded sample of k."""
    if not fraction:
        return {}
    if not 0 < fraction < 1:
        raise LiquidgenError(f"--val-fraction must be in [0, 1), got {fraction}")
    total = manifest.count
    k = round(fraction * total)
    if k < 1 or k >= total:
        raise LiquidgenError(f"--val-fraction {fraction} of {total} latents holds out {k}: "
                             "choose a fraction that leaves at least one latent on each side")
    rows = held_out_order(manifest, fraction, seed)
    out: dict[str, list[int]] = {}
    for name, row in rows:
        out.setdefault(name, []).append(row)
    return {name: np.sort(np.array(r, dtype=np.int64)) for name, r in out.items()}


def held_out_order(manifest, fraction: float, seed: int = 0) -> list[tuple[str, int]]:
    """(shard name, row) of every held-out latent, in the split's seeded order."""
    total = manifest.count
    k = round(fraction * total)
    pick = np.random.default_rng(seed + VAL_SEED_OFFSET).permutation(total)[:k]
    starts = np.cumsum([0] + [s.count for s in manifest.shards])
    shard_of = np.searchsorted(starts, pick, side="right") - 1
    return [(manifest.shards[s].name, int(p - starts[s])) for s, p in zip(shard_of, pick)]
