"""The training objectives and the EMA: the one place train, eval, sampling and the benchmarks
take them.

Two objectives, each an object the training loop calls, and each naming the sampler that
integrates what it learned:

- rectified flow (the default, `--objective flow`): `x_t = (1 − t)·x0 + t·ε`, t logit-normal,
  the model predicts the velocity `ε − x0`; sampled with diffusers' flow-matching Euler/Heun.
- noise prediction (`--objective eps`, LiquidFlow's): DDPM's `x_t = √ᾱ·x0 + √(1 − ᾱ)·ε` on
  diffusers' default schedule (1000 steps, β linear 1e-4 → 0.02), timesteps uniform, the model
  predicts ε; sampled with diffusers' DDIM. The model sees `t = k / 1000` for timestep k, so
  both objectives give it t in [0, 1) (1 the noisiest).

Either takes optional regularizers on the clean latent its prediction implies (x0̂) —
LiquidFlow's "physics-informed" terms, usable with every model (`--reg tv=0.01,...`).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from liquidgen.config import OBJECTIVES, REG_NAMES, SAMPLERS, parse_reg  # noqa: F401 - parse_reg: the one parser, re-exported


def _dx_dy(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def total_variation(x0_hat: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring cells (anisotropic TV): 0 for a flat latent."""
    dx, dy = _dx_dy(x0_hat)
    return dx.abs().mean() + dy.abs().mean()


def gradient_penalty(x0_hat: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Mean squared spatial gradient (the H¹ seminorm): 0 for a flat latent."""
    dx, dy = _dx_dy(x0_hat)
    return dx.square().mean() + dy.square().mean()


def spectral(x0_hat: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Power weighted by squared radial frequency (|k|/k_max)², per element: high-frequency
    energy, 0 for a flat latent (all power at k = 0)."""
    h, w = x0_hat.shape[-2:]
    power = torch.fft.rfft2(x0_hat.float(), norm="ortho").abs().square()
    ky = torch.fft.fftfreq(h, device=x0_hat.device)[:, None]
    kx = torch.fft.rfftfreq(w, device=x0_hat.device)[None, :]
    weight = (kx.square() + ky.square()) / 0.5  # (|k| / k_max)² with k_max² = 0.5 at the corner
    return (power * weight).sum(dim=(-2, -1)).mean() / (h * w)


def intensity(x0_hat: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Conservation of intensity: the squared error of each channel's mean against the data's."""
    return (x0_hat.mean(dim=(-2, -1)) - x0.mean(dim=(-2, -1))).square().mean()


REGULARIZERS = {"tv": total_variation, "spectral": spectral, "gradient": gradient_penalty, "intensity": intensity}
assert set(REGULARIZERS) == set(REG_NAMES)  # the names --reg accepts are checked without torch, in config


class Objective:
    """What the loop, the evaluator and the sampler ask of an objective: how t is drawn, the
    noisy input and the target at t, the clean latent a prediction implies, and the loss."""

    name: str  # as --objective names it

    @property
    def samplers(self) -> tuple[str, ...]:
        """The samplers that integrate what it learned, the default (`sample --sampler auto`) first."""
        return SAMPLERS[self.name]

    def __init__(self, reg: dict[str, float] | None = None):
        self.reg = {k: v for k, v in (reg or {}).items() if v}

    def draw_t(self, n: int, generator: torch.Generator, device) -> torch.Tensor:
        raise NotImplementedError

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def clean(self, xt: torch.Tensor, prediction: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0̂: the clean latent the model's prediction at (x_t, t) implies."""
        raise NotImplementedError

    def __call__(self, model, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, labels,
                 autocast=contextlib.nullcontext) -> torch.Tensor:
        """MSE to the target, plus the weighted regularizers on x0̂."""
        xt = self.noisy(x0, noise, t)
        with autocast():  # the model in mixed precision, the loss in float32
            prediction = model(xt, t, labels)
        prediction = prediction.float()
        loss = F.mse_loss(prediction, self.target(x0, noise, t))
        if self.reg:
            x0_hat = self.clean(xt, prediction, t)
            loss = loss + sum(w * REGULARIZERS[k](x0_hat, x0) for k, w in self.reg.items())
        return loss


class RectifiedFlow(Objective):
    """Velocity prediction on the straight path from data (t = 0) to noise (t = 1)."""

    name = "flow"

    def draw_t(self, n, generator, device):
        return torch.sigmoid(torch.randn(n, generator=generator, device=device))  # logit-normal(0, 1)

    def noisy(self, x0, noise, t):
        t = t[:, None, None, None]
        return (1 - t) * x0 + t * noise

    def target(self, x0, noise, t):
        return noise - x0

    def clean(self, xt, prediction, t):
        return xt - t[:, None, None, None] * prediction


X0_RANGE = 5.0  # |x0̂| bound for noise prediction, in the cache's normalized units (unit variance): see clean()


class EpsilonPrediction(Objective):
    """Noise prediction on diffusers' DDPM schedule, sampled with DDIM."""

    name = "eps"
    TIMESTEPS = 1000

    def __init__(self, reg: dict[str, float] | None = None):
        super().__init__(reg)
        from diffusers import DDPMScheduler

        # the schedule's one definition: DDIM at sampling time is built from the same config
        self.alphas_cumprod = DDPMScheduler(**self.schedule()).alphas_cumprod.float()

    @classmethod
    def schedule(cls) -> dict:
        """The noise schedule as diffusers config fields (diffusers' defaults, said out loud)."""
        return {"num_train_timesteps": cls.TIMESTEPS, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
                "prediction_type": "epsilon"}

    @classmethod
    def scheduler(cls):
        """DDIM on the training schedule. Trailing spacing starts sampling at the last training
        timestep (pure noise), not 1000/steps before it (Lin et al., 2024); x0̂ is clipped to
        ±X0_RANGE, as in training's regularizers, not to diffusers' pixel-space ±1."""
        from diffusers import DDIMScheduler

        return DDIMScheduler(**cls.schedule(), timestep_spacing="trailing", clip_sample=True,
                             clip_sample_range=X0_RANGE, set_alpha_to_one=True)

    def _alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = (t * self.TIMESTEPS).round().long().clamp(0, self.TIMESTEPS - 1)
        a = self.alphas_cumprod.to(t.device)[k][:, None, None, None]
        return a.sqrt(), (1 - a).sqrt()

    def draw_t(self, n, generator, device):
        k = torch.randint(0, self.TIMESTEPS, (n,), generator=generator, device=device)
        return k.float() / self.TIMESTEPS

    def noisy(self, x0, noise, t):
        a, s = self._alpha_sigma(t)
        return a * x0 + s * noise

    def target(self, x0, noise, t):
        return noise

    def clean(self, xt, prediction, t):
        """Clipped like DDIM's step: near pure noise √ᾱ → 0.006 would amplify the prediction's
        error 160x, so the regularizers see a bounded estimate."""
        a, s = self._alpha_sigma(t)
        return ((xt - s * prediction) / a).clamp(-X0_RANGE, X0_RANGE)


OBJECTIVE_CLASSES: dict[str, type[Objective]] = {"flow": RectifiedFlow, "eps": EpsilonPrediction}
assert set(OBJECTIVE_CLASSES) == set(OBJECTIVES)


def objective_for(name: str | None, reg: dict[str, float] | None = None) -> Objective:
    """The objective a run trained with (config.json's train.objective; runs before it: flow)."""
    return OBJECTIVE_CLASSES[name or "flow"](reg)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    """Warm-up EMA (decay min(d, (1+step)/(10+step))), one fused lerp over every parameter."""
    d = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1 - d)
