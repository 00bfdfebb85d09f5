"""The CLI as a user meets it: --help everywhere, one-line errors with no traceback, exit codes."""

from __future__ import annotations

import pytest

from conftest import TAEF2, run_cli


def assert_one_line_error(result, *fragments):
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [l for l in result.stderr.splitlines() if l.strip() and not l.startswith(("Warning", "  warnings"))]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for f in fragments:
        assert f in result.stderr.replace("\n", " "), result.stderr


def test_help_explains_every_command():
    for cmd in ([], ["encode"], ["cache"], ["cache", "info"], ["cache", "verify"], ["presets"]):
        result = run_cli(*cmd, "--help")
        assert result.returncode == 0 and "Usage" in result.stdout


def test_encode_info_verify_as_a_user_types_them(paintings12, tmp_path):
    out = tmp_path / "cache"
    enc = run_cli("encode", str(paintings12), "--out", str(out), "--vae", str(TAEF2), "-r", "64", "--shard-size", "4")
    assert enc.returncode == 0, enc.stderr
    assert "encoded 12, skipped 0" in enc.stdout
    info = run_cli("cache", "info", str(out))
    assert info.returncode == 0
    for fragment in ("12 x 32x8x8 fp16", "Baroque, Rococo", "taef2", "3 shards",
                     "12 in the source, 12 encoded, 0 skipped"):
        assert fragment in info.stdout, info.stdout
    ok = run_cli("cache", "verify", str(out))
    assert ok.returncode == 0 and "all checksums match" in ok.stdout

    # one flipped byte in one shard file is caught, and the shard is named
    shard = sorted((out / "shards" / "s00-000001.zarr").rglob("c/*"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    bad = run_cli("cache", "verify", str(out))
    assert bad.returncode == 1 and "s00-000001.zarr" in bad.stderr and "sha256 mismatch" in bad.stderr
    assert "s00-000000.zarr" not in bad.stderr


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["nosuchpreset"], ["unknown source 'nosuchpreset'", "paintings"]),
        (["{data}", "--vae", "/nonexistent/vae"], ["unknown VAE '/nonexistent/vae'"]),
        (["{data}", "--vae", "{tmp}"], ["neither a diffusers model folder"]),
        (["{data}", "--vae", "{taef2}", "-r", "100"], ["not a multiple of the VAE's downscale 8"]),
        (["{data}", "--vae", "{taef2}", "--dtype", "int4"], ["--dtype 'int4' is not one of"]),
        (["{data}", "--vae", "{taef2}", "--store", "moments"], ["needs a KL VAE"]),
        (["/no/such/folder"], ["unknown source '/no/such/folder'"]),
    ],
)
@pytest.mark.reliability('encode with an unknown source or VAE, a resolution the VAE cannot take, an unknown dtype', 'one line each; no manifest written')
def test_bad_arguments_get_one_clear_line(paintings12, tmp_path, args, fragments):
    args = [a.format(data=paintings12, tmp=tmp_path, taef2=TAEF2) for a in args]
    result = run_cli("encode", *args, "--out", str(tmp_path / "out"))
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_an_unwritable_output_is_a_clear_error(paintings12, tmp_path):
    result = run_cli("encode", str(paintings12), "--vae", str(TAEF2), "--out", "/proc/liquidgen-cache")
    assert_one_line_error(result, "cannot create /proc/liquidgen-cache")


def test_info_on_a_folder_that_is_not_a_cache(tmp_path):
    assert_one_line_error(run_cli("cache", "info", str(tmp_path)), "is not a liquidgen cache")


def test_cache_bench_says_whether_the_loader_keeps_up(paintings12, tmp_path):
    out = tmp_path / "cache"
    assert run_cli("encode", str(paintings12), "--out", str(out), "--vae", str(TAEF2), "-r", "64").returncode == 0
    done = run_cli("cache", "bench", str(out), "--batch-size", "4", env={"COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    for row in ("sequential", "resident", "streaming", "normalized"):
        assert row in done.stdout, done.stdout
    bad = run_cli("cache", "bench", str(out), "--batch-size", "0")
    assert bad.returncode == 1 and "must be positive" in bad.stderr


def test_train_mixes_several_caches_and_refuses_bad_weights(paintings12, tmp_path):
    out = tmp_path / "cache"
    assert run_cli("encode", str(paintings12), "--out", str(out), "--vae", str(TAEF2), "-r", "64").returncode == 0
    for mix, message in (("1", "needs 2 positive weights"), ("a,b", "not a comma-separated list"), ("1,-1", "needs 2 positive")):
        bad = run_cli("train", "--cache", str(out), "--cache", str(out), "--mix", mix, "--out", str(tmp_path / "r"))
        assert bad.returncode == 1 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    ok = run_cli("train", "--cache", str(out), "--cache", str(out), "--mix", "0.5,0.5", "--out", str(tmp_path / "r"),
                 "--model", "nano", "--batch-size", "4", "--steps", "2", "--warmup", "1", "--preview-every", "0")
    assert ok.returncode == 0, ok.stderr


def test_each_option_default_is_written_once_in_its_config():
    """The CLI shows and passes on the config dataclasses' defaults (liquidgen/config.py): walk
    every option of the stage commands and compare."""
    import typer

    from liquidgen.cli import app
    from liquidgen.config import DecodeConfig, EncodeConfig, EvalConfig, SampleConfig, TrainConfig, defaults

    commands = typer.main.get_command(app).commands
    aliases = {"cfg": "cfg_scale", "class_": "class_name"}
    compared = 0
    for name, config in [("encode", EncodeConfig), ("train", TrainConfig), ("sample", SampleConfig),
                         ("decode", DecodeConfig), ("eval", EvalConfig)]:
        want = vars(defaults(config))
        for param in commands[name].params:
            field = aliases.get(param.name, param.name)
            if field not in want or param.required:
                continue
            got = want[field]
            got = ",".join(map(str, got)) if isinstance(got, tuple) and field == "guidance_interval" else got
            assert param.default == got, f"liquidgen {name} {param.opts[0]}: {param.default!r} != {got!r} in {config.__name__}"
            compared += 1
    assert compared >= 50
