"""From a trained run to images on disk: `sample` and `decode`."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import TAEF2, psnr, run_cli, source_image
from liquidgen.errors import LiquidgenError
from liquidgen.pipeline.decode import DecodeConfig, decode
from liquidgen.pipeline.encode import EncodeConfig, encode
from liquidgen.pipeline.sample import SampleConfig, sample
from liquidgen.pipeline.train import TrainConfig, train


@pytest.fixture(scope="module")
def run(paintings40, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    encode(EncodeConfig(str(paintings40), str(root / "cache"), vae=str(TAEF2), resolution=64, workers=1, progress=False))
    train(TrainConfig(cache=str(root / "cache"), out=str(root / "run"), model="nano", batch_size=8, steps=6,
                      ckpt_every=6, preview_every=0, progress=False))
    return root / "run"


def test_sample_writes_pngs_grid_and_settings(run, tmp_path):
    result = sample(SampleConfig(run=str(run), out=str(tmp_path / "s"), n=5, steps=4, cfg_scale=2.0, batch_size=3))
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler()
    sched.set_timesteps(4)
    guided = sum(0 <= float(t) / 1000 <= 0.75 for t in sched.timesteps)  # inside the guidance interval
    assert 0 < guided < 4 and len(result.images) == 5
    assert result.model_calls == 4 + guided  # 4 Euler steps; a guided one evaluates each image twice
    assert all(Image.open(p).size == (64, 64) for p in result.images)
    assert Image.open(result.grid).size[0] > 64
    assert (tmp_path / "s" / "settings.json").exists()


def test_the_same_seed_gives_the_same_images(run, tmp_path):
    a = sample(SampleConfig(run=str(run), out=str(tmp_path / "a"), n=2, steps=3, seed=7))
    b = sample(SampleConfig(run=str(run), out=str(tmp_path / "b"), n=2, steps=3, seed=7))
    c = sample(SampleConfig(run=str(run), out=str(tmp_path / "c"), n=2, steps=3, seed=8))
    pixels = [[np.asarray(Image.open(p)) for p in r.images] for r in (a, b, c)]
    assert all(np.array_equal(x, y) for x, y in zip(pixels[0], pixels[1]))
    assert not np.array_equal(pixels[0][0], pixels[2][0])


def test_latents_only_then_decode_gives_the_same_images(run, tmp_path):
    direct = sample(SampleConfig(run=str(run), out=str(tmp_path / "png"), n=3, steps=3, class_name="Rococo"))
    lat = sample(SampleConfig(run=str(run), out=str(tmp_path / "lat.safetensors"), n=3, steps=3,
                              class_name="Rococo", latents_only=True))
    paths = decode(DecodeConfig(source=str(lat.out), out=str(tmp_path / "dec")))
    for p, q in zip(direct.images, paths):
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(q)))


def test_decoding_a_cache_gives_back_its_paintings(paintings12, tmp_path):
    encode(EncodeConfig(str(paintings12), str(tmp_path / "c"), vae=str(TAEF2), resolution=128, workers=1, progress=False))
    keys = ["Baroque/" + sorted(p.name for p in (paintings12 / "Baroque").iterdir())[1],
            "Rococo/" + sorted(p.name for p in (paintings12 / "Rococo").iterdir())[0]]
    chosen = decode(DecodeConfig(source=str(tmp_path / "c"), out=str(tmp_path / "d"), keys=keys))
    assert len(chosen) == 2
    paths = decode(DecodeConfig(source=str(tmp_path / "c"), out=str(tmp_path / "e"), limit=None))
    all_keys = sorted(p.relative_to(paintings12).as_posix() for p in paintings12.rglob("*.jpg"))
    scores = [psnr(np.asarray(Image.open(path)).transpose(2, 0, 1), source_image(paintings12, key, 128))
              for key, path in zip(all_keys, paths)]
    assert len(scores) == 12 and np.mean(scores) > 25.0, scores  # dense pointillist dots score lowest
    assert np.array_equal(np.asarray(Image.open(chosen[1])), np.asarray(Image.open(paths[all_keys.index(keys[1])])))


def test_decode_a_single_npy(tmp_path):
    np.save(tmp_path / "z.npy", np.zeros((32, 4, 4), np.float32))
    with pytest.raises(LiquidgenError, match="pass --vae"):
        decode(DecodeConfig(source=str(tmp_path / "z.npy"), out=str(tmp_path / "o")))
    assert len(decode(DecodeConfig(source=str(tmp_path / "z.npy"), out=str(tmp_path / "o"), vae=str(TAEF2)))) == 1
    np.save(tmp_path / "four.npy", np.zeros((1, 4, 4, 4), np.float32))
    with pytest.raises(LiquidgenError, match="4 channels but the VAE"):
        decode(DecodeConfig(source=str(tmp_path / "four.npy"), out=str(tmp_path / "o"), vae=str(TAEF2)))
    np.save(tmp_path / "evil.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(LiquidgenError, match="not a plain array"):
        decode(DecodeConfig(source=str(tmp_path / "evil.npy"), out=str(tmp_path / "o"), vae=str(TAEF2)))


def test_sample_refusals(run, tmp_path):
    result = run_cli("sample", "--run", str(run), "--class", "Cubism", "--out", str(tmp_path / "x"))
    assert result.returncode == 1 and "known classes: Baroque, Rococo" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(LiquidgenError, match="--n must be a whole number of at least 1"):
        sample(SampleConfig(run=str(run), out=str(tmp_path / "x"), n=0))
    with pytest.raises(LiquidgenError, match="not a liquidgen run"):
        sample(SampleConfig(run=str(tmp_path), out=str(tmp_path / "x")))
    with pytest.raises(LiquidgenError, match="no checkpoint step-0000099"):
        sample(SampleConfig(run=str(run), out=str(tmp_path / "x"), checkpoint="step-0000099"))


def test_the_exported_pipeline_reproduces_sample(run, tmp_path):
    from diffusers import DiffusionPipeline

    from liquidgen.pipeline.export import LiquidGenPipeline, export

    folder = export(str(run), str(tmp_path / "pipe"))
    assert (folder / "model_index.json").exists() and (folder / "unet" / "config.json").exists()
    expected = sample(SampleConfig(run=str(run), out=str(tmp_path / "s"), n=3, steps=3, seed=5, cfg_scale=2.0,
                                   class_name="Baroque"))
    pipe = LiquidGenPipeline.from_pretrained(str(folder))
    images = pipe(num_images=3, num_inference_steps=3, seed=5, guidance_scale=2.0, class_name="Baroque").images
    for image, path in zip(images, expected.images):
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(path)))
    generic = DiffusionPipeline.from_pretrained(str(folder), custom_pipeline=str(folder / "pipeline.py"),
                                                trust_remote_code=True)
    again = generic(num_images=3, num_inference_steps=3, seed=5, guidance_scale=2.0, class_name="Baroque").images
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(again, images))  # same batch: bit-equal


def test_eval_scores_a_run_end_to_end(run, tmp_path):
    import json

    from liquidgen.pipeline.evaluate import EvalConfig, evaluate

    cache = run.parent / "cache"
    result = evaluate(EvalConfig(run=str(run), cache=str(cache), n=16, steps=2, out=str(tmp_path / "e.json")))
    m = result["metrics"]
    assert {"swd_mean", "fd_random", "kid_random", "precision", "recall"} <= m.keys()
    assert m["swd_mean"] > 0 and m["fd_random"] > 0  # 6 training steps: far from the paintings
    assert len(result["flow_loss_per_t"]) == 5
    assert json.loads((tmp_path / "e.json").read_text())["metrics"] == m
    assert (cache / ".eval" / "real-n16-seed0.safetensors").exists()  # real side cached for next time
    again = evaluate(EvalConfig(run=str(run), cache=str(cache), n=16, steps=2, out=str(tmp_path / "f.json")))
    assert again["metrics"] == m  # deterministic for a seed
    with pytest.raises(LiquidgenError, match="more than the 40 latents"):
        evaluate(EvalConfig(run=str(run), cache=str(cache), n=41))
