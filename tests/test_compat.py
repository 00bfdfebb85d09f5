"""Runs and exports written by the current release (liquidgen 0.1.0, tests/data/release-0.1.0,
made by its made_with.py) still load, and give the images that release gave."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from liquidgen.backbone.unet import LiquidUNet
from liquidgen.pipeline.export import LiquidGenPipeline, TAESDModel, export
from liquidgen.pipeline.sample import generate
from liquidgen.pipeline.taesd import pooled_blocks
from liquidgen.pipeline.vae import load_vae

RELEASE = Path(__file__).parent / "data" / "release-0.1.0"
SAME = dict(num_images=3, num_inference_steps=3, seed=5, guidance_scale=2.0, class_name="Baroque", output_type="pt")


def taef2_model() -> TAESDModel:
    """The export's vae/ (left out of the fixture: TAEF2 ships with liquidgen)."""
    frozen = load_vae("taef2")
    enc, dec = frozen.encoder.state_dict(), frozen.decoder.state_dict()
    vae = TAESDModel(32, pooled_blocks(enc), pooled_blocks(dec))
    vae.encoder.load_state_dict(enc)
    vae.decoder.load_state_dict(dec)
    return vae


def test_a_run_from_the_release_samples_the_same_images():
    reference = load_file(str(RELEASE / "reference.safetensors"))
    images = generate(RELEASE / "run", n=3, steps=3, seed=5, cfg_scale=2.0, class_name="Baroque")
    torch.testing.assert_close(images, reference["generate"], rtol=0, atol=1e-5)


def test_an_export_from_the_release_loads_and_gives_the_same_images():
    reference = load_file(str(RELEASE / "reference.safetensors"))
    pipe = LiquidGenPipeline.from_pretrained(str(RELEASE / "export"), vae=taef2_model())
    assert type(pipe.unet).__name__ == "LiquidUNet2DModel"  # the release's class, read by its legacy loader
    assert pipe.latents["label_names"] == ["Baroque", "Rococo"]
    torch.testing.assert_close(pipe(**SAME).images, reference["pipeline"], rtol=0, atol=1e-5)


def test_a_new_export_of_a_release_run_saves_the_backbone_itself(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(RELEASE / "run", run)
    pipe = LiquidGenPipeline.from_pretrained(str(export(str(run), str(tmp_path / "pipe"))))
    assert isinstance(pipe.unet, LiquidUNet) and pipe.unet.config.spec["channels"] == [32, 64]
    reference = load_file(str(RELEASE / "reference.safetensors"))
    torch.testing.assert_close(pipe(**SAME).images, reference["pipeline"], rtol=0, atol=1e-5)
