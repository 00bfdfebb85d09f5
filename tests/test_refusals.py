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
@pytest.mark.reliability('train --batch-size 0, --steps 0, --lr nan/-1/inf, --kernels a,b, --cfc bogus, and more', 'one line each; no run folder created')
def test_train_refuses_bad_values_before_anything_is_written(tmp_path, args, expected):
    result = run_cli("train", "--cache", str(tmp_path / "no-cache"), "--out", str(tmp_path / "run"), *args)
    one_line_refusal(result, expected)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, expected", [
    (["--guidance-interval", "x"], "--guidance-interval takes two numbers"),
    (["--guidance-interval", "0.8,0.2"], "--guidance-interval must be LO,HI with 0 <= LO <= HI <= 1"),
    (["--cfg", "nan"], "--cfg must be a finite number"),
    (["--steps", "0"], "--steps must be a whole number of at least 1"),
    (["--n", "0"], "--n must be a whole number of at least 1"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else "")
@pytest.mark.reliability('sample --cfg nan, --steps 0, --n 0, --guidance-interval x', 'one line each; nothing written')
def test_sample_refuses_bad_values(tmp_path, args, expected):
    result = run_cli("sample", "--run", str(tmp_path / "no-run"), "--out", str(tmp_path / "out"), *args)
    one_line_refusal(result, expected)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("steps, warmup, ckpt, preview", [(300, 30, 100, 200), (20, 2, 20, 20), (6, 0, 6, 6),
                                                          (1200, 120, 120, 300), (100_000, 1000, 2000, 2000)])
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


@pytest.mark.reliability('temporaries left by kill -9 of encode, pull or train', "removed at the next start; a live writer's are kept")
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


@pytest.mark.reliability('a Hub VAE id with no network', 'one line in seconds naming --vae taef2')
def test_a_hub_vae_offline_fails_at_once_naming_the_fix(paintings12, tmp_path):
    result = run_cli("encode", str(paintings12), "--vae", "flux", "--out", str(tmp_path / "c"), "--limit", "2",
                     env={"HF_HUB_OFFLINE": "1"}, timeout=60)
    one_line_refusal(result, "cannot reach the Hugging Face Hub for 'flux' (black-forest-labs/FLUX.1-schnell")
    assert "--vae taef2 (shipped with liquidgen)" in result.stderr
    assert not (tmp_path / "c").exists()


@pytest.mark.reliability('pushing a cache encoded from local paths', 'the published manifest and card name no local path and no placeholder link')
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
    result = run_cli("cache", "push", str(tmp_path / "c"), f"file://{tmp_path / 'shared'}",
                     "--source-name", "Baroque and Rococo paintings, WikiArt")
    assert result.returncode == 0, result.stderr
    card = (tmp_path / "shared" / "README.md").read_text()
    assert "# Latent cache: Baroque and Rococo paintings, WikiArt through taef2" in card and str(tmp_path) not in card


def vae_folder(tmp_path, encoder: bytes | None = None, state: dict | None = None, obj=None) -> str:
    """A folder that looks like a TAESD pair from its file names, holding something else."""
    import torch

    folder = tmp_path / "vae"
    folder.mkdir()
    for half in ("taex_encoder.pth", "taex_decoder.pth"):
        if encoder is not None:
            (folder / half).write_bytes(encoder)
        else:
            torch.save(state if state is not None else obj, folder / half)
    return str(folder)


class NotWeights:  # pickled by torch.save as an object, which a weights-only load must not run
    pass


@pytest.mark.reliability("a --vae folder of garbage, of pickled objects, or of state dicts with other keys",
                         "one line naming the file; the pickle is never run")
@pytest.mark.parametrize("kind, expected", [("garbage", "is not a plain tensor state dict"),
                                            ("pickle", "is not a plain tensor state dict"),
                                            ("keys", "is not a TAESD-family state dict")])
def test_a_vae_folder_that_holds_no_vae(paintings12, tmp_path, kind, expected):
    import torch

    folder = {"garbage": lambda: vae_folder(tmp_path, encoder=b"\x00garbage" * 100),
              "pickle": lambda: vae_folder(tmp_path, obj=NotWeights()),
              "keys": lambda: vae_folder(tmp_path, state={"foo": torch.zeros(3)})}[kind]()
    result = run_cli("encode", str(paintings12), "--vae", folder, "--out", str(tmp_path / "c"), "-r", "64")
    one_line_refusal(result, expected)
    assert not (tmp_path / "c" / "manifest.json").exists()


