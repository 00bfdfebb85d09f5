"""The liquid U-Net: attention-free, for latents of any channel count and size.

Configs are plain data (`LiquidUNetConfig`), named sizes live in `SIZES`; the model is a
diffusers model whose saved config is that data (`backbone/base.py`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from diffusers import ModelMixin  # noqa: F401 - the loader finds the base class in this module
from torch import nn
from torch.utils.checkpoint import checkpoint

from liquidgen.backbone.base import Backbone
from liquidgen.backbone.blocks import AdaGN, LiquidBlock, groups_for


@dataclass
class LiquidUNetConfig:
    in_channels: int = 32
    channels: tuple[int, ...] = (64, 128, 256)
    blocks: tuple[int, ...] = (1, 1, 2)  # liquid blocks per level, encoder side (decoder mirrors)
    mid_blocks: int = 2
    num_classes: int = 0  # 0: unconditional; else one extra "null" class for guidance
    cfc: str = "paper"  # paper | timegate | static
    kernels: tuple[int, ...] = (3, 5, 7)
    global_path: bool = True
    relax: bool = True
    grid: int = 0  # >0: the layout path of SpatialMix, pooling to grid x grid cells (0: off)
    head: str = "ada"  # ada: conditioned AdaGN, conv, plus a conditioned skip from x_t; gn: GroupNorm, SiLU, conv
    cond_dim: int = 0  # 0: 4 × channels[0]
    grad_checkpoint: bool = False

    def __post_init__(self):
        self.channels, self.blocks, self.kernels = tuple(self.channels), tuple(self.blocks), tuple(self.kernels)
        if len(self.channels) != len(self.blocks):
            raise ValueError("channels and blocks need one entry per level")
        if self.head not in ("ada", "gn"):
            raise ValueError(f"unknown head {self.head!r}: ada or gn")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# Roughly the sizes the reference designs name (LiquidDiffusion tiny/small/base/large).
SIZES: dict[str, LiquidUNetConfig] = {
    "nano": LiquidUNetConfig(channels=(32, 64), blocks=(1, 1), mid_blocks=1),  # tests and CPU smoke runs
    "tiny": LiquidUNetConfig(channels=(64, 128, 192), blocks=(1, 1, 2), mid_blocks=1),  # ~8M
    "small": LiquidUNetConfig(channels=(96, 192, 384), blocks=(1, 2, 2), mid_blocks=2),  # ~30M
    "base": LiquidUNetConfig(channels=(128, 256, 512), blocks=(2, 2, 3), mid_blocks=2),  # ~69M
    "large": LiquidUNetConfig(channels=(192, 384, 768), blocks=(2, 2, 3), mid_blocks=2, grad_checkpoint=True),  # ~154M
}


def model_config(size: str, **overrides) -> LiquidUNetConfig:
    if size not in SIZES:
        raise KeyError(size)
    return replace(SIZES[size], **{k: v for k, v in overrides.items() if v is not None})


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of t ∈ [0, 1] (scaled by 1000, as diffusion models expect)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def condition(model: nn.Module, t: torch.Tensor, labels: torch.Tensor | None, width: int) -> torch.Tensor:
    """The conditioning vector of every liquid backbone: `model.time_mlp` of t's sinusoidal
    features plus `model.class_emb` of the class (the null class where `labels` is None)."""
    cond = model.time_mlp(timestep_embedding(t, width))
    if model.class_emb is not None:
        if labels is None:
            labels = torch.full((len(t),), model.null_class, device=t.device, dtype=torch.long)
        cond = cond + model.class_emb(labels)
    return cond


def unet_levels(model: nn.Module, h: torch.Tensor, run) -> torch.Tensor:
    """The U-Net pass shared by liquidgen's U-Net and LiquidDiffusion: each level's blocks then a
    stride-2 downsample, the middle blocks, then per level upsample, fuse with the skip, blocks.
    `run(block, h)` applies one block (with whatever t, conditioning and checkpointing)."""
    skips = []
    for level, blocks in enumerate(model.down):
        for blk in blocks:
            h = run(blk, h)
        skips.append(h)
        if level < len(model.downsample):
            h = model.downsample[level](h)
    for blk in model.mid:
        h = run(blk, h)
    for level in reversed(range(len(model.up))):
        if level < len(model.upsample):
            h = model.upsample[level](F.interpolate(h, size=skips[level].shape[-2:], mode="nearest"))
        h = model.fuse[level](torch.cat([h, skips[level]], dim=1))
        for blk in model.up[level]:
            h = run(blk, h)
    return h


class LiquidUNet(Backbone):
    """Predicts the rectified-flow velocity ``ε − x0`` (or the noise, `--objective eps`) from
    ``x_t``, ``t`` and an optional class. `spec`: a `LiquidUNetConfig` or its fields as a dict
    (what the saved config holds)."""

    def __init__(self, spec: dict | LiquidUNetConfig):
        c = spec if isinstance(spec, LiquidUNetConfig) else LiquidUNetConfig(**spec)
        super().__init__(c.to_dict())
        self.cfg = c
        ch = c.channels
        cond_dim = c.cond_dim or 4 * ch[0]
        self.time_mlp = nn.Sequential(nn.Linear(ch[0], cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        self.class_emb = nn.Embedding(c.num_classes + 1, cond_dim) if c.num_classes else None
        self.stem = nn.Conv2d(c.in_channels, ch[0], 3, padding=1)

        def block(dim: int) -> LiquidBlock:
            return LiquidBlock(dim, cond_dim, c.cfc, c.kernels, c.global_path, c.relax, c.grid)

        self.down = nn.ModuleList(nn.ModuleList(block(d) for _ in range(n)) for d, n in zip(ch, c.blocks))
        self.downsample = nn.ModuleList(nn.Conv2d(ch[i], ch[i + 1], 3, stride=2, padding=1) for i in range(len(ch) - 1))
        self.mid = nn.ModuleList(block(ch[-1]) for _ in range(c.mid_blocks))
        self.upsample = nn.ModuleList(nn.Conv2d(ch[i + 1], ch[i], 3, padding=1) for i in range(len(ch) - 1))
        self.fuse = nn.ModuleList(nn.Conv2d(2 * d, d, 1) for d in ch)
        self.up = nn.ModuleList(nn.ModuleList(block(d) for _ in range(n)) for d, n in zip(ch, c.blocks))
        # The head decides how fast the model learns what is nearly linear in x_t. The velocity is
        # ≈ x_t near noise and ≈ ε − x_t near data, yet the classic U-Net head (GroupNorm, SiLU,
        # conv: `gn`) cannot see t and reaches x_t only through every block: measured, its flow
        # loss stayed above a per-element linear guess at every t for the first hundreds of steps.
        # `ada` conditions the head (AdaGN, as DiT's final layer) and adds a per-channel skip
        # s(t, class)·x_t (EDM's c_skip, learned); both zero-init, so a new model still predicts 0.
        if c.head == "ada":
            self.out_norm = AdaGN(ch[0])
            self.out_mod = nn.Linear(cond_dim, 2 * ch[0] + c.in_channels)
            nn.init.zeros_(self.out_mod.weight)
            nn.init.zeros_(self.out_mod.bias)
        else:
            self.out_norm = nn.GroupNorm(groups_for(ch[0]), ch[0])
        self.out = nn.Conv2d(ch[0], c.in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    def _run(self, blk: LiquidBlock, x, t, cond):
        if self.cfg.grad_checkpoint and self.training:
            return checkpoint(blk, x, t, cond, use_reentrant=False)
        return blk(x, t, cond)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cond = condition(self, t, labels, self.cfg.channels[0])
        h = unet_levels(self, self.stem(x), lambda blk, h: self._run(blk, h, t, cond))
        if self.cfg.head == "ada":
            dim = self.cfg.channels[0]
            shift, scale, skip = self.out_mod(F.silu(cond)).split([dim, dim, self.cfg.in_channels], dim=1)
            return self.out(self.out_norm(h, shift, scale)) + skip[:, :, None, None] * x
        return self.out(F.silu(self.out_norm(h)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
