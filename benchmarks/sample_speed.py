"""Sampling speed: images/s and peak memory at 25 and 50 Euler steps (one model call each) for
each model size, batch 1 and 64, with and without decoding through the VAE (TAEF2, 128 px:
32x16x16 latents). Weights are freshly initialised: speed does not depend on training."""

from __future__ import annotations

import multiprocessing as mp

import torch

from common import TAEF2, median_seconds, peak_rss
from liquidgen.devices import resolve_device

LATENT = (32, 16, 16)


def _measure(size: str, batch: int, steps: int, decode: bool, device: str, queue) -> None:
    from liquidgen.backbone.unet import LiquidUNet, model_config
    from liquidgen.pipeline.sampler import sample_latents
    from liquidgen.pipeline.vae import load_vae

    torch.manual_seed(0)
    base = peak_rss()
    model = LiquidUNet(model_config(size, num_classes=5)).to(device).eval()
    vae = load_vae(str(TAEF2), device=device) if decode else None
    labels = torch.arange(batch, device=device) % 5

    def once():
        z, _ = sample_latents(model, batch, LATENT, labels, steps, 2.0, generator=torch.Generator().manual_seed(0), device=device)
        if vae is not None:
            vae.decode(z)

    sample_latents(model, batch, LATENT, labels, 2, 2.0, device=device)  # warm-up
    seconds = median_seconds(once, 5 if batch == 1 else 1, device)  # a batch of one is noisy: median of five
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else peak_rss() - base
    queue.put({"size": size, "batch": batch, "steps": steps, "decode": decode, "seconds": seconds,
               "images_per_s": batch / seconds, "peak_memory_bytes": peak})


def run(full: bool = False, device: str = "auto") -> dict:
    device = resolve_device(device).type
    sizes = ["tiny", "small", "base", "large"] if full else ["tiny", "small"]
    ctx = mp.get_context("spawn")
    # (batch, steps, decode): on a CPU the slow batch-64 cases run at 25 steps only, and decoding
    # (the same TAEF2 whatever the backbone) is timed with the first size only
    cases = [(b, s, d) for b in (1, 64) for s in (25, 50) for d in (False, True)] if full else \
        [(1, 25, False), (1, 50, False), (64, 25, False), (64, 25, True)]
    rows = []
    for size in sizes:
        for batch, steps, decode in cases:
            if decode and not full and size != sizes[0]:
                continue
            queue = ctx.Queue()
            proc = ctx.Process(target=_measure, args=(size, batch, steps, decode, device, queue))
            proc.start()
            rows.append(queue.get())
            proc.join()
            print(rows[-1], flush=True)
    return {"device": device, "latent": list(LATENT), "rows": rows}


def markdown(r: dict) -> str:
    memory = "peak GPU memory" if r["device"] == "cuda" else "peak RSS growth"
    sizes = list(dict.fromkeys(row["size"] for row in r["rows"]))
    decoded = [size for size in sizes if any(row["decode"] for row in r["rows"] if row["size"] == size)]
    which = "" if decoded == sizes else f" (timed with {', '.join(decoded)} only: the decoder is the same for every size)"
    lines = [f"Euler sampling of {'x'.join(map(str, r['latent']))} latents on {r['device']}, class-conditional with "
             "guidance 2.0 inside the default interval t ≤ 0.75 (so steps there cost a doubled batch), one timed run "
             "after a 2-step warm-up (the median of five for batch 1). \"+ decode\" adds TAEF2 decoding to 128 px images"
             f"{which}. Model calls per image = steps.\n",
             f"| model | batch | steps | decode | images/s | {memory} |", "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['size']} | {row['batch']} | {row['steps']} | {'+ decode' if row['decode'] else 'latents only'} | "
                     f"{row['images_per_s']:.2f} | {row['peak_memory_bytes'] / 2**20:.0f} MiB |")
    return "\n".join(lines) + "\n"
