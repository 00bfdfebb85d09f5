"""`--compile`: every family's forward is one graph for torch.compile (no graph break, checked
with `torch._dynamo.explain`, which traces without compiling: seconds); and, slow (inductor
compiles for minutes on 2 cores, so `make test-all`), a compiled run's losses equal eager's and
a resumed compiled run equals an uninterrupted one bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli
from liquidgen.backbone.models import build_model, model_spec

FAMILIES = ["nano", "liquiddiffusion-tiny", "liquidflow-tiny", "liquidgen-s", "dit-tiny", "unet-tiny"]


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_is_one_graph_for_torch_compile(name):
    torch.manual_seed(0)
    model = build_model(model_spec(name, 32, 2, 8)).train()  # as training calls it
    x, t, y = torch.randn(2, 32, 8, 8), torch.rand(2), torch.tensor([0, 1])
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x, t, y)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), [str(b.reason) for b in explained.break_reasons]


def losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_compiled_run_equals_eager_and_resumes_bit_exact(cache40, tmp_path):
    """Tolerance for compiled vs eager: 1e-4 of the loss (inductor fuses and reorders float
    sums); compiled vs compiled-and-resumed: exact, as eager runs are."""
    args = ["train", "--cache", str(cache40), "--model", "nano", "--batch-size", "8", "--log-every", "1",
            "--preview-every", "0", "--ckpt-every", "2", "--threads", "1", "--no-progress"]
    assert run_cli(*args, "--out", str(tmp_path / "eager"), "--steps", "4", timeout=900).returncode == 0
    assert run_cli(*args, "--out", str(tmp_path / "whole"), "--steps", "4", "--compile", timeout=900).returncode == 0
    assert run_cli(*args, "--out", str(tmp_path / "parts"), "--steps", "2", "--compile", timeout=900).returncode == 0
    done = run_cli(*args, "--out", str(tmp_path / "parts"), "--steps", "4", "--compile", "--resume", timeout=900)
    assert done.returncode == 0, done.stderr
    assert losses(tmp_path / "whole") == pytest.approx(losses(tmp_path / "eager"), rel=1e-4)
    assert losses(tmp_path / "parts") == losses(tmp_path / "whole")


def test_a_compiled_run_saves_checkpoints_an_eager_or_compiled_run_resumes(cache40, tmp_path, monkeypatch):
    """The checkpoint holds the module's own keys, not the compiled wrapper's (`_orig_mod.`...):
    a compiled run resumes compiled or eager. Dynamo's eager backend stands in for inductor here
    (the wrapper is the same; compiling for real is the slow test above)."""
    import functools

    from liquidgen.config import TrainConfig
    from liquidgen.pipeline import checkpoint as ckpt
    from liquidgen.pipeline.train import train

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    cfg = dict(cache=str(cache40), out=str(tmp_path / "r"), model="nano", batch_size=8, preview_every=0, ckpt_every=2,
               progress=False, threads=1)
    train(TrainConfig(**cfg, steps=2, compile=True))
    saved = ckpt.load_weights(ckpt.latest_checkpoint(tmp_path / "r"), "model")
    assert not any(k.startswith("_orig_mod.") for k in saved)
    assert train(TrainConfig(**cfg, steps=3, compile=True, resume=True)).step == 3
    assert train(TrainConfig(**cfg, steps=4, resume=True)).step == 4  # and eager
