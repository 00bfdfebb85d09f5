"""`liquidgen eval`: N samples from a run against N images decoded from its cache, with the
weight-free metrics of `liquidgen.eval.metrics`, plus the flow loss per t-bin.

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
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from liquidgen.config import EvalConfig
from liquidgen.devices import resolve_device
from liquidgen.errors import LiquidgenError
from liquidgen.eval.metrics import compare
from liquidgen.pipeline.decode import decode_latents
from liquidgen.pipeline.checkpoint import load_run
from liquidgen.pipeline.sampler import generate_raw, pick_labels


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
        images = (images * 255 + 0.5).to(torch.uint8).float() / 255  # the same quantization as a reload
    return data.space.normalize(latents), labels, images


@torch.no_grad()
def _loss_per_bin(model, x0: torch.Tensor, labels, bins: int = 5, seed: int = 0, device="cpu") -> dict[str, float]:
    """Flow-matching loss of the EMA model at fixed t-bin centres, fixed noise; `labels` None for
    an unconditional run."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=gen)
    out = {}
    for b in range(bins):
        t_val = (b + 0.5) / bins
        losses = []
        for i in range(0, len(x0), 64):
            xs, ns = x0[i : i + 64], noise[i : i + 64]
            t = torch.full((len(xs),), t_val)
            xt = (1 - t_val) * xs + t_val * ns
            v = model(xt.to(device), t.to(device), None if labels is None else labels[i : i + 64].to(device))
            losses.append(F.mse_loss(v.float().cpu(), ns - xs, reduction="sum") / xs[0].numel())
        out[f"t={t_val:.1f}"] = float(sum(losses) / len(x0))
    return out


def evaluate(cfg: EvalConfig) -> dict:
    device = resolve_device(cfg.device)
    t0 = time.time()
    model, config, path = load_run(cfg.run, device=device)
    lat = config["latents"]
    x0, real_labels, real = _real_images(cfg.cache, cfg.n, cfg.seed, device)
    if list(x0.shape[1:]) != list(lat["shape"]):
        raise LiquidgenError(f"{cfg.cache} holds {list(x0.shape[1:])} latents but the run was trained on {lat['shape']}")
    labels = real_labels if lat["label_names"] else pick_labels([], cfg.n, None)  # same class mix as the real side
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    raw, calls = generate_raw(model, lat, labels, cfg.n, cfg.steps, cfg.cfg_scale, (0.0, 0.75), "euler", gen,
                              device, cfg.batch_size)
    fake = decode_latents(raw, lat["vae"], device)
    fake = (fake * 255 + 0.5).to(torch.uint8).float() / 255  # as PNGs would be
    result = {
        "config": asdict(cfg), "checkpoint": path.name, "model_calls_per_image": calls,
        "metrics": compare(real, fake, cfg.seed),
        "flow_loss_per_t": _loss_per_bin(model, x0, real_labels if lat["label_names"] else None, seed=cfg.seed,
                                         device=device),
        "seconds": round(time.time() - t0, 1),
    }
    out = Path(cfg.out) if cfg.out else Path(cfg.run) / "eval.json"
    out.write_text(json.dumps(result, indent=1))
    result["out"] = str(out)
    return result
