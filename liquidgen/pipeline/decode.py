"""`liquidgen decode`: latents back to pictures, from a `sample --latents-only` file, a cache,
or a single `.npy`. The VAE is the one the latents name (manifest or file metadata)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from liquidgen.config import DecodeConfig
from liquidgen.devices import free_cores, resolve_device
from liquidgen.errors import LiquidgenError
from liquidgen.pipeline.images import image_grid, save_images
from liquidgen.pipeline.vae import decode_latents


def _from_cache(cfg: DecodeConfig) -> tuple[torch.Tensor, dict, list[str]]:
    from liquidgen.cache.latents import LatentSpace
    from liquidgen.cache.store import CacheDir, Verified, require_complete

    manifest = require_complete(cfg.source)
    cache, space = Verified(CacheDir(cfg.source), manifest), LatentSpace.from_manifest(manifest)
    wanted = set(cfg.keys or [])
    lat, keys = [], []
    for shard in manifest.shards:
        data = cache.read(shard.name)
        for i, key in enumerate(data.keys):
            if (wanted and key in wanted) or (not wanted and len(keys) < (cfg.limit or len(data.keys) + len(keys))):
                lat.append(space.raw(space.stored_tensor(data.latents[i : i + 1])))  # the mean, for moments
                keys.append(key)
        if not wanted and cfg.limit and len(keys) >= cfg.limit:
            break
    if wanted and (missing := wanted - set(keys)):
        raise LiquidgenError(f"{cfg.source} has no key {sorted(missing)[0]!r}")
    return torch.cat(lat), manifest.vae, keys


def decode(cfg: DecodeConfig) -> list[Path]:
    if Path(cfg.out).is_file():
        raise LiquidgenError(f"--out {cfg.out} is a file; decode writes a folder of images there")
    device = resolve_device(cfg.device)
    torch.set_num_threads(cfg.threads or free_cores())  # as train: a busy core would slow every op
    src = Path(cfg.source)
    if src.is_dir():
        raw, vae, _ = _from_cache(cfg)
    elif src.suffix == ".safetensors" and src.exists():
        from safetensors import safe_open

        with safe_open(str(src), "pt") as fh:
            meta = fh.metadata() or {}
            if "latents" not in fh.keys():
                raise LiquidgenError(f"{src} holds no 'latents' tensor")
            raw = fh.get_tensor("latents").float()
        vae = json.loads(meta["vae"]) if "vae" in meta else None
        raw = raw[: cfg.limit] if cfg.limit else raw
    elif src.suffix == ".npy" and src.exists():
        try:
            arr = np.load(src, allow_pickle=False)
        except ValueError as exc:
            raise LiquidgenError(f"{src} is not a plain array ({exc})") from None
        raw = torch.from_numpy(np.asarray(arr, np.float32))
        raw = raw[None] if raw.ndim == 3 else raw
        vae = None
    else:
        raise LiquidgenError(f"{src} is not a cache folder, a .safetensors latents file or a .npy file")
    vae = cfg.vae or vae
    if vae is None:
        raise LiquidgenError(f"{src} does not name its VAE: pass --vae")
    if raw.ndim != 4:
        raise LiquidgenError(f"expected latents shaped (N, C, H, W), got {tuple(raw.shape)}")
    images = decode_latents(raw, vae, device, cfg.batch_size, progress=cfg.progress)
    out = Path(cfg.out)
    paths = save_images(images, out)
    image_grid(images).save(out / "grid.png")
    return paths
