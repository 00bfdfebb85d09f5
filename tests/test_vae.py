"""VAEs through the same path users take: diffusers models saved with `save_pretrained` and
loaded back with `from_pretrained`, and the TAESD-family .pth pair on disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TAEF2
from liquidgen.cache.store import CacheDir
from liquidgen.pipeline.encode import encode
from liquidgen.pipeline.vae import load_vae

from test_encode import config, read_all


@pytest.fixture(scope="module")
def kl_vae_dir(tmp_path_factory):
    """A real (untrained, seeded) diffusers AutoencoderKL: 4 latent channels, downscale 4."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, norm_num_groups=8, sample_size=64, scaling_factor=0.5, shift_factor=0.1,
    )
    folder = tmp_path_factory.mktemp("kl") / "vae"
    vae.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    vae = AutoencoderTiny(
        encoder_block_out_channels=(16, 16, 16, 16), decoder_block_out_channels=(16, 16, 16, 16),
        num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4,
    )
    folder = tmp_path_factory.mktemp("tiny") / "vae"
    vae.save_pretrained(folder)
    return folder


def test_taef2_pth_pair_is_recognised():
    vae = load_vae(str(TAEF2))
    assert vae.info["class"] == "TAESD:taef2" and vae.latent_channels == 32 and vae.downscale == 8
    assert vae.info["input_range"] == [0.0, 1.0]
    assert not any(p.requires_grad for p in vae.parameters()) and not vae.training


def test_diffusers_kl_vae_records_what_decoding_needs(kl_vae_dir, paintings12, tmp_path):
    encode(config(paintings12, tmp_path / "c", vae=str(kl_vae_dir), limit=4))
    m, latents, _, _ = read_all(tmp_path / "c")
    vae = m.vae
    assert vae["class"] == "AutoencoderKL" and vae["kind"] == "kl"
    assert (vae["latent_channels"], vae["downscale"]) == (4, 4)
    assert (vae["scaling_factor"], vae["shift_factor"], vae["input_range"]) == (0.5, 0.1, [-1.0, 1.0])
    assert latents.shape == (4, 4, 16, 16)
    again = load_vae(vae)  # from the manifest, the same weights
    assert again.info == load_vae(str(kl_vae_dir)).info


def test_kl_store_choices(kl_vae_dir, paintings12, tmp_path):
    results = {}
    for store in ("mean", "sample", "moments"):
        encode(config(paintings12, tmp_path / store, vae=str(kl_vae_dir), store=store, limit=4, dtype="fp32"))
        results[store] = read_all(tmp_path / store)[1]
    mean, sample, moments = results["mean"], results["sample"], results["moments"]
    assert moments.shape[1] == 8 and np.allclose(moments[:, :4], mean, atol=1e-5)
    std = np.exp(0.5 * moments[:, 4:])
    z = (sample - mean) / std  # a sample is mean + std * N(0, 1)
    assert 0.8 < z.std() < 1.2 and abs(z.mean()) < 0.1
    encode(config(paintings12, tmp_path / "sample2", vae=str(kl_vae_dir), store="sample", limit=4, dtype="fp32"))
    assert np.array_equal(read_all(tmp_path / "sample2")[1], sample)  # seeded


def test_diffusers_tiny_vae(tiny_vae_dir, paintings12, tmp_path):
    encode(config(paintings12, tmp_path / "c", vae=str(tiny_vae_dir), limit=4))
    m = CacheDir(tmp_path / "c").manifest()
    assert m.vae["class"] == "AutoencoderTiny" and m.vae["kind"] == "tiny"
    assert m.storage.latent_shape == [4, 8, 8]
    vae = load_vae(m.vae)
    images = vae.decode(torch.zeros(2, 4, 8, 8))
    assert images.shape == (2, 3, 64, 64) and 0 <= images.min() and images.max() <= 1
