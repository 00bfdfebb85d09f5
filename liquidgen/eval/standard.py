"""The metrics papers report: FID (Inception-v3 pool features, Heusel et al. 2017) and
FD-DINOv2 (DINOv2 ViT-L/14 class token, Stein et al. 2023), with their networks loaded from
the libraries that define them — torch-fidelity's TF-ported Inception, the one behind published
FIDs, and transformers' DINOv2, the same weights as `torch.hub`'s `dinov2_vitl14`.

Neither network is ever replaced by another one: without its weights the metric is refused in
one line that says how to get them. Weights are read without unpickling code: a safetensors
file, or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from liquidgen.errors import LiquidgenError

INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
DINOV2_DEFAULT = "facebook/dinov2-large"  # ViT-L/14, as Stein et al. and edm2 use
METRICS = {"fid": "Inception-v3 (TF 2015-12-05 weights via torch-fidelity), 2048-d pool features, 299 px",
           "fd_dinov2": "DINOv2 class token (transformers Dinov2Model), 224 px bicubic, ImageNet normalization"}


def _torch_fidelity_module(name: str):
    """A torch-fidelity module. Its package `__init__` imports every extractor, and those for CLIP,
    VGG and DINOv2 import torchvision, which the Inception network does not use; where torchvision
    cannot be imported (PyPI's wheel does not load beside a CPU-only torch), the package is
    entered without that `__init__`."""
    try:
        import torch_fidelity  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name == "torch_fidelity":
            raise LiquidgenError("--fid needs torch-fidelity: pip install 'liquidgen[metrics]'") from None
        _bare_package("torch_fidelity")
    except (ImportError, RuntimeError):  # torchvision installed but built for another torch
        _bare_package("torch_fidelity")
    return importlib.import_module(f"torch_fidelity.{name}")


def _bare_package(name: str) -> None:
    spec = importlib.util.find_spec(name)
    package = types.ModuleType(name)
    package.__path__, package.__spec__ = list(spec.submodule_search_locations), spec
    sys.modules[name] = package


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors only, whatever the file holds: a pickled object is refused, never run."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same one-line refusal
        raise LiquidgenError(f"--feature-weights {path}: not a state dict of tensors ({type(e).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LiquidgenError(f"--feature-weights {path}: not a state dict of tensors")
    return state


class InceptionFeatures(nn.Module):
    """torch-fidelity's FID Inception, 2048-d pool features of uint8 images."""

    def __init__(self, state: dict[str, torch.Tensor]):
        super().__init__()
        cls = _torch_fidelity_module("feature_extractor_inceptionv3").FeatureExtractorInceptionV3
        # Its constructor reads a path with a full unpickle; it gets a file written here from
        # tensors already checked, so nothing from outside is unpickled.
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(state, Path(tmp) / "inception.pth")
            try:
                self.net = cls("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(Path(tmp) / "inception.pth"))
            except RuntimeError as e:
                raise LiquidgenError(f"--feature-weights: not torch-fidelity's Inception weights ({str(e).splitlines()[0]})") from None

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)[0]


class Dinov2Features(nn.Module):
    """transformers' DINOv2: the layer-normed class token of images resized to 224 px."""

    def __init__(self, name_or_path: str):
        super().__init__()
        try:
            from transformers import Dinov2Model
        except ImportError:
            raise LiquidgenError("--fd-dinov2 needs transformers: pip install 'liquidgen[metrics]'") from None
        try:
            self.net = Dinov2Model.from_pretrained(name_or_path, use_safetensors=True).eval()
        except OSError as e:
            raise LiquidgenError(
                f"--fd-dinov2 could not load DINOv2 from {name_or_path!r} ({str(e).splitlines()[0][:120]}); "
                f"with Hub access it downloads {DINOV2_DEFAULT}; offline, save it with save_pretrained on a "
                "machine that has it and pass that folder as --feature-weights") from None
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.float() / 255, size=(224, 224), mode="bicubic", antialias=True, align_corners=False)
        return self.net(pixel_values=(x.clamp(0, 1) - self.mean) / self.std).pooler_output.float()


def inception_weights(path: str | None) -> dict[str, torch.Tensor]:
    """The file given, else torch-fidelity's in the torch hub cache, else downloaded there."""
    if path:
        return read_state_dict(Path(path))
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_URL.rsplit("/", 1)[1]
    if not cached.exists():
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(INCEPTION_URL, str(cached), progress=False)
        except Exception as e:  # noqa: BLE001 - offline, proxy, disk: all the same advice
            raise LiquidgenError(
                f"--fid needs the FID Inception weights and could not download them ({type(e).__name__}): fetch "
                f"{INCEPTION_URL} (91 MB) where there is internet and pass --feature-weights FILE") from None
    return read_state_dict(cached)


def load_network(metric: str, weights: str | None, device) -> nn.Module:
    if metric == "fid":
        _torch_fidelity_module("feature_extractor_inceptionv3")  # the extra before the weights it would read
    net = InceptionFeatures(inception_weights(weights)) if metric == "fid" else Dinov2Features(weights or DINOV2_DEFAULT)
    return net.to(device).eval()


def features(net: nn.Module, images: torch.Tensor, device, batch_size: int = 32) -> torch.Tensor:
    """Features of float images in [0, 1], fed as the 8-bit images a PNG holds."""
    u8 = (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return torch.cat([net(b.to(device)).double().cpu() for b in u8.split(batch_size)])


def frechet(real: torch.Tensor, fake: torch.Tensor) -> float:
    """The Fréchet distance of two feature sets as TTUR's reference fid.py computes it (numpy,
    float64, the eigenvalues of Σ₁Σ₂), so the figure is comparable with published ones."""
    a, b = real.double().numpy(), fake.double().numpy()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    tr_covmean = np.sqrt(np.linalg.eigvals(s1 @ s2).astype(np.complex128)).real.sum()
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)
