"""What a new user trips on, tried through the real CLI as they would: help that keeps the
extras' names, --version, a refused train that leaves nothing behind, a batch larger than the
cache said and counted, an unreachable Hub or URL named as such, a model card without local
paths, `cache info` and `cache bench` on small caches, and what an append says."""

from __future__ import annotations

import json
import re

import pytest

from conftest import TAEF2, run_cli, small_disk

COMMANDS = [[], ["encode"], ["train"], ["sample"], ["decode"], ["export"], ["eval"], ["plot"], ["presets"], ["cache"],
            ["cache", "info"], ["cache", "bench"], ["cache", "upgrade"], ["cache", "verify"], ["cache", "push"],
            ["cache", "pull"]]


def test_every_help_keeps_the_extras_names_and_shows_no_placeholder_for_flags():
    done = {" ".join(c): run_cli(*c, "--help", env={"COLUMNS": "100"}) for c in COMMANDS}
    helps = {name: " ".join(d.stdout.split()) for name, d in done.items()}  # the lines as wrapped, joined
    for name, d in done.items():
        assert d.returncode == 0, (name, d.stderr)
        assert "pip install 'liquidgen'" not in helps[name], name  # the renderer ate "[onnx]" before
        assert "<bool>" not in helps[name], name
    assert "pip install 'liquidgen[onnx]'" in helps["export"]
    assert "pip install 'liquidgen[metrics]'" in helps["eval"]
    assert "pip install 'liquidgen[tensorboard]'" in helps["train"]
    assert all(verb in helps["cache"].split("Commands:")[0] for verb in ("verify", "bench", "upgrade", "push", "pull"))


def test_version_and_a_flag_given_a_value():
    from liquidgen import __version__

    done = run_cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"liquidgen {__version__}"
    done = run_cli("train", "--cache", "c", "--out", "o", "--resume", "true")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "(true)" in done.stderr


@pytest.mark.reliability('train refused (unknown model, missing cache, unreachable URL)', 'one line; no run folder left behind')
@pytest.mark.parametrize("why", ["model", "cache", "url"])
def test_a_refused_train_leaves_no_run_folder(cache40, tmp_path, why):
    args = {"model": ["--cache", str(cache40), "--model", "tyni"],
            "cache": ["--cache", str(tmp_path / "no-cache")],
            "url": ["--cache", "http://127.0.0.1:9/cache"]}[why]
    done = run_cli("train", *args, "--out", str(tmp_path / "runs" / "r"), "--steps", "2")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "runs").exists()
    if why == "url":  # a refused connection is not "FileNotFoundError"
        assert "cannot reach http://127.0.0.1:9/cache" in done.stderr and "FileNotFound" not in done.stderr


def test_a_batch_larger_than_the_cache_is_said_and_counted(cache40, tmp_path):
    done = run_cli("train", "--cache", str(cache40), "--out", str(tmp_path / "r"), "--model", "nano", "--batch-size", "64",
                   "--steps", "2", "--log-every", "1", "--preview-every", "0")
    assert done.returncode == 0, done.stderr
    said = done.stdout + done.stderr
    assert "fewer than --batch-size 64: each batch is all 40 of them" in said
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    for r in records:  # 40 latents a step were used, not 64
        assert r["latents_per_s"] == pytest.approx(40 * r["steps_per_s"], rel=1e-6)


def test_an_unreachable_hub_dataset_fails_fast_with_the_hint_for_that_source(tmp_path):
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"}
    done = run_cli("encode", "hf:someone/does-not-exist", "--out", str(tmp_path / "c"), "--vae", str(TAEF2), env=env,
                   timeout=60)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "cannot reach the Hugging Face Hub" in done.stderr and "LIQUIDGEN_DATA_DIR" not in done.stderr
    assert "hf download someone/does-not-exist --repo-type dataset" in done.stderr
    done = run_cli("encode", "flowers", "--out", str(tmp_path / "c"), "--vae", str(TAEF2), env=env, timeout=60)
    assert done.returncode == 1 and "$LIQUIDGEN_DATA_DIR/flowers" in done.stderr  # a preset: where its copy goes
    assert not (tmp_path / "c").exists()


