"""The loss curve of a run, from its metrics.jsonl, as a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from liquidgen.errors import LiquidgenError


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
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, [latest[s]["loss"] for s in steps], lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss (MSE)")
    ax.grid(alpha=0.3)
    ax.set_title(run.name)
    fig.tight_layout()
    out = Path(out) if out else run / "loss.png"
    fig.savefig(out)
    plt.close(fig)
    return out
