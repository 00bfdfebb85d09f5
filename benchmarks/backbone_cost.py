"""Cost of one training step (forward + backward + AdamW) for each liquid size, next to
diffusers' DiTTransformer2DModel and UNet2DModel of similar parameter counts, on the same
latents (TAEF2 at 128 px: 32x16x16). Each model is measured in its own process so peak memory
is its own."""

from __future__ import annotations

import json
import multiprocessing as mp
import statistics

import torch
import torch.nn.functional as F

from common import median_seconds, peak_rss
from liquidgen.devices import resolve_device

LATENT = (32, 16, 16)


def build(options: dict):
    """A model as `liquidgen train` builds it from --model and the liquid options, class-conditional."""
    from liquidgen.backbone.models import build_model, model_spec

    liquid = {k: v for k, v in options.items() if k not in ("model", "seed", "reg", "objective")}  # training options
    return build_model(model_spec(options["model"], LATENT[0], 5, LATENT[1], **liquid))


def train_gflops(model, batch: int, device: str = "cpu") -> float:
    """GFLOPs of one training step, taken as 3x the counted forward (backward = 2x forward, the
    usual convention). Not torch's own backward count: it multiplies a grouped (depthwise) conv's
    backward by its group count (pytorch/pytorch#183405), which made liquid models look ~1.6x dearer."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(batch, *LATENT, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, torch.full((batch,), 0.5, device=device), torch.zeros(batch, dtype=torch.long, device=device))
    return 3 * counter.get_total_flops() / 1e9


def _measure(name: str, options: dict, batch: int, steps: int, device: str, queue) -> None:
    torch.manual_seed(0)
    base_rss = peak_rss()
    model = build(options).to(device).train()
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, *LATENT, device=device)
    t = torch.rand(batch, device=device)
    y = torch.randint(0, 5, (batch,), device=device)

    def step():
        loss = F.mse_loss(model(x, t, y), x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    gflops = train_gflops(model, batch, device)
    step()
    step()
    seconds = median_seconds(step, steps, device)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else peak_rss() - base_rss
    queue.put({"model": name, "params": params, "gflops_per_step": gflops,
               "seconds_per_step": seconds, "peak_memory_bytes": peak})


def measure(configs: dict[str, dict], batch: int, steps: int, device: str, rounds: int = 1) -> list[dict]:
    """Per-step cost of each named config ({"model": ..., liquid options}), each in a fresh process.
    With `rounds` > 1 the configs are measured in turn that many times and each keeps the median:
    on a shared CPU one measurement of the same model moved by a fifth to a third within minutes, and
    interleaving spreads a slow spell over every config instead of landing on one."""
    ctx = mp.get_context("spawn")
    rows: dict[str, dict] = {}
    for _ in range(rounds):
        for name, options in configs.items():
            queue = ctx.Queue()
            proc = ctx.Process(target=_measure, args=(name, options, batch, steps, device, queue))
            proc.start()
            row = queue.get()
            proc.join()
            rows.setdefault(name, {**row, "seconds_per_round": []})["seconds_per_round"].append(row["seconds_per_step"])
            print(json.dumps(row), flush=True)
    for row in rows.values():
        row["seconds_per_step"] = statistics.median(row["seconds_per_round"])
        if rounds == 1:
            del row["seconds_per_round"]
    return list(rows.values())


def run(full: bool = False, device: str = "auto") -> dict:
    device = resolve_device(device).type
    names = ["tiny", "dit-tiny", "unet-tiny", "small", "dit-small", "unet-small"] + (["base", "large"] if full else [])
    configs = {("liquid-" + n if n in ("tiny", "small", "base", "large") else n): {"model": n} for n in names}
    batch, steps = (256, 20) if full else (32, 3)
    rows = measure(configs, batch, steps, device)
    return {"device": device, "batch_size": batch, "latent": list(LATENT), "steps_timed": steps, "rows": rows}


def markdown(r: dict) -> str:
    memory = "peak GPU memory" if r["device"] == "cuda" else "peak RSS growth"
    lines = [f"Batch {r['batch_size']} of {'x'.join(map(str, r['latent']))} latents on {r['device']}, class-conditional, "
             f"forward + backward + AdamW, the median of {r['steps_timed']} timed steps after two warm-up steps. GFLOPs/step is 3x the "
             "forward FLOPs counted by `torch.utils.flop_counter` (its backward count is wrong for depthwise convs).\n",
             f"| model | params | GFLOPs/step | s/step | latents/s | {memory} |", "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['model']} | {row['params'] / 1e6:.1f}M | {row['gflops_per_step']:.0f} | "
                     f"{row['seconds_per_step']:.3f} | {r['batch_size'] / row['seconds_per_step']:.1f} | "
                     f"{row['peak_memory_bytes'] / 2**20:.0f} MiB |")
    return "\n".join(lines) + "\n"
