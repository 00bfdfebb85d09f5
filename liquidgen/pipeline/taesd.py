"""The TAESD family of tiny autoencoders (taesd, taesdxl, taesd3, taef1, taef2), from their
`*_encoder.pth` / `*_decoder.pth` state dicts.

diffusers' `AutoencoderTiny` loads the plain members, but TAEF2 adds "pooled" blocks (a global
1x1-conv + GroupNorm branch) that it has no option for, so the family is rebuilt here from the
layout in madebyollin/taesd. Which blocks are pooled is read off the state dict keys, so one
class serves every member.
"""

from __future__ import annotations

import torch
from torch import nn

from liquidgen.errors import LiquidgenError


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class _Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    def __init__(self, n: int = 64, pooled: bool = False):
        super().__init__()
        self.conv = nn.Sequential(_conv(n, n), nn.ReLU(), _conv(n, n), nn.ReLU(), _conv(n, n))
        self.pool = (
            nn.Sequential(
                nn.Conv2d(n, 4 * n, 1, bias=False),
                nn.GroupNorm(4, 4 * n),
                nn.ReLU(),
                nn.Conv2d(4 * n, n, 1, bias=False),
            )
            if pooled
            else None
        )
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + x)


def pooled_blocks(state: dict[str, torch.Tensor]) -> list[int]:
    """The Sequential indices of pooled blocks, read off a state dict's keys."""
    return sorted({int(k.split(".")[0]) for k in state if ".pool." in k})


def build_encoder(latent_channels: int, pooled: list[int] = ()) -> nn.Sequential:
    """Encoder: RGB in [0, 1] -> raw latents at 1/8 size."""
    layers: list[nn.Module] = [_conv(3, 64), _Block(pooled=1 in pooled)]
    for start in (2, 6, 10):
        layers.append(_conv(64, 64, stride=2, bias=False))
        layers += [_Block(pooled=start + i in pooled) for i in (1, 2, 3)]
    layers.append(_conv(64, latent_channels))
    return nn.Sequential(*layers)


def build_decoder(latent_channels: int, pooled: list[int] = ()) -> nn.Sequential:
    """Decoder: raw latents -> RGB in about [0, 1]."""
    layers: list[nn.Module] = [_Clamp(), _conv(latent_channels, 64), nn.ReLU()]
    layers += [_Block(pooled=i in pooled) for i in (3, 4, 5)]
    for start, blocks in ((6, 3), (11, 3), (16, 1)):
        layers += [nn.Upsample(scale_factor=2), _conv(64, 64, bias=False)]
        layers += [_Block(pooled=start + 2 + i in pooled) for i in range(blocks)]
    layers.append(_conv(64, 3))
    return nn.Sequential(*layers)


def load_pair(encoder_path: str, decoder_path: str) -> tuple[nn.Sequential, nn.Sequential]:
    """Both halves with their weights (fp32), loaded without pickle. A file that is not a
    TAESD state dict (garbage, a pickled object, other keys) is one line naming it."""
    return _half(encoder_path, "14.weight", 0, build_encoder), _half(decoder_path, "1.weight", 1, build_decoder)


def _half(path: str, probe: str, axis: int, build) -> nn.Sequential:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... with long texts
        raise LiquidgenError(f"{path} is not a plain tensor state dict ({exc.__class__.__name__}); "
                             "liquidgen loads weights without running pickled code") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()) or probe not in state:
        raise LiquidgenError(f"{path} is not a TAESD-family state dict (no {probe!r}); pass a TAESD *_encoder.pth/"
                             "*_decoder.pth pair or a diffusers VAE")
    try:
        model = build(state[probe].shape[axis], pooled_blocks(state))
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except (RuntimeError, ValueError, IndexError) as exc:
        raise LiquidgenError(f"{path} does not fit a TAESD-family model ({str(exc).splitlines()[0][:150]})") from None
    return model
