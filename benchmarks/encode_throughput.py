"""Encode throughput of the whole pipeline (files -> decode -> VAE -> shards) divided by the
VAE's own batched forward throughput on in-memory tensors; bytes per latent for each dtype;
the reconstruction cost of uint8 storage."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from common import TAEF2, Timer, subset
from liquidgen.cache.shards import dequantize
from liquidgen.devices import resolve_device
from liquidgen.cache.store import CacheDir
from liquidgen.pipeline.encode import EncodeConfig, encode
from liquidgen.pipeline.images import Preprocess, load_image
from liquidgen.pipeline.vae import load_vae


def _latents(out: Path) -> tuple[np.ndarray, list[str]]:
    cache = CacheDir(out)
    m = cache.manifest()
    lat, keys = [], []
    for s in m.shards:
        d = cache.read(s.name, m.storage.backend)
        lat.append(dequantize(d.latents, m.storage.dtype, m.storage.quant))
        keys += d.keys
    return np.concatenate(lat), keys


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((10 * torch.log10(1 / ((a - b) ** 2).mean(dim=(1, 2, 3)))).mean())


def run(full: bool = False, device: str = "auto") -> dict:
    device = resolve_device(device)
    per_class = 200 if full else 16
    resolution, batch = (256, 64) if full else (256, 16)
    tmp = Path(tempfile.mkdtemp(prefix="lg-bench-"))
    folder = subset(tmp / "images", per_class)
    n = per_class * 5
    vae = load_vae(str(TAEF2), device=device)

    # 1. the VAE alone, batched, on tensors already in memory (decoded beforehand, not timed)
    files = sorted(folder.rglob("*.jpg"))
    images = torch.from_numpy(np.stack([load_image(str(f), Preprocess(resolution)) for f in files]))
    vae.encode(images[:batch].to(device))  # warm-up
    with Timer(device) as t_vae:
        for i in range(0, n, batch):
            vae.encode(images[i : i + batch].to(device))
    vae_rate = n / t_vae.seconds

    # 2. the whole pipeline, same images, same batch size, from files to published shards
    cfg = EncodeConfig(str(folder), str(tmp / "cache"), vae=str(TAEF2), resolution=resolution, batch_size=batch,
                       shard_size=256, progress=False, device=str(device))
    with Timer(device) as t_pipe:
        result = encode(cfg)
    assert result.encoded == n
    pipe_rate = n / t_pipe.seconds

    # 3. bytes per latent and uint8's reconstruction cost (128 px, 40 images)
    small = subset(tmp / "small", 8)
    sizes, decoded = {}, {}
    for fmt, dtype in (("zarr", "fp32"), ("zarr", "fp16"), ("zarr", "bf16"), ("zarr", "uint8"), ("wds", "fp16")):
        out = tmp / f"{fmt}-{dtype}"
        m = encode(EncodeConfig(str(small), str(out), vae=str(TAEF2), resolution=128, format=fmt, dtype=dtype,
                                progress=False, device=str(device))).manifest
        sizes[f"{fmt} {dtype}"] = sum(s.bytes for s in m.shards) / m.count
        if fmt == "zarr":
            lat, keys = _latents(out)
            decoded[dtype] = vae.decode(torch.from_numpy(lat).to(device)).cpu()
    source = torch.from_numpy(np.stack([load_image(str(small / k), Preprocess(128)) for k in keys])).float() / 255
    recon = {dtype: {"psnr_vs_source": _psnr(img, source), "psnr_vs_fp32_decode": _psnr(img, decoded["fp32"])}
             for dtype, img in decoded.items() if dtype != "fp32"}
    recon["fp32"] = {"psnr_vs_source": _psnr(decoded["fp32"], source), "psnr_vs_fp32_decode": float("inf")}
    lat32, _ = _latents(tmp / "zarr-fp32")
    lat8, _ = _latents(tmp / "zarr-uint8")
    return {
        "device": str(device), "images": n, "resolution": resolution, "batch_size": batch,
        "workers": cfg.workers, "vae_images_per_s": vae_rate, "pipeline_images_per_s": pipe_rate,
        "ratio": pipe_rate / vae_rate, "bytes_per_latent": sizes, "latent_shape_128px": list(lat32.shape[1:]),
        "raw_fp32_bytes_128px": int(np.prod(lat32.shape[1:]) * 4),
        "uint8_rel_error": float(np.abs(lat8 - lat32).mean() / lat32.std()), "reconstruction_128px": recon,
    }


def markdown(r: dict) -> str:
    rows = "\n".join(f"| {k} | {v:,.0f} | {v / r['raw_fp32_bytes_128px']:.2f} |" for k, v in r["bytes_per_latent"].items())
    rec = "\n".join(f"| {k} | {v['psnr_vs_source']:.2f} dB | {v['psnr_vs_fp32_decode']:.1f} dB |"
                    for k, v in sorted(r["reconstruction_128px"].items()))
    return f"""\
TAEF2 on {r['device']}, {r['images']} paintings at {r['resolution']} px, batch {r['batch_size']},
{r['workers']} DataLoader workers. The pipeline time is everything `encode()` does: listing the
folder, decoding JPEGs, resizing, the VAE, quantizing, writing and checksumming shards, the manifest.

| | images/s |
|---|---|
| VAE alone, batched, tensors already in memory | {r['vae_images_per_s']:.2f} |
| whole encode pipeline, files to verified shards | {r['pipeline_images_per_s']:.2f} |
| **ratio** | **{r['ratio']:.2f}** |

Bytes per latent on disk (128 px, latent {'x'.join(map(str, r['latent_shape_128px']))}, Blosc-zstd for Zarr;
relative to raw fp32):

| format, dtype | bytes/latent | vs raw fp32 |
|---|---|---|
{rows}

What storage costs in image quality (40 paintings at 128 px, decoded by TAEF2; uint8 mean absolute
latent error = {r['uint8_rel_error'] * 100:.2f}% of the latent std):

| stored dtype | PSNR vs source image | PSNR vs the fp32 latents' decode |
|---|---|---|
{rec}
"""
