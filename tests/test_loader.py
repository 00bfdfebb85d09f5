"""The training loaders: every latent once per epoch, normalized, reproducible, rank-disjoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TAEF2, make_subset
from liquidgen.cache.loader import InMemoryLatents, StreamingLatents, assembled_ahead, open_latents, stored_numpy
from liquidgen.cache.builder import upgrade
from liquidgen.cache.shards import read_shard, shard_digest, shard_files
from liquidgen.cache.store import CacheDir, verify_cache
from liquidgen.errors import LiquidgenError
from liquidgen.pipeline.encode import EncodeConfig, encode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from format1 import write_tar_v1, write_zarr_v1  # noqa: E402


@pytest.fixture(scope="module")
def cache(paintings40, tmp_path_factory):
    out = tmp_path_factory.mktemp("loader") / "c"
    encode(EncodeConfig(str(paintings40), str(out), vae=str(TAEF2), resolution=64, shard_size=8, flip="both",
                        workers=1, progress=False))
    return out


@pytest.mark.parametrize("cls", [InMemoryLatents, StreamingLatents])
def test_an_epoch_is_normalized_reproducible_and_without_repeats(cache, cls):
    kwargs = {"buffer_shards": 2} if cls is StreamingLatents else {}
    data = cls(str(cache), 8, seed=3, **kwargs)
    epoch = list(data.batches(0))
    assert len(epoch) == data.steps_per_epoch() == 5
    x = torch.cat([b[0] for b in epoch])
    assert x.shape == (40, 32, 8, 8)
    assert x.mean(dim=(0, 2, 3)).abs().max() < 0.5 and 0.6 < x.std() < 1.4  # normalized by the manifest
    again = list(cls(str(cache), 8, seed=3, **kwargs).batches(0))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epoch, again))
    other = list(data.batches(1))
    assert not torch.equal(epoch[0][0], other[0][0])
    skipped = list(data.batches(0, skip=3))
    assert len(skipped) == 2 and torch.equal(skipped[0][0], epoch[3][0])


def test_ranks_see_disjoint_halves_of_each_batch(cache):
    whole = list(InMemoryLatents(str(cache), 8, seed=1).batches(0))
    r0 = list(InMemoryLatents(str(cache), 8, seed=1, rank=0, world=2).batches(0))
    r1 = list(InMemoryLatents(str(cache), 8, seed=1, rank=1, world=2).batches(0))
    for w, a, b in zip(whole, r0, r1):
        assert a[0].shape[0] == b[0].shape[0] == 4
        assert torch.equal(w[1].sort().values, torch.cat([a[1], b[1]]).sort().values)


def test_flipped_copies_are_used_about_half_the_time(cache):
    data = InMemoryLatents(str(cache), 40, seed=0)
    x, _ = next(iter(data.batches(0)))
    plain = data.space.to_model(data.latents)
    mirrored = data.space.to_model(data.flipped)
    from_plain = sum(any(torch.equal(row, p) for p in plain) for row in x)
    from_mirror = sum(any(torch.equal(row, m) for m in mirrored) for row in x)
    assert from_plain + from_mirror == 40 and 8 <= from_mirror <= 32


def test_big_caches_stream(cache):
    assert isinstance(open_latents(str(cache), 8), InMemoryLatents)
    assert isinstance(open_latents(str(cache), 8, memory_limit_gb=1e-6), StreamingLatents)


def test_the_resident_cache_is_held_at_its_stored_size(cache):
    data = InMemoryLatents(str(cache), 8)
    assert data.latents.dtype == data.flipped.dtype == torch.float16
    assert data.latents.shape == (40, 32, 8, 8)  # one preallocated buffer, not a float32 copy
    x, _ = next(iter(data.batches(0)))
    assert x.dtype == torch.float32  # widened per batch only


def test_resident_and_streaming_give_the_same_latents_each_epoch(paintings40, tmp_path):
    out = tmp_path / "c"  # no flips: which copy a batch takes would differ between the two orders
    encode(EncodeConfig(str(paintings40), str(out), vae=str(TAEF2), resolution=64, shard_size=8, workers=0, progress=False))

    def epoch(cls, **kw):
        x = torch.cat([b[0] for b in cls(str(out), 8, seed=5, **kw).batches(0)])
        return x.flatten(1).sum(1).sort().values  # the multiset, by a per-latent fingerprint

    assert torch.allclose(epoch(InMemoryLatents), epoch(StreamingLatents, buffer_shards=2), atol=1e-4)


def format_1_copy(new, old, fmt: str) -> None:
    """`new` copied to `old` with every shard rewritten the way format 1 laid shards out."""
    shutil.copytree(new, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format_version"] = 1
    for shard in manifest["shards"]:
        path = old / "shards" / shard["name"]
        data = read_shard(path, fmt)
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        (write_zarr_v1 if fmt == "zarr" else write_tar_v1)(path, data)
        shard["sha256"], shard["bytes"] = shard_digest(path)
        shard["files"] = shard_files(path)
    (old / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("fmt", ["zarr", "wds"])
def test_a_cache_of_format_1_still_reads_the_same_latents_and_upgrades_bit_for_bit(paintings40, tmp_path, fmt):
    new, old = tmp_path / "new", tmp_path / "old"
    encode(EncodeConfig(str(paintings40), str(new), vae=str(TAEF2), resolution=64, shard_size=16, format=fmt,
                        workers=0, progress=False, limit=24))
    format_1_copy(new, old, fmt)
    assert CacheDir(old).manifest().format_version == 1
    a, b = InMemoryLatents(str(new), 8), InMemoryLatents(str(old), 8)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.labels, b.labels)
    name = CacheDir(new).manifest().shards[0].name
    assert read_shard(new / "shards" / name, fmt).keys == read_shard(old / "shards" / name, fmt).keys

    assert upgrade(old, progress=False) == 2
    assert CacheDir(old).manifest().format_version == 2 and verify_cache(old)[1] == []
    c = InMemoryLatents(str(old), 8)
    assert torch.equal(a.latents, c.latents) and torch.equal(a.labels, c.labels)
    assert upgrade(old, progress=False) == 0  # already current
    assert sorted(p.name for p in old.iterdir() if p.name != ".verified.json") == ["manifest.json", "shards", "skipped.log"]


def test_an_upgrade_stopped_between_swapping_the_shards_and_the_manifest_still_reads(paintings40, tmp_path):
    """The one moment a kill cannot be aimed at reliably, made on purpose: the rewritten shards
    are in shards/, manifest.json still describes the old ones. Readers take the pending
    manifest that describes what is on disk, and a rerun finishes."""
    new, old = tmp_path / "new", tmp_path / "old"
    encode(EncodeConfig(str(paintings40), str(new), vae=str(TAEF2), resolution=64, shard_size=8, workers=0,
                        progress=False, limit=24))
    format_1_copy(new, old, "zarr")
    before = (old / "manifest.json").read_text()
    shutil.copytree(old / "shards", tmp_path / "old-shards")
    assert upgrade(old, progress=False) == 3
    # back to the moment after the swap: new shards in place, the old ones aside, two manifests
    (old / "manifest.upgrade.json").write_text((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(before)
    shutil.copytree(tmp_path / "old-shards", old / "shards.upgrade")
    want = InMemoryLatents(str(new), 8).latents
    assert torch.equal(InMemoryLatents(str(old), 8).latents, want)
    assert upgrade(old, progress=False) == 0 and CacheDir(old).manifest().format_version == 2
    assert not (old / "manifest.upgrade.json").exists() and not (old / "shards.upgrade").exists()
    assert torch.equal(InMemoryLatents(str(old), 8).latents, want) and verify_cache(old)[1] == []


@pytest.mark.reliability('kill -9 during `cache upgrade`', 'the cache stays readable; the rerun finishes, every latent bit for bit')
def test_a_killed_upgrade_leaves_a_readable_cache_and_a_rerun_finishes_it(tmp_path):
    new, old = tmp_path / "new", tmp_path / "old"
    images = make_subset(tmp_path / "images", per_class=40)  # 80 one-latent shards: an upgrade of a few seconds
    encode(EncodeConfig(str(images), str(new), vae=str(TAEF2), resolution=64, shard_size=1, workers=0, progress=False))
    format_1_copy(new, old, "zarr")
    want = InMemoryLatents(str(new), 8).latents
    delay, kills, midway = 0.5, 0, 0
    while CacheDir(old).manifest().format_version == 1 and kills < 14:
        job = subprocess.Popen([sys.executable, "-m", "liquidgen", "cache", "upgrade", str(old)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        job.send_signal(signal.SIGKILL)
        job.wait()
        kills += 1
        midway += (old / "shards.upgrade").exists()  # the kill landed while shards were being rewritten
        assert torch.equal(InMemoryLatents(str(old), 8).latents, want), f"unreadable after a kill at {delay:.2f} s"
        delay *= 1.25
    assert midway >= 1, f"no kill landed mid-upgrade in {kills} tries"
    done = subprocess.run([sys.executable, "-m", "liquidgen", "cache", "upgrade", str(old)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert verify_cache(old)[1] == [] and CacheDir(old).manifest().format_version == 2
    assert torch.equal(InMemoryLatents(str(old), 8).latents, want)
    assert not (old / "shards.upgrade").exists() and not (old / "manifest.upgrade.json").exists()


def test_two_streaming_ranks_read_disjoint_shards_that_cover_the_cache(cache):
    """Counted: which shards each rank's loader reads in an epoch, and what it yields."""
    reads, seen, steps = {0: [], 1: []}, {0: [], 1: []}, set()
    for rank in (0, 1):
        data = StreamingLatents(str(cache), 8, seed=2, rank=rank, world=2, buffer_shards=2)
        real = data.cache.read
        data.cache.read = lambda name, *a, real=real, rank=rank: reads[rank].append(name) or real(name, *a)
        for x, y in data.batches(0):
            assert x.shape[0] == 4  # each rank's half of the global batch of 8
            seen[rank].append(x)
        data.pool.shutdown(wait=True)
        for name in data._groups(1)[1][0]:  # the next epoch's first buffer, read ahead
            reads[rank].remove(name)
        steps.add(len(seen[rank]))
        assert len(seen[rank]) == data.steps_per_epoch()
    # 5 shards of 8: ranks hold 3 and 2 shards, so both make 16 // 4 = 4 steps
    assert steps == {4}
    names = {s.name for s in CacheDir(cache).manifest().shards}
    assert set(reads[0]).isdisjoint(reads[1]) and set(reads[0]) | set(reads[1]) == names
    assert len(reads[0]) + len(reads[1]) == len(names)  # each shard read once in the epoch
    ours = torch.cat(seen[0] + seen[1]).flatten(1).sum(1)
    assert len(set(ours.tolist())) == len(ours) == 32  # no latent twice


