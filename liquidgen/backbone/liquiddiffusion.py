"""LiquidDiffusion, as its model card describes it: a conv stem, encoder stages of
LiquidDiffusionBlocks with stride-2 downsampling, a bottleneck of two, a mirrored decoder with
upsampling and skip fusion, and a GroupNorm-SiLU-conv head.

A block (the card's diagram and listing): AdaLN(t) → ParallelCfC → relaxation residual
α·x + (1 − α)·cfc with α = exp(−softplus(ρ)·|t|), uncapped as published → MultiScaleSpatialMix
(depthwise 3/5/7 plus global average pooling) + residual → AdaLN(t) → FeedForward + residual.

liquidgen's own U-Net (`backbone/unet.py`) grew from this design and departs from it in two
measured places: its relaxation is capped (α ≤ σ(c) < 1, so no block becomes the identity at
t → 0), and its head is conditioned on t (AdaGN and a learned skip from x_t); docs/README.md
gives the measurements. What the card leaves open: AdaLN is a LayerNorm over channels at each
position with shift and scale from the time/class embedding; skip fusion is concatenation and
a 1×1 conv; upsampling is nearest-neighbour then a 3×3 conv.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from diffusers import ModelMixin  # noqa: F401 - the loader finds the base class in this module
from torch import nn

from liquidgen.backbone.base import Backbone
from liquidgen.backbone.blocks import groups_for
from liquidgen.backbone.unet import condition, unet_levels


@dataclass
class LiquidDiffusionConfig:
    in_channels: int = 4
    num_classes: int = 0
    channels: tuple[int, ...] = (64, 128, 256)
    blocks: tuple[int, ...] = (2, 2, 4)
    bottleneck: int = 2
    arch: str = "liquiddiffusion"

    def __post_init__(self):
        self.channels, self.blocks = tuple(self.channels), tuple(self.blocks)
        if len(self.channels) != len(self.blocks):
            raise ValueError("channels and blocks need one entry per stage")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


LIQUIDDIFFUSION_SIZES = {  # the card's configuration table
    "liquiddiffusion-tiny": {"channels": [64, 128, 256], "blocks": [2, 2, 4]},
    "liquiddiffusion-small": {"channels": [96, 192, 384], "blocks": [2, 3, 6]},
    "liquiddiffusion-base": {"channels": [128, 256, 512], "blocks": [2, 4, 8]},
    "liquiddiffusion-large": {"channels": [128, 256, 512, 768], "blocks": [2, 4, 8, 4]},
}


class AdaLN(nn.Module):
    """LayerNorm over the channels of each position, then shift and scale from the embedding."""

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mod = nn.Linear(cond_dim, 2 * dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.mod(F.silu(cond))[:, :, None, None].chunk(2, dim=1)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) * (1 + scale) + shift


class ParallelCfC(nn.Module):
    """The card's listing: shared DW7×7 + 1×1 features; f, g, h heads; gate σ(a(t)·f − b(t))."""

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(dim, dim, 7, padding=3, groups=dim), nn.Conv2d(dim, dim, 1), nn.SiLU())
        self.f = nn.Conv2d(dim, dim, 1)

        def head() -> nn.Module:
            return nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.SiLU(), nn.Conv2d(dim, dim, 1))

        self.g, self.h = head(), head()
        self.time_a, self.time_b = nn.Linear(cond_dim, dim), nn.Linear(cond_dim, dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        a, b = self.time_a(cond)[:, :, None, None], self.time_b(cond)[:, :, None, None]
        gate = torch.sigmoid(a * self.f(feats) - b)
        return gate * self.g(feats) + (1 - gate) * self.h(feats)


class MultiScaleSpatialMix(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in (3, 5, 7))
        self.pooled = nn.Conv2d(dim, dim, 1)  # the global path: the image's mean, mixed, everywhere
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = sum(conv(x) for conv in self.convs)
        return self.proj(F.silu(local + self.pooled(x.mean(dim=(2, 3), keepdim=True))))


class LiquidDiffusionBlock(nn.Module):
    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.norm1, self.norm2 = AdaLN(dim, cond_dim), AdaLN(dim, cond_dim)
        self.cfc = ParallelCfC(dim, cond_dim)
        self.rho = nn.Parameter(torch.zeros(dim))
        self.mix = MultiScaleSpatialMix(dim)
        self.ffn = nn.Sequential(nn.Conv2d(dim, 4 * dim, 1), nn.GELU(), nn.Conv2d(4 * dim, dim, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        alpha = torch.exp(-F.softplus(self.rho)[None, :, None, None] * t.abs()[:, None, None, None])  # → 1 as t → 0
        x = alpha * x + (1 - alpha) * self.cfc(self.norm1(x, cond), cond)
        x = x + self.mix(x)
        return x + self.ffn(self.norm2(x, cond))


class LiquidDiffusion(Backbone):
    """Predicts the velocity from x_t, t and a class."""

    def __init__(self, spec: dict):
        c = LiquidDiffusionConfig(**spec)
        super().__init__(c.to_dict())
        self.cfg = c
        ch, cond_dim = c.channels, 4 * c.channels[0]
        self.time_mlp = nn.Sequential(nn.Linear(ch[0], cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        self.class_emb = nn.Embedding(c.num_classes + 1, cond_dim) if c.num_classes else None
        self.stem = nn.Sequential(nn.Conv2d(c.in_channels, ch[0], 3, padding=1), nn.SiLU(), nn.Conv2d(ch[0], ch[0], 3, padding=1))
        self.down = nn.ModuleList(nn.ModuleList(LiquidDiffusionBlock(d, cond_dim) for _ in range(n)) for d, n in zip(ch, c.blocks))
        self.downsample = nn.ModuleList(nn.Conv2d(ch[i], ch[i + 1], 3, stride=2, padding=1) for i in range(len(ch) - 1))
        self.mid = nn.ModuleList(LiquidDiffusionBlock(ch[-1], cond_dim) for _ in range(c.bottleneck))
        self.upsample = nn.ModuleList(nn.Conv2d(ch[i + 1], ch[i], 3, padding=1) for i in range(len(ch) - 1))
        self.fuse = nn.ModuleList(nn.Conv2d(2 * d, d, 1) for d in ch)
        self.up = nn.ModuleList(nn.ModuleList(LiquidDiffusionBlock(d, cond_dim) for _ in range(n)) for d, n in zip(ch, c.blocks))
        self.out = nn.Sequential(nn.GroupNorm(groups_for(ch[0]), ch[0]), nn.SiLU(), nn.Conv2d(ch[0], c.in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cond = condition(self, t, labels, self.cfg.channels[0])
        return self.out(unet_levels(self, self.stem(x), lambda blk, h: blk(h, t, cond)))
