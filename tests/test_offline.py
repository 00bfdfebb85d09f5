"""liquidgen with nothing beside it: a fresh clone without ../shared and without the Hugging Face
Hub runs `make demo` and its own tests, and an installed wheel encodes the shipped paintings.

Each test works on a `git clone` of this repository in a temporary folder, so what is checked is
what a new user gets, not this working tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def offline_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LIQUIDGEN_SHARED", "LIQUIDGEN_DATA_DIR", "PYTHONPATH")}
    return {**env, **OFFLINE, **extra}


def run(cmd: list[str], cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """This repository's HEAD, cloned where no ../shared is beside it."""
    if run(["git", "rev-parse", "--git-dir"], ROOT, offline_env()).returncode != 0:
        pytest.skip("not a git checkout: nothing to clone")
    dest = tmp_path_factory.mktemp("fresh") / "liquidgen"
    assert run(["git", "clone", "-q", str(ROOT), str(dest)], ROOT, offline_env()).returncode == 0
    assert not (dest.parent / "shared").exists()
    return dest


def test_make_demo_runs_offline_from_a_fresh_clone_and_a_rerun_reuses_everything(clone):
    # the clone's own code (PYTHONPATH), in this environment's interpreter and libraries
    env = offline_env(PYTHONPATH=str(clone))
    where = run([sys.executable, "-c", "import liquidgen; print(liquidgen.__file__)"], clone, env)
    assert where.stdout.strip().startswith(str(clone)), where.stdout
    make = ["make", "demo", f"VENV={sys.prefix}", "DEMO_STEPS=12"]
    first = run(make, clone, env)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert "the sample grid:  samples/paintings_mini/grid.png" in first.stdout
    for made in ("samples/paintings_mini/grid.png", "runs/paintings_mini/loss.png",
                 "runs/paintings_mini/checkpoints/step-0000012/ema.safetensors"):
        assert (clone / made).is_file(), made
    manifest = json.loads((clone / "cache/paintings_mini/manifest.json").read_text())
    # the cache names what it came from portably: the presets, not this clone's paths
    assert manifest["count"] == 200 and manifest["complete"]
    assert manifest["vae"]["id"] == "taef2" and manifest["sources"][0]["id"] == "paintings_mini"
    grid = (clone / "samples/paintings_mini/grid.png").read_bytes()

    again = run(make, clone, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already complete (200 latents); nothing to do" in again.stdout
    assert "runs/paintings_mini is at step 12 already: reusing it" in again.stdout
    assert (clone / "samples/paintings_mini/grid.png").read_bytes() == grid  # same seed, same images


def test_the_suite_runs_from_a_fresh_clone_and_skips_only_what_needs_shared(clone):
    env = offline_env(PYTHONPATH=str(clone))
    result = run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_sources.py",
                  "-k", "preset or paintings_mini"], clone, env)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 passed, 1 skipped" in result.stdout, result.stdout[-2000:]
    assert "needs more images than the shipped 200" in result.stdout


def test_an_installed_wheel_carries_the_weights_and_paintings(clone, tmp_path):
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                 str(tmp_path / "dist"), str(clone)], tmp_path, offline_env())
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("liquidgen-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for f in ("taef2_encoder.pth", "taef2_decoder.pth", "LICENSE", "README.md"):
        assert f"liquidgen/assets/taef2/{f}" in names
    jpgs = [n for n in names if n.startswith("liquidgen/assets/paintings_mini/") and n.endswith(".jpg")]
    assert len(jpgs) == 200 and "liquidgen/assets/paintings_mini/README.md" in names
    assert sum(zipfile.ZipFile(wheel).getinfo(n).file_size for n in jpgs) < 3e6

    # A fresh venv holding only the wheel; its dependencies are seen through a .pth line
    # pointing at this environment's site-packages (nothing is downloaded).
    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", str(venv)], tmp_path, offline_env()).returncode == 0
    site = next(venv.glob("lib/python*/site-packages"))
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "torch").is_dir())
    (site / "liquidgen-deps.pth").write_text(f"{deps}\n")
    pip = run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
              tmp_path, offline_env())
    assert pip.returncode == 0, pip.stderr[-3000:]
    where = run([str(venv / "bin" / "python"), "-c", "import liquidgen; print(liquidgen.__file__)"], tmp_path,
                offline_env())
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr

    enc = run([str(venv / "bin" / "liquidgen"), "encode", "paintings_mini", "--out", str(tmp_path / "c"),
               "--vae", "taef2", "--resolution", "64", "--limit", "8"], tmp_path, offline_env())
    assert enc.returncode == 0, enc.stderr[-3000:]
    assert "encoded 8, skipped 0" in enc.stdout
