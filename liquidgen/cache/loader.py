"""Batches of normalized latents for training, from a cache.

Two paths, one interface (`batches(epoch)` yielding (latents, labels) on the device):

* `InMemoryLatents` holds the whole cache as one tensor (on the GPU when it fits) and indexes
  batches there: for caches up to a few GB this is as fast as data can be.
* `StreamingLatents` reads shards in a shuffled order, `buffer_shards` at a time, and shuffles
  across the buffer: larger-than-memory caches with cross-shard shuffling.

Normalization uses the manifest's per-channel mean/std, so the cache stays raw. Order depends
only on (seed, epoch, rank), which makes a resumed run see exactly the batches it would have.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from liquidgen.cache.shards import dequantize
from liquidgen.cache.store import CacheDir, require_complete


class _Base:
    def __init__(self, root: str, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1,
                 device: str | torch.device = "cpu"):
        self.cache = CacheDir(root)
        self.manifest = require_complete(root)
        st = self.manifest["storage"]
        self.backend, self.dtype, self.quant = st["backend"], st["dtype"], st.get("quant")
        self.moments = st["stored"] == "moments"
        self.flip = st["flip"] == "both"
        channels = st["latent_shape"][0] // (2 if self.moments else 1)
        self.shape = (channels, *st["latent_shape"][1:])
        stats = self.manifest["stats"]
        self.device = torch.device(device)
        self.mean = torch.tensor(stats["mean"][:channels], dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(stats["std"][:channels], dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.count = self.manifest["count"]
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by the {world} processes")
        self.local_batch = batch_size // world

    @property
    def num_classes(self) -> int:
        return len(self.manifest["label_names"])

    def _shard(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        data = self.cache.read(name, self.backend)
        lat = torch.from_numpy(dequantize(data.latents, self.dtype, self.quant))
        flp = torch.from_numpy(dequantize(data.flipped, self.dtype, self.quant)) if data.flipped is not None else None
        return lat, flp, torch.from_numpy(data.labels.astype(np.int64))

    def _finish(self, lat: torch.Tensor, flp: torch.Tensor | None, labels: torch.Tensor, gen: torch.Generator):
        """Pick the mirrored copy half the time, sample moments, normalize."""
        lat = lat.to(self.device, non_blocking=True)
        if flp is not None:
            use = (torch.rand(len(lat), generator=gen) < 0.5).to(self.device)
            lat = torch.where(use[:, None, None, None], flp.to(self.device, non_blocking=True), lat)
        if self.moments:
            mean, logvar = lat.chunk(2, dim=1)
            noise = torch.randn(mean.shape, generator=gen).to(self.device)
            lat = mean + torch.exp(0.5 * logvar) * noise
        return (lat - self.mean) / self.std, labels.to(self.device, non_blocking=True)

    def _batch_gen(self, epoch: int, batch: int) -> torch.Generator:
        """Per-batch randomness (flip choice, moment sampling): a function of its position only."""
        return torch.Generator().manual_seed((self.seed * 100_003 + epoch) * 1_000_003 + batch)

    def steps_per_epoch(self) -> int:
        return max(self.count // self.batch_size, 1)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std.to(z.device) + self.mean.to(z.device)


class InMemoryLatents(_Base):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        parts = [self._shard(s["name"]) for s in self.manifest["shards"] if s["count"]]
        self.latents = torch.cat([p[0] for p in parts]).to(self.device)
        self.flipped = torch.cat([p[1] for p in parts]).to(self.device) if self.flip else None
        self.labels = torch.cat([p[2] for p in parts]).to(self.device)

    def batches(self, epoch: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.count, generator=gen)
        for b in range(self.steps_per_epoch()):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            idx = idx[self.rank :: self.world].to(self.device)
            if b < skip:  # resume: the same order, the batches already seen skipped
                continue
            flp = self.flipped[idx] if self.flipped is not None else None
            yield self._finish(self.latents[idx], flp, self.labels[idx], self._batch_gen(epoch, b))


class StreamingLatents(_Base):
    def __init__(self, *args, buffer_shards: int = 8, **kwargs):
        super().__init__(*args, **kwargs)
        self.buffer_shards = buffer_shards
        self.names = [s["name"] for s in self.manifest["shards"] if s["count"]]

    def batches(self, epoch: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from concurrent.futures import ThreadPoolExecutor

        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        names = [self.names[i] for i in torch.randperm(len(self.names), generator=gen)]
        groups = [names[i : i + self.buffer_shards] for i in range(0, len(names), self.buffer_shards)]
        carry: list[tuple] = []
        made = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead") as pool:
            # Read the next group of shards while the current one is being trained on.
            pending = pool.submit(lambda g: [self._shard(n) for n in g], groups[0]) if groups else None
            for i in range(len(groups)):
                parts = carry + pending.result()
                pending = pool.submit(lambda g: [self._shard(n) for n in g], groups[i + 1]) if i + 1 < len(groups) else None
                lat = torch.cat([p[0] for p in parts])
                flp = torch.cat([p[1] for p in parts]) if self.flip else None
                lab = torch.cat([p[2] for p in parts])
                order = torch.randperm(len(lat), generator=gen)
                full = len(lat) // self.batch_size
                for b in range(full):
                    if made >= self.steps_per_epoch():
                        return
                    idx = order[b * self.batch_size : (b + 1) * self.batch_size][self.rank :: self.world]
                    made += 1
                    if made <= skip:
                        continue
                    yield self._finish(lat[idx], flp[idx] if flp is not None else None, lab[idx], self._batch_gen(epoch, made))
                rest = order[full * self.batch_size :]
                carry = [(lat[rest], flp[rest] if flp is not None else None, lab[rest])]


def open_latents(root: str, batch_size: int, memory_limit_gb: float = 4.0, **kwargs) -> _Base:
    """In memory when the cache's float32 size fits `memory_limit_gb`, else streamed."""
    manifest = require_complete(root)
    shape = manifest["storage"]["latent_shape"]
    copies = 2 if manifest["storage"]["flip"] == "both" else 1
    size_gb = manifest["count"] * math.prod(shape) * 4 * copies / 2**30
    cls = InMemoryLatents if size_gb <= memory_limit_gb else StreamingLatents
    return cls(root, batch_size, **kwargs)