def test_batches_gathered_off_the_training_thread_are_the_same_batches(cache):
    import threading

    data = StreamingLatents(str(cache), 8, seed=4, buffer_shards=2)
    inline = [b[0] for b in data.stored_batches(0)]
    ahead = [b[0] for b in assembled_ahead(data.stored_batches(0))]
    assert len(inline) == len(ahead) == 5 and all(torch.equal(a, b) for a, b in zip(inline, ahead))

    def broken():
        yield next(data.stored_batches(0))
        raise LiquidgenError("shard s00-000003 is corrupt")

    with pytest.raises(LiquidgenError, match="corrupt"):  # raised where the trainer reads
        list(assembled_ahead(broken()))
    early = assembled_ahead(data.stored_batches(0), depth=1)
    next(early)
    early.close()  # a run that stops mid-epoch leaves no thread behind
    assert not any(t.name == "batch-assembly" for t in threading.enumerate())


def test_read_ahead_deepens_when_the_trainer_waits_for_the_disk(ten_shards):
    import time as clock

    data = StreamingLatents(str(ten_shards), 4, seed=1, buffer_shards=1, max_ahead=3)
    real = data.cache.read
    data.cache.read = lambda name, *a: clock.sleep(0.05) or real(name, *a)  # a slow disk
    first = [b[0] for b in data.stored_batches(0)]
    assert data.depth == 3  # it waited, so it read further ahead, up to the limit
    quick = StreamingLatents(str(ten_shards), 4, seed=1, buffer_shards=1, max_ahead=3)
    assert all(torch.equal(a, b) for a, b in zip(first, (b[0] for b in quick.stored_batches(0))))  # same batches


