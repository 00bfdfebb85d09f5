"""The liquid backbone against diffusers' DiT and U-Net, and ablations of the liquid block, at
equal training time on the shared paintings (128 px, TAEF2 latents 32x16x16, 5 classes).

Equal time, reproducibly: each configuration's cost per training step is measured first, in its
own process (`backbone_cost.measure`), and it then trains for ``budget / seconds_per_step``
steps. The runs are ordinary `liquidgen train` runs (same loop, data order, AdamW, learning
rate, EMA, batch), and every one is scored by `liquidgen eval` with the same sampler and number
of model calls (Euler, no guidance). The main models are scored at 1/3, 2/3 and all of the
budget (the run is resumed in between, which `train` makes bit-for-bit equal to one run).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from backbone_cost import build, measure, train_gflops
from common import ROOT, commit, paintings_cache
from liquidgen.devices import resolve_device
from liquidgen.pipeline.evaluate import EvalConfig, evaluate
from liquidgen.pipeline.sample import SampleConfig, sample
from liquidgen.pipeline.train import TrainConfig, train

MAIN = {"liquid-tiny": {"model": "tiny"}, "dit-tiny": {"model": "dit-tiny"}, "unet-tiny": {"model": "unet-tiny"}}
MAIN_FULL = {"liquid-small": {"model": "small"}, "dit-small": {"model": "dit-small"}, "unet-small": {"model": "unet-small"}}
ABLATIONS = {
    "tiny cfc=timegate": {"model": "tiny", "cfc": "timegate"},
    "tiny cfc=static": {"model": "tiny", "cfc": "static"},
    "tiny no relax": {"model": "tiny", "relax": False},
    "tiny no global path": {"model": "tiny", "global_path": False},
    "tiny 3x3 only": {"model": "tiny", "kernels": (3,)},
    "tiny 7x7 only": {"model": "tiny", "kernels": (7,)},
}
FOLLOW_UPS = {  # questions earlier ablations raised, answered at 300 s: not worth a smoke run in every `make bench`
    "tiny + layout 4x4": {"model": "tiny", "grid": 4},  # the fix the ablations above point to
    "tiny 7x7 + layout 4x4": {"model": "tiny", "kernels": (7,), "grid": 4},
    "tiny gn head": {"model": "tiny", "head": "gn"},  # the unconditioned head liquid-tiny had until 2026-11-22
}
SEEDS = {  # the reference designs by name, at their smallest sizes, and LiquidFlow's training extras on liquid-tiny
    "liquiddiffusion-tiny": {"model": "liquiddiffusion-tiny"},
    "liquidflow-tiny": {"model": "liquidflow-tiny"},
    "liquidgen-s": {"model": "liquidgen-s"},
    "tiny + reg liquidflow": {"model": "tiny", "reg": "liquidflow"},  # its regularizers on/off: against liquid-tiny
    "tiny eps": {"model": "tiny", "objective": "eps"},  # noise prediction + DDIM against flow + Euler, same model calls
}
REPEATS = {  # a main model again with other training seeds and its very steps: how far apart two runs of one model land
    "tiny seed 1": {"model": "tiny", "seed": 1},
    "tiny seed 2": {"model": "tiny", "seed": 2},
    "dit-tiny seed 1": {"model": "dit-tiny", "seed": 1},
    "dit-tiny seed 2": {"model": "dit-tiny", "seed": 2},
}
IMG = ROOT / "docs" / "img"


def results_name(full: bool = False, budget: float | None = None) -> str:
    """A shoot-out's results file: a longer run (`--budget`) keeps its own, so `make bench` does not
    overwrite the figures the docs quote."""
    return f"shootout-{budget:g}s" if budget else "shootout-full" if full else "shootout"


def run(full: bool = False, device: str = "auto", budget: float | None = None, configs: str | None = None) -> dict:
    """`configs` (comma-separated names): run only these and merge them into the last results,
    which must have the same settings; each row keeps the commit it was measured at."""
    device, started_at = resolve_device(device).type, commit()  # the code that runs is the code at the start
    cache = paintings_cache(128)
    quick, result_name = budget is None and not full, results_name(full, budget)  # quick: `make bench` on a CPU, smoke-sized
    budget = budget or (1800.0 if full else 20.0)
    batch, n_eval, eval_steps = (256, 1000, 25) if full else (32, 64, 10) if quick else (32, 250, 25)  # 250: the eval floor's n
    every = {**MAIN, **(MAIN_FULL if full else {}), **ABLATIONS, **({} if quick else {**FOLLOW_UPS, **SEEDS, **REPEATS})}
    keep = []
    if configs:
        wanted = [c.strip() for c in configs.split(",")]
        unknown = [c for c in wanted if c not in every]
        if unknown:
            later = " (follow-ups and seed repeats run only with --budget or --full)" if quick else ""
            raise SystemExit(f"unknown shoot-out configs {unknown}; known here: {list(every)}{later}")
        saved = json.loads((ROOT / "benchmarks" / "results" / f"{result_name}.json").read_text())
        last, base = saved["result"], saved["result"].get("base", saved["meta"])
        settings = ("device", "budget_s", "batch_size", "n_eval", "eval_steps")
        if [last[k] for k in settings] != [device, budget, batch, n_eval, eval_steps]:
            raise SystemExit(f"the last shoot-out ran with other settings ({[last[k] for k in settings]}); rerun it all")
        keep = [{"commit": base["commit"], **row} for row in last["rows"] if row["name"] not in wanted]
        for row in keep:  # FLOPs depend on the architecture only: recount with today's counting
            row["gflops_per_step"] = train_gflops(build(row["options"]), batch)
        every = {k: every[k] for k in wanted}
    else:
        base = None
    configs = every
    rounds = 1 if quick else 3  # the step counts hang on these numbers: three rounds in turn, median
    timed = 20 if full else 5 if quick else 9  # steps per calibration
    costs = {row["model"]: row for row in measure(configs, batch, timed, device, rounds)}
    work = Path(tempfile.mkdtemp(prefix="lg-shootout-"))
    rows = []
    for name, options in configs.items():
        original = _original(name, keep + rows) if name in REPEATS else None
        if original:  # a repeat takes the original's steps: a re-measured s/step differs by up to a third
            costs[name].pop("seconds_per_round", None)
            costs[name].update({k: original[k] for k in ("seconds_per_step", "seconds_per_round") if k in original})
        sec = costs[name]["seconds_per_step"]
        steps = max(3, int(budget / sec))
        # the main models are also scored on the way (an eval costs ~80 s on 2 CPU cores: not for short budgets)
        main = _is_main(name)
        points = [steps // 3, 2 * steps // 3, steps] if main and budget >= 300 else [steps]
        run_dir = work / name.replace(" ", "_").replace("=", "-")
        curve = []
        for i, stop in enumerate(points):
            train(TrainConfig(cache=str(cache), out=str(run_dir), batch_size=batch, steps=stop, lr=3e-4,
                              warmup=min(100, steps // 10), log_every=10, ckpt_every=steps, preview_every=0,
                              resume=i > 0, progress=False, device=device, **options))
            scored = evaluate(EvalConfig(run=str(run_dir), cache=str(cache), n=n_eval, steps=eval_steps,
                                         out=str(run_dir / f"eval-{stop}.json"), device=device))
            curve.append({"step": stop, "seconds": stop * sec, **scored["metrics"],
                          "flow_loss_per_t": scored["flow_loss_per_t"]})
            print(name, json.dumps(curve[-1]), flush=True)
        logged = {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
        rows.append({"name": name, "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
                     "commit": started_at, **costs[name], "steps": steps, "loss": [[s, logged[s]] for s in sorted(logged)], "curve": curve})
        if main and not quick:  # a smoke run's samples are noise: not worth 0.5 MB of PNG per rerun
            grid = sample(SampleConfig(run=str(run_dir), out=str(work / "grids" / name), n=15, steps=eval_steps,
                                       device=device)).grid
            IMG.mkdir(parents=True, exist_ok=True)
            shutil.copy(grid, IMG / f"{result_name}-{name}.png")
    shutil.rmtree(work, ignore_errors=True)
    order = list(MAIN) + list(MAIN_FULL) + list(ABLATIONS) + list(FOLLOW_UPS) + list(SEEDS) + list(REPEATS)
    rows = sorted(keep + rows, key=lambda row: order.index(row["name"]))
    result = {"name": result_name, "device": device, "budget_s": budget, "batch_size": batch, "n_eval": n_eval, "eval_steps": eval_steps,
              "lr": 3e-4, "rows": rows, **({"base": base} if base else {})}
    _plot(result)
    return result


def _is_main(name: str) -> bool:
    return name in MAIN or name in MAIN_FULL


def _original(repeat: str, rows: list[dict]) -> dict | None:
    """The measured main row a seed repeat reruns (the one with the same --model)."""
    name = next(k for k, v in {**MAIN, **MAIN_FULL}.items() if v["model"] == REPEATS[repeat]["model"])
    return next((row for row in rows if row["name"] == name), None)


def _plot(r: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), dpi=110)
    palette = list(plt.cm.tab10.colors) + list(plt.cm.Dark2.colors) + list(plt.cm.Set1.colors)  # > 10 rows
    for n, row in enumerate(r["rows"]):
        main = _is_main(row["name"])
        style = {"lw": 1.6 if main else 0.9, "ls": "-" if main else "--", "color": palette[n % len(palette)]}
        loss = torch.tensor([v for _, v in row["loss"]])
        smooth = [float(loss[max(0, i - 4) : i + 1].mean()) for i in range(len(loss))]  # 50-step mean
        axes[0].plot([s * row["seconds_per_step"] for s, _ in row["loss"]], smooth, label=row["name"], **style)
        xs = [c["seconds"] for c in row["curve"]]
        for ax, key in zip(axes[1:], ("swd_mean", "fd_random")):
            ax.plot(xs, [c[key] for c in row["curve"]], marker="o", label=row["name"], **style)
    for ax, label in zip(axes, ("training loss (mean of the last 50 steps)", "SWD ×1e3 (lower is better)",
                                "random-feature FD (lower is better)")):
        ax.set_xlabel(f"training time on {r['device']} (s, from measured s/step)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(IMG / f"{r['name']}-curves.png")
    plt.close(fig)


HEAD_NOTE = ("\n‡ measured with the `gn` output head, the only head before commit d4d018b: compare these with "
             "`tiny gn head` (the liquid-tiny of that time), not with liquid-tiny.\n")


def _footnote(r: dict, later: list[str], commit0: str) -> str:
    if not later:
        return ""
    return (f"\n† measured at another commit ({', '.join(later)}) with the same settings and merged with "
            f"`--configs`; the other rows at commit `{commit0}`. Each row's commit is in the results JSON.\n")


def _old_head(row: dict) -> bool:
    """A liquid row measured before the `ada` head existed (its options name no head)."""
    return row["options"].get("head") == "gn" and row["name"] != "tiny gn head"


SMOKE_NOTE = ("**A smoke run**: {budget:.0f} s is a few dozen steps, far too short to rank the models "
              "(every number is near its untrained value); it shows the whole shoot-out runs. The comparison "
              "is the 300 s section below (`--budget 300`, which adds the follow-up rows and seed repeats) and, "
              "on a GPU, `--full`.\n\n")


def markdown(r: dict, commit0: str | None = None) -> str:
    commit0 = commit0 or r["rows"][0].get("commit")
    later = sorted({row["commit"] for row in r["rows"] if row.get("commit", commit0) != commit0})
    memory = "peak GPU memory" if r["device"] == "cuda" else "peak RSS growth"
    head = (f"| model | params | GFLOPs/step | s/step | steps in {r['budget_s']:.0f} s | {memory} | loss (last 10 steps) | "
            "SWD | FD | KID | precision | recall |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = []
    for row in r["rows"]:
        m = row["curve"][-1]
        lines.append(f"| {row['name']}{' †' if row.get('commit', commit0) != commit0 else ''}{' ‡' if _old_head(row) else ''} | {row['params'] / 1e6:.1f}M | {row['gflops_per_step']:.0f} | "
                     f"{row['seconds_per_step']:.3f} | {row['steps']} | {row['peak_memory_bytes'] / 2**20:.0f} MiB | "
                     f"{row['loss'][-1][1]:.3f} | {m['swd_mean']:.1f} | {m['fd_random']:.2f} | {m['kid_random']:.1f} | "
                     f"{m['precision']:.2f} | {m['recall']:.2f} |")
    main = [row["name"] for row in r["rows"] if _is_main(row["name"])]
    several = [row["name"] for row in r["rows"] if len(row.get("seconds_per_round", [])) > 1]
    rounds = "" if not several else (
        "; the median of several measurements taken in turn" if len(several) == len(r["rows"]) else
        f"; for {', '.join(several)} the median of several measurements taken in turn, for the others one")
    smoke = SMOKE_NOTE.format(budget=r["budget_s"]) if r["name"] == results_name() else ""  # make bench's quick run
    grids = " ".join(f"| ![{n}](img/{r['name']}-{n}.png)" for n in main)
    samples = "" if smoke else (f"\nSamples at the end of the budget (15 each, classes in turn, seed 0, {r['eval_steps']} "
                                f"Euler steps):\n\n| {' | '.join(main)} |\n|{'---|' * len(main)}\n{grids} |\n")
    return f"""\
{smoke}Each model trains for the same {r['budget_s']:.0f} s of {r['device']} time at batch {r['batch_size']}
(steps = budget ÷ its measured s/step{rounds}), AdamW lr {r['lr']}, EMA, logit-normal t, class dropout 0.1,
on `cache/paintings128`; then `liquidgen eval` with {r['n_eval']} samples a side, {r['eval_steps']}
Euler steps (one model call each), no guidance. Metrics as in the eval section below (its
real-vs-real floor gives each number's noise). Lower is better except precision and recall.

{head}
{chr(10).join(lines)}
{_footnote(r, later, commit0)}{HEAD_NOTE if any(_old_head(row) for row in r["rows"]) else ""}
![metric against training time](img/{r['name']}-curves.png)
{samples}"""
