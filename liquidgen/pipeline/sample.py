"""`liquidgen sample`: images (or latents) from a run's EMA weights, with the settings that made
them written beside them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from liquidgen.config import SampleConfig
from liquidgen.devices import free_cores, resolve_device
from liquidgen.errors import LiquidgenError
from liquidgen.pipeline.checkpoint import load_run
from liquidgen.pipeline.images import image_grid, save_images
from liquidgen.pipeline.sampler import generate_raw, pick_labels


@dataclass
class SampleResult:
    out: Path
    images: list[Path]
    grid: Path | None
    model_calls: int
    seconds: float


def _raw(cfg: SampleConfig):
    torch.set_num_threads(cfg.threads or free_cores())  # as train: a busy core would slow every op
    if cfg.onnx:  # the same loop around an onnxruntime session
        from liquidgen.pipeline.onnx import OnnxBackbone, read_meta

        device, meta = torch.device("cpu"), read_meta(Path(cfg.run))
        model, lat, path = OnnxBackbone(Path(cfg.run), meta), meta["latents"], Path(cfg.run) / "backbone.onnx"
    else:
        device = resolve_device(cfg.device)
        model, config, path = load_run(cfg.run, cfg.checkpoint, device)
        lat = config["latents"]
    labels = pick_labels(lat["label_names"], cfg.n, cfg.class_name)
    gen = torch.Generator().manual_seed(cfg.seed)
    raw, calls = generate_raw(model, lat, labels, cfg.n, cfg.steps, cfg.cfg_scale, cfg.guidance_interval,
                              cfg.sampler, gen, device, cfg.batch_size, progress=cfg.progress)
    return raw, calls, labels, lat, path, device


def generate(run: str | Path, n: int = 16, steps: int = 50, cfg_scale: float = 1.0, class_name: str | None = None,
             seed: int = 0, **options) -> torch.Tensor:
    """Images (n, 3, H, W) in [0, 1] from a run's EMA weights, in memory: what `sample` writes,
    for a notebook. `options` are the other `SampleConfig` fields (sampler, device, checkpoint…)."""
    cfg = SampleConfig(run=str(run), out="", n=n, steps=steps, cfg_scale=cfg_scale, class_name=class_name,
                       seed=seed, **options)
    raw, _, _, lat, _, device = _raw(cfg)
    return _decode(cfg, raw, lat, device)


def _decode(cfg: SampleConfig, raw: torch.Tensor, lat: dict, device) -> torch.Tensor:
    if cfg.onnx:
        from liquidgen.pipeline.onnx import decode_onnx

        return decode_onnx(Path(cfg.run), raw)
    from liquidgen.pipeline.vae import decode_latents

    return decode_latents(raw, lat["vae"], device, progress=cfg.progress)


def sample(cfg: SampleConfig) -> SampleResult:
    """Generate `n` images (or latents) from a run's EMA weights."""
    import json
    import time

    from safetensors.torch import save_file

    if Path(cfg.out).is_file() and not (cfg.latents_only and Path(cfg.out).suffix == ".safetensors"):
        raise LiquidgenError(f"--out {cfg.out} is a file; sample writes a folder of images there")
    t0 = time.time()
    raw, calls, labels, lat, path, device = _raw(cfg)
    out = Path(cfg.out)
    settings = {**asdict(cfg), "threads": torch.get_num_threads(), "checkpoint": path.name, "model_calls_per_image": calls,
                "labels": labels.tolist() if labels is not None else None}
    if cfg.latents_only:
        if out.suffix != ".safetensors":
            out = out / "latents.safetensors"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file({"latents": raw.contiguous()}, str(out), metadata={
            "format": "liquidgen-latents", "vae": json.dumps(lat["vae"]), "settings": json.dumps(settings)})
        return SampleResult(out, [out], None, calls, time.time() - t0)
    images = _decode(cfg, raw, lat, device)
    paths = save_images(images, out)
    grid = out / "grid.png"
    image_grid(images).save(grid)
    (out / "settings.json").write_text(json.dumps(settings, indent=1))
    return SampleResult(out, paths, grid, calls, time.time() - t0)