@pytest.fixture(scope="module")
def ten_shards(paintings40, tmp_path_factory):
    out = tmp_path_factory.mktemp("ten") / "c"
    encode(EncodeConfig(str(paintings40), str(out), vae=str(TAEF2), resolution=64, shard_size=4, workers=0, progress=False))
    return out


def rows(lat: torch.Tensor) -> list[bytes]:
    return [r.tobytes() for r in stored_numpy(lat.contiguous()).reshape(len(lat), -1)]


def read_epoch(cache, world: int, position: dict | None, batches: int | None = None):
    """Every rank of `world` from `position` through `batches` batches of epoch 0 (all when None):
    the latents seen, the shards read for epoch 0 and where the run stands after."""
    seen, reads = [], []
    for rank in range(world):
        data = StreamingLatents(str(cache), 6, seed=5, rank=rank, world=world, buffer_shards=1)
        real = data.cache.read
        data.cache.read = lambda name, *a, real=real: reads.append(name) or real(name, *a)
        epoch, skip = data.start(position, 0)
        made = skip
        for lat, _, _, _ in data.stored_batches(epoch, skip):
            if batches is not None and made == batches:
                break
            seen += rows(lat)
            made += 1
        data.pool.shutdown(wait=True)
        if batches is None:  # the next epoch's first buffer was read ahead: not epoch 0's
            reads.remove(data._groups(1)[1][0][0])
        after = data.position(epoch, made)
    return seen, reads, after


