"""Bad values on the command line: one line on stderr, exit code 1, no traceback, nothing created.
And the training defaults that follow --steps, so a short run leaves warmup and keeps a checkpoint."""

from __future__ import annotations

import pytest

from conftest import run_cli
from liquidgen.pipeline.train import TrainConfig

TRAIN_BAD = [
    (["--batch-size", "0"], "--batch-size must be a whole number of at least 1"),
    (["--steps", "0"], "--steps must be a whole number of at least 1"),
    (["--ckpt-every", "0"], "--ckpt-every must be"),
    (["--log-every", "0"], "--log-every must be"),
    (["--warmup", "-5"], "--warmup must be"),
    (["--lr", "nan"], "--lr must be a finite number above 0"),
    (["--lr", "-1"], "--lr must be"),
    (["--lr", "inf"], "--lr must be"),
    (["--ema", "1.5"], "--ema must be a finite number in [0, 1)"),
    (["--memory-limit-gb", "nan"], "--memory-limit-gb must be"),
    (["--kernels", "a,b"], "--kernels takes odd sizes"),
    (["--kernels", "4"], "--kernels must be odd sizes"),
    (["--cfc", "bogus"], "--cfc 'bogus' is not one of paper, timegate, static"),
    (["--head", "bogus"], "--head 'bogus' is not one of ada, gn"),
    (["--device", "tpu"], "--device 'tpu' is not one of"),
]


def one_line_refusal(result, expected: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
    assert expected in result.stderr, result.stderr


@pytest.mark.parametrize("args, expected", TRAIN_BAD, ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_train_refuses_bad_values_before_anything_is_written(tmp_path, args, expected):
    result = run_cli("train", "--cache", str(tmp_path / "no-cache"), "--out", str(tmp_path / "run"), *args)
    one_line_refusal(result, expected)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, expected", [
    (["--guidance-interval", "x"], "--guidance-interval takes two numbers"),
    (["--guidance-interval", "0.8,0.2"], "--guidance-interval must be LO,HI with 0 <= LO <= HI <= 1"),
    (["--cfg", "nan"], "--cfg must be a finite number"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--n", "0"], "--n must be at least 1"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_sample_refuses_bad_values(tmp_path, args, expected):
    result = run_cli("sample", "--run", str(tmp_path / "no-run"), "--out", str(tmp_path / "out"), *args)
    one_line_refusal(result, expected)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("steps, warmup, ckpt, preview", [(300, 30, 30, 75), (20, 2, 2, 5), (5, 0, 1, 1),
                                                          (100_000, 1000, 2000, 2000)])
def test_training_defaults_follow_the_steps(steps, warmup, ckpt, preview):
    cfg = TrainConfig(cache="c", out="r", steps=steps)
    assert (cfg.warmup, cfg.ckpt_every, cfg.preview_every) == (warmup, ckpt, preview)
    # what the user sets is kept
    assert TrainConfig(cache="c", out="r", steps=steps, warmup=7, ckpt_every=9, preview_every=0).warmup == 7


def dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_what_a_killed_run_left_half_written_is_removed_at_the_next_start(paintings12, tmp_path):
    """Temporaries named for a writer that is gone (a kill -9 between write and rename) are
    removed when encode, train or a remote reader next starts there; a live writer's stay."""
    import os
    import socket

    from conftest import TAEF2
    from liquidgen.cache.remote import RemoteShards, push
    from liquidgen.pipeline.encode import EncodeConfig, encode
    from liquidgen.pipeline.train import train

    host, dead, me = socket.gethostname(), dead_pid(), os.getpid()
    cfg = EncodeConfig(str(paintings12), str(tmp_path / "c"), vae=str(TAEF2), resolution=64, limit=4, workers=0, progress=False)
    encode(cfg)
    shards = tmp_path / "c" / "shards"
    stale = shards / f".s00-000009.zarr.tmp@{host}@{dead}-1"
    live = shards / f".s00-000010.zarr.tmp@{host}@{me}-1"
    elsewhere = shards / f".s00-000011.zarr.tmp@another-host@{dead}-1"
    for p in (stale, live, elsewhere):
        (p / "latents").mkdir(parents=True)
    encode(cfg)  # the rerun of a finished cache
    assert not stale.exists() and live.exists() and elsewhere.exists()

    push(str(tmp_path / "c"), f"file://{tmp_path / 'shared'}", progress=False)
    local = tmp_path / "fetched"
    (local / "shards").mkdir(parents=True)
    part = local / "shards" / f".s00-000000.zarr.part@{host}@{dead}-7"
    part.mkdir()
    RemoteShards(f"file://{tmp_path / 'shared'}", folder=local)
    assert not part.exists()

    run = tmp_path / "run"
    (run / "checkpoints" / ".tmp-step-0000003").mkdir(parents=True)
    train(TrainConfig(cache=str(tmp_path / "c"), out=str(run), model="nano", batch_size=2, steps=2,
                      preview_every=0, progress=False))
    assert not (run / "checkpoints" / ".tmp-step-0000003").exists()


def test_a_hub_vae_offline_fails_at_once_naming_the_fix(paintings12, tmp_path):
    result = run_cli("encode", str(paintings12), "--vae", "flux", "--out", str(tmp_path / "c"), "--limit", "2",
                     env={"HF_HUB_OFFLINE": "1"}, timeout=60)
    one_line_refusal(result, "cannot reach the Hugging Face Hub for 'flux' (black-forest-labs/FLUX.1-schnell")
    assert "--vae taef2 (shipped with liquidgen)" in result.stderr
    assert not (tmp_path / "c").exists()


def test_a_pushed_cache_names_no_path_of_the_machine_that_pushed_it(paintings12, tmp_path):
    from conftest import TAEF2
    from liquidgen.cache.remote import pull, push
    from liquidgen.pipeline.encode import EncodeConfig, encode

    encode(EncodeConfig(str(paintings12), str(tmp_path / "c"), vae=str(TAEF2), resolution=64, limit=4, workers=0,
                        progress=False))
    push(str(tmp_path / "c"), f"file://{tmp_path / 'shared'}", progress=False)
    for published in ("manifest.json", "README.md"):
        text = (tmp_path / "shared" / published).read_text()
        assert str(paintings12) not in text and str(TAEF2) not in text and str(tmp_path) not in text, published
        assert "https://github.com/)" not in text  # no placeholder link
    manifest = (tmp_path / "shared" / "manifest.json").read_text()
    assert f'"id": "{paintings12.name}"' in manifest and '"id": "taef2"' in manifest
    pull(f"file://{tmp_path / 'shared'}", str(tmp_path / "pulled"), progress=False)  # still a valid cache
    assert (tmp_path / "pulled" / "manifest.json").exists()
