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


@pytest.mark.parametrize("which", ["taef2", "flux-config"])
def test_the_encode_vae_in_bf16_on_the_cpu_is_close_to_fp32(which, tmp_path):
    """`--vae-dtype bf16` (what a GPU runs) on the CPU, for the shipped TAEF2 and for an
    AutoencoderKL built from FLUX.1's VAE config (random weights: the architecture's rounding,
    not its training). Tolerance: the RMS difference within 5% of the latents' std and the
    largest within 25%; bf16's 8 bits of mantissa lose ~0.4% a layer over some 30 layers
    (measured: RMS 1.2% for TAEF2, 2.4% for the FLUX.1 architecture; largest 8% and 12%)."""
    import numpy as np
    import torch

    from conftest import PAINTINGS, TAEF2
    from liquidgen.pipeline.images import Preprocess, load_image
    from liquidgen.pipeline.vae import load_vae

    spec = str(TAEF2)
    if which == "flux-config":
        from diffusers import AutoencoderKL

        torch.manual_seed(0)
        AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                      down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                      layers_per_block=2, norm_num_groups=32, scaling_factor=0.3611, shift_factor=0.1159,
                      use_quant_conv=False, use_post_quant_conv=False).save_pretrained(tmp_path / "vae")
        spec = str(tmp_path / "vae")
    files = sorted(PAINTINGS.rglob("*.jpg"))[:4]
    x = torch.from_numpy(np.stack([load_image(str(f), Preprocess(resolution=64)) for f in files]))
    fp32 = load_vae(spec, dtype="fp32").encode(x).float()
    bf16 = load_vae(spec, dtype="bf16").encode(x).float()
    assert torch.isfinite(bf16).all()
    diff, scale = (bf16 - fp32), fp32.std()
    assert diff.pow(2).mean().sqrt() <= 0.05 * scale and diff.abs().max() <= 0.25 * scale
    assert not torch.equal(fp32, bf16)  # bf16 really ran
