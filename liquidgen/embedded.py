"""What ships inside the package so that liquidgen runs offline with nothing beside it: the
TAEF2 tiny VAE (MIT) and `paintings_mini`, 200 public-domain paintings at 128 px. Both are
package data (see `liquidgen/assets/`), so they are there after `pip install liquidgen` too."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
TAEF2 = ASSETS / "taef2"  # taef2_encoder.pth + taef2_decoder.pth, fp16 state dicts
PAINTINGS_MINI = ASSETS / "paintings_mini"  # Baroque/ and Rococo/, 100 JPEGs each
