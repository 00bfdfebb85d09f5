"""The loss curve of a run, from its metrics.jsonl, as a PNG; with `train --val-fraction`, the
held-out loss per t-bin and the sample metric beside it."""

from __future__ import annotations

import json
from pathlib import Path

from liquidgen.errors import LiquidgenError


# the sample metric drawn beside the loss, the first present: `train --eval-n`
PLOTTED = {"swd_mean": "SWD ×1e3 vs held-out (lower is better)",
           "fd_random": "random-feature FD (lower is better)"}


def plot_run(run: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run)
    path = run / "metrics.jsonl"
    if not path.exists():
        raise LiquidgenError(f"{run} has no metrics.jsonl yet")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    latest = {}
    for r in records:  # a resumed run rewrites the steps after its checkpoint: keep the last
        latest[r["step"]] = r
    steps = sorted(latest)
    scored = [s for s in steps if "val_loss" in latest[s]]  # `train --val-fraction`: the held-out scores
    metric = next((m for m in PLOTTED if scored and m in latest[scored[-1]]), None)
    panels = 1 + bool(scored) + bool(metric)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 3.5), dpi=120, squeeze=False)
    ax = axes[0][0]
    ax.plot(steps, [latest[s]["loss"] for s in steps], lw=1.2, label="training batches")
    ax.set_ylabel("flow-matching loss (MSE)")
    if scored:
        ax.plot(scored, [latest[s]["val_loss"] for s in scored], "o-", ms=3, lw=1.2, label="held out (mean of t-bins)")
        ax.legend()
        bins = axes[0][1]
        for key in sorted(k for k in latest[scored[-1]] if k.startswith("val_loss/")):
            bins.plot(scored, [latest[s].get(key, float("nan")) for s in scored], "o-", ms=3, lw=1.2, label=key[9:])
        bins.set_ylabel("held-out flow loss per t-bin")
        bins.set_yscale("log")
        bins.legend(fontsize=7)
    if metric:
        ax_m = axes[0][2]
        ax_m.plot(scored, [latest[s].get(metric, float("nan")) for s in scored], "o-", ms=3, lw=1.2, color="C3")
        ax_m.set_ylabel(PLOTTED[metric])
    for a in axes[0]:
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    axes[0][0].set_title(run.name)
    fig.tight_layout()
    out = Path(out) if out else run / "loss.png"
    fig.savefig(out)
    plt.close(fig)
    return out
