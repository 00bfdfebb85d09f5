"""`export --onnx` and `sample --onnx`: the backbone and the VAE decoder on onnxruntime give
the images PyTorch gives, for liquidgen's U-Net and for a seed design."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from liquidgen.pipeline.sample import generate
from liquidgen.pipeline.train import TrainConfig, train

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# Measured at float32 on this CPU: 1.5e-6 apart at most after 4 guided Euler steps and the decoder.
TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=["nano", "liquidflow-tiny"])
def exported(request, cache40, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"onnx-{request.param}")
    train(TrainConfig(cache=str(cache40), out=str(root / "run"), model=request.param, batch_size=8, steps=4,
                      ckpt_every=4, preview_every=0, progress=False))
    proc = run_cli("export", "--run", str(root / "run"), "--out", str(root / "export"), "--onnx")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root / "run", root / "export"


def test_onnx_sampling_gives_the_pytorch_images(exported):
    run, folder = exported
    assert {p.name for p in folder.iterdir()} >= {"backbone.onnx", "vae_decoder.onnx", "liquidgen_onnx.json", "README.md"}
    # guidance on, so the batch doubles inside the loop: the exported batch size is dynamic
    ours = generate(run, n=5, steps=4, cfg_scale=2.0, seed=3, device="cpu")
    theirs = generate(folder, n=5, steps=4, cfg_scale=2.0, seed=3, onnx=True)
    assert ours.shape == theirs.shape == (5, 3, 64, 64)
    assert (ours - theirs).abs().max().item() < TOLERANCE


def test_sample_onnx_writes_the_images_from_the_command_line(exported, tmp_path):
    run, folder = exported
    proc = run_cli("sample", "--onnx", str(folder), "--out", str(tmp_path / "s"), "--n", "2", "--steps", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref = run_cli("sample", "--run", str(run), "--out", str(tmp_path / "r"), "--n", "2", "--steps", "2", "--device", "cpu")
    assert ref.returncode == 0
    for name in ("00000.png", "00001.png"):
        a, b = (np.asarray(Image.open(tmp_path / d / name), dtype=np.int16) for d in ("s", "r"))
        assert np.abs(a - b).max() <= 1  # 8-bit PNGs: at most one rounding step apart
    assert json.loads((tmp_path / "s" / "settings.json").read_text())["onnx"] is True


def test_sample_needs_exactly_one_of_run_and_onnx(tmp_path):
    for args in ([], ["--run", str(tmp_path), "--onnx", str(tmp_path)]):
        proc = run_cli("sample", *args, "--out", str(tmp_path / "s"))
        assert proc.returncode != 0 and "--run RUN or --onnx DIR" in proc.stderr
    proc = run_cli("sample", "--onnx", str(tmp_path), "--out", str(tmp_path / "s"))
    assert proc.returncode != 0 and "liquidgen export" in proc.stderr.strip().splitlines()[-1]
