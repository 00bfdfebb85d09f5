"""Mamba-2's selective state-space scan computed with its state-space duality (SSD), in pure
PyTorch: no custom kernel, no Python loop over positions.

The recurrence, per head, with a scalar decay per position (Dao & Gu 2024, "Transformers are
SSMs", eq. 1 with A = a·I):

    h_t = exp(a_t) · h_{t-1} + B_t x_tᵀ        y_t = C_tᵀ h_t

`ssd` splits the sequence into chunks: inside a chunk it is a masked matrix product (the
"attention-like" quadratic form, exact), across chunks a short recurrence on the chunk states,
so the cost is linear in the length. `sequential_scan` is the loop it must equal, kept for the
test and for reading. The chunked form follows the paper's listing `ssd_minimal_discrete`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segsum(a: torch.Tensor) -> torch.Tensor:
    """out[..., i, j] = a[..., j+1] + … + a[..., i] for j ≤ i (0 on the diagonal), −inf above it:
    exp(out) is the decay from position j to i. Built from masked cumulative sums rather than a
    difference of cumsums, which loses precision when a spans a long chunk."""
    T = a.shape[-1]
    a = a[..., None].expand(*a.shape, T)  # [..., i, j] = a[i]
    below = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), -1)
    out = torch.cumsum(a.masked_fill(~below, 0), dim=-2)
    return out.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device)), -torch.inf)


def ssd(x: torch.Tensor, a: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """y for x (b, L, h, p), log-decays a (b, L, h) ≤ 0, B and C (b, L, h, n), from a zero state.
    L need not be a multiple of `chunk`: the tail is padded with a = 0 and x = B = 0, which
    changes no earlier output (the scan is causal)."""
    b, L, h, p = x.shape
    pad = -L % chunk
    if pad:
        x, B, C = (F.pad(v, (0, 0, 0, 0, 0, pad)) for v in (x, B, C))
        a = F.pad(a, (0, 0, 0, pad))
    c = (L + pad) // chunk
    x, B, C = (v.reshape(b, c, chunk, h, -1) for v in (x, B, C))
    a = a.reshape(b, c, chunk, h).permute(0, 3, 1, 2)  # (b, h, c, l)
    a_cum = torch.cumsum(a, dim=-1)
    # 1. inside each chunk: y = (C Bᵀ ∘ decay) x, the quadratic (dual) form
    scores = torch.einsum("bclhn,bcshn->bhcls", C, B) * torch.exp(segsum(a))  # (b, h, c, l, s), causal
    y = torch.einsum("bhcls,bcshp->bclhp", scores, x)
    # 2. each chunk's own end state, from its inputs alone
    to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (b, h, c, l)
    states = torch.einsum("bclhn,bclhp->bchpn", B * to_end.permute(0, 2, 3, 1)[..., None], x)
    # 3. carry the states across chunks: a recurrence of c steps, as one masked product
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)
    across = torch.exp(segsum(F.pad(a_cum[..., -1], (1, 0))))  # (b, h, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", across, states)[:, :-1]  # the state entering each chunk
    # 4. what the entering state contributes at each position of its chunk
    y = y + torch.einsum("bclhn,bchpn->bclhp", C * torch.exp(a_cum).permute(0, 2, 3, 1)[..., None], states)
    return y.reshape(b, c * chunk, h, p)[:, :L]


def sequential_scan(x: torch.Tensor, a: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """The recurrence as written, one position at a time: the reference `ssd` must equal."""
    b, L, h, p = x.shape
    state = x.new_zeros(b, h, p, B.shape[-1])
    ys = []
    for t in range(L):
        state = torch.exp(a[:, t])[..., None, None] * state + x[:, t, :, :, None] * B[:, t, :, None, :]
        ys.append((state * C[:, t, :, None, :]).sum(-1))
    return torch.stack(ys, dim=1)
