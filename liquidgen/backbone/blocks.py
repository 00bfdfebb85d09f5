"""The liquid block: conditioning, a closed-form continuous-time (CfC) cell, multi-scale
depthwise spatial mixing with a global path, a channel-mixing feed-forward, and guarded
liquid relaxation residuals. No attention anywhere.

The CfC cell comes in three variants so their difference can be measured:

* ``paper``    the closed form of Hasani et al. (2022) as in PyPI `ncps`:
               ``gate = σ(t_a(x)·τ + t_b(x))``, ``out = tanh(g(x))·(1-gate) + gate·tanh(h(x))``,
               with t_a, t_b, g, h (depthwise + pointwise) convolution heads of shared features
               and τ a learned positive function of the diffusion time.
* ``timegate`` the LiquidDiffusion seed: ``gate = σ(a(t)·f(x) − b(t))``, ``out = gate·g + (1-gate)·h``.
* ``static``   the LiquidGen seed: ``α = exp(−softplus(ρ))`` per channel, ``out = α·g + (1-α)·h``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def groups_for(dim: int) -> int:
    return math.gcd(32, dim)


class AdaGN(nn.Module):
    """GroupNorm without affine, then scale/shift from the conditioning vector (AdaGN)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups_for(dim), dim, affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


class DWPW(nn.Module):
    """Depthwise k×k then pointwise 1×1: the cheap spatial+channel conv used by every head."""

    def __init__(self, dim: int, out: int, kernel: int):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.pw = nn.Conv2d(dim, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class CfC(nn.Module):
    """The CfC cell on feature maps (see the module docstring for the variants)."""

    def __init__(self, dim: int, cond_dim: int, variant: str = "paper", kernel: int = 7):
        super().__init__()
        if variant not in ("paper", "timegate", "static"):
            raise ValueError(f"unknown CfC variant {variant!r}: paper, timegate or static")
        self.variant = variant
        self.backbone = nn.Sequential(DWPW(dim, dim, kernel), nn.SiLU())
        heads = {"paper": 4, "timegate": 3, "static": 2}[variant]
        self.heads = DWPW(dim, heads * dim, 3)
        if variant == "paper":
            # τ = softplus(w)·t + softplus(b): positive, increasing in t, learned per channel.
            self.tau_w = nn.Parameter(torch.zeros(dim))
            self.tau_b = nn.Parameter(torch.full((dim,), -2.0))
        elif variant == "timegate":
            self.time_ab = nn.Linear(cond_dim, 2 * dim)
        else:
            self.rho = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        if self.variant == "paper":
            t_a, t_b, g, h = self.heads(feats).chunk(4, dim=1)
            tau = F.softplus(self.tau_w)[None, :, None, None] * t[:, None, None, None] + F.softplus(self.tau_b)[None, :, None, None]
            gate = torch.sigmoid(t_a * tau + t_b)
            out = torch.tanh(g) * (1 - gate) + gate * torch.tanh(h)
        elif self.variant == "timegate":
            f, g, h = self.heads(feats).chunk(3, dim=1)
            a, b = self.time_ab(cond)[:, :, None, None].chunk(2, dim=1)
            gate = torch.sigmoid(a * f - b)
            out = gate * g + (1 - gate) * h
        else:
            g, h = self.heads(feats).chunk(2, dim=1)
            alpha = torch.exp(-F.softplus(self.rho))[None, :, None, None]
            out = alpha * g + (1 - alpha) * h
        return self.proj(out)


class SpatialMix(nn.Module):
    """Multi-scale depthwise convolutions plus a global path: a pooled channel gate, the part
    conv-only diffusion models need to match attention (DiCo, arXiv 2505.11196)."""

    def __init__(self, dim: int, kernels: tuple[int, ...] = (3, 5, 7), global_path: bool = True, grid: int = 0):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in kernels)
        # Optional layout path: pool to grid x grid, mix all cells with one learned matrix (shared by
        # the channels, MLP-Mixer style), upsample and add. Every position then sees where things
        # are in the whole image, at any latent size, still without attention. Zero-init: a no-op
        # until it learns something.
        self.grid = grid
        if grid:
            self.cells = nn.Linear(grid * grid, grid * grid)
            nn.init.zeros_(self.cells.weight)
            nn.init.zeros_(self.cells.bias)
        self.gate = (
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, dim // 4, 1), nn.SiLU(), nn.Conv2d(dim // 4, dim, 1), nn.Sigmoid())
            if global_path
            else None
        )
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = sum(conv(x) for conv in self.convs)
        if self.grid:
            pooled = F.adaptive_avg_pool2d(x, self.grid)
            mixed = self.cells(pooled.flatten(2)).view_as(pooled)
            h = h + F.interpolate(mixed, size=x.shape[-2:], mode="bilinear", align_corners=False)
        h = F.silu(h)
        if self.gate is not None:
            h = h * self.gate(h)
        return self.proj(h)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(dim, dim * mult, 1), nn.GELU(), nn.Conv2d(dim * mult, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Relaxation(nn.Module):
    """Liquid relaxation residual ``x + (1 − α)·out`` with ``α = α_max·exp(−softplus(ρ)·t)``.

    The seeds' ``α = exp(−λt)`` reaches 1 as t → 0 and turns the block into the identity
    exactly at the clean end, where detail is made; ``α_max = σ(c) < 1`` (learned per channel,
    starting at 0.5) keeps at least ``1 − α_max`` of every update. Off, it is a plain residual.
    """

    def __init__(self, dim: int, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        if enabled:
            self.rho = nn.Parameter(torch.zeros(dim))
            self.cap = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x + out
        alpha = torch.sigmoid(self.cap)[None, :] * torch.exp(-F.softplus(self.rho)[None, :] * t[:, None])
        return x + (1 - alpha)[:, :, None, None] * out


class LiquidBlock(nn.Module):
    """AdaGN → CfC → relax; AdaGN → spatial mix → relax; AdaGN → feed-forward → relax.
    Each update is also scaled by a zero-initialised gate from the conditioning (AdaLN-Zero),
    so a freshly built network is the identity and trains stably."""

    def __init__(self, dim: int, cond_dim: int, cfc: str = "paper", kernels: tuple[int, ...] = (3, 5, 7),
                 global_path: bool = True, relax: bool = True, grid: int = 0):
        super().__init__()
        self.norms = nn.ModuleList(AdaGN(dim) for _ in range(3))
        self.cfc = CfC(dim, cond_dim, cfc, kernel=max(kernels))
        self.mix = SpatialMix(dim, kernels, global_path, grid)
        self.ffn = FeedForward(dim)
        self.relax = nn.ModuleList(Relaxation(dim, relax) for _ in range(3))
        self.modulation = nn.Linear(cond_dim, 9 * dim)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        mods = self.modulation(F.silu(cond)).chunk(9, dim=1)
        for i, layer in enumerate((self.cfc, self.mix, self.ffn)):
            shift, scale, gate = mods[3 * i : 3 * i + 3]
            h = self.norms[i](x, shift, scale)
            h = layer(h, t, cond) if layer is self.cfc else layer(h)
            x = self.relax[i](x, gate[:, :, None, None] * h, t)
        return x
