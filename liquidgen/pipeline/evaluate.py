"""`liquidgen eval`: N samples from a run against N images decoded from its cache, with the
weight-free metrics of `liquidgen.eval.metrics`, plus the flow loss per t-bin, and on request
FID / FD-DINOv2 with their published networks (`liquidgen.eval.standard`).

The real side is the cache's own latents decoded by the same VAE, so both sides pass through
the same decoder and the score measures the generator, not the VAE. Decoded real images are
kept in `<cache>/.eval/` per (n, seed) and reused.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from liquidgen.config import EvalConfig
from liquidgen.devices import free_cores, resolve_device
from liquidgen.errors import LiquidgenError
from liquidgen.eval.standard import load_network
from liquidgen.pipeline.vae import decode_latents
from liquidgen.pipeline.checkpoint import load_run
from liquidgen.pipeline.evaluator import Evaluator, quantized


def _real_images(cache: str, n: int, seed: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n cache latents (random, seeded), their labels, and their decoded images (cached on disk)."""
    from liquidgen.cache.loader import InMemoryLatents

    data = InMemoryLatents(cache, 1)
    if n > data.count:
        raise LiquidgenError(f"--n {n} is more than the {data.count} latents in {cache}")
    pick = torch.randperm(data.count, generator=torch.Generator().manual_seed(seed))[:n]
    latents, labels = data.space.raw(data.latents[pick]), data.labels[pick]
    path = Path(cache) / ".eval" / f"real-n{n}-seed{seed}.safetensors"
    if path.exists():
        images = load_file(str(path))["images"].float() / 255
    else:
        images = decode_latents(latents, data.manifest.vae, device)
        path.parent.mkdir(exist_ok=True)
        save_file({"images": (images * 255 + 0.5).to(torch.uint8).contiguous()}, str(path))
        images = quantized(images)  # the same quantization as a reload
    return data.space.normalize(latents), labels, images


def evaluate(cfg: EvalConfig) -> dict:
    device = resolve_device(cfg.device)
    torch.set_num_threads(cfg.threads or free_cores())  # as train: a busy core would slow every op
    t0 = time.time()
    # the feature networks first: a missing one is refused before minutes of sampling
    standard = {m: load_network(m, cfg.feature_weights, device) for m, on in (("fid", cfg.fid), ("fd_dinov2", cfg.fd_dinov2)) if on}
    model, config, path = load_run(cfg.run, device=device)
    lat = config["latents"]
    x0, real_labels, real = _real_images(cfg.cache, cfg.n, cfg.seed, device)
    if list(x0.shape[1:]) != list(lat["shape"]):
        raise LiquidgenError(f"{cfg.cache} holds {list(x0.shape[1:])} latents but the run was trained on {lat['shape']}")
    evaluator = Evaluator(x0, real_labels if lat["label_names"] else None, lat, cfg.n, cfg.steps, cfg.cfg_scale,
                          cfg.seed, cfg.batch_size, real_images=real, standard=standard, progress=cfg.progress)
    metrics, calls = evaluator.sample_metrics(model, device)
    result = {
        "config": asdict(cfg), "checkpoint": path.name, "model_calls_per_image": calls, "settings": evaluator.settings(),
        "metrics": metrics, "flow_loss_per_t": evaluator.flow_loss(model, device),
        "seconds": round(time.time() - t0, 1),
    }
    out = Path(cfg.out) if cfg.out else Path(cfg.run) / "eval.json"
    out.write_text(json.dumps(result, indent=1))
    result["out"] = str(out)
    return result
