"""Every backbone `liquidgen train --model` accepts, by name, as plain data.

A *spec* is the JSON-able dict stored as ``model`` in a run's config.json; `build_model` turns
it back into a module. Liquid specs are `LiquidUNetConfig` fields (runs written before the
baselines existed read unchanged); a baseline's spec carries ``arch`` (``dit`` or ``unet2d``).
"""

from __future__ import annotations

from torch import nn

from liquidgen.backbone.baselines import ARCHS, BASELINES
from liquidgen.backbone.unet import SIZES, LiquidUNet, LiquidUNetConfig, model_config

MODELS = [*SIZES, *BASELINES]


def model_spec(name: str, in_channels: int, num_classes: int, sample_size: int, **liquid) -> dict:
    """The spec of model `name` for latents of `in_channels` x `sample_size`²; `liquid` holds the
    liquid block's options (None: the size's default), which baselines do not have."""
    if name in SIZES:
        return model_config(name, in_channels=in_channels, num_classes=num_classes, **liquid).to_dict()
    if name not in BASELINES:
        raise KeyError(name)
    given = [k for k, v in liquid.items() if v is not None]
    if given:
        raise ValueError(f"{', '.join(given)} apply to the liquid models only, not to {name}; drop those options")
    return {**BASELINES[name], "in_channels": in_channels, "num_classes": num_classes, "sample_size": sample_size}


def build_model(spec: dict) -> nn.Module:
    arch = spec.get("arch", "liquid")
    if arch == "liquid":
        return LiquidUNet(LiquidUNetConfig(**{"head": "gn", **spec}))  # runs saved before `head` have gn
    return ARCHS[arch](spec)


def is_liquid(spec: dict) -> bool:
    return spec.get("arch", "liquid") == "liquid"
