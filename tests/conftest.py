"""Shared fixtures: the real TAEF2 VAE and the real paintings that ship with liquidgen
(`paintings_mini`: 100 Baroque, 100 Rococo), small subsets of them. Only tests that need more
than those 200 images read ../shared, and they are skipped, with the reason, when it is absent."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from liquidgen.embedded import PAINTINGS_MINI, TAEF2  # noqa: F401  (TAEF2: imported by the tests from here)
from liquidgen.pipeline.images import Preprocess, load_image

PAINTINGS = PAINTINGS_MINI  # Baroque/ and Rococo/, 100 real paintings each, 128 px
SHARED = Path(os.environ.get("LIQUIDGEN_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SHARED_PAINTINGS = SHARED / "data" / "paintings"  # 2,000 paintings, five styles
needs_shared = pytest.mark.skipif(
    not SHARED_PAINTINGS.is_dir(),
    reason=f"needs more images than the shipped 200: the 2,000 shared paintings at {SHARED_PAINTINGS}",
)


def make_subset(root: Path, per_class: int, classes: int = 2) -> Path:
    """`per_class` real paintings from each of the first `classes` style folders (symlinked)."""
    for style in sorted(p.name for p in PAINTINGS.iterdir() if p.is_dir())[:classes]:
        (root / style).mkdir(parents=True)
        for f in sorted((PAINTINGS / style).iterdir())[:per_class]:
            (root / style / f.name).symlink_to(f)
    return root


@pytest.fixture(scope="session")
def paintings12(tmp_path_factory) -> Path:
    """12 real paintings: 6 from each of the 2 styles."""
    return make_subset(tmp_path_factory.mktemp("paintings12"), per_class=6)


@pytest.fixture(scope="session")
def paintings40(tmp_path_factory) -> Path:
    """40 real paintings: 20 from each of the 2 styles."""
    return make_subset(tmp_path_factory.mktemp("paintings40"), per_class=20)


@pytest.fixture(scope="module")
def cache40(paintings40, tmp_path_factory) -> Path:
    """The 40 paintings encoded at 64 px (latents 32x8x8) in shards of 16: a small real cache."""
    from liquidgen.pipeline.encode import EncodeConfig, encode

    out = tmp_path_factory.mktemp("cache40") / "c"
    encode(EncodeConfig(str(paintings40), str(out), vae=str(TAEF2), resolution=64, shard_size=16,
                        batch_size=8, workers=1, progress=False))
    return out


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


@contextlib.contextmanager
def small_disk(folder: Path, size: str):
    """A tmpfs of `size` mounted at `folder` (skipped where mounting is not allowed), to fill up
    on purpose; yields a function that remounts it at another size, as a user freeing space."""
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("needs permission to mount a small tmpfs")
    try:
        yield lambda new: subprocess.run(["mount", "-o", f"remount,size={new}", str(folder)], check=True)
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)
