"""Training throughput from a latent cache:

* loader overhead: steps/s when batches come from the cache loader, divided by steps/s on the
  same batches already materialized in memory (same model, same run);
* what caching saves: steps/s from the cache divided by steps/s when every batch is made from
  the JPEGs with the VAE inside the loop (what training without a cache costs).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from liquidgen.devices import resolve_device

from common import TAEF2, Timer, subset
from liquidgen.backbone.unet import LiquidUNet, model_config
from liquidgen.cache.loader import InMemoryLatents, StreamingLatents
from liquidgen.pipeline.encode import EncodeConfig, encode
from liquidgen.pipeline.images import Preprocess, load_image
from liquidgen.pipeline.vae import load_vae


def _step(model, opt, x0, labels, gen):
    t = torch.sigmoid(torch.randn(len(x0), generator=gen, device=x0.device))
    noise = torch.randn(x0.shape, generator=gen, device=x0.device)
    xt = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
    loss = F.mse_loss(model(xt, t, labels), noise - x0)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _rate(model, opt, batches, device) -> float:
    gen = torch.Generator(device=device).manual_seed(0)
    it = iter(batches)
    _step(model, opt, *next(it), gen)  # warm-up
    n = 0
    with Timer(device) as t:
        for x0, labels in it:
            _step(model, opt, x0.to(device), labels.to(device), gen)
            n += 1
    return n / t.seconds


def run(full: bool = False, device: str = "auto") -> dict:
    device = resolve_device(device)
    size, batch, steps, resolution = ("small", 256, 50, 256) if full else ("nano", 32, 12, 128)
    tmp = Path(tempfile.mkdtemp(prefix="lg-bench-"))
    folder = subset(tmp / "images", 40 if not full else 200)
    cache = tmp / "cache"
    encode(EncodeConfig(str(folder), str(cache), vae=str(TAEF2), resolution=resolution, shard_size=64,
                        progress=False, device=str(device)))
    loader = InMemoryLatents(str(cache), batch, device=device)
    stream = StreamingLatents(str(cache), batch, buffer_shards=2, device=device)
    model = LiquidUNet(model_config(size, num_classes=loader.num_classes)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def from_loader(src):
        epoch = 0
        while True:
            yield from src.batches(epoch)
            epoch += 1

    def take(gen, n):
        return [b for _, b in zip(range(n + 1), gen)]

    in_memory = take(from_loader(loader), steps)  # the same batches, materialized beforehand
    # Interleaved rounds, median per source: on a shared 2-core machine one long run per source
    # measures the machine's mood more than the loader.
    rates = {"memory": [], "loader": [], "stream": []}
    for _ in range(3):
        rates["memory"].append(_rate(model, opt, in_memory, device))
        rates["loader"].append(_rate(model, opt, (b for _, b in zip(range(steps + 1), from_loader(loader))), device))
        rates["stream"].append(_rate(model, opt, (b for _, b in zip(range(steps + 1), from_loader(stream))), device))
    rate_memory, rate_loader, rate_stream = (float(np.median(rates[k])) for k in ("memory", "loader", "stream"))
    with Timer(device) as t_iter:  # the loader's own cost per batch, no model
        batches = sum(1 for _ in zip(range(steps * 5), from_loader(loader)))
    loader_ms = t_iter.seconds / batches * 1000

    # Without a cache: decode JPEGs and run the VAE for every batch (no augmentation, same batch size).
    vae = load_vae(str(TAEF2), device=device)
    files = sorted(folder.rglob("*.jpg"))
    pre = Preprocess(resolution)
    rng = np.random.default_rng(0)

    def uncached():
        while True:
            pick = rng.choice(len(files), batch)
            images = torch.from_numpy(np.stack([load_image(str(files[i]), pre) for i in pick])).to(device)
            z = (vae.encode(images) - loader.mean) / loader.std
            yield z, torch.zeros(batch, dtype=torch.long, device=device)

    rate_uncached = _rate(model, opt, (b for _, b in zip(range(max(steps // 3, 3) + 1), uncached())), device)
    return {
        "device": str(device), "model": size, "batch_size": batch, "resolution": resolution,
        "latent_shape": list(loader.shape), "steps_timed": steps,
        "steps_per_s_in_memory": rate_memory, "steps_per_s_loader": rate_loader,
        "steps_per_s_streaming": rate_stream, "loader_ms_per_batch": loader_ms, "rounds": rates, "steps_per_s_vae_in_loop": rate_uncached,
        "loader_ratio": rate_loader / rate_memory, "streaming_ratio": rate_stream / rate_memory,
        "caching_speedup": rate_loader / rate_uncached,
    }


def markdown(r: dict) -> str:
    lat = r["batch_size"]
    return f"""\
Model `{r['model']}`, batch {r['batch_size']}, {r['resolution']} px paintings through TAEF2
(latents {'x'.join(map(str, r['latent_shape']))}), on {r['device']}; {r['steps_timed']} timed steps per source
and round after one warm-up step, three interleaved rounds, the median round reported. Iterating the
in-memory loader alone, without a model, costs {r.get('loader_ms_per_batch', float('nan')):.1f} ms a batch.

| batches come from | steps/s | latents/s | ratio |
|---|---|---|---|
| tensors already in memory (reference) | {r['steps_per_s_in_memory']:.3f} | {r['steps_per_s_in_memory'] * lat:.1f} | 1.00 |
| the cache, in-memory loader | {r['steps_per_s_loader']:.3f} | {r['steps_per_s_loader'] * lat:.1f} | **{r['loader_ratio']:.3f}** |
| the cache, shard-streaming loader | {r['steps_per_s_streaming']:.3f} | {r['steps_per_s_streaming'] * lat:.1f} | {r['streaming_ratio']:.3f} |
| JPEG decode + VAE encode inside the loop (no cache) | {r['steps_per_s_vae_in_loop']:.3f} | {r['steps_per_s_vae_in_loop'] * lat:.1f} | {r['steps_per_s_vae_in_loop'] / r['steps_per_s_in_memory']:.3f} |

Caching speedup (cache loader ÷ VAE in the loop): **{r['caching_speedup']:.1f}x**. The speedup grows
with the VAE's cost relative to the backbone's: TAEF2 is a ~1M-parameter tiny VAE; the FLUX or SD
VAEs cost far more per image.
"""
