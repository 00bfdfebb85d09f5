"""The latent space of a cache: the one place that turns stored values into model inputs, and
model outputs back into what the VAE decodes.

    stored (fp16 | bf16 bits | fp32 | uint8)  --dequantize-->  raw latents (float32)
    raw (mean+logvar for `moments`)           --sample, flip-->  one raw latent per item
    raw                                       --normalize-->  model input (per-channel mean/std)
    model output                              --to_vae-->     raw latents for VAE.decode

Everything comes from the manifest (dtype, quantization, what is stored, flips, statistics), or
from the copy of it a run keeps in its config (`from_run`), so sampling, evaluation, decoding
and export agree with training by construction. Every step runs on the tensors' own device:
batches are gathered at stored size and widened only there.
"""

from __future__ import annotations

import numpy as np
import torch

from liquidgen.cache.manifest import Manifest

TORCH_STORED = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "uint8": torch.uint8}


class LatentSpace:
    def __init__(self, mean: list[float], std: list[float], dtype: str = "fp32", quant: dict | None = None,
                 stored: str = "mean", flip: bool = False, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.dtype, self.moments, self.flip = dtype, stored == "moments", flip
        self.channels = len(mean)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.scale = self.offset = None
        if dtype == "uint8":
            self.scale = torch.tensor(quant["scale"], dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
            self.offset = torch.tensor(quant["offset"], dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        # stored -> normalized in one fused multiply-add, where no sampling sits between them:
        # (x * scale + offset - mean) / std = x * a + b
        if not self.moments:
            scale = self.scale if self.scale is not None else torch.ones_like(self.std)
            offset = self.offset if self.offset is not None else torch.zeros_like(self.mean)
            self._a, self._b = scale / self.std, (offset - self.mean) / self.std

    @classmethod
    def from_manifest(cls, manifest: Manifest, device: str | torch.device = "cpu") -> "LatentSpace":
        st = manifest.storage
        channels = st.latent_shape[0] // (2 if st.stored == "moments" else 1)
        return cls(manifest.stats["mean"][:channels], manifest.stats["std"][:channels], st.dtype, st.quant,
                   st.stored, st.flip == "both", device)

    @classmethod
    def from_run(cls, latents: dict, device: str | torch.device = "cpu") -> "LatentSpace":
        """A run's `config.json["latents"]`: the statistics it was trained with."""
        return cls(latents["mean"], latents["std"], device=device)

    # -- stored -> model ---------------------------------------------------------------------

    def stored_tensor(self, array: np.ndarray) -> torch.Tensor:
        """A shard's stored array as a tensor of the stored dtype, sharing its memory (bf16
        arrives as its uint16 bit pattern and is reinterpreted, not converted)."""
        t = torch.from_numpy(np.ascontiguousarray(array))
        return t.view(torch.bfloat16) if self.dtype == "bf16" else t

    def dequantize(self, stored: torch.Tensor) -> torch.Tensor:
        """Stored values -> float32 raw latents, on the stored tensor's device."""
        if self.dtype == "uint8":
            return stored.float() * self.scale.to(stored.device) + self.offset.to(stored.device)
        return stored.float()

    def to_model(self, stored: torch.Tensor, flipped: torch.Tensor | None = None,
                 gen: torch.Generator | None = None) -> torch.Tensor:
        """A batch at stored size -> normalized model inputs: the mirrored copy half the time,
        moments sampled, per-channel normalization. Random draws use `gen`, on this device."""
        x = stored.to(self.device, non_blocking=True)
        if flipped is not None:  # chosen at stored size, before anything is widened
            use = torch.rand(len(x), generator=gen, device=self.device) < 0.5
            x = torch.where(use[:, None, None, None], flipped.to(self.device, non_blocking=True), x)
        if not self.moments:
            return torch.addcmul(self._b, x.float() if x.dtype == torch.uint8 else x, self._a)
        mean, logvar = self.dequantize(x).chunk(2, dim=1)
        x = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen, device=self.device)
        return self.normalize(x)

    def raw(self, stored: torch.Tensor) -> torch.Tensor:
        """Stored values -> one raw latent each (the mean for `moments`): what the VAE decodes."""
        x = self.dequantize(stored)
        return x.chunk(2, dim=1)[0] if self.moments else x

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.mean.to(raw.device)) / self.std.to(raw.device)

    # -- model -> VAE ------------------------------------------------------------------------

    def to_vae(self, z: torch.Tensor) -> torch.Tensor:
        """Model-space latents -> raw latents for `FrozenVae.decode`."""
        return z.float() * self.std.to(z.device) + self.mean.to(z.device)
