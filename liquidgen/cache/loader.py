"""Batches of normalized latents for training, from a cache.

Two paths, one interface (`batches(epoch)` yielding (latents, labels) on the device):

* `InMemoryLatents` holds the whole cache as one tensor (on the GPU when it fits) and indexes
  batches there: for caches up to a few GB this is as fast as data can be.
* `StreamingLatents` reads shards in a shuffled order, `buffer_shards` at a time, and shuffles
  across the buffer: larger-than-memory caches with cross-shard shuffling. The next buffer is
  read (or, for a remote cache, fetched and verified) in the background, across epochs too.
  A remote cache (any fsspec URL) is always streamed this way: training starts as soon as the
  first buffer has arrived.

Normalization uses the manifest's per-channel mean/std, so the cache stays raw. Order depends
only on (seed, epoch, rank), which makes a resumed run see exactly the batches it would have.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch

from liquidgen.cache.remote import RemoteShards
from liquidgen.cache.shards import dequantize
from liquidgen.cache.store import CacheDir, require_complete


class _Base:
    def __init__(self, root: str, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1,
                 device: str | torch.device = "cpu", remote: RemoteShards | None = None):
        self.remote = remote
        self.cache = remote.cache if remote else CacheDir(root)
        self.manifest = remote.manifest if remote else require_complete(root)
        self.location = remote.url if remote else str(self.cache.root.resolve())
        st = self.manifest.storage
        self.backend, self.dtype, self.quant = st.backend, st.dtype, st.quant
        self.moments = st.stored == "moments"
        self.flip = st.flip == "both"
        channels = st.latent_shape[0] // (2 if self.moments else 1)
        self.shape = (channels, *st.latent_shape[1:])
        stats = self.manifest.stats
        self.device = torch.device(device)
        self.mean = torch.tensor(stats["mean"][:channels], dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(stats["std"][:channels], dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.count = self.manifest.count
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by the {world} processes")
        self.local_batch = batch_size // world

    @property
    def num_classes(self) -> int:
        return len(self.manifest.label_names)

    def _shard(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        if self.remote:
            self.remote.ensure(name)
        data = self.cache.read(name, self.backend)
        if self.remote:
            self.remote.release(name)
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
        parts = [self._shard(s.name) for s in self.manifest.shards if s.count]
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
        self.names = [s.name for s in self.manifest.shards if s.count]
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="read-ahead")
        self.ahead: dict[int, list[Future]] = {}  # epoch -> its first buffer, requested early
        self.resident: list[tuple] | None = None  # the whole cache, when it is one buffer

    def _groups(self, epoch: int) -> tuple[torch.Generator, list[list[str]]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        names = [self.names[i] for i in torch.randperm(len(self.names), generator=gen)]
        return gen, [names[i : i + self.buffer_shards] for i in range(0, len(names), self.buffer_shards)]

    def _request(self, group: list[str]) -> list[Future]:
        return [self.pool.submit(self._shard, name) for name in group]

    def batches(self, epoch: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen, groups = self._groups(epoch)
        if len(groups) == 1 and self.resident is None:  # small enough to keep: read once
            self.resident = [f.result() for f in self.ahead.pop(epoch, None) or self._request(self.names)]
        carry: list[tuple] = []
        made = 0
        pending = self.ahead.pop(epoch, None) or (self._request(groups[0]) if self.resident is None else [])
        for i, group in enumerate(groups):
            if self.resident is not None:  # the same shards each epoch, in the epoch's order
                by_name = dict(zip(self.names, self.resident))
                parts = carry + [by_name[n] for n in group]
            else:
                parts = carry + [f.result() for f in pending]
                # read the next buffer (the next epoch's first) while this one is trained on
                pending = self._request(groups[i + 1]) if i + 1 < len(groups) else []
                if i + 1 == len(groups):
                    self.ahead[epoch + 1] = self._request(self._groups(epoch + 1)[1][0])
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


def open_latents(root: str, batch_size: int, memory_limit_gb: float = 4.0, keep_shards: bool = True,
                 **kwargs) -> _Base:
    """In memory when the cache's float32 size fits `memory_limit_gb`, else streamed; a URL
    (any fsspec location) is streamed, its shards fetched and verified as they are needed."""
    if "://" in root:
        remote = RemoteShards(root, keep=keep_shards)
        return StreamingLatents(root, batch_size, remote=remote, **kwargs)
    manifest = require_complete(root)
    shape = manifest.storage.latent_shape
    copies = 2 if manifest.storage.flip == "both" else 1
    size_gb = manifest.count * math.prod(shape) * 4 * copies / 2**30
    cls = InMemoryLatents if size_gb <= memory_limit_gb else StreamingLatents
    return cls(root, batch_size, **kwargs)
