"""Training on a real latent cache (40 paintings, TAEF2, 64 px): the loss falls, every CfC
variant trains, a resumed run repeats an uninterrupted one exactly, the VAE stays out of the
loop, and bad situations stop with one clear line."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import TAEF2, run_cli
from liquidgen.backbone.unet import LiquidUNetConfig
from liquidgen.cache.store import CacheDir
from liquidgen.errors import LiquidgenError
from liquidgen.pipeline import checkpoint as ckpt
from liquidgen.pipeline.encode import EncodeConfig, encode
from liquidgen.pipeline.train import TrainConfig, _check_memory, train


def tcfg(cache, out, **kw) -> TrainConfig:
    # threads fixed: runs compared bit for bit must split their float sums the same way, whatever the load
    defaults = dict(model="nano", batch_size=8, steps=24, lr=2e-3, warmup=4, log_every=4, ckpt_every=12,
                    preview_every=0, progress=False, threads=1)
    return TrainConfig(cache=str(cache), out=str(out), **{**defaults, **kw})


@pytest.mark.parametrize("cfc", ["paper", "timegate", "static"])
def test_the_loss_falls_for_every_cfc_variant(cache40, tmp_path, cfc):
    result = train(tcfg(cache40, tmp_path / "run", cfc=cfc, steps=40))
    losses = np.array(result.losses)
    assert len(losses) == 40 and np.isfinite(losses).all()
    assert losses[-10:].mean() < 0.9 * losses[:5].mean(), losses
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(4, 41, 4))
    assert all({"step", "loss", "lr", "latents_per_s"} <= r.keys() for r in records)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["cfc"] == cfc and config["model"]["num_classes"] == 2


@pytest.mark.parametrize("memory_limit_gb", [4.0, 0.0], ids=["resident", "streaming"])
@pytest.mark.reliability('a training run stopped and resumed', 'the same losses, bit for bit, as a run never stopped')
def test_resume_repeats_an_uninterrupted_run_exactly(cache40, tmp_path, memory_limit_gb):
    whole = train(tcfg(cache40, tmp_path / "whole", memory_limit_gb=memory_limit_gb))
    train(tcfg(cache40, tmp_path / "parts", steps=12, memory_limit_gb=memory_limit_gb))
    state = ckpt.load_state(ckpt.latest_checkpoint(tmp_path / "parts"))
    # where the data stood, kept for a resume on any number of processes: 5 batches an epoch
    assert {k: state["position"][k] for k in ("epoch", "batch", "world")} == {"epoch": 2, "batch": 2, "world": 1}
    resumed = train(tcfg(cache40, tmp_path / "parts", resume=True, memory_limit_gb=memory_limit_gb))
    assert resumed.losses == whole.losses[12:]  # bit for bit on CPU
    assert (tmp_path / "parts" / "checkpoints" / "latest").read_text() == "step-0000024"


def test_the_vae_is_loaded_only_for_previews(paintings40, tmp_path):
    vae = tmp_path / "vae"
    shutil.copytree(TAEF2, vae)
    encode(EncodeConfig(str(paintings40), str(tmp_path / "c"), vae=str(vae), resolution=64, shard_size=16,
                        limit=16, workers=0, progress=False))
    shutil.rmtree(vae)  # from here on, any attempt to load the VAE fails
    result = train(tcfg(tmp_path / "c", tmp_path / "run", steps=8, ckpt_every=4))
    assert result.step == 8 and not result.previews
    with pytest.raises(LiquidgenError, match="unknown VAE"):
        train(tcfg(tmp_path / "c", tmp_path / "run2", steps=8, ckpt_every=4, preview_every=4))
    shutil.copytree(TAEF2, vae)
    result = train(tcfg(tmp_path / "c", tmp_path / "run3", steps=4, ckpt_every=4, preview_every=4, preview_n=4))
    assert [p.name for p in result.previews] == ["step-0000004.png"]
    assert (tmp_path / "run3" / "loss.png").exists()


@pytest.mark.reliability('a learning rate that makes the loss NaN', 'training stops with one line; the last good checkpoint is kept')
def test_a_nan_stops_training_and_keeps_the_last_good_checkpoint(cache40, tmp_path):
    train(tcfg(cache40, tmp_path / "run", steps=8, ckpt_every=4))
    with pytest.raises(LiquidgenError, match=r"loss became (nan|inf) by step 1[02]; training stopped.*step-0000008"):
        train(tcfg(cache40, tmp_path / "run", steps=16, resume=True, lr=1e30))
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text()
    assert latest == "step-0000008"
    assert train(tcfg(cache40, tmp_path / "run", steps=12, resume=True)).step == 12  # it still resumes


def test_refusals(cache40, tmp_path, paintings40):
    train(tcfg(cache40, tmp_path / "run", steps=4, ckpt_every=4))
    with pytest.raises(LiquidgenError, match="already holds a run"):
        train(tcfg(cache40, tmp_path / "run", steps=8))
    with pytest.raises(LiquidgenError, match="another model"):
        train(tcfg(cache40, tmp_path / "run", steps=8, resume=True, model="tiny"))
    other = tmp_path / "other"
    encode(EncodeConfig(str(paintings40), str(other), vae=str(TAEF2), resolution=64, limit=16, workers=0, progress=False))
    with pytest.raises(LiquidgenError, match="another cache"):
        train(tcfg(other, tmp_path / "run", steps=8, resume=True))
    with pytest.raises(LiquidgenError, match="nothing to resume"):
        train(tcfg(cache40, tmp_path / "fresh", resume=True))
    with pytest.raises(LiquidgenError, match="pick a smaller --model"):
        import torch

        _check_memory(LiquidUNetConfig(channels=(4096, 8192, 16384), blocks=(2, 2, 2)).to_dict(), torch.device("cpu"))


@pytest.mark.reliability('training on an unfinished encode or a cache of no latents', 'refused, naming what to do')
def test_an_unfinished_or_empty_cache_is_refused(paintings40, tmp_path):
    encode(EncodeConfig(str(paintings40), str(tmp_path / "c"), vae=str(TAEF2), resolution=64, limit=8, workers=0, progress=False))
    cache = CacheDir(tmp_path / "c")
    manifest = cache.manifest()
    manifest.complete = False
    cache.write_manifest(manifest)
    with pytest.raises(LiquidgenError, match="encode did not finish"):
        train(tcfg(tmp_path / "c", tmp_path / "run"))
    empty = tmp_path / "junk"
    empty.mkdir()
    (empty / "a.jpg").write_text("not an image")
    encode(EncodeConfig(str(empty), str(tmp_path / "e"), vae=str(TAEF2), resolution=64, workers=0, progress=False))
    result = run_cli("train", "--cache", str(tmp_path / "e"), "--out", str(tmp_path / "run"), "--model", "nano")
    assert result.returncode == 1 and "holds no latents" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("memory", ["4", "0"], ids=["resident", "streaming"])
def test_two_processes_train_one_run(cache40, tmp_path, memory):
    args = ["train", "--cache", str(cache40), "--out", str(tmp_path / "run"), "--model", "nano", "--batch-size", "8",
            "--log-every", "2", "--ckpt-every", "6", "--preview-every", "0", "--memory-limit-gb", memory]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "liquidgen", *args, "--steps", "5"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 5]  # written once, by rank 0
    assert "2 process(es)" in done.stdout
    assert (tmp_path / "run" / "checkpoints" / "step-0000005" / "ema.safetensors").exists()
    saved = ckpt.load_state(ckpt.latest_checkpoint(tmp_path / "run"))["position"]
    assert saved["world"] == 2
    # the same run goes on in one process, from where the two left it
    alone = run_cli(*args, "--steps", "9", "--resume")
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "1 process(es)" in alone.stdout
    assert [json.loads(l)["step"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-3:] == [6, 8, 9]


@pytest.mark.parametrize("baseline", ["dit-tiny", "unet-tiny"])
def test_diffusers_baselines_train_resume_and_sample_through_the_same_loop(cache40, tmp_path, baseline):
    from liquidgen.pipeline.evaluate import EvalConfig, evaluate
    from liquidgen.pipeline.export import LiquidGenPipeline
    from liquidgen.pipeline.sample import SampleConfig, generate, sample

    run = tmp_path / baseline
    whole = train(tcfg(cache40, tmp_path / "whole", model=baseline, steps=6, lr=3e-4, ckpt_every=3))
    train(tcfg(cache40, run, model=baseline, steps=3, lr=3e-4, ckpt_every=3))
    resumed = train(tcfg(cache40, run, model=baseline, steps=6, lr=3e-4, ckpt_every=3, resume=True))
    assert resumed.losses == whole.losses[3:]  # the class dropout is the loop's, seeded: no hidden RNG
    assert json.loads((run / "config.json").read_text())["model"]["arch"] in ("dit", "unet2d")
    assert len(sample(SampleConfig(run=str(run), out=str(tmp_path / "s"), n=2, steps=2, cfg_scale=2.0)).images) == 2
    scored = evaluate(EvalConfig(run=str(run), cache=str(cache40), n=8, steps=2))
    assert scored["metrics"]["fd_random"] > 0
    out = run_cli("export", "--run", str(run), "--out", str(tmp_path / "pipe"))  # any model exports
    assert out.returncode == 0, out.stderr[-3000:]
    pipe = LiquidGenPipeline.from_pretrained(str(tmp_path / "pipe"))
    assert type(pipe.unet).__name__ == {"dit-tiny": "DiTBaseline", "unet-tiny": "UNetBaseline"}[baseline]
    images = pipe(num_images=2, num_inference_steps=2, seed=3, output_type="pt").images
    torch.testing.assert_close(images, generate(run, n=2, steps=2, seed=3), rtol=0, atol=1e-5)


def test_liquid_options_are_refused_for_a_baseline(cache40, tmp_path):
    with pytest.raises(LiquidgenError, match="cfc apply to liquidgen's U-Net"):
        train(tcfg(cache40, tmp_path / "run", model="dit-tiny", cfc="static"))
    with pytest.raises(LiquidgenError, match="unknown --model 'dit-huge'.*dit-tiny"):
        train(tcfg(cache40, tmp_path / "run", model="dit-huge"))


def test_two_caches_mixed_train_and_resume_exactly(cache40, tmp_path, paintings40):
    other = tmp_path / "other"
    encode(EncodeConfig(str(paintings40), str(other), vae=str(TAEF2), resolution=64, shard_size=8, workers=0,
                        progress=False, limit=16))
    both = [str(cache40), str(other)]

    def mixed(out, **kw) -> TrainConfig:
        return dataclasses.replace(tcfg(cache40, out, **kw), cache=both, mix=[0.7, 0.3])

    whole = train(mixed(tmp_path / "whole"))
    train(mixed(tmp_path / "parts", steps=12))
    resumed = train(mixed(tmp_path / "parts", resume=True))
    assert resumed.losses == whole.losses[12:] and np.isfinite(whole.losses).all()
    config = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert config["train"]["cache"] == both and config["cache"]["count"] == 40 + 16


@pytest.mark.reliability('two `train --out R` at once', 'the second is refused while the first lives')
def test_a_second_train_into_a_live_run_folder_is_refused(cache40, tmp_path):
    import os
    import socket

    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}))
    with pytest.raises(LiquidgenError, match="is being written by pid"):
        train(tcfg(cache40, run))
    assert not (run / "checkpoints").exists()
    (run / ".lock").write_text(json.dumps({"pid": 2**22 + 4321, "host": socket.gethostname()}))  # a killed run's
    result = train(tcfg(cache40, run, steps=4, ckpt_every=4))
    assert result.step == 4 and not (run / ".lock").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(LiquidgenError, match="is a file, not a run folder"):
        train(tcfg(cache40, tmp_path / "file"))


def test_a_resume_keeps_the_threads_the_run_used(cache40, tmp_path):
    """Float sums depend on how ops split across threads: a resume without --threads takes the
    run's own, not what the machine's load suggests now."""
    train(tcfg(cache40, tmp_path / "run", steps=4, ckpt_every=4, threads=2))
    train(tcfg(cache40, tmp_path / "run", steps=8, ckpt_every=4, threads=None, resume=True))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["threads"] == 2
