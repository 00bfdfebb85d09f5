"""The training objective and the EMA: the one place train, eval and the benchmarks take them.

Rectified flow (`x_t = (1 − t)·x0 + t·ε`, the model predicts `ε − x0`), with optional
regularizers on the clean latent the prediction implies (`x0̂ = x_t − t·v`) — LiquidFlow's
"physics-informed" terms, usable with every model (`--reg tv=0.01,spectral=0.01,...`).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from liquidgen.config import REG_NAMES, parse_reg  # noqa: F401 - parse_reg: the one parser, re-exported



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


class RectifiedFlow:
    """The loss the training loop calls: MSE to the velocity, plus the weighted regularizers."""

    def __init__(self, reg: dict[str, float] | None = None):
        self.reg = {k: v for k, v in (reg or {}).items() if v}

    @staticmethod
    def target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise - x0

    @staticmethod
    def noisy(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t[:, None, None, None]
        return (1 - t) * x0 + t * noise

    def __call__(self, model, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, labels,
                 autocast=contextlib.nullcontext) -> torch.Tensor:
        xt = self.noisy(x0, noise, t)
        with autocast():  # the model in mixed precision, the loss in float32
            v = model(xt, t, labels)
        v = v.float()
        loss = F.mse_loss(v, self.target(x0, noise))
        if self.reg:
            x0_hat = xt - t[:, None, None, None] * v
            loss = loss + sum(w * REGULARIZERS[k](x0_hat, x0) for k, w in self.reg.items())
        return loss


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    """Warm-up EMA (decay min(d, (1+step)/(10+step))), one fused lerp over every parameter."""
    d = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1 - d)
