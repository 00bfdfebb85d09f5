"""The training loaders: every latent once per epoch, normalized, reproducible, rank-disjoint."""

from __future__ import annotations

import pytest
import torch

from conftest import TAEF2
from liquidgen.cache.loader import InMemoryLatents, StreamingLatents, open_latents
from liquidgen.pipeline.encode import EncodeConfig, encode


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
    plain = (data.latents - data.mean) / data.std
    mirrored = (data.flipped - data.mean) / data.std
    from_plain = sum(any(torch.equal(row, p) for p in plain) for row in x)
    from_mirror = sum(any(torch.equal(row, m) for m in mirrored) for row in x)
    assert from_plain + from_mirror == 40 and 8 <= from_mirror <= 32


def test_big_caches_stream(cache):
    assert isinstance(open_latents(str(cache), 8), InMemoryLatents)
    assert isinstance(open_latents(str(cache), 8, memory_limit_gb=1e-6), StreamingLatents)
