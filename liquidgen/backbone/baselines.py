"""diffusers' DiT and U-Net with the liquid U-Net's interface, so that the same training loop,
sampler and `liquidgen eval` measure them side by side (`liquidgen train --model dit-tiny`).

The sizes match the liquid `tiny` and `small` parameter counts (see `benchmarks/backbone_cost.py`).
Both take ``t ∈ [0, 1]`` and scale it by 1000, the range their sinusoidal embeddings expect; the
"null" class used for guidance is one past the last real class, as in the liquid model.
"""

from __future__ import annotations

import torch
from diffusers import ModelMixin  # noqa: F401 - the loader finds the base class in this module

from liquidgen.backbone.base import Backbone

BASELINES: dict[str, dict] = {
    "dit-tiny": {"arch": "dit", "num_layers": 6, "num_attention_heads": 4, "attention_head_dim": 64, "patch_size": 2},
    "dit-small": {"arch": "dit", "num_layers": 10, "num_attention_heads": 6, "attention_head_dim": 64, "patch_size": 2},
    "unet-tiny": {"arch": "unet2d", "block_out_channels": [64, 128, 192]},
    "unet-small": {"arch": "unet2d", "block_out_channels": [128, 256, 384]},
}


class DiTBaseline(Backbone):
    """`DiTTransformer2DModel` (adaLN-Zero, patch 2) predicting the velocity."""

    def __init__(self, spec: dict):
        from diffusers import DiTTransformer2DModel

        super().__init__(spec)
        self.num_classes = spec["num_classes"]
        self.net = DiTTransformer2DModel(
            num_attention_heads=spec["num_attention_heads"], attention_head_dim=spec["attention_head_dim"],
            in_channels=spec["in_channels"], out_channels=spec["in_channels"], num_layers=spec["num_layers"],
            sample_size=spec["sample_size"], patch_size=spec["patch_size"],
            num_embeds_ada_norm=max(self.num_classes, 1))
        for block in self.net.transformer_blocks:  # the loop drops classes itself, with its own seeded RNG
            block.norm1.emb.class_embedder.dropout_prob = 0.0

    @property
    def null_class(self) -> int:
        return max(self.num_classes, 1)  # the row diffusers adds for dropped labels

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            labels = torch.full((x.shape[0],), self.null_class, device=x.device, dtype=torch.long)
        return self.net(x, timestep=t * 1000, class_labels=labels).sample


class UNetBaseline(Backbone):
    """`UNet2DModel` (ResNet blocks, self-attention at the two lower levels) predicting the velocity."""

    def __init__(self, spec: dict):
        from diffusers import UNet2DModel

        super().__init__(spec)
        self.num_classes = spec["num_classes"]
        self.net = UNet2DModel(
            sample_size=spec["sample_size"], in_channels=spec["in_channels"], out_channels=spec["in_channels"],
            block_out_channels=tuple(spec["block_out_channels"]), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            num_class_embeds=self.num_classes + 1 if self.num_classes else None, norm_num_groups=32)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes and labels is None:
            labels = torch.full((x.shape[0],), self.null_class, device=x.device, dtype=torch.long)
        return self.net(x, t * 1000, class_labels=labels if self.num_classes else None).sample


ARCHS = {"dit": DiTBaseline, "unet2d": UNetBaseline}
