"""Batches of normalized latents for training, from a cache.

Two paths, one interface (`batches(epoch)` yielding (latents, labels) on the device):

* `InMemoryLatents` holds the whole cache at its stored size (fp16, bf16, uint8) in one
  preallocated tensor (on the GPU when it fits) and gathers batches there, widening them to
  float32 only per batch: for caches up to a few GB this is as fast as data can be.
* `StreamingLatents` reads shards in a shuffled order, `buffer_shards` at a time, and shuffles
  across the buffer: larger-than-memory caches with cross-shard shuffling. With several
  processes each reads a disjoint part of the shards each epoch, decided by (seed, epoch). The next buffer is
  read (or, for a remote cache, fetched and verified) in the background, across epochs too.
  A remote cache (any fsspec URL) is always streamed this way: training starts as soon as the
  first buffer has arrived.

Stored values become model inputs in `LatentSpace` (latents.py), from the manifest. Order depends
only on (seed, epoch, rank), which makes a resumed run see exactly the batches it would have.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch

from liquidgen.cache.remote import RemoteShards
from liquidgen.cache.latents import TORCH_STORED, LatentSpace
from liquidgen.cache.manifest import merge_stats
from liquidgen.cache.split import held_out, held_out_order
from liquidgen.cache.store import CacheDir, Verified, require_complete
from liquidgen.errors import LiquidgenError


def stored_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as the numpy array a shard stores (bf16 as its uint16 bits), sharing memory."""
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


