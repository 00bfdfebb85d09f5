"""liquidgen: train small attention-free liquid (CfC) image generators on cached VAE latents.

The stages the CLI runs, for a notebook (imported on first use, so `import liquidgen` stays light):

    import liquidgen as lg
    lg.encode(lg.EncodeConfig("paintings_mini", "cache/mini", vae="taef2", resolution=128))
    lg.train(lg.TrainConfig(cache="cache/mini", out="runs/mini", model="nano", steps=600))
    images = lg.generate("runs/mini", n=16, steps=25)          # (16, 3, 128, 128) in [0, 1]
    model = lg.build_model("liquidflow-tiny", in_channels=32)  # any --model, by name
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "EncodeConfig": "liquidgen.config", "TrainConfig": "liquidgen.config", "SampleConfig": "liquidgen.config",
    "DecodeConfig": "liquidgen.config", "EvalConfig": "liquidgen.config",
    "encode": "liquidgen.pipeline.encode", "train": "liquidgen.pipeline.train", "sample": "liquidgen.pipeline.sample",
    "generate": "liquidgen.pipeline.sample", "decode": "liquidgen.pipeline.decode",
    "evaluate": "liquidgen.pipeline.evaluate", "export": "liquidgen.pipeline.export",
    "build_model": "liquidgen.backbone.models", "MODELS": "liquidgen.backbone.models",
    "load_run": "liquidgen.pipeline.checkpoint", "sample_latents": "liquidgen.pipeline.sampler",
    "decode_latents": "liquidgen.pipeline.vae", "RectifiedFlow": "liquidgen.objective",
    "EpsilonPrediction": "liquidgen.objective", "LiquidGenPipeline": "liquidgen.pipeline.export",
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'liquidgen' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)
