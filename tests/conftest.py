"""Shared fixtures: the real TAEF2 VAE and real paintings from ../shared, small subsets of them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from liquidgen.pipeline.images import Preprocess, load_image

SHARED = Path(os.environ.get("LIQUIDGEN_SHARED", Path(__file__).resolve().parents[2] / "shared"))
PAINTINGS = SHARED / "data" / "paintings"
TAEF2 = SHARED / "weights" / "taef2"

if not (PAINTINGS.is_dir() and (TAEF2 / "taef2_encoder.pth").exists()):
    pytest.exit(f"the shared test data is missing: expected {PAINTINGS} and {TAEF2}", returncode=2)


def make_subset(root: Path, per_class: int, classes: int = 5) -> Path:
    """`per_class` real paintings from each of the first `classes` style folders (symlinked)."""
    for style in sorted(p.name for p in PAINTINGS.iterdir() if p.is_dir())[:classes]:
        (root / style).mkdir(parents=True)
        for f in sorted((PAINTINGS / style).iterdir())[:per_class]:
            (root / style / f.name).symlink_to(f)
    return root


@pytest.fixture(scope="session")
def paintings12(tmp_path_factory) -> Path:
    """12 real paintings: 4 from each of 3 styles."""
    return make_subset(tmp_path_factory.mktemp("paintings12"), per_class=4, classes=3)


@pytest.fixture(scope="session")
def paintings40(tmp_path_factory) -> Path:
    """40 real paintings: 8 from each of the 5 styles."""
    return make_subset(tmp_path_factory.mktemp("paintings40"), per_class=8)


def source_image(folder: Path, key: str, resolution: int) -> np.ndarray:
    """The preprocessed source image behind a cache key, as the encoder saw it."""
    return load_image(str(folder / key), Preprocess(resolution=resolution))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2)
    return float(10 * np.log10(1.0 / mse))


def run_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`liquidgen ...` in a subprocess, as a user types it."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", "liquidgen", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@pytest.fixture
def bad_images(tmp_path) -> tuple[Path, dict[str, str | None]]:
    """A folder of awkward inputs made on the spot from a real painting. The dict maps each file
    to the start of its expected skip reason, or None when it must be encoded."""
    good = next(iter(sorted((PAINTINGS / "Baroque").iterdir())))
    img = Image.open(good).convert("RGB")
    d = tmp_path / "awkward"
    d.mkdir()
    raw = good.read_bytes()
    (d / "truncated.jpg").write_bytes(raw[: len(raw) // 3])
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.jpg").write_text("this is a text file, not a JPEG\n")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(d / "one_pixel.png")
    Image.new("1", (20000, 10000)).save(d / "enormous.png")
    img.convert("CMYK").save(d / "cmyk.jpg")
    img.convert("L").save(d / "gray.png")
    Image.fromarray((np.asarray(img.convert("L"), np.uint16) * 257)).save(d / "sixteen_bit.png")
    rgba = img.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(d / "alpha.png")
    img.convert("P", palette=Image.ADAPTIVE).save(d / "palette.png")
    shutil.copy(good, d / "good.jpg")
    expected = {
        "truncated.jpg": "undecodable", "empty.jpg": "not a readable image", "notes.jpg": "not a readable image",
        "one_pixel.png": "too small", "enormous.png": "enormous", "cmyk.jpg": None, "gray.png": None,
        "sixteen_bit.png": None, "alpha.png": None, "palette.png": None, "good.jpg": None,
    }
    return d, expected