@pytest.mark.parametrize("before, after", [(2, 1), (2, 3), (1, 2)])
def test_a_streaming_epoch_resumed_on_another_number_of_processes_repeats_no_shard(ten_shards, before, after):
    """Counted: 10 shards of 4. Two batches on `before` processes, then the rest of the epoch on
    `after`: no latent twice, no shard read twice, and at most a begun buffer per old rank unseen."""
    first, read_first, position = read_epoch(ten_shards, before, None, batches=2)
    assert position["world"] == before and position["batch"] == 2
    rest, read_rest, _ = read_epoch(ten_shards, after, position)
    everything = first + rest
    assert len(set(everything)) == len(everything)  # no latent twice in the epoch
    cache = CacheDir(ten_shards)
    shard_of = {row: s.name for s in cache.manifest().shards for row in rows(torch.from_numpy(cache.read(s.name, "zarr").latents))}
    trained_before = {shard_of[r] for r in first}
    assert trained_before.isdisjoint(read_rest) and len(set(read_rest)) == len(read_rest)  # each shard once
    assert len(everything) >= 40 - before * 4 - after * 4  # begun buffers, the new ranks' remainders


COUNTED_TRAIN = r"""
import os, sys
from liquidgen.cache.store import CacheDir
real = CacheDir.read
def counted(self, name, *args):
    with open(os.environ["READS_LOG"], "a") as log:
        log.write(f"{os.environ['RANK']}\t{name}\n")
    return real(self, name, *args)
CacheDir.read = counted
from liquidgen.cli import main
sys.argv[0] = "liquidgen"
main()
"""


