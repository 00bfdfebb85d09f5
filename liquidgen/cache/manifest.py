"""manifest.json: the cache contract.

Everything a reader needs to train on a shard set without guessing how it was made: source,
preprocessing, VAE, storage, per-channel statistics, shards with checksums, skipped inputs.
Plain JSON (no pickle), one file, written atomically.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from liquidgen.errors import LiquidgenError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 256 * 2**20  # a manifest is metadata; anything this big is not one

# The fields that must agree for two runs to write into one cache (resume or append).
CONTRACT_KEYS = {
    "preprocess": ("resolution", "resize"),
    "vae": ("id", "subfolder", "class", "latent_channels", "downscale"),
    "storage": ("backend", "dtype", "stored", "flip", "latent_shape"),
}


def new_manifest(preprocess: dict, vae: dict, storage: dict) -> dict[str, Any]:
    from liquidgen import __version__

    return {
        "format_version": FORMAT_VERSION,
        "complete": False,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "liquidgen_version": __version__,
        "count": 0,
        "sources": [],
        "label_names": [],
        "preprocess": preprocess,
        "vae": vae,
        "storage": storage,
        "stats": None,
        "shards": [],
        "skipped": [],
    }


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temporary name and rename: a reader sees the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise LiquidgenError(f"cannot write {path}: {exc.strerror or exc}") from None


def read_manifest(cache_dir: str | Path) -> dict[str, Any]:
    path = Path(cache_dir) / MANIFEST
    if not path.exists():
        raise LiquidgenError(f"{cache_dir} is not a liquidgen cache (no {MANIFEST})")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise LiquidgenError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes: refusing to parse it")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LiquidgenError(f"{path} is not valid JSON ({exc.__class__.__name__}): the cache is damaged") from None
    check_manifest(manifest, str(path))
    return manifest


def check_manifest(manifest: Any, where: str) -> None:
    """Refuse a manifest this version cannot read, before anything trusts its fields."""
    if not isinstance(manifest, dict):
        raise LiquidgenError(f"{where} is malformed: not a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise LiquidgenError(
            f"{where} has format version {version!r}; this liquidgen reads version {FORMAT_VERSION}"
        )
    for key, kind in (("vae", dict), ("storage", dict), ("preprocess", dict), ("shards", list), ("sources", list)):
        if not isinstance(manifest.get(key), kind):
            raise LiquidgenError(f"{where} is malformed: '{key}' missing or not a {kind.__name__}")
    for shard in manifest["shards"]:
        name = shard.get("name") if isinstance(shard, dict) else None
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
            raise LiquidgenError(f"{where} is malformed: bad shard name {name!r}")
        for field in ("count", "bytes"):
            value = shard.get(field)
            if not isinstance(value, int) or value < 0 or value > 2**40:
                raise LiquidgenError(f"{where} is malformed: shard {name} has bad {field} {value!r}")
        sha = shard.get("sha256")
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise LiquidgenError(f"{where} is malformed: shard {name} has no valid sha256")
        for rel in shard.get("files") or []:
            if not isinstance(rel, str) or rel.startswith("/") or ".." in rel.split("/") or "\\" in rel:
                raise LiquidgenError(f"{where} is malformed: shard {name} names the file {rel!r}")


def contract(manifest: dict) -> dict:
    return {
        section: {k: manifest[section].get(k) for k in keys} for section, keys in CONTRACT_KEYS.items()
    }


def check_contract(existing: dict, wanted: dict, cache_dir: str) -> None:
    """One-line refusal naming the first field that differs."""
    old, new = contract(existing), contract(wanted)
    for section, keys in CONTRACT_KEYS.items():
        for key in keys:
            if old[section][key] != new[section][key]:
                raise LiquidgenError(
                    f"{cache_dir} holds {section}.{key}={old[section][key]!r} but this run asks for "
                    f"{new[section][key]!r}; encode into a new --out folder instead"
                )


def merge_stats(parts: list[dict]) -> dict | None:
    """Per-channel mean/std from per-shard sums (float64), so shards merge in any order."""
    parts = [p for p in parts if p and p.get("n")]
    if not parts:
        return None
    n = sum(p["n"] for p in parts)
    channels = len(parts[0]["sum"])
    total = [sum(p["sum"][c] for p in parts) for c in range(channels)]
    total_sq = [sum(p["sumsq"][c] for p in parts) for c in range(channels)]
    mean = [s / n for s in total]
    std = [math.sqrt(max(sq / n - m * m, 0.0)) for sq, m in zip(total_sq, mean)]
    return {"n": n, "sum": total, "sumsq": total_sq, "mean": mean, "std": std}
