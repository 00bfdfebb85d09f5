"""LiquidFlow, as its model card describes it: LiquidMamba blocks — a CfC gate, a Mamba-2 SSD
scan over the latent grid in four directions, a CfC gate — at one hidden width, in stages.

Read from the card (`../shared/reference/`, "LiquidFlow"), with what it leaves open filled in
the plainest way and said here:
- CfC gate: h = σ(−f·τ) ⊙ g + (1 − σ(−f·τ)) ⊙ h', with f, g, h' linear in the (layer-normed)
  tokens; the card's time τ is the diffusion time through a learned positive affine map
  τ = softplus(w)·t + softplus(b) per channel (at τ = t alone every gate is ½ at t = 0).
- SSD mixer: Mamba-2's layout (in-projection to x, z, B, C, Δ; a causal depthwise conv of
  width 4 on x; the selective scan with a_t = −exp(A_log)·Δ_t; y·silu(z); out-projection), at
  expansion 1, run along rows, columns and both reversed, the four outputs averaged.
- Stages: `stages` groups of `blocks` blocks; each stage starts by adding a projection of the
  time/class embedding to every token. A 3×3 conv stem in, a zero-initialized linear head out.
- The card's parameter counts (~2M/8M/30M) do not follow from its own widths and depths with
  one block design; the widths, stages and blocks are kept, and the counts are what they give
  (0.71M, 10.2M, 50.4M for 4-channel latents; `tests/test_seeds.py` checks them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from diffusers import ModelMixin  # noqa: F401 - the loader finds the base class in this module
from torch import nn

from liquidgen.backbone.base import Backbone
from liquidgen.backbone.ssd import ssd
from liquidgen.backbone.unet import condition


@dataclass
class LiquidFlowConfig:
    in_channels: int = 4
    num_classes: int = 0
    hidden: int = 128
    stages: int = 2
    blocks: int = 2  # per stage
    state: int = 32  # N, the SSD state size per head
    head_dim: int = 32  # P; heads = hidden // head_dim
    chunk: int = 64  # SSD chunk length: any value gives the same output, it only sets the cost
    arch: str = "liquidflow"

    def to_dict(self) -> dict:
        return asdict(self)


LIQUIDFLOW_SIZES = {  # hidden width, stages, blocks per stage: the card's variant table
    "liquidflow-tiny": {"hidden": 128, "stages": 2, "blocks": 2},
    "liquidflow-small": {"hidden": 256, "stages": 4, "blocks": 4},
    "liquidflow-base": {"hidden": 384, "stages": 6, "blocks": 6},
}


class CfCGate(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fgh = nn.Linear(dim, 3 * dim)
        self.tau_w = nn.Parameter(torch.zeros(dim))
        self.tau_b = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        f, g, h = self.fgh(self.norm(x)).chunk(3, dim=-1)
        tau = F.softplus(self.tau_w) * t[:, None, None] + F.softplus(self.tau_b)
        gate = torch.sigmoid(-f * tau)
        return x + gate * g + (1 - gate) * h


def grid_orders(height: int, width: int, device=None) -> torch.Tensor:
    """(4, H·W) token orders: rows, columns, rows reversed, columns reversed."""
    rows = torch.arange(height * width, device=device)
    cols = rows.view(height, width).T.reshape(-1)
    return torch.stack([rows, cols, rows.flip(0), cols.flip(0)])


class SSDMixer(nn.Module):
    def __init__(self, dim: int, state: int, head_dim: int, chunk: int, conv: int = 4):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"hidden {dim} is not a multiple of head_dim {head_dim}")
        self.heads, self.head_dim, self.state, self.chunk = dim // head_dim, head_dim, state, chunk
        self.norm = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, 2 * dim + 2 * state + self.heads)  # x, z, B, C, Δ
        self.conv = nn.Conv1d(dim, dim, conv, groups=dim, padding=conv - 1)  # causal: the tail is cut
        self.A_log = nn.Parameter(torch.log(torch.linspace(1, 16, self.heads)))  # Mamba-2's A ∈ [1, 16]
        self.dt_bias = nn.Parameter(torch.log(torch.expm1(torch.linspace(1e-3, 1e-1, self.heads))))
        self.D = nn.Parameter(torch.ones(self.heads))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
        b, L, d = x.shape
        u = self.norm(x)
        k = len(orders)
        # every direction is one more batch row of the same scan
        seq = u[:, orders].reshape(b * k, L, d)
        xs, z, B, C, dt = self.in_proj(seq).split([d, d, self.state, self.state, self.heads], dim=-1)
        xs = F.silu(self.conv(xs.transpose(1, 2))[..., :L].transpose(1, 2))
        dt = F.softplus(dt + self.dt_bias)  # (bk, L, h)
        a = -torch.exp(self.A_log) * dt
        xh = xs.reshape(b * k, L, self.heads, self.head_dim)
        B, C = (v[:, :, None, :].expand(-1, -1, self.heads, -1) for v in (B, C))
        y = ssd(xh * dt[..., None], a, B, C, self.chunk) + xh * self.D[:, None]
        y = (y.reshape(b * k, L, d) * F.silu(z)).reshape(b, k, L, d)
        back = torch.empty_like(orders)
        back.scatter_(1, orders, torch.arange(L, device=orders.device).expand(k, -1))
        y = torch.stack([y[:, i, back[i]] for i in range(k)], dim=1).mean(1)  # each direction in grid order
        return x + self.out_proj(y)


class LiquidMambaBlock(nn.Module):
    def __init__(self, c: LiquidFlowConfig):
        super().__init__()
        self.gate_in, self.gate_out = CfCGate(c.hidden), CfCGate(c.hidden)
        self.mixer = SSDMixer(c.hidden, c.state, c.head_dim, c.chunk)

    def forward(self, x: torch.Tensor, t: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
        return self.gate_out(self.mixer(self.gate_in(x, t), orders), t)


class LiquidFlow(Backbone):
    """Predicts the velocity from x_t, t and a class."""

    def __init__(self, spec: dict):
        c = LiquidFlowConfig(**spec)
        super().__init__(c.to_dict())
        self.cfg = c
        d = c.hidden
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.class_emb = nn.Embedding(c.num_classes + 1, d) if c.num_classes else None
        self.stem = nn.Conv2d(c.in_channels, d, 3, padding=1)
        self.inject = nn.ModuleList(nn.Linear(d, d) for _ in range(c.stages))
        self.stages = nn.ModuleList(nn.ModuleList(LiquidMambaBlock(c) for _ in range(c.blocks)) for _ in range(c.stages))
        self.out_norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, c.in_channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        b, ch, height, width = x.shape
        cond = condition(self, t, labels, self.cfg.hidden)
        h = self.stem(x).flatten(2).transpose(1, 2)  # (b, H·W, d), row-major
        orders = grid_orders(height, width, x.device)
        for inject, blocks in zip(self.inject, self.stages):
            h = h + inject(F.silu(cond))[:, None]
            for blk in blocks:
                h = blk(h, t, orders)
        return self.out(self.out_norm(h)).transpose(1, 2).reshape(b, ch, height, width)
