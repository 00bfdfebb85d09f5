"""Every backbone `liquidgen train --model` accepts, by name, as plain data.

A *spec* is the JSON-able dict stored as ``model`` in a run's config.json; `build_model` turns
it back into a module. Liquid specs are `LiquidUNetConfig` fields (runs written before the
baselines existed read unchanged); a baseline's spec carries ``arch`` (``dit`` or ``unet2d``).
"""

from __future__ import annotations

from liquidgen.backbone.base import Backbone
from liquidgen.backbone.baselines import ARCHS as BASELINE_ARCHS
from liquidgen.backbone.baselines import BASELINES
from liquidgen.backbone.liquiddiffusion import LIQUIDDIFFUSION_SIZES, LiquidDiffusion
from liquidgen.backbone.liquidflow import LIQUIDFLOW_SIZES, LiquidFlow
from liquidgen.backbone.liquidgen_seed import LIQUIDGEN_SIZES, LiquidGen
from liquidgen.backbone.unet import SIZES, LiquidUNet, model_config

# The seed designs of ../shared/reference, by their own names: {name: spec without the data's shape}
SEEDS: dict[str, dict] = {**{name: {"arch": "liquiddiffusion", **size} for name, size in LIQUIDDIFFUSION_SIZES.items()},
                          **{name: {"arch": "liquidflow", **size} for name, size in LIQUIDFLOW_SIZES.items()},
                          **{name: {"arch": "liquidgen", **size} for name, size in LIQUIDGEN_SIZES.items()}}
ARCHS = {**BASELINE_ARCHS, "liquiddiffusion": LiquidDiffusion, "liquidflow": LiquidFlow, "liquidgen": LiquidGen}
MODELS = [*SIZES, *SEEDS, *BASELINES]


def model_spec(name: str, in_channels: int, num_classes: int, sample_size: int, **liquid) -> dict:
    """The spec of model `name` for latents of `in_channels` x `sample_size`²; `liquid` holds the
    liquid block's options (None: the size's default), which baselines do not have."""
    if name in SIZES:
        return model_config(name, in_channels=in_channels, num_classes=num_classes, **liquid).to_dict()
    if name not in BASELINES and name not in SEEDS:
        raise KeyError(name)
    given = [k for k, v in liquid.items() if v is not None]
    if given:
        raise ValueError(f"{', '.join(given)} apply to liquidgen's U-Net (liquid-*) only, not to {name}; drop those options")
    if name in SEEDS:  # LiquidGen's position embedding is sized for the latent; LiquidFlow takes any size
        size = {"sample_size": sample_size} if SEEDS[name]["arch"] == "liquidgen" else {}
        return {**SEEDS[name], "in_channels": in_channels, "num_classes": num_classes, **size}
    return {**BASELINES[name], "in_channels": in_channels, "num_classes": num_classes, "sample_size": sample_size}


def build_model(spec: dict | str, in_channels: int = 16, num_classes: int = 0, sample_size: int = 32) -> Backbone:
    """The module for a spec (a run's config.json `model`), or for a name and the latents' shape
    (`build_model("liquidflow-tiny", in_channels=4)`): 16 channels at 32² are FLUX's at 256 px."""
    if isinstance(spec, str):
        spec = model_spec(spec, in_channels, num_classes, sample_size)
    arch = spec.get("arch", "liquid")
    if arch == "liquid":
        return LiquidUNet({"head": "gn", **spec})  # runs saved before `head` have gn
    return ARCHS[arch](spec)
