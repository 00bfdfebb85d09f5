"""The sampler: integrating what the model learned from noise to latents.

The step rule is a diffusers scheduler: for rectified flow its flow-matching schedulers (Euler,
or Heun at about twice the model calls), for noise prediction DDIM on the training schedule
(`liquidgen.objective` owns both). Either way the model sees `t = timestep / 1000`, the value
training gave it. Classifier-free guidance is applied only inside a guidance interval of t, away from
the noisiest steps, where it mostly costs diversity (Kynkäänniemi et al., 2024). Used by the
`sample`, `eval` and `export` stages and by training previews, so all give the same latents for
the same seed.
"""

from __future__ import annotations

import torch

from liquidgen.cache.latents import LatentSpace
from liquidgen.config import SAMPLERS
from liquidgen.errors import LiquidgenError


def resolve_sampler(objective: str | None, sampler):
    """The sampler for a model trained with `objective` (None: flow, as runs before objectives
    were named): "auto" is the objective's default; a sampler that integrates the other
    objective is refused; a scheduler instance is taken as given."""
    objective = objective or "flow"
    if not isinstance(sampler, str):
        return sampler
    allowed = SAMPLERS[objective]
    if sampler == "auto":
        return allowed[0]
    if sampler not in allowed:
        raise LiquidgenError(f"--sampler {sampler} does not fit this run: it was trained with --objective {objective}, "
                             f"which samples with {' or '.join(allowed)} (or --sampler auto)")
    return sampler


def make_scheduler(sampler):
    """A fresh diffusers scheduler for a sampler name, or a fresh copy of a scheduler (they keep
    per-run state)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

    if not isinstance(sampler, str):
        return type(sampler).from_config(sampler.config)
    if sampler == "ddim":
        from liquidgen.objective import EpsilonPrediction

        return EpsilonPrediction.scheduler()
    return {"euler": FlowMatchEulerDiscreteScheduler, "heun": FlowMatchHeunDiscreteScheduler}[sampler]()


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
    on_step=None,
) -> tuple[torch.Tensor, int]:
    """Normalized latents (n, *shape) and the model evaluations it took per image (a guided
    step is two). `sampler` is "euler" or "heun" (a velocity model), "ddim" (a noise-prediction
    model), or a diffusers scheduler whose config is used; the model's output is what the
    scheduler's step takes. `on_step()` is called after each step (a progress bar)."""
    scheduler = make_scheduler(sampler)
    scheduler.set_timesteps(steps, device=device)
    x = torch.randn((n, *shape), generator=generator, device="cpu").to(device) * getattr(scheduler, "init_noise_sigma", 1.0)
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
            calls += 2  # each image went through the model twice: with its class and without
        else:
            v = model(x, sigma, labels)
            calls += 1
        x = scheduler.step(v.float(), t, x).prev_sample
        if on_step is not None:
            on_step()
    return x, calls


def generate_raw(model, lat: dict, labels, n, steps, cfg_scale, interval, sampler, gen, device, batch_size,
                 progress: bool = False):
    """Raw (denormalized) latents for `n` images, in batches; shared by `sample` and the exported
    diffusers pipeline so both give the same images for the same seed. `progress`: a bar over
    every batch's steps, with an ETA."""
    from tqdm.auto import tqdm

    space = LatentSpace.from_run(lat)
    sampler = resolve_sampler(lat.get("objective"), sampler)
    chunks, calls = [], 0
    batches = -(-n // batch_size)
    with tqdm(total=batches * steps, unit="step", desc=f"sample {n} images", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            k = min(batch_size, n - start)
            y = labels[start : start + k].to(device) if labels is not None else None
            z, calls = sample_latents(model, k, tuple(lat["shape"]), y, steps, cfg_scale, interval, sampler, gen, device,
                                      on_step=bar.update)
            chunks.append(space.to_vae(z.float().cpu()))
    return torch.cat(chunks), calls


def pick_labels(names: list[str], n: int, class_name: str | None) -> torch.Tensor | None:
    """One class for all, or all classes in turn; a clear refusal for an unknown name."""
    if class_name is not None and class_name not in names:
        known = ", ".join(names) if names else "none: the run is unconditional"
        raise LiquidgenError(f"unknown class {class_name!r}; known classes: {known}")
    if not names:
        return None
    return torch.full((n,), names.index(class_name)) if class_name else torch.arange(n) % len(names)
