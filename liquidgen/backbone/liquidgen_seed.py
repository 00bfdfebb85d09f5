"""LiquidGen, as its model card describes it: a 2×2 patch embedding, a learned position
embedding, LiquidBlocks whose global context is a 1-D convolution along the zigzag order of the
grid, static liquid time constants in place of residual additions, long skips from the first
half of the blocks to the second, and a transposed-conv unpatchify.

Read from the card (`../shared/reference/`, "LiquidGen"); what it leaves open, filled in here:
- widths and depths, which it does not give, chosen for its parameter counts (~55M/140M/280M):
  512×14, 768×16, 1024×18;
- the zigzag conv: depthwise, kernel 9, then a pointwise mix; the gated stimulus conv: a
  depthwise 3×3 and a pointwise projection to a value and a sigmoid gate;
- a long skip adds the saved activation; the last conv is zero-initialized, so a new model
  predicts 0 like the others.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from diffusers import ModelMixin  # noqa: F401 - the loader finds the base class in this module
from torch import nn

from liquidgen.backbone.base import Backbone
from liquidgen.backbone.blocks import AdaGN, groups_for
from liquidgen.backbone.unet import condition


@dataclass
class LiquidGenConfig:
    in_channels: int = 16
    num_classes: int = 0
    sample_size: int = 32  # latent side; the position embedding has one entry per patch
    hidden: int = 512
    depth: int = 14  # even: half save long skips, half take them
    patch: int = 2
    zigzag_kernel: int = 9
    mlp_ratio: int = 4
    arch: str = "liquidgen"

    def __post_init__(self):
        if self.depth % 2:
            raise ValueError(f"depth {self.depth} must be even (long skips pair block i with depth-1-i)")
        if self.sample_size % self.patch:
            raise ValueError(f"latents of {self.sample_size} px do not split into {self.patch}x{self.patch} patches")

    def to_dict(self) -> dict:
        return asdict(self)


LIQUIDGEN_SIZES = {
    "liquidgen-s": {"hidden": 512, "depth": 14},
    "liquidgen-b": {"hidden": 768, "depth": 16},
    "liquidgen-l": {"hidden": 1024, "depth": 18},
}


def zigzag_order(height: int, width: int, device=None) -> torch.Tensor:
    """Row-major indices with every other row reversed (boustrophedon): consecutive positions
    are always grid neighbours, which a plain raster order breaks at each row's end."""
    grid = torch.arange(height * width, device=device).view(height, width)
    grid[1::2] = grid[1::2].flip(1)
    return grid.reshape(-1)


class LiquidTimeConstant(nn.Module):
    """α·state + (1 − α)·stimulus with a static per-channel α = exp(−softplus(ρ))."""

    def __init__(self, dim: int):
        super().__init__()
        self.rho = nn.Parameter(torch.zeros(dim))

    def forward(self, state: torch.Tensor, stimulus: torch.Tensor) -> torch.Tensor:
        alpha = torch.exp(-F.softplus(self.rho))[None, :, None, None]
        return alpha * state + (1 - alpha) * stimulus


class ZigzagScan1D(nn.Module):
    """A depthwise 1-D convolution along the zigzag order, then a pointwise mix: no loop over
    positions, one gather in and one out."""

    def __init__(self, dim: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.mix = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w = x.shape
        order = zigzag_order(h, w, x.device)
        seq = self.conv(x.flatten(2)[:, :, order])
        out = torch.empty_like(seq).index_copy_(2, order, seq)  # back to row-major
        return self.mix(out.view(b, d, h, w))


class LiquidGenBlock(nn.Module):
    def __init__(self, dim: int, kernel: int, mlp_ratio: int):
        super().__init__()
        self.mod = nn.Linear(dim, 4 * dim)  # two AdaGNs' shift and scale
        self.norm1, self.norm2 = AdaGN(dim), AdaGN(dim)
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.value_gate = nn.Conv2d(dim, 2 * dim, 1)
        self.zigzag = ZigzagScan1D(dim, kernel)
        self.ltc1, self.ltc2 = LiquidTimeConstant(dim), LiquidTimeConstant(dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, mlp_ratio * dim, 1), nn.GELU(), nn.Conv2d(mlp_ratio * dim, dim, 1))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        s1, c1, s2, c2 = self.mod(F.silu(cond)).chunk(4, dim=1)
        h = self.norm1(x, s1, c1)
        value, gate = self.value_gate(self.dw(h)).chunk(2, dim=1)
        x = self.ltc1(x, value * torch.sigmoid(gate) + self.zigzag(h))
        return self.ltc2(x, self.mlp(self.norm2(x, s2, c2)))


class LiquidGen(Backbone):
    """Predicts the velocity from x_t, t and a class."""

    def __init__(self, spec: dict):
        c = LiquidGenConfig(**spec)
        super().__init__(c.to_dict())
        self.cfg = c
        d, side = c.hidden, c.sample_size // c.patch
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.class_emb = nn.Embedding(c.num_classes + 1, d) if c.num_classes else None
        self.patch_embed = nn.Conv2d(c.in_channels, d, c.patch, stride=c.patch)
        self.pos_embed = nn.Parameter(torch.randn(1, d, side, side) * 0.02)
        self.in_proj = nn.Sequential(nn.Conv2d(d, d, 3, padding=1, groups=d), nn.Conv2d(d, d, 1), nn.GELU())
        self.blocks = nn.ModuleList(LiquidGenBlock(d, c.zigzag_kernel, c.mlp_ratio) for _ in range(c.depth))
        self.out = nn.Sequential(nn.GroupNorm(groups_for(d), d), nn.Conv2d(d, d, 3, padding=1), nn.GELU())
        self.unpatchify = nn.ConvTranspose2d(d, c.in_channels, c.patch, stride=c.patch)
        nn.init.zeros_(self.unpatchify.weight)
        nn.init.zeros_(self.unpatchify.bias)

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cond = condition(self, t, labels, self.cfg.hidden)
        h = self.in_proj(self.patch_embed(x) + self.pos_embed)
        half = len(self.blocks) // 2
        skips = []
        for i, blk in enumerate(self.blocks):
            if i >= half:
                h = h + skips.pop()  # block depth-1-i's output joins block i
            h = blk(h, cond)
            if i < half:
                skips.append(h)
        return self.unpatchify(self.out(h))