def test_the_model_card_names_no_path_of_this_machine(cache40, tmp_path):
    run = tmp_path / "r"
    assert run_cli("train", "--cache", str(cache40), "--out", str(run), "--model", "nano", "--batch-size", "8",
                   "--steps", "2", "--preview-every", "0").returncode == 0
    done = run_cli("export", "--run", str(run), "--out", str(tmp_path / "p"))
    assert done.returncode == 0, done.stderr
    card = (tmp_path / "p" / "README.md").read_text()
    assert str(tmp_path) not in card and "/tmp" not in card
    assert "a cache of `paintings" in card  # the source folder's name (paintings40's temporary folder)


def test_cache_info_shows_a_limit_only_where_it_took_something(paintings12, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "paintings").symlink_to(paintings12, target_is_directory=True)
    out = tmp_path / "c"
    done = run_cli("encode", "paintings", "--out", str(out), "--vae", str(TAEF2), "-r", "64",
                   env={"LIQUIDGEN_DATA_DIR": str(tmp_path / "data")})
    assert done.returncode == 0, done.stderr
    info = run_cli("cache", "info", str(out), env={"COLUMNS": "200"}).stdout
    assert "limit 8000" not in info and ", limit" not in info  # the preset's 8,000 took nothing from 12 images
    limited = tmp_path / "l"
    assert run_cli("encode", str(paintings12), "--out", str(limited), "--vae", str(TAEF2), "-r", "64",
                   "--limit", "5").returncode == 0
    assert "limit 5" in run_cli("cache", "info", str(limited), env={"COLUMNS": "200"}).stdout


def test_cache_bench_on_a_small_wds_cache_gives_a_verdict(paintings40, tmp_path):
    out = tmp_path / "c"
    assert run_cli("encode", str(paintings40), "--out", str(out), "--vae", str(TAEF2), "-r", "64", "--format", "wds",
                   "--shard-size", "16").returncode == 0
    done = run_cli("cache", "bench", str(out), "--steps-per-s", "10")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "fewer than --batch-size 256: benching at batch 40" in done.stdout
    assert re.search(r"resident: [\d,]+ latents/s \([\d.]+x what training needs: (keeps up|barely keeps up|too slow)\)",
                     done.stdout), done.stdout


def test_appending_another_source_says_what_was_appended(paintings12, paintings40, tmp_path):
    out = tmp_path / "c"
    assert run_cli("encode", str(paintings12), "--out", str(out), "--vae", str(TAEF2), "-r", "64").returncode == 0
    done = run_cli("encode", str(paintings40), "--out", str(out), "--vae", str(TAEF2), "-r", "64", "--limit", "8")
    assert done.returncode == 0, done.stderr
    assert f"appended 8 from {paintings40}" in done.stdout and "the cache holds 20 latents from 2 sources" in done.stdout


def test_a_short_run_checkpoints_and_previews_once_at_its_end(cache40, tmp_path):
    run = tmp_path / "r"
    done = run_cli("train", "--cache", str(cache40), "--out", str(run), "--model", "nano", "--batch-size", "8",
                   "--steps", "6", "--preview-n", "4")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-0000006"]
    assert sorted(p.name for p in (run / "previews").glob("*.png")) == ["step-0000006.png"]


@pytest.mark.reliability('a checkpoint that does not fit on the disk', 'one line; the last good checkpoint is kept and --resume finishes')
def test_a_full_disk_during_a_checkpoint_stops_with_one_line_and_resume_finishes(cache40, tmp_path):
    disk = tmp_path / "disk"
    with small_disk(disk, "16m") as resize:  # a nano checkpoint is ~10.8 MB: the first fits, the second does not
        args = ["train", "--cache", str(cache40), "--out", str(disk / "r"), "--model", "nano", "--batch-size", "8",
                "--ckpt-every", "1", "--preview-every", "0"]
        full = run_cli(*args, "--steps", "3")
        assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr
        assert "No space left on device" in full.stderr and "the last good one, step-0000001, is kept" in full.stderr
        assert (disk / "r" / "checkpoints" / "latest").read_text() == "step-0000001"
        assert not list((disk / "r" / "checkpoints").glob(".tmp-*"))
        resize("64m")
        done = run_cli(*args, "--steps", "3", "--resume")
        assert done.returncode == 0, done.stderr
        assert (disk / "r" / "checkpoints" / "latest").read_text() == "step-0000003"


