"""Integrating the learned flow from noise to latents, and latents to pictures.

The step rule is diffusers' flow-matching schedulers (Euler, or Heun at about twice the model
calls); classifier-free guidance is applied only inside a guidance interval of t, away from
the noisiest steps, where it mostly costs diversity (Kynkäänniemi et al., 2024).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from liquidgen.devices import resolve_device
from liquidgen.errors import LiquidgenError


@torch.no_grad()
def sample_latents(
    model: torch.nn.Module,
    n: int,
    shape: tuple[int, ...],
    labels: torch.Tensor | None = None,
    steps: int = 25,
    cfg_scale: float = 1.0,
    guidance_interval: tuple[float, float] = (0.0, 0.75),
    sampler="euler",
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, int]:
    """Normalized latents (n, *shape) and the number of model calls it took. `sampler` is
    "euler", "heun", or a diffusers flow-matching scheduler whose config is used."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

    if isinstance(sampler, str):
        scheduler = {"euler": FlowMatchEulerDiscreteScheduler, "heun": FlowMatchHeunDiscreteScheduler}[sampler]()
    else:  # a fresh copy: schedulers keep per-run state
        scheduler = type(sampler).from_config(sampler.config)
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


# -- the `liquidgen sample` stage ---------------------------------------------------------------

@dataclass
class SampleConfig:
    run: str
    out: str
    n: int = 16
    steps: int = 50
    cfg_scale: float = 1.0
    guidance_interval: tuple[float, float] = (0.0, 0.75)
    class_name: str | None = None  # None: cycle through all classes
    sampler: str = "euler"  # euler | heun
    seed: int = 0
    batch_size: int = 64
    latents_only: bool = False
    checkpoint: str | None = None  # a step-XXXXXXX folder name; default the latest
    device: str = "auto"


@dataclass
class SampleResult:
    out: Path
    images: list[Path]
    grid: Path | None
    model_calls: int
    seconds: float


def generate_raw(model, lat: dict, labels, n, steps, cfg_scale, interval, sampler, gen, device, batch_size):
    """Raw (denormalized) latents for `n` images, in batches; shared by `sample` and the exported
    diffusers pipeline so both give the same images for the same seed."""
    mean = torch.tensor(lat["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(lat["std"]).view(1, -1, 1, 1)
    chunks, calls = [], 0
    for start in range(0, n, batch_size):
        k = min(batch_size, n - start)
        y = labels[start : start + k].to(device) if labels is not None else None
        z, calls = sample_latents(model, k, tuple(lat["shape"]), y, steps, cfg_scale, interval, sampler, gen, device)
        chunks.append(z.float().cpu() * std + mean)
    return torch.cat(chunks), calls


def pick_labels(names: list[str], n: int, class_name: str | None) -> torch.Tensor | None:
    """One class for all, or all classes in turn; a clear refusal for an unknown name."""
    if class_name is not None and class_name not in names:
        known = ", ".join(names) if names else "none: the run is unconditional"
        raise LiquidgenError(f"unknown class {class_name!r}; known classes: {known}")
    if not names:
        return None
    return torch.full((n,), names.index(class_name)) if class_name else torch.arange(n) % len(names)


def load_run(run: str | Path, checkpoint: str | None = None, device="cpu"):
    """The EMA model of a run and the run's config (normalization, classes, VAE)."""
    from liquidgen.backbone.models import build_model
    from liquidgen.pipeline import checkpoint as ckpt

    run = Path(run)
    config = ckpt.read_run_config(run)
    path = ckpt.checkpoint_dir(run) / checkpoint if checkpoint else ckpt.latest_checkpoint(run)
    if path is None or not (path / "ema.safetensors").exists():
        raise LiquidgenError(f"{run} has no checkpoint{' ' + checkpoint if checkpoint else ''} to sample from")
    model = build_model(config["model"])
    model.load_state_dict(ckpt.load_weights(path, "ema"))
    return model.to(device).eval(), config, path


def sample(cfg: SampleConfig) -> SampleResult:
    """Generate `n` images (or latents) from a run's EMA weights."""
    import json
    import time

    from safetensors.torch import save_file

    if cfg.n < 1:
        raise LiquidgenError(f"--n must be at least 1 (got {cfg.n})")
    if cfg.sampler not in ("euler", "heun"):
        raise LiquidgenError(f"--sampler {cfg.sampler!r} is not one of euler, heun")
    device = resolve_device(cfg.device)
    model, config, path = load_run(cfg.run, cfg.checkpoint, device)
    lat = config["latents"]
    labels = pick_labels(lat["label_names"], cfg.n, cfg.class_name)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.time()
    raw, calls = generate_raw(model, lat, labels, cfg.n, cfg.steps, cfg.cfg_scale, cfg.guidance_interval,
                              cfg.sampler, gen, device, cfg.batch_size)
    out = Path(cfg.out)
    settings = {**asdict(cfg), "checkpoint": path.name, "model_calls_per_image": calls,
                "labels": labels.tolist() if labels is not None else None}
    if cfg.latents_only:
        if out.suffix != ".safetensors":
            out = out / "latents.safetensors"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file({"latents": raw.contiguous()}, str(out), metadata={
            "format": "liquidgen-latents", "vae": json.dumps(lat["vae"]), "settings": json.dumps(settings)})
        return SampleResult(out, [out], None, calls, time.time() - t0)
    from liquidgen.pipeline.decode import decode_latents

    images = decode_latents(raw, lat["vae"], device)
    paths = save_images(images, out)
    grid = out / "grid.png"
    image_grid(images).save(grid)
    (out / "settings.json").write_text(json.dumps(settings, indent=1))
    return SampleResult(out, paths, grid, calls, time.time() - t0)