@pytest.mark.reliability("encode -r 100000", "refused before anything is written, naming the limit")
def test_a_resolution_no_batch_could_hold(paintings12, tmp_path):
    from conftest import TAEF2

    result = run_cli("encode", str(paintings12), "--vae", str(TAEF2), "--out", str(tmp_path / "c"), "-r", "100000")
    one_line_refusal(result, "--resolution 100000 is above 8192")
    assert not (tmp_path / "c").exists()


@pytest.mark.reliability("an encode that published no latent (every input unreadable), then the corrected command "
                         "with other settings into the same folder", "the second command starts the folder over")
def test_a_folder_holding_no_latents_takes_other_settings(paintings12, tmp_path):
    from conftest import TAEF2
    from liquidgen.pipeline.encode import EncodeConfig, encode

    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(3):
        (junk / f"{i}.jpg").write_text("not an image")
    first = encode(EncodeConfig(str(junk), str(tmp_path / "c"), vae=str(TAEF2), resolution=64, workers=0, progress=False))
    assert first.total == 0 and first.skipped == 3
    again = encode(EncodeConfig(str(paintings12), str(tmp_path / "c"), vae=str(TAEF2), resolution=128, format="wds",
                                workers=0, progress=False))
    assert again.total == 12 and again.manifest.storage.latent_shape == [32, 16, 16]
    assert [s.id for s in again.manifest.sources] == [paintings12.name] or len(again.manifest.sources) == 1
    assert not list((tmp_path / "c" / "shards").glob("*.zarr"))  # the first run's empty shards are gone


@pytest.mark.reliability("--out naming an existing file, for encode, train, sample and decode",
                         "one line; the file is untouched")
@pytest.mark.parametrize("command", ["encode", "train", "decode"])
def test_out_naming_an_existing_file(paintings12, tmp_path, command):
    from conftest import TAEF2

    target = tmp_path / "afile"
    target.write_text("keep me")
    args = {"encode": ["encode", str(paintings12), "--vae", str(TAEF2), "-r", "64", "--limit", "2"],
            "train": ["train", "--cache", str(tmp_path / "no-cache"), "--steps", "2"],
            "decode": ["decode", str(tmp_path / "x.npy"), "--vae", str(TAEF2)]}[command]
    result = run_cli(*args, "--out", str(target))
    assert result.returncode == 1 and "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert str(target) in result.stderr and target.read_text() == "keep me"


@pytest.mark.reliability("decode of NaN latents", "refused with the count of bad latents; no black images written")
def test_decoding_nan_latents(tmp_path):
    import numpy as np

    from conftest import TAEF2

    lat = np.zeros((3, 32, 8, 8), np.float32)
    lat[1, 0, 0, 0] = np.nan
    np.save(tmp_path / "z.npy", lat)
    result = run_cli("decode", str(tmp_path / "z.npy"), "--vae", str(TAEF2), "--out", str(tmp_path / "out"))
    one_line_refusal(result, "1 of the 3 latents hold NaN or infinite values")
    assert not (tmp_path / "out").exists()


@pytest.mark.reliability("Ctrl-C (SIGINT) or a scheduler's SIGTERM during training",
                         "the step in progress is finished and saved; exit 130 or 143 with one line; --resume continues")