@pytest.mark.reliability("a cache pull killed with kill -9, run again", "finishes, and its half-done downloads are removed")
def test_a_rerun_pull_removes_what_a_killed_one_left(paintings12, tmp_path):
    import socket
    import subprocess
    import sys

    cache, pulled = tmp_path / "c", tmp_path / "pulled"
    assert run_cli("encode", str(paintings12), "--out", str(cache), "--vae", str(TAEF2), "-r", "64").returncode == 0
    assert run_cli("cache", "push", str(cache), f"file://{tmp_path / 'shared'}").returncode == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid whose process is gone, as after kill -9
    (pulled / "shards").mkdir(parents=True)
    left = pulled / "shards" / f".s00-000000.zarr.part@{socket.gethostname()}@{dead.pid}-1"
    left.write_bytes(b"half a shard")
    done = run_cli("cache", "pull", f"file://{tmp_path / 'shared'}", str(pulled))
    assert done.returncode == 0, done.stderr
    assert not left.exists() and not [p for p in (pulled / "shards").iterdir() if ".part@" in p.name]
    assert run_cli("cache", "verify", str(pulled)).returncode == 0


@pytest.fixture(scope="module")
def small_run(cache40, tmp_path_factory):
    run = tmp_path_factory.mktemp("small-run") / "r"
    done = run_cli("train", "--cache", str(cache40), "--out", str(run), "--model", "nano", "--batch-size", "8",
                   "--steps", "2", "--preview-every", "0", "--no-progress")
    assert done.returncode == 0 and "step/s" not in done.stderr, done.stderr  # --no-progress: no bar
    return run


def test_sample_decode_eval_and_export_show_progress_and_honour_no_progress(small_run, cache40, tmp_path):
    commands = {
        "sample": (["sample", "--run", str(small_run), "--n", "4", "--steps", "2", "--out", str(tmp_path / "s")], "sample 4 images"),
        "decode": (["decode", str(cache40), "--limit", "4", "--out", str(tmp_path / "d")], "decode"),
        "eval": (["eval", "--run", str(small_run), "--cache", str(cache40), "--n", "4", "--steps", "2",
                  "--out", str(tmp_path / "e.json")], "sample 4 images"),
        "export": (["export", "--run", str(small_run), "--out", str(tmp_path / "x")], "export:"),
    }
    for name, (args, bar) in commands.items():
        shown = run_cli(*args)
        assert shown.returncode == 0, (name, shown.stderr)
        assert bar in shown.stderr and "100%" in shown.stderr, (name, shown.stderr)
        quiet = run_cli(*args, "--no-progress")
        assert quiet.returncode == 0 and "100%" not in quiet.stderr and "it/s" not in quiet.stderr, (name, quiet.stderr)


def test_sample_takes_the_thread_policy_of_train(small_run, tmp_path):
    import os

    done = run_cli("sample", "--run", str(small_run), "--n", "2", "--steps", "1", "--out", str(tmp_path / "a"), "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "a" / "settings.json").read_text())["threads"] == 1
    done = run_cli("sample", "--run", str(small_run), "--n", "2", "--steps", "1", "--out", str(tmp_path / "b"))
    assert done.returncode == 0, done.stderr
    assert 1 <= json.loads((tmp_path / "b" / "settings.json").read_text())["threads"] <= len(os.sched_getaffinity(0))
    bad = run_cli("sample", "--run", str(small_run), "--out", str(tmp_path / "c"), "--threads", "0")
    assert bad.returncode == 1 and "--threads must be a whole number of at least 1" in bad.stderr


def test_the_readme_full_path_runs_from_a_bare_clone():
    """Its commands name the shipped dataset and VAE; the shared folder and the Hub are the
    commented alternatives, and the VAE is spelled one way."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## The full path", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]
    assert commands and all("../shared" not in c for c in commands), commands
    makes = [c for c in commands if c.startswith("make ") and c != "make install"]
    assert all("DATASET=paintings_mini" in c for c in makes), makes
    assert "VAE=taef2" in makes[0] and "../shared/weights" not in readme
