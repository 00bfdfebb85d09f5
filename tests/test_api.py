"""The Python API a notebook uses: the stages and their configs at the package's top level."""

from __future__ import annotations

import subprocess
import sys

import torch

from conftest import TAEF2


def test_a_notebook_encodes_trains_and_generates_without_the_cli(paintings12, tmp_path):
    import liquidgen as lg

    lg.encode(lg.EncodeConfig(str(paintings12), str(tmp_path / "cache"), vae=str(TAEF2), resolution=64, workers=1,
                              progress=False))
    result = lg.train(lg.TrainConfig(cache=str(tmp_path / "cache"), out=str(tmp_path / "run"), model="nano",
                                     batch_size=4, steps=2, ckpt_every=2, preview_every=0, progress=False))
    assert len(result.losses) == 2
    images = lg.generate(tmp_path / "run", n=3, steps=2, class_name="Baroque")
    assert images.shape == (3, 3, 64, 64) and images.min() >= 0 and images.max() <= 1
    model, config, _ = lg.load_run(tmp_path / "run")
    assert config["model"] == lg.build_model(config["model"]).config.spec == model.config.spec  # the spec is the saved config
    seed = lg.build_model("liquidflow-tiny", in_channels=32, sample_size=8)
    assert seed(torch.zeros(1, 32, 8, 8), torch.zeros(1)).shape == (1, 32, 8, 8)


def test_every_name_the_package_lists_resolves_and_importing_it_loads_no_torch():
    import liquidgen as lg

    for name in lg.__all__:
        assert getattr(lg, name) is not None
    out = subprocess.run([sys.executable, "-c", "import sys, liquidgen; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # the CLI's --help and config checks stay fast
