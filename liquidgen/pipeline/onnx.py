"""ONNX: a run's backbone and its VAE decoder as ONNX files, and the whole sampling loop on
onnxruntime — LiquidFlow's promise of deployment without PyTorch, kept for every model.

`export_onnx` writes `backbone.onnx` (inputs x_t, t and, for a class-conditional run,
class_labels; the batch is dynamic), `vae_decoder.onnx` (raw latents → RGB in [0, 1]) and
`liquidgen_onnx.json`, what sampling needs without the run: the latents' shape and
normalization, class names, the null class. Both graphs come from `torch.onnx.export` (the
dynamo exporter). `OnnxBackbone` has the interface of a backbone, so the sampling loop, the
scheduler steps and guidance are the same code as PyTorch sampling: only the network differs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from liquidgen.errors import LiquidgenError

BACKBONE, DECODER, META = "backbone.onnx", "vae_decoder.onnx", "liquidgen_onnx.json"


class _Decoder(nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], output: str) -> None:
    import warnings

    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on torchvision ops and deprecations
        torch.onnx.export(module.eval(), args, str(path), input_names=inputs, output_names=[output],
                          dynamic_shapes=tuple({0: batch} for _ in args), dynamo=True, verbose=False)


def export_onnx(model: nn.Module, config: dict, out: Path) -> list[Path]:
    """Write the three files into `out`; the model is the run's EMA network on the CPU."""
    try:
        import onnxscript  # noqa: F401 - torch's ONNX exporter needs it
    except ImportError:
        raise LiquidgenError("export --onnx needs onnx and onnxscript: pip install 'liquidgen[onnx]'") from None
    from liquidgen.pipeline.vae import load_vae

    lat = config["latents"]
    conditional = bool(lat["label_names"])
    out.mkdir(parents=True, exist_ok=True)
    x, t = torch.zeros(2, *lat["shape"]), torch.full((2,), 0.5)
    args = (x, t, torch.zeros(2, dtype=torch.long)) if conditional else (x, t)
    names = ["x_t", "t", "class_labels"][: len(args)]
    _export(model.cpu(), args, out / BACKBONE, names, "velocity")
    vae = load_vae(lat["vae"], device="cpu", dtype="fp32")
    _export(_Decoder(vae), (torch.zeros(2, *lat["shape"]),), out / DECODER, ["latents"], "images")
    (out / META).write_text(json.dumps({"latents": lat, "model": config["model"], "inputs": names,
                                        "null_class": int(model.null_class)}, indent=1))
    return [out / BACKBONE, out / DECODER, out / META]


def _session(path: Path):
    try:
        import onnxruntime as ort
    except ImportError:
        raise LiquidgenError("sample --onnx needs onnxruntime: pip install 'liquidgen[onnx]'") from None
    if not path.is_file():
        raise LiquidgenError(f"{path} is missing: write it with `liquidgen export --run RUN --out DIR --onnx`")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


class OnnxBackbone:
    """An exported backbone behind the call a PyTorch one takes: (x_t, t, labels) → velocity."""

    def __init__(self, folder: Path, meta: dict):
        self.session, self.inputs, self.null_class = _session(folder / BACKBONE), meta["inputs"], meta["null_class"]

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        feed = {"x_t": x.float().numpy(), "t": t.float().numpy()}
        if "class_labels" in self.inputs:
            feed["class_labels"] = (labels if labels is not None else torch.full((len(x),), self.null_class)).long().numpy()
        return torch.from_numpy(self.session.run(None, feed)[0])


def read_meta(folder: Path) -> dict:
    path = Path(folder) / META
    if not path.is_file():
        raise LiquidgenError(f"{folder} holds no {META}: write it with `liquidgen export --run RUN --out DIR --onnx`")
    return json.loads(path.read_text())


def decode_onnx(folder: Path, raw: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Raw latents → RGB in [0, 1] through `vae_decoder.onnx`."""
    session = _session(Path(folder) / DECODER)
    parts = [session.run(None, {"latents": chunk.float().numpy()})[0] for chunk in raw.split(batch_size)]
    return torch.from_numpy(np.concatenate(parts)).clamp(0, 1)
