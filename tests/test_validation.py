"""Evaluation during training: `--val-fraction` holds a seeded part of the cache out of
training (checked by keys: no held-out latent is ever yielded), `--eval-every` scores the EMA
model on it, and the scores reach metrics.jsonl, TensorBoard and the plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from liquidgen.cache.loader import InMemoryLatents, StreamingLatents, stored_numpy
from liquidgen.cache.split import held_out
from liquidgen.cache.store import CacheDir
from liquidgen.config import TrainConfig
from liquidgen.errors import LiquidgenError
from liquidgen.pipeline.train import train

from test_train import tcfg


def keys_by_row(cache) -> dict[bytes, str]:
    """Each stored latent's bytes -> its cache key (shard, row): how a yielded batch is traced back."""
    dirs, out = CacheDir(cache), {}
    manifest = dirs.manifest()
    for shard in manifest.shards:
        data = dirs.read(shard.name, manifest.storage.backend)
        for i, row in enumerate(stored_numpy(torch.from_numpy(data.latents)).reshape(len(data), -1)):
            out[row.tobytes()] = f"{shard.name}/{i}"
    return out


def test_the_split_is_seeded_exact_and_read_from_the_manifest_alone(cache40):
    manifest = CacheDir(cache40).manifest()
    a, b, other = held_out(manifest, 0.1, seed=0), held_out(manifest, 0.1, seed=0), held_out(manifest, 0.1, seed=1)
    assert sum(len(r) for r in a.values()) == 4  # round(0.1 x 40), not about 4
    assert {k: v.tolist() for k, v in a.items()} == {k: v.tolist() for k, v in b.items()}
    assert {k: v.tolist() for k, v in a.items()} != {k: v.tolist() for k, v in other.items()}
    assert held_out(manifest, 0.0) == {}
    with pytest.raises(LiquidgenError, match="at least one latent on each side"):
        held_out(manifest, 0.001)


@pytest.mark.parametrize("cls", [InMemoryLatents, StreamingLatents])
@pytest.mark.parametrize("world", [1, 2])
def test_held_out_latents_are_never_yielded_and_the_rest_each_once_an_epoch(cache40, cls, world):
    """Counted by keys over two epochs on every rank: no held-out key, no key twice an epoch, and
    an epoch as long as the training part allows."""
    keys = keys_by_row(cache40)
    kwargs = {"buffer_shards": 1} if cls is StreamingLatents else {}
    loaders = [cls(str(cache40), 4, seed=5, rank=r, world=world, val_fraction=0.25, **kwargs) for r in range(world)]
    val = {f"{name}/{row}" for name, rows in loaders[0].val.items() for row in rows}
    assert len(val) == 10 and loaders[0].train_count == 30
    x_out, _ = loaders[0].held_out()
    assert {keys[r.tobytes()] for r in stored_numpy(x_out.to(torch.float16)).reshape(10, -1)} == val
    for epoch in (0, 1):
        seen = [keys[r.tobytes()] for data in loaders for lat, _, _, _ in data.stored_batches(epoch)
                for r in stored_numpy(lat.contiguous()).reshape(len(lat), -1)]
        assert not set(seen) & val
        assert len(seen) == len(set(seen)) == loaders[0].steps_per_epoch() * 4
        if not (cls is StreamingLatents and world == 2):  # (there, ranks stop with the one holding fewest rows)
            assert len(seen) == 28  # 30 less the remainder of a batch of 4
    for data in loaders:
        if cls is StreamingLatents:
            data.pool.shutdown(wait=True)


def test_training_scores_the_held_out_part_into_metrics_tensorboard_and_the_plot(cache40, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(tcfg(cache40, run, steps=8, ckpt_every=8, val_fraction=0.2, eval_every=4, eval_n=8, eval_steps=4,
               report_to="tensorboard"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in scored] == [4, 8]
    for r in scored:
        bins = [r[f"val_loss/t={t}"] for t in ("0.1", "0.3", "0.5", "0.7", "0.9")]
        assert np.isclose(r["val_loss"], np.mean(bins)) and r["swd_mean"] > 0 and r["fd_random"] > 0
    config = json.loads((run / "config.json").read_text())
    assert config["eval"]["held_out"] == 8 and config["eval"]["n"] == 8 and config["eval"]["steps"] == 4
    assert config["train"]["val_fraction"] == 0.2
    events = EventAccumulator(str(run / "liquidgen"), size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in events.Scalars("val_loss")] == [4, 8]
    assert [e.step for e in events.Scalars("swd_mean")] == [4, 8]
    assert (run / "loss.png").stat().st_size > 0
    with pytest.raises(LiquidgenError, match="--val-fraction 0.2"):  # another split would leak scored latents
        train(tcfg(cache40, run, steps=12, ckpt_every=8, val_fraction=0.1, resume=True))


def test_the_held_out_loss_is_the_loss_liquidgen_eval_computes(cache40, tmp_path):
    """One evaluator: a run's scores at its last step equal `Evaluator.flow_loss` on its EMA."""
    from liquidgen.pipeline.checkpoint import load_run
    from liquidgen.pipeline.evaluator import Evaluator

    run = tmp_path / "run"
    train(tcfg(cache40, run, steps=4, ckpt_every=4, val_fraction=0.2, eval_every=4))
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    model, config, _ = load_run(run)
    data = InMemoryLatents(str(cache40), 8, val_fraction=0.2)
    x0, labels = data.held_out()
    bins = Evaluator(data.space.normalize(x0), labels, config["latents"]).flow_loss(model, "cpu")
    assert all(np.isclose(last[f"val_loss/{k}"], v, rtol=1e-5) for k, v in bins.items())


@pytest.mark.reliability("train --eval-every or --eval-n without --val-fraction",
                         "one line: add --val-fraction; nothing written")
def test_scores_without_a_held_out_part_are_refused(tmp_path):
    with pytest.raises(LiquidgenError, match="add --val-fraction"):
        TrainConfig(cache="c", out=str(tmp_path / "r"), eval_every=10)
    with pytest.raises(LiquidgenError, match="--val-fraction must be a finite number in"):
        TrainConfig(cache="c", out=str(tmp_path / "r"), val_fraction=0.7)
