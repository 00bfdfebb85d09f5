"""`--mixed-precision`: the GPU's bf16 autocast, run on the CPU (`torch.autocast("cpu",
torch.bfloat16)` through Accelerate), for a convolutional, a scanning and an attention family.

Accelerate keeps one precision per process, so each precision trains its models in a process of
its own, as a user's command does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import run_cli

MODELS = ["nano", "liquidflow-tiny", "dit-tiny"]
SCRIPT = """
import json, sys
from liquidgen.config import TrainConfig
from liquidgen.pipeline.train import train
cache, root, precision = sys.argv[1:4]
losses = {}
for model in sys.argv[4:]:
    result = train(TrainConfig(cache=cache, out=f"{root}/{model}-{precision}", model=model, batch_size=8, steps=3,
                               preview_every=0, progress=False, mixed_precision=precision, threads=1))
    losses[model] = result.losses
print(json.dumps(losses))
"""


def test_bf16_autocast_trains_every_family_close_to_fp32(cache40, tmp_path):
    """Tolerance 1% of the fp32 loss at every step: bf16 keeps 8 bits of mantissa (0.4% per
    value), and the loss, a mean over thousands of squared errors, averages the rounding out
    (measured: at most 0.01% on these models). The attention model's losses must differ from
    fp32's in some digit, or autocast did not run."""
    (tmp_path / "run.py").write_text(SCRIPT)
    losses = {}
    for precision in ("no", "bf16"):
        done = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(cache40), str(tmp_path), precision, *MODELS],
                              capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        assert done.returncode == 0, done.stderr[-3000:]
        losses[precision] = json.loads(done.stdout.strip().splitlines()[-1])
    for model in MODELS:
        fp32, bf16 = losses["no"][model], losses["bf16"][model]
        assert len(fp32) == len(bf16) == 3
        for a, b in zip(fp32, bf16):
            assert b == pytest.approx(a, rel=0.01), (model, fp32, bf16)
    assert losses["no"]["dit-tiny"] != losses["bf16"]["dit-tiny"]
    config = json.loads((tmp_path / "nano-bf16" / "config.json").read_text())
    assert config["train"]["mixed_precision"] == "bf16"  # the run records it


def test_fp16_is_refused_on_the_cpu_in_one_line(cache40, tmp_path):
    done = run_cli("train", "--cache", str(cache40), "--out", str(tmp_path / "r"), "--device", "cpu",
                   "--mixed-precision", "fp16")
    assert done.returncode == 1 and "needs a GPU" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
    done = run_cli("train", "--cache", str(cache40), "--out", str(tmp_path / "r"), "--mixed-precision", "fp8")
    assert done.returncode == 1 and "--mixed-precision" in done.stderr and not (tmp_path / "r").exists()
