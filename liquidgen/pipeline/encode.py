"""Stage 1: stream images through a frozen VAE into a sharded latent cache.

source → pieces → (ranks, then DataLoader workers, each take whole pieces) → decode → VAE →
builder. A piece is a disjoint run of a source's items and becomes one cache shard, so every
input byte is read once in total, a killed run redoes only the pieces without a published shard,
and a rerun of a finished cache finds nothing to do. Batches never span pieces and start at
fixed positions within them: a piece encodes to the same bits whichever worker or run does it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from liquidgen.cache.builder import CacheBuilder
from liquidgen.cache.manifest import Manifest, Storage
from liquidgen.cache.shards import calibrate_uint8
from liquidgen.config import EncodeConfig
from liquidgen.errors import LiquidgenError, printable
from liquidgen.pipeline.images import Preprocess, load_image
from liquidgen.pipeline.sources import ImageSource, Piece, open_source
from liquidgen.pipeline.vae import FrozenVae, load_vae


@dataclass
class EncodeResult:
    out: Path
    encoded: int  # latents written by this run (this rank)
    skipped: int  # inputs skipped by this run (this rank)
    total: int  # latents in the finished cache
    shards_written: int
    seconds: float
    noop: bool
    manifest: Manifest


class _EncodeStream(IterableDataset):
    """Reads and decodes whole pieces: DataLoader worker w takes every W-th of this rank's
    pieces. Yields batches of one piece each; the last batch of a piece says it is the end."""

    def __init__(self, source: ImageSource, pieces: list[Piece], pre: Preprocess, batch_size: int):
        self.source, self.pieces, self.pre, self.batch_size = source, pieces, pre, batch_size

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for piece in self.pieces[worker::workers]:
            items, seen = [], 0
            for item in self.source.read(piece):
                result = load_image(item.data, self.pre) if item.error is None else item.error
                items.append((item, result))
                seen += 1
                if len(items) == self.batch_size:
                    yield _batch(piece, items, end=None)
                    items = []
            yield _batch(piece, items, end=seen)


def _batch(piece: Piece, items: list, end: int | None) -> dict:
    good = [(item, img) for item, img in items if isinstance(img, np.ndarray)]
    return {
        "piece": piece,
        "images": torch.from_numpy(np.stack([img for _, img in good])) if good else None,
        "position": [item.position for item, _ in good],
        "key": [item.key for item, _ in good],
        "label": [item.label for item, _ in good],
        "bad": [(item.key, reason) for item, reason in items if not isinstance(reason, np.ndarray)],
        "end": end,  # None, or the number of items the piece held
    }


def _as_is(batch: dict) -> dict:
    return batch  # batches are built in the workers, one piece each


def _calibrate(vae: FrozenVae, source: ImageSource, pieces: list[Piece], pre: Preprocess, device) -> dict:
    """uint8 needs its scale/offset before the first shard: encode the first 64 good images."""
    images = []
    for piece in pieces:
        for item in source.read(piece):
            img = load_image(item.data, pre) if item.error is None else None
            if isinstance(img, np.ndarray):
                images.append(img)
            if len(images) == 64:
                break
        if len(images) == 64:
            break
    if not images:
        raise LiquidgenError(f"no readable image in {source.id} to calibrate uint8 storage")
    z = vae.encode(torch.from_numpy(np.stack(images)).to(device), "mean")
    return calibrate_uint8(z.cpu().numpy())


def encode(cfg: EncodeConfig) -> EncodeResult:
    """Encode `cfg.source` into the cache at `cfg.out`, resuming whatever an earlier run left."""
    from accelerate import PartialState

    # cpu=True lets torchrun/accelerate start a gloo group when there is no GPU.
    state = PartialState(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
    device = state.device if cfg.device == "auto" else torch.device(cfg.device)
    rank, world = state.process_index, state.num_processes
    started = time.time()

    source = open_source(cfg.source, limit=cfg.limit, data_dir=cfg.data_dir, seed=cfg.seed,
                         image_column=cfg.image_column, label_column=cfg.label_column)
    if state.is_main_process:
        for note in source.notes:
            print(note, flush=True)
    if world > 1:  # what rank 0 read to index the source (a tar's headers) is not read again
        from accelerate.utils import broadcast_object_list

        shared = [source.shared_state() if state.is_main_process else None]
        broadcast_object_list(shared)
        source.adopt(shared[0])
    vae = load_vae(cfg.vae, cfg.vae_subfolder, device=device, dtype=cfg.vae_dtype)
    if cfg.resolution % vae.downscale:
        raise LiquidgenError(f"--resolution {cfg.resolution} is not a multiple of the VAE's downscale {vae.downscale}")
    if cfg.store != "mean" and not vae.is_kl:
        raise LiquidgenError(f"--store {cfg.store} needs a KL VAE; {vae.info['class']} is deterministic (use --store mean)")
    pre = Preprocess(resolution=cfg.resolution)
    side = cfg.resolution // vae.downscale
    channels = vae.latent_channels * (2 if cfg.store == "moments" else 1)
    storage = Storage(backend=cfg.format, dtype=cfg.dtype, stored=cfg.store, flip=cfg.flip,
                      latent_shape=[channels, side, side], shard_size=cfg.shard_size)
    wanted = Manifest(preprocess={**pre.describe(), "flip": cfg.flip}, vae=vae.info, storage=storage)

    builder = CacheBuilder(cfg.out, rank=rank)
    try:
        # The shard size of an existing cache wins over the flag: pieces must keep their extent.
        size = builder.cache.manifest().storage.shard_size if builder.cache.exists() else cfg.shard_size
        pieces = source.pieces(size)
        described = source.describe(size)
        if state.is_main_process:
            builder.begin(wanted, described, lambda: _calibrate(vae, source, pieces, pre, device))
        state.wait_for_everyone()
        builder.load()
        src = builder.source_index(described)
        todo = builder.plan(src, pieces)
        noop = not todo and builder.manifest.complete
        state.wait_for_everyone()  # every rank has planned before any publishes a shard
        if state.is_main_process and todo:
            builder.mark_incomplete()
        # Bytes that several pieces share (one big parquet row group) are read once, by one
        # rank, into the cache's scratch folder, before any worker needs them.
        source.prepare(todo, builder.cache.scratch_dir, rank, world)
        state.wait_for_everyone()
        # Rank r takes the pieces numbered r mod N: fixed by the source, so every rank agrees.
        mine = [p for p in todo if p.number % world == rank]
        encoded, skipped = _encode_pieces(cfg, source, mine, vae, pre, builder, src, device, state)
        state.wait_for_everyone()
        if state.is_main_process and not noop:
            builder.finalize(src, pieces)
            builder.cache.clear_scratch()
    finally:
        builder.release()
    manifest = builder.cache.manifest()
    return EncodeResult(builder.cache.root, encoded, skipped, manifest.count, builder.written,
                        time.time() - started, noop, manifest)


def _encode_pieces(cfg: EncodeConfig, source: ImageSource, pieces: list[Piece], vae: FrozenVae, pre: Preprocess,
                   builder: CacheBuilder, src: int, device: torch.device, state) -> tuple[int, int]:
    """This rank's pieces through the VAE into the builder. Returns (encoded, skipped)."""
    if not pieces:
        return 0, 0
    workers = min(cfg.workers, len(pieces))  # a worker without a piece would only cost a start-up
    loader = DataLoader(
        _EncodeStream(source, pieces, pre, cfg.batch_size), batch_size=None, num_workers=workers,
        prefetch_factor=4 if workers else None, pin_memory=device.type == "cuda",
        collate_fn=_as_is,
    )
    label_map = _label_map(source, builder.manifest)
    known = [p.length for p in pieces]
    encoded = skipped = 0
    bar = tqdm(total=None if None in known else sum(known), unit="img", desc=f"encode {Path(cfg.out).name}",
               smoothing=0.05, disable=not (cfg.progress and state.is_local_main_process))
    try:
        for batch in loader:
            piece = batch["piece"]
            if batch["images"] is not None:
                x = batch["images"].to(device, non_blocking=True)
                # Noise for --store sample from the batch's place in the source, not its arrival.
                gen = torch.Generator(device=device).manual_seed((cfg.seed * 1_000_003 + piece.number) * 1_000_003 + batch["position"][0])
                z = vae.encode(torch.cat([x, x.flip(-1)]) if cfg.flip == "both" else x, cfg.store, gen).cpu().numpy()
                zf = z[len(x):] if cfg.flip == "both" else None
                for row, position in enumerate(batch["position"]):
                    label = label_map.get(batch["label"][row], batch["label"][row])
                    builder.add(piece, position, batch["key"][row], label, z[row], None if zf is None else zf[row])
            for key, reason in batch["bad"]:
                builder.skip(piece, src, key, reason)
                if skipped < 5:
                    bar.write(f"skipped {key!r}: {printable(reason)}")
                skipped += 1
            encoded += len(batch["position"])
            if batch["end"] is not None:
                builder.end(piece, src, batch["end"])
            bar.update(len(batch["position"]) + len(batch["bad"]))
            bar.set_postfix(skipped=skipped, refresh=False)
    finally:
        bar.close()
        builder.close()
    if skipped > 5:
        print(f"... {skipped} inputs skipped in all; reasons in {Path(cfg.out) / 'skipped.log'}")
    return encoded, skipped


def _label_map(source: ImageSource, manifest: Manifest) -> dict[int, int]:
    """Source-local label ids -> cache-wide ids, by name (unnamed numeric labels stay as they are)."""
    if not source.label_names:
        return {}
    return {i: manifest.label_names.index(n) for i, n in enumerate(source.label_names)}
