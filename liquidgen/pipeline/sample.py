"""Integrating the learned flow from noise to latents, and latents to pictures.

The step rule is diffusers' flow-matching schedulers (Euler, or Heun at about twice the model
calls); classifier-free guidance is applied only inside a guidance interval of t, away from
the noisiest steps, where it mostly costs diversity (Kynkäänniemi et al., 2024).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


@torch.no_grad()
def sample_latents(
    model: torch.nn.Module,
    n: int,
    shape: tuple[int, ...],
    labels: torch.Tensor | None = None,
    steps: int = 25,
    cfg_scale: float = 1.0,
    guidance_interval: tuple[float, float] = (0.0, 0.75),
    sampler: str = "euler",
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, int]:
    """Normalized latents (n, *shape) and the number of model calls it took."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

    scheduler = {"euler": FlowMatchEulerDiscreteScheduler, "heun": FlowMatchHeunDiscreteScheduler}[sampler]()
    scheduler.set_timesteps(steps, device=device)
    x = torch.randn((n, *shape), generator=generator, device="cpu").to(device)
    null = None
    if labels is not None and cfg_scale != 1.0:
        null = torch.full_like(labels, model.null_class)
    calls = 0
    for t in scheduler.timesteps:
        sigma = (t / scheduler.config.num_train_timesteps).expand(n).to(device)
        lo, hi = guidance_interval
        if null is not None and lo <= float(sigma[0]) <= hi:
            v_cond, v_uncond = model(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([labels, null])).chunk(2)
            v = v_uncond + cfg_scale * (v_cond - v_uncond)
        else:
            v = model(x, sigma, labels)
        calls += 1
        x = scheduler.step(v.float(), t, x).prev_sample
    return x, calls


def image_grid(images: torch.Tensor, cols: int | None = None, pad: int = 2) -> Image.Image:
    """(N, 3, H, W) in [0, 1] -> one PIL image, `cols` wide, white gutters."""
    n, _, h, w = images.shape
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = arr[i]
    return Image.fromarray(grid)


def save_images(images: torch.Tensor, folder: Path, prefix: str = "") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    paths = []
    for i, a in enumerate(arr):
        paths.append(folder / f"{prefix}{i:05d}.png")
        Image.fromarray(a).save(paths[-1])
    return paths