def test_two_torchrun_ranks_stream_disjoint_shards_that_cover_the_cache(ten_shards, tmp_path):
    """Counted in the ranks themselves: every shard read by exactly one of two gloo processes in
    an epoch of `liquidgen train` streaming the cache."""
    script, log = tmp_path / "counted.py", tmp_path / "reads.log"
    script.write_text(COUNTED_TRAIN)
    spe = StreamingLatents(str(ten_shards), 4, world=2).steps_per_epoch()  # one epoch: 10 shards of 4
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script), "train",
           "--cache", str(ten_shards), "--out", str(tmp_path / "run"), "--model", "nano", "--batch-size", "4",
           "--steps", str(spe), "--memory-limit-gb", "0", "--preview-every", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "READS_LOG": str(log), "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    reads = {0: [], 1: []}
    for line in log.read_text().splitlines():
        rank, name = line.split("\t")
        reads[int(rank)].append(name)
    for rank in (0, 1):  # after its epoch-0 shards a rank reads ahead only its next epoch's first buffer
        plan = StreamingLatents(str(ten_shards), 4, rank=rank, world=2)
        k = sum(len(g) for g in plan._groups(0)[1])
        assert set(reads[rank][k:]) <= set(plan._groups(1)[1][0])
        reads[rank] = reads[rank][:k]
    names = {s.name for s in CacheDir(ten_shards).manifest().shards}
    assert set(reads[0]).isdisjoint(reads[1]) and set(reads[0]) | set(reads[1]) == names
    assert len(reads[0]) + len(reads[1]) == len(names) == 10  # each shard once in the epoch


@pytest.mark.parametrize("dtype, fmt", [("bf16", "zarr"), ("uint8", "wds"), ("fp32", "zarr")])
def test_the_resident_buffer_is_read_into_bit_for_bit(paintings12, tmp_path, dtype, fmt):
    out = tmp_path / "c"
    encode(EncodeConfig(str(paintings12), str(out), vae=str(TAEF2), resolution=64, shard_size=5, dtype=dtype,
                        format=fmt, workers=0, progress=False))
    data = InMemoryLatents(str(out), 4)
    cache = CacheDir(out)
    stored = np.concatenate([read_shard(cache.shard_path(s.name), fmt).latents for s in cache.manifest().shards])
    assert np.array_equal(stored_numpy(data.latents), stored) and len(stored) == 12


def test_mixed_caches_give_batches_in_proportion_to_their_weights(paintings40, tmp_path):
    from liquidgen.cache.loader import MixedLatents

    a, b = tmp_path / "a", tmp_path / "b"
    for out, limit in ((a, 24), (b, 16)):
        encode(EncodeConfig(str(paintings40), str(out), vae=str(TAEF2), resolution=64, shard_size=8, workers=0,
                            progress=False, limit=limit))
    data = open_latents([str(a), str(b)], 4, mix=[0.8, 0.2], seed=1)
    assert isinstance(data, MixedLatents) and data.count == 40
    picks = data.choices(2000)
    share = (picks == 0).float().mean().item()
    assert abs(share - 0.8) < 4 * (0.8 * 0.2 / 2000) ** 0.5  # within 4 standard errors
    # the batches come from the chosen cache; an epoch and a resumed part of it agree
    epoch = list(data.batches(1))
    assert len(epoch) == data.steps_per_epoch() == 6 + 4
    again = list(data.batches(1, skip=3))
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(epoch[3:], again, strict=True))
    # one latent space: both normalized by the pooled statistics
    assert torch.equal(data.loaders[0].space.mean, data.loaders[1].space.mean)


@pytest.mark.reliability('mixing caches of different VAEs, shapes or channels', 'refused naming the field')
def test_caches_of_different_latent_spaces_are_refused_naming_the_field(paintings40, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    encode(EncodeConfig(str(paintings40), str(a), vae=str(TAEF2), resolution=64, workers=0, progress=False, limit=8))
    encode(EncodeConfig(str(paintings40), str(b), vae=str(TAEF2), resolution=128, workers=0, progress=False, limit=8))
    with pytest.raises(LiquidgenError, match="differ in storage.latent_shape"):
        open_latents([str(a), str(b)], 4)
    with pytest.raises(LiquidgenError, match="one positive weight per --cache"):
        open_latents([str(a), str(a)], 4, mix=[1.0])
