"""Stage 1: stream images through a frozen VAE into a sharded latent cache.

Shard k of a source holds its items [k*S, (k+1)*S). Everything follows from that: a killed run
redoes only the shards without a record, rank r of N writes the shards with k % N == r, and a
rerun of a finished cache finds nothing to do.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from liquidgen.cache.lock import CacheLock
from liquidgen.cache.manifest import check_contract, new_manifest
from liquidgen.cache.shards import DTYPES, calibrate_uint8
from liquidgen.cache.store import CacheDir
from liquidgen.cache.writer import ShardWriter
from liquidgen.errors import LiquidgenError
from liquidgen.pipeline.images import Preprocess, load_image
from liquidgen.pipeline.sources import ImageSource, open_source
from liquidgen.pipeline.vae import STORE_CHOICES, FrozenVae, load_vae


@dataclass
class EncodeConfig:
    source: str
    out: str
    vae: str = "flux"
    vae_subfolder: str | None = None
    resolution: int = 256
    format: str = "zarr"  # zarr | wds
    dtype: str = "fp16"  # fp16 | bf16 | fp32 | uint8
    store: str = "mean"  # mean | sample | moments (KL VAEs)
    flip: str = "none"  # none | both
    limit: int | None = None
    batch_size: int = 32
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    shard_size: int = 1024
    data_dir: str | None = None
    device: str = "auto"
    vae_dtype: str = "auto"
    seed: int = 0
    progress: bool = True


@dataclass
class EncodeResult:
    out: Path
    encoded: int  # latents written by this run (this rank)
    skipped: int  # inputs skipped by this run (this rank)
    total: int  # latents in the finished cache
    shards_written: int
    seconds: float
    noop: bool
    manifest: dict


def _check_config(cfg: EncodeConfig) -> None:
    choices = {"format": ("zarr", "wds"), "dtype": DTYPES, "store": STORE_CHOICES, "flip": ("none", "both")}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise LiquidgenError(f"--{name} {getattr(cfg, name)!r} is not one of {', '.join(allowed)}")
    for name in ("batch_size", "shard_size", "resolution"):
        if getattr(cfg, name) < 1:
            raise LiquidgenError(f"--{name.replace('_', '-')} must be positive")


class _EncodeStream(IterableDataset):
    """Decodes the items of the shards still to do; DataLoader workers take alternate batches,
    so batches arrive in source order."""

    def __init__(self, source: ImageSource, mine: Callable[[int], bool], shard_size: int, pre: Preprocess, batch_size: int):
        self.source, self.mine, self.shard_size, self.pre, self.batch_size = source, mine, shard_size, pre, batch_size

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        j = 0
        for item in self.source:
            if not self.mine(item.index // self.shard_size):
                continue
            ours = (j // self.batch_size) % workers == worker
            j += 1
            if not ours:
                continue
            result = load_image(item.data, self.pre) if item.error is None else item.error
            image, reason = (result, None) if isinstance(result, np.ndarray) else (None, result)
            yield {"index": item.index, "key": item.key, "label": item.label, "image": image, "reason": reason}


def _collate(items: list[dict]) -> dict:
    good = [it for it in items if it["image"] is not None]
    return {
        "images": torch.from_numpy(np.stack([it["image"] for it in good])) if good else None,
        "index": [it["index"] for it in good],
        "key": [it["key"] for it in good],
        "label": [it["label"] for it in good],
        "bad": [(it["index"], it["key"], it["reason"]) for it in items if it["image"] is None],
    }


def _register_source(manifest: dict, source: ImageSource) -> int:
    """The source's number in this cache: an existing entry (resume, rerun) or a new one (append).
    Local labels map into the cache-wide `label_names`."""
    desc = source.describe()
    for entry in manifest["sources"]:
        if (entry["id"], entry["kind"], entry["split"]) == (desc["id"], desc["kind"], desc["split"]):
            if entry.get("fingerprint") != desc["fingerprint"]:
                raise LiquidgenError(
                    f"{source.id} changed since it was encoded into this cache (files added or removed); "
                    "encode it into a new --out folder"
                )
            entry["limit"] = desc["limit"]
            return entry["index"]
    for name in desc["label_names"] or []:
        if name not in manifest["label_names"]:
            manifest["label_names"].append(name)
    manifest["sources"].append({**desc, "index": len(manifest["sources"]), "count": 0, "skipped": 0})
    return len(manifest["sources"]) - 1


def _plan(cache: CacheDir, manifest: dict, src: int, source: ImageSource, size: int) -> tuple[set[int], int | None]:
    """The shards of this source already published with the extent this run would give them,
    and how many shards the source makes (None while a stream's length is unknown)."""
    published = [s for s in manifest["shards"] if s["source"] == src] + [
        r for r in cache.records().values() if r["source"] == src
    ]
    if source.count is not None:
        n_shards = math.ceil(source.count / size)
        done = {s["first"] // size for s in published if s["end"] == min(s["first"] + size, source.count)}
        return done, n_shards
    done = {s["first"] // size for s in published if s["end"] - s["first"] == size}
    short = [s["first"] // size for s in published if s["end"] - s["first"] < size]
    if short and all(k in done for k in range(min(short))):  # the stream ended there last time
        done.add(min(short))
        return done, min(short) + 1
    return done, None


def _calibrate(vae: FrozenVae, source: ImageSource, pre: Preprocess, cfg: EncodeConfig, device) -> dict:
    """uint8 needs its scale/offset before the first shard: encode the first 64 good images."""
    images = []
    for item in source:
        img = load_image(item.data, pre) if item.error is None else None
        if isinstance(img, np.ndarray):
            images.append(img)
        if len(images) == 64:
            break
    if not images:
        raise LiquidgenError(f"no readable image in {source.id} to calibrate uint8 storage")
    z = vae.encode(torch.from_numpy(np.stack(images)).to(device), cfg.store)
    return calibrate_uint8(z.cpu().numpy())


def encode(cfg: EncodeConfig) -> EncodeResult:
    """Encode `cfg.source` into the cache at `cfg.out`, resuming whatever an earlier run left."""
    from accelerate import PartialState

    _check_config(cfg)
    # cpu=True lets torchrun/accelerate start a gloo group when there is no GPU.
    state = PartialState(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
    device = state.device if cfg.device == "auto" else torch.device(cfg.device)
    rank, world = state.process_index, state.num_processes
    started = time.time()

    source = open_source(cfg.source, limit=cfg.limit, data_dir=cfg.data_dir)
    vae = load_vae(cfg.vae, cfg.vae_subfolder, device=device, dtype=cfg.vae_dtype)
    if cfg.resolution % vae.downscale:
        raise LiquidgenError(f"--resolution {cfg.resolution} is not a multiple of the VAE's downscale {vae.downscale}")
    if cfg.store != "mean" and not vae.is_kl:
        raise LiquidgenError(f"--store {cfg.store} needs a KL VAE; {vae.info['class']} is deterministic (use --store mean)")
    pre = Preprocess(resolution=cfg.resolution)
    side = cfg.resolution // vae.downscale
    channels = vae.latent_channels * (2 if cfg.store == "moments" else 1)
    storage = {
        "backend": cfg.format, "dtype": cfg.dtype, "stored": cfg.store, "flip": cfg.flip,
        "latent_shape": [channels, side, side], "shard_size": cfg.shard_size, "quant": None,
    }
    wanted = new_manifest({**pre.describe(), "flip": cfg.flip}, vae.info, storage)

    cache = CacheDir(cfg.out)
    lock = CacheLock(cache.root)
    try:
        if state.is_main_process:
            try:
                cache.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LiquidgenError(f"cannot create {cache.root}: {exc.strerror or exc}") from None
            lock.acquire()
            manifest = cache.manifest() if cache.exists() else wanted
            check_contract(manifest, wanted, cfg.out)
            if cfg.dtype == "uint8" and not manifest["storage"]["quant"]:
                manifest["storage"]["quant"] = _calibrate(vae, source, pre, cfg, device)
            _register_source(manifest, source)
            cache.write_manifest(manifest)
        state.wait_for_everyone()
        manifest = cache.manifest()
        src = _register_source(manifest, source)
        size = manifest["storage"]["shard_size"]
        done, n_shards = _plan(cache, manifest, src, source, size)
        noop = manifest["complete"] and n_shards is not None and len(done) == n_shards
        encoded = skipped = written = 0
        if not noop:
            manifest["complete"] = False
            if state.is_main_process:
                cache.write_manifest(manifest)

            def mine(k: int) -> bool:
                return k % world == rank and k not in done and (n_shards is None or k < n_shards)

            encoded, skipped, written = _encode_shards(cfg, source, vae, pre, cache, manifest, src, mine, n_shards, device, state)
        state.wait_for_everyone()
        if state.is_main_process and not noop:
            manifest = _finalize(cache, manifest, source, src, size)
    finally:
        lock.release()
    manifest = cache.manifest()
    return EncodeResult(cache.root, encoded, skipped, manifest["count"], written, time.time() - started, noop, manifest)


class _Shards:
    """Collects encoded rows per shard and hands a shard to the writer once all its items
    (good or skipped) have arrived."""

    def __init__(self, writer: ShardWriter, manifest: dict, src: int, count: int | None, flip: bool, rank: int):
        self.writer, self.src, self.count, self.flip, self.rank = writer, src, count, flip, rank
        self.size = manifest["storage"]["shard_size"]
        self.backend = manifest["storage"]["backend"]
        self.shape = manifest["storage"]["latent_shape"]
        self.open: dict[int, dict] = {}

    def _buf(self, index: int) -> dict:
        return self.open.setdefault(index // self.size, {"rows": [], "bad": [], "seen": 0})

    def add(self, index: int, key: str, label: int, z: np.ndarray, zf: np.ndarray | None) -> None:
        self._buf(index)["rows"].append((index, key, label, z, zf))

    def skip(self, index: int, key: str, reason: str) -> None:
        shard = CacheDir.shard_name(self.src, index // self.size, self.backend)
        self._buf(index)["bad"].append({"source": self.src, "shard": shard, "key": key, "reason": reason})

    def extent(self, k: int) -> int:
        return self.size if self.count is None else min(self.size, self.count - k * self.size)

    def seen(self, indices: list[int]) -> None:
        for index in indices:
            self._buf(index)["seen"] += 1
        for k in sorted({i // self.size for i in indices}):
            if self.open[k]["seen"] == self.extent(k):
                self.flush(k)

    def flush(self, k: int) -> None:
        buf = self.open.pop(k)
        rows = sorted(buf["rows"], key=lambda r: r[0])
        empty = np.zeros((0, *self.shape), np.float32)
        latents = np.stack([r[3] for r in rows]) if rows else empty
        flipped = (np.stack([r[4] for r in rows]) if rows else empty) if self.flip else None
        first = k * self.size
        end = first + (self.extent(k) if self.count is not None else buf["seen"])
        self.writer.submit(
            CacheDir.shard_name(self.src, k, self.backend),
            {"source": self.src, "first": first, "end": end, "rank": self.rank, "skipped": buf["bad"]},
            latents, flipped, np.array([r[2] for r in rows], np.int32),
            np.array([r[0] for r in rows], np.int64), [r[1] for r in rows],
        )

    def flush_all(self) -> None:
        for k in sorted(self.open):
            self.flush(k)


def _encode_shards(cfg, source, vae, pre, cache, manifest, src, mine, n_shards, device, state) -> tuple[int, int, int]:
    size = manifest["storage"]["shard_size"]
    loader = DataLoader(
        _EncodeStream(source, mine, size, pre, cfg.batch_size), batch_size=cfg.batch_size,
        num_workers=cfg.workers, collate_fn=_collate, prefetch_factor=4 if cfg.workers else None,
        pin_memory=device.type == "cuda",
    )
    label_map = _label_map(source, manifest)
    writer = ShardWriter(cache, manifest["storage"])
    shards = _Shards(writer, manifest, src, source.count, cfg.flip == "both", state.process_index)
    total = None
    if n_shards is not None and source.count is not None:
        total = sum(shards.extent(k) for k in range(n_shards) if mine(k))
    encoded = skipped = 0
    bar = tqdm(total=total, unit="img", desc=f"encode {Path(cfg.out).name}", smoothing=0.05,
               disable=not (cfg.progress and state.is_local_main_process))
    try:
        for batch in loader:
            if batch["images"] is not None:
                x = batch["images"].to(device, non_blocking=True)
                gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + batch["index"][0])
                z = vae.encode(torch.cat([x, x.flip(-1)]) if cfg.flip == "both" else x, cfg.store, gen).cpu().numpy()
                zf = z[len(x):] if cfg.flip == "both" else None
                for row, index in enumerate(batch["index"]):
                    label = label_map.get(batch["label"][row], batch["label"][row])
                    shards.add(index, batch["key"][row], label, z[row], None if zf is None else zf[row])
            for index, key, reason in batch["bad"]:
                shards.skip(index, key, reason)
                if skipped < 5:
                    bar.write(f"skipped {key}: {reason}")
                skipped += 1
            encoded += len(batch["index"])
            seen = batch["index"] + [b[0] for b in batch["bad"]]
            shards.seen(seen)
            bar.update(len(seen))
            bar.set_postfix(skipped=skipped, refresh=False)
        shards.flush_all()  # the short last shard of a stream of unknown length
        writer.close()
    finally:
        bar.close()
        writer.pool.shutdown(wait=True, cancel_futures=True)
    if skipped > 5:
        print(f"... {skipped} inputs skipped in all; reasons in {Path(cfg.out) / 'skipped.log'}")
    return encoded, skipped, writer.written


def _label_map(source: ImageSource, manifest: dict) -> dict[int, int]:
    """Source-local label ids -> cache-wide ids, by name (unnamed numeric labels stay as they are)."""
    if not source.label_names:
        return {}
    return {i: manifest["label_names"].index(n) for i, n in enumerate(source.label_names)}


def _finalize(cache: CacheDir, manifest: dict, source: ImageSource, src: int, size: int) -> dict:
    records = cache.records()
    done, n_shards = _plan(cache, manifest, src, source, size)
    if n_shards is not None and len(done) < n_shards:
        raise LiquidgenError(
            f"{n_shards - len(done)} shard(s) of {cache.root} were not written (a rank failed?); "
            "rerun the same command to finish the cache"
        )
    # A redone shard replaces its old entry and the old entry's skipped inputs.
    manifest["shards"] = [s for s in manifest["shards"] if s["name"] not in records]
    manifest["skipped"] = [s for s in manifest["skipped"] if s["shard"] not in records]
    manifest = cache.finalize(manifest)
    try:
        (cache.root / "skipped.log").write_text("".join(f"{s['key']}\t{s['reason']}\n" for s in manifest["skipped"]))
    except OSError as exc:
        raise LiquidgenError(f"cannot write {cache.root / 'skipped.log'}: {exc.strerror or exc}") from None
    return manifest