class _Base:
    def __init__(self, root: str, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1,
                 device: str | torch.device = "cpu", remote: RemoteShards | None = None, val_fraction: float = 0.0):
        self.remote = remote
        self.cache = remote.cache if remote else CacheDir(root)
        self.manifest = remote.manifest if remote else require_complete(root)
        self.location = remote.url if remote else str(self.cache.root.resolve())
        self.verified = Verified(self.cache, self.manifest)  # every shard checked against the manifest
        self.device = torch.device(device)
        self.space = LatentSpace.from_manifest(self.manifest, self.device)
        st = self.manifest.storage
        self.backend, self.flip, self.moments = st.backend, st.flip == "both", st.stored == "moments"
        self.shape = (self.space.channels, *st.latent_shape[1:])
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.count = self.manifest.count
        # the rows of `--val-fraction` (cache/split.py): never yielded by `batches`
        self.val_fraction = val_fraction
        self.val = held_out(self.manifest, val_fraction, seed)
        self.train_count = self.count - sum(len(rows) for rows in self.val.values())
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by the {world} processes")
        self.local_batch = batch_size // world

    @property
    def num_classes(self) -> int:
        return len(self.manifest.label_names)

    def _read(self, name: str, into: dict | None = None):
        """One shard's arrays (into the given buffers, if any), fetched first from a remote cache."""
        if self.remote:
            self.remote.ensure(name)
        try:
            return self.verified.read(name, into)
        finally:
            if self.remote:
                self.remote.release(name)

    def _shard(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """One shard at its stored size: (latents, flipped or None, int64 labels), on the CPU."""
        data = self._read(name)
        flp = self.space.stored_tensor(data.flipped) if data.flipped is not None else None
        return self.space.stored_tensor(data.latents), flp, torch.from_numpy(data.labels.astype(np.int64))

    def _read_into(self, name: str, lat: torch.Tensor, flp: torch.Tensor | None, lab: torch.Tensor) -> None:
        """One shard read straight into CPU buffer slices of its exact size."""
        into = {"latents": stored_numpy(lat)}
        if flp is not None:
            into["flipped"] = stored_numpy(flp)
        data = self._read(name, into)
        lab.copy_(torch.from_numpy(data.labels.astype(np.int64)))

    def batches(self, epoch: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(normalized latents, labels) on the training device: a batch is gathered at its stored
        size (`stored_batches`) off the training thread where that is host work, into pinned
        memory for a GPU, then the device widens, flips, samples and normalizes it."""
        stored = self.stored_batches(epoch, skip)
        if self.host_gather:
            stored = assembled_ahead(stored, pin=self.device.type == "cuda")
        for lat, flp, labels, gen in stored:
            yield self.space.to_model(lat, flp, gen), labels.to(self.device, non_blocking=True)

    host_gather = True  # batches are gathered on the CPU (a resident buffer on the GPU is not)

    def stored_batches(self, epoch: int, skip: int = 0) -> Iterator[tuple]:
        """(latents, flipped or None, labels, generator) at stored size, in the epoch's order."""
        raise NotImplementedError

    def position(self, epoch: int, batch: int) -> dict:
        """Where a run stands, for its checkpoint: `start` turns it back into (epoch, batch) on
        any number of processes."""
        return {"epoch": epoch, "batch": batch, "world": self.world}

    def start(self, position: dict | None, step: int) -> tuple[int, int]:
        """(epoch, batches to skip) to resume at. Global batches here do not depend on the number
        of processes, so the saved position holds on any; without one (older checkpoints) it
        follows from the step."""
        if position is None:
            return divmod(step, self.steps_per_epoch())
        return int(position["epoch"]), int(position["batch"])

    def _batch_gen(self, epoch: int, batch: int) -> torch.Generator:
        """Per-batch randomness (flip choice, moment sampling): a function of its position only,
        drawn on the training device."""
        return torch.Generator(device=self.device).manual_seed((self.seed * 100_003 + epoch) * 1_000_003 + batch)

    def steps_per_epoch(self) -> int:
        return max(self.train_count // self.batch_size, 1)

    def held_out(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `limit` held-out latents of the split's seeded order (all by default), as
        raw latents (the mean of stored moments, unflipped: what the VAE decodes) and int64
        labels, on the CPU. Read from the shards that hold them, once."""
        if not self.val:
            raise LiquidgenError("this loader holds nothing out: train with --val-fraction above 0")
        order = held_out_order(self.manifest, self.val_fraction, self.seed)[:limit]
        wanted: dict[str, list[int]] = {}
        for name, row in order:
            wanted.setdefault(name, []).append(row)
        picked = {}
        for name, rows in wanted.items():
            lat, _, lab = self._shard(name)
            idx = torch.tensor(rows)
            picked.update({(name, r): (x, y) for r, x, y in zip(rows, self.space.raw(lat[idx]), lab[idx])})
        return (torch.stack([picked[key][0] for key in order]),
                torch.stack([picked[key][1] for key in order]))

    def _kept(self, name: str, at: int, n: int) -> torch.Tensor:
        """Positions `at`.. of shard `name`'s n rows that training may use."""
        rows = torch.ones(n, dtype=torch.bool)
        if name in self.val:
            rows[torch.from_numpy(self.val[name])] = False
        return rows.nonzero().flatten() + at

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return self.space.to_vae(z)


def assembled_ahead(batches: Iterator[tuple], depth: int = 3, pin: bool = False) -> Iterator[tuple]:
    """`batches`, each gathered by a background thread (torch's gathers release the GIL) up to
    `depth` ahead of the consumer; with `pin`, copied into page-locked memory so the device copy
    that follows is asynchronous. Same batches, same order; an error in the thread is raised
    here; a consumer that stops early stops the thread."""
    import queue
    import threading

    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for lat, flp, lab, gen in batches:
                if pin:
                    lat, lab = lat.pin_memory(), lab.pin_memory()
                    flp = flp.pin_memory() if flp is not None else None
                if not put((lat, flp, lab, gen)):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer, raised in its thread
            put(exc)
        finally:
            batches.close()

    thread = threading.Thread(target=work, name="batch-assembly", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


class InMemoryLatents(_Base):
    """The whole cache at its stored size in one preallocated buffer on the training device,
    filled shard by shard: the host holds at most one decoded shard besides it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        shape, dtype = (self.count, *self.manifest.storage.latent_shape), TORCH_STORED[self.space.dtype]
        self.latents = torch.empty(shape, dtype=dtype, device=self.device)
        self.flipped = torch.empty(shape, dtype=dtype, device=self.device) if self.flip else None
        self.labels = torch.empty(self.count, dtype=torch.int64, device=self.device)
        at = 0
        for shard in self.manifest.shards:
            if not shard.count:
                continue
            end = at + shard.count
            if end > self.count:
                raise LiquidgenError(f"{self.location}: its shards hold more latents than the manifest's {self.count}")
            if self.device.type == "cpu":  # each shard read straight into its place in the buffer
                self._read_into(shard.name, self.latents[at:end],
                                self.flipped[at:end] if self.flipped is not None else None, self.labels[at:end])
            else:
                lat, flp, lab = self._shard(shard.name)
                if len(lat) != shard.count:
                    raise LiquidgenError(f"{self.location}: shard {shard.name} holds {len(lat)} latents, its manifest says {shard.count}")
                self.latents[at:end].copy_(lat)
                if self.flipped is not None:
                    self.flipped[at:end].copy_(flp)
                self.labels[at:end].copy_(lab)
            at = end
        if at != self.count:
            raise LiquidgenError(f"{self.location}: the shards hold {at} latents, the manifest says {self.count}")
        self.host_gather = self.latents.device.type == "cpu"
        self.train_rows = None  # every row, or those --val-fraction leaves to training
        if self.val:
            starts = np.cumsum([0] + [s.count for s in self.manifest.shards])
            self.train_rows = torch.cat([self._kept(s.name, int(a), s.count)
                                         for s, a in zip(self.manifest.shards, starts)]).to(self.device)

    def stored_batches(self, epoch: int, skip: int = 0) -> Iterator[tuple]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.train_count, generator=gen).to(self.device)  # one copy an epoch, not one a step
        if self.train_rows is not None:
            order = self.train_rows[order]
        for b in range(self.steps_per_epoch()):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            idx = idx[self.rank :: self.world]
            if b < skip:  # resume: the same order, the batches already seen skipped
                continue
            flp = self.flipped[idx] if self.flipped is not None else None
            yield self.latents[idx], flp, self.labels[idx], self._batch_gen(epoch, b)


class StreamingLatents(_Base):
    def __init__(self, *args, buffer_shards: int = 8, max_ahead: int = 4, **kwargs):
        super().__init__(*args, **kwargs)
        self.buffer_shards = buffer_shards
        # Buffers read ahead of the one trained on: one to start with, one more each time the
        # trainer finds the next not yet read, up to `max_ahead` (memory: that many buffers).
        self.depth, self.max_ahead = 1, max_ahead
        if self.remote is not None and self.remote.limit is not None:  # what is read ahead sits on disk
            group = buffer_shards * max((s.bytes for s in self.manifest.shards), default=1)
            self.max_ahead = max(1, min(max_ahead, self.remote.limit // group - 1))
        self.names = [s.name for s in self.manifest.shards if s.count]
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="read-ahead")
        self.ahead: dict[int, _Buffer] = {}  # epoch -> its first buffer, requested early
        self.stored_counts = {s.name: s.count for s in self.manifest.shards}  # what a buffer reads
        self.counts = {name: n - len(self.val.get(name, ())) for name, n in self.stored_counts.items()}  # what trains
        self.resident: list[tuple] | None = None  # the whole cache, when it is one buffer
        # Each rank reads its own shards: every world-th of the epoch's shard order, so an epoch
        # reads each shard once across all ranks. (With fewer shards than ranks, every rank reads
        # all of them and keeps its slice of each batch.)
        self.partitioned = self.world > 1 and len(self.names) >= self.world
        # Shards an epoch leaves out because a run resumed on another number of processes had
        # read them already in that epoch: epoch -> names.
        self.excluded: dict[int, frozenset[str]] = {}

    def _order(self, epoch: int) -> tuple[torch.Generator, list[str]]:
        """The epoch's shard order: (seed, epoch) alone, whatever the number of processes."""
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        names = [self.names[i] for i in torch.randperm(len(self.names), generator=gen)]
        return gen, [n for n in names if n not in self.excluded.get(epoch, ())]

    def _split(self, names: list[str], rank: int, world: int) -> list[list[str]]:
        """Rank `rank`'s shards of `names`, in buffer groups."""
        if world > 1 and len(self.names) >= world:
            names = names[rank::world]
        return [names[i : i + self.buffer_shards] for i in range(0, len(names), self.buffer_shards)]

    def _groups(self, epoch: int) -> tuple[torch.Generator, list[list[str]]]:
        gen, names = self._order(epoch)
        return gen, self._split(names, self.rank, self.world)

    def steps_per_epoch(self, epoch: int | None = None) -> int:
        """The same on every rank: what the rank with the fewest latents can make (the smallest
        world-th of the shards), so no rank waits for a batch that never comes. An epoch that
        lost shards to a resume on another number of processes is shorter."""
        if not self.partitioned:
            if epoch in self.excluded:
                return sum(self.counts[n] for n in self._order(epoch)[1]) // self.batch_size
            return super().steps_per_epoch()
        if epoch in self.excluded:  # may be 0: every shard had been begun
            names = self._order(epoch)[1]
            per_rank = [sum(self.counts[n] for g in self._split(names, r, self.world) for n in g) for r in range(self.world)]
            return min(per_rank) // self.local_batch
        counts = sorted(self.counts[n] for n in self.names)
        return max(sum(counts[: len(counts) // self.world]) // self.local_batch, 1)

    def position(self, epoch: int, batch: int) -> dict:
        return {**super().position(epoch, batch), "excluded": sorted(self.excluded.get(epoch, ()))}

    def start(self, position: dict | None, step: int) -> tuple[int, int]:
        """On the number of processes that saved `position`, the same (epoch, batch). On another,
        the epoch goes on without the shards any rank had begun (the partition changes, and a
        begun buffer cannot be split), so no latent is seen twice in it; the latents left unseen
        in begun buffers (at most a buffer a rank) wait for the next epoch."""
        if position is None:
            return divmod(step, self.steps_per_epoch())
        epoch, batch, world = int(position["epoch"]), int(position["batch"]), int(position["world"])
        self.excluded[epoch] = frozenset(position.get("excluded", ()))
        same = world == self.world or not (world > 1 and len(self.names) >= world) and not self.partitioned
        if same or batch == 0:
            if not self.excluded[epoch]:
                del self.excluded[epoch]
            return epoch, batch
        self.excluded[epoch] |= self._begun(epoch, batch, world)
        return epoch, 0

    def _begun(self, epoch: int, batch: int, world: int) -> frozenset[str]:
        """The shards that `world` processes had begun by `batch` of `epoch` (each rank's buffer
        groups up to the one its `batch`-th batch came from)."""
        _, names = self._order(epoch)
        split = world > 1 and len(self.names) >= world
        size = self.batch_size // world if split else self.batch_size
        begun: set[str] = set()
        for rank in range(world if split else 1):
            made = carry = 0
            for group in self._split(names, rank, world):
                begun.update(group)
                avail = carry + sum(self.counts[n] for n in group)
                made, carry = made + avail // size, avail % size
                if made >= batch:
                    break
        return frozenset(begun)

    def _positions(self, carried: int, group: list[str]) -> torch.Tensor:
        """Where the rows training may use lie in a buffer of `carried` rows, then `group`'s shards."""
        parts, at = [torch.arange(carried)], carried
        for name in group:
            parts.append(self._kept(name, at, self.stored_counts[name]))
            at += self.stored_counts[name]
        return torch.cat(parts)

    def _request(self, group: list[str]) -> "_Buffer":
        """Start reading a group of shards, in the background, straight into one block."""
        return _Buffer(self, group, head=self.batch_size)

    def stored_batches(self, epoch: int, skip: int = 0) -> Iterator[tuple]:
        gen, groups = self._groups(epoch)
        steps = self.steps_per_epoch(epoch)
        if not groups or not steps:  # a resumed epoch whose shards had all been begun
            return
        if len(self.names) <= self.buffer_shards and self.resident is None:  # the whole cache is one buffer: read once
            self.resident = [f.result() for f in [self.pool.submit(self._shard, n) for n in self.names]]
        carry: list[tuple] = []
        made = 0
        queue: deque[_Buffer] = deque()
        if self.resident is None:
            queue.append(self.ahead.pop(epoch, None) or self._request(groups[0]))
        requested = 1
        for i, group in enumerate(groups):
            if self.resident is not None:  # the same shards each epoch, in the epoch's order
                by_name = dict(zip(self.names, self.resident))
                parts = carry + [by_name[n] for n in group]
                lat = torch.cat([p[0] for p in parts])
                flp = torch.cat([p[1] for p in parts]) if self.flip else None
                lab = torch.cat([p[2] for p in parts])
            else:
                head = queue.popleft()
                if not head.done():  # the trainer waits for the disk: read further ahead from now on
                    self.depth = min(self.depth + 1, self.max_ahead)
                lat, flp, lab = head.wait(carry[0] if carry else None)
                # read the next `depth` buffers (then the next epoch's first) while this one is trained on
                while len(queue) < self.depth and requested < len(groups):
                    queue.append(self._request(groups[requested]))
                    requested += 1
                if requested == len(groups) and len(queue) < self.depth and epoch + 1 not in self.ahead:
                    self.ahead[epoch + 1] = self._request(self._groups(epoch + 1)[1][0])
            order = torch.randperm(len(lat) - sum(len(self.val.get(n, ())) for n in group), generator=gen)
            if self.val:  # the buffer holds the held-out rows too: the order skips them
                order = self._positions(len(carry[0][0]) if carry else 0, group)[order]
            size = self.local_batch if self.partitioned else self.batch_size
            full = len(order) // size
            for b in range(full):
                if made >= steps:
                    return
                idx = order[b * size : (b + 1) * size]
                if not self.partitioned:
                    idx = idx[self.rank :: self.world]
                made += 1
                if made <= skip:
                    continue
                yield lat[idx], flp[idx] if flp is not None else None, lab[idx], self._batch_gen(epoch, made)
            rest = order[full * size :]
            carry = [(lat[rest], flp[rest] if flp is not None else None, lab[rest])]


class _Buffer:
    """A group of shards read in the background straight into one preallocated block (no
    concatenation), with `head` rows free in front for what the previous group left over."""

    def __init__(self, loader: StreamingLatents, group: list[str], head: int):
        counts = [loader.stored_counts[name] for name in group]
        shape, dtype = (head + sum(counts), *loader.manifest.storage.latent_shape), TORCH_STORED[loader.space.dtype]
        self.head = head
        self.lat = torch.empty(shape, dtype=dtype)
        self.flp = torch.empty(shape, dtype=dtype) if loader.flip else None
        self.lab = torch.empty(shape[0], dtype=torch.int64)
        self.futures: list[Future] = []
        at = head
        for name, n in zip(group, counts):
            flp = self.flp[at : at + n] if self.flp is not None else None
            self.futures.append(loader.pool.submit(loader._read_into, name, self.lat[at : at + n], flp, self.lab[at : at + n]))
            at += n

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def wait(self, carry: tuple | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The block once every shard is in, with `carry` (fewer than `head` rows) placed just
        before it."""
        for future in self.futures:
            future.result()
        k = len(carry[0]) if carry else 0
        start = self.head - k
        if k:
            self.lat[start : self.head].copy_(carry[0])
            if self.flp is not None:
                self.flp[start : self.head].copy_(carry[1])
            self.lab[start : self.head].copy_(carry[2])
        return self.lat[start:], self.flp[start:] if self.flp is not None else None, self.lab[start:]


class MixedLatents:
    """Several caches in one run, mixed by weight (as MosaicML's Streams are): each step's batch
    comes from one cache, drawn with probability `weights`, from a generator seeded by the step,
    so a resumed run replays the same choices. The caches must share one latent space (VAE,
    latent shape, what is stored, labels); they are normalized by their pooled statistics."""

    def __init__(self, loaders: list[_Base], weights: list[float], seed: int = 0):
        if len(weights) != len(loaders) or any(not w > 0 for w in weights):
            raise LiquidgenError(f"--mix needs one positive weight per --cache ({len(loaders)}), got {weights}")
        first = loaders[0].manifest
        for data in loaders[1:]:
            m = data.manifest
            fields = {"vae.id": (first.vae.get("id"), m.vae.get("id")), "vae.class": (first.vae.get("class"), m.vae.get("class")),
                      "vae.scaling_factor": (first.vae.get("scaling_factor"), m.vae.get("scaling_factor")),
                      "vae.shift_factor": (first.vae.get("shift_factor"), m.vae.get("shift_factor")),
                      "storage.latent_shape": (first.storage.latent_shape, m.storage.latent_shape),
                      "storage.stored": (first.storage.stored, m.storage.stored), "label_names": (first.label_names, m.label_names)}
            for name, (a, b) in fields.items():
                if a != b:
                    raise LiquidgenError(f"{data.location} and {loaders[0].location} differ in {name} ({b!r} vs {a!r}): "
                                         "they cannot be mixed in one run")
        self.loaders, self.seed = loaders, seed
        self.weights = torch.tensor(weights, dtype=torch.float64) / sum(weights)
        pooled = merge_stats([d.manifest.stats for d in loaders])
        self.manifest = dataclasses.replace(first, stats=pooled, count=sum(d.count for d in loaders),
                                            sources=[src for d in loaders for src in d.manifest.sources], shards=[], skipped=[])
        for data in loaders:  # one latent space for all: the pooled per-channel statistics
            st = data.manifest.storage
            data.space = LatentSpace(pooled["mean"][: data.space.channels], pooled["std"][: data.space.channels], st.dtype,
                                     st.quant, st.stored, st.flip == "both", data.device)
        self.space = loaders[0].space
        self.shape, self.count, self.num_classes = loaders[0].shape, self.manifest.count, loaders[0].num_classes
        self.location = " + ".join(d.location for d in loaders)
        self.batch_size = loaders[0].batch_size

    def steps_per_epoch(self) -> int:
        return sum(d.steps_per_epoch() for d in self.loaders)

    def position(self, epoch: int, batch: int) -> dict:
        return {"epoch": epoch, "batch": batch, "world": self.loaders[0].world}

    def start(self, position: dict | None, step: int) -> tuple[int, int]:
        """As `_Base.start`. The mixed caches' own positions follow from the global step; a
        streamed cache resumed on another number of processes is read in that number's order."""
        if position is None:
            return divmod(step, self.steps_per_epoch())
        return int(position["epoch"]), int(position["batch"])

    def choices(self, steps: int) -> torch.Tensor:
        """Which cache each of the first `steps` global steps draws from."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 17)
        return torch.multinomial(self.weights, steps, replacement=True, generator=gen)

    def batches(self, epoch: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        spe = self.steps_per_epoch()
        start, end = epoch * spe, (epoch + 1) * spe
        picks = self.choices(end).tolist()
        streams = []
        for i, data in enumerate(self.loaders):  # where each cache's own order stands at this epoch's start
            used = sum(1 for c in picks[:start] if c == i)
            streams.append(self._stream(data, used))
        for step in range(start, end):
            batch = next(streams[picks[step]])
            if step - start >= skip:
                yield batch

    @staticmethod
    def _stream(data: _Base, used: int) -> Iterator:
        """A cache's batches from its `used`-th on, through as many of its own epochs as needed."""
        spe = data.steps_per_epoch()
        epoch, skip = divmod(used, spe)
        while True:
            yield from data.batches(epoch, skip=skip)
            epoch, skip = epoch + 1, 0

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return self.space.to_vae(z)


def open_latents(root: str | list[str], batch_size: int, memory_limit_gb: float = 4.0, keep_shards: bool = True,
                 cache_limit_gb: float | None = None, mix: list[float] | None = None, **kwargs):
    """In memory when the cache's stored size fits `memory_limit_gb`, else streamed; a URL
    (any fsspec location) is streamed, its shards fetched and verified as they are needed;
    several caches are mixed by the weights `mix` (equal by default)."""
    if not isinstance(root, str):
        if len(root) == 1:
            root = root[0]
        else:
            if kwargs.get("val_fraction"):
                raise LiquidgenError("--val-fraction holds out part of one --cache; with several, train on one or "
                                     "hold out none")
            loaders = [open_latents(r, batch_size, memory_limit_gb, keep_shards, cache_limit_gb, **kwargs) for r in root]
            return MixedLatents(loaders, list(mix or [1.0] * len(root)), kwargs.get("seed", 0))
    if "://" in root:
        if cache_limit_gb is not None and cache_limit_gb <= 0:
            raise LiquidgenError("--cache-limit-gb must be positive")
        remote = RemoteShards(root, keep=keep_shards, limit_gb=cache_limit_gb)
        return StreamingLatents(root, batch_size, remote=remote, **kwargs)
    manifest = require_complete(root)
    shape = manifest.storage.latent_shape
    copies = 2 if manifest.storage.flip == "both" else 1
    itemsize = TORCH_STORED[manifest.storage.dtype].itemsize
    size_gb = manifest.count * math.prod(shape) * itemsize * copies / 2**30
    cls = InMemoryLatents if size_gb <= memory_limit_gb else StreamingLatents
    return cls(root, batch_size, **kwargs)
