"""Training the way the field trains: gradient accumulation through Accelerate's accumulate(),
experiment trackers through Accelerate's trackers (TensorBoard's event files read back)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from liquidgen.pipeline import checkpoint as ckpt
from liquidgen.pipeline.train import train

from test_train import tcfg


def weights(run) -> dict[str, torch.Tensor]:
    return ckpt.load_weights(ckpt.latest_checkpoint(run), "model")


def test_accumulated_batches_make_the_update_of_one_large_batch(cache40, tmp_path):
    """Two batches of 4 summed into a step give the step of one batch of 8: the same latents
    (the epoch's order does not depend on the batch size), the same noise (drawn per step), so
    the same weights after a step within float tolerance, and the same losses after six (Adam
    then amplifies float noise in parameters whose gradients are near zero: their weights drift
    apart by ~1e-4, so six steps are compared by loss)."""
    for steps in (1, 6):
        big = train(tcfg(cache40, tmp_path / f"big{steps}", batch_size=8, steps=steps, ckpt_every=steps, class_dropout=0.0))
        acc = train(tcfg(cache40, tmp_path / f"acc{steps}", batch_size=4, grad_accum=2, steps=steps, ckpt_every=steps,
                         class_dropout=0.0))
        assert len(acc.losses) == len(big.losses) == steps
        assert torch.allclose(torch.tensor(acc.losses), torch.tensor(big.losses), rtol=1e-5, atol=0)
    a, b = weights(tmp_path / "big1"), weights(tmp_path / "acc1")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    # and it is not the run of one batch of 4 per step
    small = train(tcfg(cache40, tmp_path / "small", batch_size=4, steps=6, ckpt_every=6, class_dropout=0.0))
    assert not torch.allclose(torch.tensor(small.losses), torch.tensor(big.losses), rtol=1e-3)
    records = [json.loads(line) for line in (tmp_path / "acc6" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 6 and records[-1]["latents_per_s"] > 0


def test_a_run_with_accumulation_resumes_bit_for_bit(cache40, tmp_path):
    whole = train(tcfg(cache40, tmp_path / "whole", batch_size=4, grad_accum=3, steps=8, ckpt_every=4))
    train(tcfg(cache40, tmp_path / "parts", batch_size=4, grad_accum=3, steps=4, ckpt_every=4))
    state = ckpt.load_state(ckpt.latest_checkpoint(tmp_path / "parts"))
    assert (state["position"]["epoch"], state["position"]["batch"]) == (1, 2)  # 12 batches of 4: 10 an epoch
    resumed = train(tcfg(cache40, tmp_path / "parts", batch_size=4, grad_accum=3, steps=8, ckpt_every=4, resume=True))
    assert resumed.losses == whole.losses[4:]


def test_tensorboard_receives_the_config_the_metrics_and_the_previews(cache40, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(tcfg(cache40, run, steps=8, log_every=2, ckpt_every=8, preview_every=4, preview_n=4, report_to="tensorboard"))
    logs = run / "liquidgen"
    events = EventAccumulator(str(logs), size_guidance={"images": 0, "scalars": 0}).Reload()
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [2, 4, 6, 8]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [round(e.value, 5) for e in loss] == [round(r["loss"], 5) for r in metrics]
    assert {"lr", "latents_per_s"} <= set(events.Tags()["scalars"])
    previews = events.Images("preview")
    assert [e.step for e in previews] == [4, 8] and all(e.width > 0 and e.height > 0 for e in previews)


@pytest.mark.reliability("train --report-to tensorboard where TensorBoard is not installed",
                         "one line naming the extra to install; no run folder created")
def test_a_tracker_that_is_not_installed_is_one_line(cache40, tmp_path):
    blocked = tmp_path / "blocked" / "tensorboard"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('not installed, for this test')\n")
    env = {**os.environ, "PYTHONPATH": f"{blocked.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", "liquidgen", "train", "--cache", str(cache40), "--out",
                           str(tmp_path / "run"), "--model", "nano", "--steps", "2", "--report-to", "tensorboard"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "pip install 'liquidgen[tensorboard]'" in done.stderr
    assert not (tmp_path / "run").exists()
