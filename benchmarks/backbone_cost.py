"""Cost of one training step (forward + backward + AdamW) for each liquid size, next to
diffusers' DiTTransformer2DModel and UNet2DModel of similar parameter counts, on the same
latents (TAEF2 at 128 px: 32x16x16). Each model is measured in its own process so peak memory
is its own."""

from __future__ import annotations

import json
import multiprocessing as mp
import time

import torch
import torch.nn.functional as F

from liquidgen.devices import resolve_device

LATENT = (32, 16, 16)


def _build(name: str):
    from liquidgen.backbone.unet import LiquidUNet, model_config

    if name.startswith("liquid-"):
        model = LiquidUNet(model_config(name.split("-", 1)[1], num_classes=5))
        return model, lambda x, t, y: model(x, t, y)
    if name.startswith("dit-"):
        from diffusers import DiTTransformer2DModel

        layers, heads = {"dit-8M": (6, 4), "dit-30M": (10, 6)}[name]
        model = DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=64, in_channels=LATENT[0],
                                      out_channels=LATENT[0], num_layers=layers, sample_size=LATENT[1],
                                      patch_size=2, num_embeds_ada_norm=6)
        return model, lambda x, t, y: model(x, timestep=t * 1000, class_labels=y).sample
    if name.startswith("unet-"):
        from diffusers import UNet2DModel

        ch = {"unet-8M": (64, 128, 192), "unet-30M": (128, 256, 384)}[name]
        model = UNet2DModel(sample_size=LATENT[1], in_channels=LATENT[0], out_channels=LATENT[0], block_out_channels=ch,
                            layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), num_class_embeds=6,
                            norm_num_groups=32)
        return model, lambda x, t, y: model(x, t * 1000, class_labels=y).sample
    raise KeyError(name)


def _peak_rss() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    return 0


def _measure(name: str, batch: int, steps: int, device: str, queue) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    base_rss = _peak_rss()
    model, fwd = _build(name)
    model.to(device).train()
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, *LATENT, device=device)
    t = torch.rand(batch, device=device)
    y = torch.randint(0, 5, (batch,), device=device)

    def step():
        loss = F.mse_loss(fwd(x, t, y), x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        loss = F.mse_loss(fwd(x, t, y), x)
        loss.backward()
    opt.zero_grad(set_to_none=True)
    step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _peak_rss() - base_rss
    queue.put({"model": name, "params": params, "gflops_per_step": counter.get_total_flops() / 1e9,
               "seconds_per_step": seconds, "peak_memory_bytes": peak})


def run(full: bool = False, device: str = "auto") -> dict:
    device = resolve_device(device).type
    names = ["liquid-tiny", "dit-8M", "unet-8M", "liquid-small", "dit-30M", "unet-30M"]
    if full:
        names += ["liquid-base", "liquid-large"]
    batch, steps = (256, 20) if full else (32, 3)
    ctx = mp.get_context("spawn")
    rows = []
    for name in names:
        queue = ctx.Queue()
        proc = ctx.Process(target=_measure, args=(name, batch, steps, device, queue))
        proc.start()
        rows.append(queue.get())
        proc.join()
        print(json.dumps(rows[-1]), flush=True)
    return {"device": device, "batch_size": batch, "latent": list(LATENT), "steps_timed": steps, "rows": rows}


def markdown(r: dict) -> str:
    memory = "peak GPU memory" if r["device"] == "cuda" else "peak RSS growth"
    lines = [f"Batch {r['batch_size']} of {'x'.join(map(str, r['latent']))} latents on {r['device']}, class-conditional, "
             f"forward + backward + AdamW, {r['steps_timed']} timed steps after one warm-up. GFLOPs are counted by "
             "`torch.utils.flop_counter` (forward and backward).\n",
             f"| model | params | GFLOPs/step | s/step | latents/s | {memory} |", "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['model']} | {row['params'] / 1e6:.1f}M | {row['gflops_per_step']:.0f} | "
                     f"{row['seconds_per_step']:.3f} | {r['batch_size'] / row['seconds_per_step']:.1f} | "
                     f"{row['peak_memory_bytes'] / 2**20:.0f} MiB |")
    return "\n".join(lines) + "\n"