@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_signal_saves_a_checkpoint_and_exits_cleanly(paintings12, tmp_path, signum):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import TAEF2
    from liquidgen.pipeline import checkpoint as ckpt
    from liquidgen.pipeline.encode import EncodeConfig, encode

    encode(EncodeConfig(str(paintings12), str(tmp_path / "c"), vae=str(TAEF2), resolution=64, workers=0, progress=False))
    run = tmp_path / "run"
    args = ["train", "--cache", str(tmp_path / "c"), "--out", str(run), "--model", "nano", "--batch-size", "4",
            "--steps", "100000", "--ckpt-every", "100000", "--log-every", "1", "--preview-every", "0"]
    child = subprocess.Popen([sys.executable, "-m", "liquidgen", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or metrics.read_text().count("\n") < 3):
        time.sleep(0.2)
    child.send_signal(getattr(signal, signum))
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 128 + getattr(signal, signum), stderr
    assert "Traceback" not in stderr and f"{signum}: stopped at step" in stderr, stderr
    assert "with --resume to continue (`make resume` after `make train`)" in stderr  # the word for make users too
    last = json.loads(metrics.read_text().splitlines()[-1])["step"]
    saved = ckpt.latest_checkpoint(run)
    assert saved is not None and saved.name == f"step-{last:07d}"  # nothing trained is lost
    resumed = run_cli(*args[:-6], "--steps", str(last + 2), "--log-every", "1", "--preview-every", "0", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(metrics.read_text().splitlines()[-1])["step"] == last + 2


# Zero is a meaningful value for these (off, none, the first seed, decode in-process).
ZERO_MEANS_SOMETHING = {"--workers", "--seed", "--warmup", "--grid", "--ema", "--preview-every", "--memory-limit-gb",
                        "--cfg", "--val-fraction", "--eval-every", "--eval-n"}  # 0: none held out, never, the loss only


def _numeric_options():
    """Every int and float option of every command, found by walking the CLI itself, so an
    option added later is walked too."""
    import typing

    import typer

    from liquidgen.cli import app

    def walk(command, path=()):
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, (*path, name))
        if not hasattr(command, "commands"):
            yield path, command

    for path, command in walk(typer.main.get_command(app)):
        for param in command.params:
            if param.param_type_name != "option":
                continue
            kinds = [k for k in typing.get_args(param.type_descriptor.annotation) if k is not type(None)]
            kind = (kinds or [param.type_descriptor.annotation])[0]
            if kind in (int, float):
                yield " ".join(path), param.opts[0], kind


def _cli_in_process(argv: list[str]) -> tuple[int, str]:
    import contextlib
    import io
    import sys

    from liquidgen.cli import main

    err, code = io.StringIO(), 0
    old, sys.argv = sys.argv, ["liquidgen", *argv]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main()
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = old
    return code, err.getvalue()


@pytest.mark.reliability("every int and float option of every command given x, -1, 0, nan and inf",
                         "each value that means nothing is refused in one line naming the option, before anything is written")
def test_every_numeric_option_refuses_values_that_mean_nothing(tmp_path):
    from liquidgen.embedded import PAINTINGS_MINI

    out = tmp_path / "out"
    base = {"encode": ["encode", str(PAINTINGS_MINI), "--vae", "taef2", "-r", "64", "--limit", "2", "--workers", "0"],
            "train": ["train", "--cache", str(tmp_path / "none")], "sample": ["sample", "--run", str(tmp_path / "none")],
            "decode": ["decode", str(tmp_path / "none.npy")], "export": ["export", "--run", str(tmp_path / "none")],
            "eval": ["eval", "--run", str(tmp_path / "none"), "--cache", str(tmp_path / "none")],
            "cache bench": ["cache", "bench", str(tmp_path / "none")],
            "cache pull": ["cache", "pull", f"file://{tmp_path / 'none'}", str(out)]}
    walked = set()
    for command, option, kind in _numeric_options():
        assert command in base, f"`liquidgen {command}` has numeric options: add it to this test"
        out_flag = ["--out", str(out)] if command not in ("cache bench", "cache pull") else []
        for value in ["x", "-1", "0"] + (["nan", "inf"] if kind is float else []):
            if value == "0" and option in ZERO_MEANS_SOMETHING:
                continue
            code, err = _cli_in_process([*base[command], *out_flag, option, value])
            where = f"liquidgen {command} {option} {value}"
            assert code not in (0, None), f"{where} was accepted"
            assert err.strip().count("\n") == 0 and "Traceback" not in err, f"{where}: {err}"
            assert option in err, f"{where} was refused for another reason: {err}"
            assert not out.exists(), f"{where} wrote {out}"
            walked.add(option)
    assert {"--lr", "--batch-size", "--steps", "--cfg", "--limit", "--resolution", "--workers"} <= walked


@pytest.mark.reliability("an image whose name holds a newline and a tab, and a source folder whose name holds "
                         "rich markup, on the terminal", "names printed escaped, on one line; no markup interpreted")
def test_names_from_inputs_are_escaped_on_the_terminal(tmp_path):
    import shutil

    from conftest import PAINTINGS, TAEF2

    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "evil\nname\tforged.jpg").write_text("not an image")
    shutil.copy(sorted((PAINTINGS / "Baroque").iterdir())[0], folder / "good.jpg")
    result = run_cli("encode", str(folder), "--vae", str(TAEF2), "-r", "64", "--out", str(tmp_path / "c"))
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "evil\nname" not in output and "name\tforged" not in output and "evil\\nname\\tforged" in output
    # a path with markup in an error line is printed as it is, not styled
    marked = tmp_path / "[bold red]x[/bold red]"
    result = run_cli("cache", "info", str(marked))
    assert result.returncode == 1 and "[bold red]x[/bold red]" in result.stderr, result.stderr
