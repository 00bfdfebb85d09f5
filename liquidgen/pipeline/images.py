"""Image decoding and preprocessing: bytes or a path in, a square uint8 RGB array out, or a
one-line reason why not; and the writers for what comes out (PNG files, grids).

Runs in DataLoader workers, so it returns reasons instead of raising: one bad file must never
stop an encode of thousands.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:  # workers decode images without needing torch
    import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class Preprocess:
    """How every image is brought to the VAE's input. Recorded in the manifest."""

    resolution: int = 256
    min_size: int = 16  # a shorter side below this is "too small", not upscaled into mush
    max_pixels: int = 178_956_970  # twice Pillow's default bomb limit: bigger is "enormous"

    def describe(self) -> dict:
        return {
            "resolution": self.resolution,
            "resize": "short side to resolution (bicubic, antialiased), centre crop",
            "min_size": self.min_size,
            "max_pixels": self.max_pixels,
        }


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: palette and alpha are composited on white, 16-bit scaled down."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr * (255.0 if arr.max() <= 1 else 1) + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_image(data: bytes | str, pre: Preprocess) -> np.ndarray | str:
    """uint8 array (3, R, R), or the reason the image was skipped."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
            with Image.open(src) as img:
                w, h = img.size
                if w * h > pre.max_pixels:
                    return f"enormous ({w}x{h} > {pre.max_pixels} pixels)"
                if min(w, h) < pre.min_size:
                    return f"too small ({w}x{h}, shorter side < {pre.min_size})"
                img.load()
                img = ImageOps.exif_transpose(img)
                rgb = resize_center_crop(to_rgb(img), pre.resolution)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "enormous (over Pillow's decompression-bomb limit)"
    except UnidentifiedImageError as exc:
        return f"not a readable image ({exc.__class__.__name__})"
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        return f"undecodable ({msg[:120]})"
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))


# -- writing pictures ---------------------------------------------------------------------------

def image_grid(images: torch.Tensor, cols: int | None = None, pad: int = 2) -> Image.Image:
    """(N, 3, H, W) in [0, 1] -> one PIL image, `cols` wide, white gutters."""
    n, _, h, w = images.shape
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = arr[i]
    return Image.fromarray(grid)


def save_images(images: torch.Tensor, folder: Path, prefix: str = "") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    paths = []
    for i, a in enumerate(arr):
        paths.append(folder / f"{prefix}{i:05d}.png")
        Image.fromarray(a).save(paths[-1])
    return paths
