"""manifest.json: the cache contract, as a typed structure.

Everything a reader needs to train on a shard set without guessing how it was made: source,
preprocessing, VAE, storage, per-channel statistics, shards with checksums, skipped inputs.
This module is the only one that turns JSON into a `Manifest` and back: `Manifest.from_json`
validates every field before anything trusts it (a shared cache is input from a stranger), and
`Manifest.write` writes it atomically. Plain JSON, no pickle.

`vae` and `preprocess` stay plain mappings: their owners (`FrozenVae.info`,
`Preprocess.describe`) define them, and `load_vae(manifest.vae)` takes them as they are.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from liquidgen.cache.shards import SUFFIX, Expect
from liquidgen.config import DTYPES, FLIPS, STORE_CHOICES
from liquidgen.errors import LiquidgenError

FORMAT_VERSION = 2  # 2: each array of a shard stored whole (shards.py); 1 still reads
READABLE = (1, 2)
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 * 2**20  # metadata: 10^8 latents in shards of 1,024 take ~30 MB
MAX_EMPTY_SHARDS = 1024  # shards holding nothing and naming no skipped input (empty input files)


@dataclass
class Storage:
    backend: str  # zarr | wds
    dtype: str  # fp16 | bf16 | fp32 | uint8
    stored: str  # mean | sample | moments
    flip: str  # none | both
    latent_shape: list[int]  # (C', h, w) as stored: C' = 2C for moments
    shard_size: int
    quant: dict | None = None  # uint8: per-channel scale and offset


@dataclass
class Source:
    id: str
    kind: str  # folder | hf | wds
    split: str | None
    revision: str | None
    limit: int | None
    fingerprint: str | None  # the source's layout: a resume against a changed source is refused
    label_names: list[str] | None
    expected: int | None = None  # items the source holds, where known before reading
    limit_seed: int | None = None  # where --limit's evenly spaced draw started (pipeline/sources.py `spread`)
    index: int = 0
    count: int = 0  # encoded
    skipped: int = 0


@dataclass
class Shard:
    name: str
    source: int
    count: int
    bytes: int
    sha256: str
    files: list[str] = field(default_factory=list)  # a Zarr shard's files, relative to it
    unit: str | None = None  # the input shard its items came from
    start: int | None = None  # their first position there
    length: int | None = None  # the piece's planned extent (None: read to its end)
    rank: int = 0
    stats: dict | None = None  # float64 per-channel sums, merged into Manifest.stats


@dataclass
class Skipped:
    source: int
    shard: str
    key: str
    reason: str


@dataclass
class Manifest:
    preprocess: dict
    vae: dict
    storage: Storage
    format_version: int = FORMAT_VERSION
    complete: bool = False
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    liquidgen_version: str = field(default_factory=lambda: __import__("liquidgen").__version__)
    count: int = 0
    sources: list[Source] = field(default_factory=list)
    label_names: list[str] = field(default_factory=list)
    stats: dict | None = None  # per-channel n, sum, sumsq, mean, std over the whole cache
    shards: list[Shard] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    # -- JSON ---------------------------------------------------------------------------------

    @classmethod
    def from_json(cls, data: Any, where: str) -> "Manifest":
        """Validate and build; one line naming the first bad field otherwise."""
        if not isinstance(data, dict):
            raise LiquidgenError(f"{where} is malformed: not a JSON object")
        version = data.get("format_version")
        if version not in READABLE:
            raise LiquidgenError(f"{where} has format version {version!r}; this liquidgen reads versions "
                                 f"{', '.join(map(str, READABLE))}: upgrade liquidgen to read it")
        manifest = _build(cls, data, where, "")
        for shard in manifest.shards:
            if "/" in shard.name or "\\" in shard.name or shard.name.startswith(".") or not shard.name:
                raise LiquidgenError(f"{where} is malformed: bad shard name {shard.name!r}")
            for name in ("count", "bytes"):
                if not 0 <= getattr(shard, name) <= 2**40:
                    raise LiquidgenError(f"{where} is malformed: shard {shard.name} has bad {name} {getattr(shard, name)!r}")
            if len(shard.sha256) != 64 or any(c not in "0123456789abcdef" for c in shard.sha256):
                raise LiquidgenError(f"{where} is malformed: shard {shard.name} has no valid sha256")
            for rel in shard.files:
                if rel.startswith("/") or ".." in rel.split("/") or "\\" in rel:
                    raise LiquidgenError(f"{where} is malformed: shard {shard.name} names the file {rel!r}")
        manifest._check_bounds(where)
        return manifest

    def _check_bounds(self, where: str) -> None:
        """Values a reader would size memory or loops by, checked against each other: a manifest
        that lies about them is refused here, before any shard is touched."""
        st = self.storage
        for name, value, allowed in (("backend", st.backend, tuple(SUFFIX)), ("dtype", st.dtype, DTYPES),
                                     ("stored", st.stored, STORE_CHOICES), ("flip", st.flip, FLIPS)):
            if value not in allowed:
                raise LiquidgenError(f"{where} is malformed: storage.{name} {value!r} is not one of {', '.join(allowed)}")
        if len(st.latent_shape) != 3 or not all(1 <= d <= 65536 for d in st.latent_shape) \
                or math.prod(st.latent_shape) > 2**28:
            raise LiquidgenError(f"{where} is malformed: storage.latent_shape {st.latent_shape} is not a latent's (C, h, w)")
        if st.shard_size < 1:
            raise LiquidgenError(f"{where} is malformed: storage.shard_size {st.shard_size} is below 1")
        if not 0 <= self.count <= 2**40:
            raise LiquidgenError(f"{where} is malformed: count {self.count} is out of range")
        if self.complete and sum(s.count for s in self.shards) != self.count:
            raise LiquidgenError(f"{where} is malformed: its shards hold {sum(s.count for s in self.shards)} latents "
                                 f"but it says count {self.count}")
        named = {s.shard for s in self.skipped}
        empty = sum(1 for s in self.shards if s.count == 0 and s.name not in named)
        if empty > MAX_EMPTY_SHARDS:
            raise LiquidgenError(f"{where} is malformed: it lists {empty} shards that hold nothing")
        if len({s.name for s in self.shards}) != len(self.shards):
            raise LiquidgenError(f"{where} is malformed: a shard is listed twice")
        if len(self.label_names) > 2**20:  # their type is checked with every other field
            raise LiquidgenError(f"{where} is malformed: it names {len(self.label_names)} classes")

    def expect(self, shard: Shard) -> Expect:
        """What this manifest promises `shard` holds, for the reader to check (shards.Expect)."""
        st = self.storage
        return Expect(count=shard.count, latent_shape=tuple(st.latent_shape), dtype=st.dtype, flipped=st.flip == "both",
                      classes=len(self.label_names), nbytes=shard.bytes)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())

    # -- questions every reader asks ----------------------------------------------------------

    def contract(self) -> dict:
        return {section: {k: _section(self, section).get(k) for k in keys} for section, keys in CONTRACT_KEYS.items()}

    def check_contract(self, wanted: "Manifest", cache_dir: str) -> None:
        """One-line refusal naming the first field that differs."""
        old, new = self.contract(), wanted.contract()
        for section, keys in CONTRACT_KEYS.items():
            for key in keys:
                if old[section][key] != new[section][key]:
                    raise LiquidgenError(
                        f"{cache_dir} holds {section}.{key}={old[section][key]!r} but this run asks for "
                        f"{new[section][key]!r}; encode into a new --out folder instead"
                    )

    def published(self) -> "Manifest":
        """This manifest as it is shared: absolute local paths (a source folder or tar, a VAE
        folder) become their last component, which names them without saying where they were
        on the machine that pushed them."""
        def name(value):
            return Path(value).name if isinstance(value, str) and Path(value).is_absolute() else value

        sources = [dataclasses.replace(src, id=name(src.id)) for src in self.sources]
        return dataclasses.replace(self, vae={**self.vae, "id": name(self.vae.get("id"))}, sources=sources)

    @property
    def nbytes(self) -> int:
        return sum(s.bytes for s in self.shards)


# The fields that must agree for two runs to write into one cache (resume or append).
CONTRACT_KEYS = {
    "preprocess": ("resolution", "resize"),
    "vae": ("id", "subfolder", "class", "latent_channels", "downscale"),
    "storage": ("backend", "dtype", "stored", "flip", "latent_shape"),
}


def entry_from_json(cls, data: Any, where: str):
    """One typed entry (a `Shard`, a `Skipped`, a `Source`) from JSON, validated like a manifest."""
    if not isinstance(data, dict):
        raise LiquidgenError(f"{where} is malformed: not a JSON object")
    return _build(cls, data, where, "")


def _section(manifest: Manifest, name: str) -> dict:
    value = getattr(manifest, name)
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _build(cls, data: dict, where: str, path: str):
    """A dataclass from a JSON object, every field type-checked (unknown keys are ignored, so
    manifests written by older versions of this format still read)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        name = f"{path}{f.name}"
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise LiquidgenError(f"{where} is malformed: '{name}' missing")
            continue
        values[f.name] = _check(hints[f.name], data[f.name], where, name)
    return cls(**values)


def _check(kind, value, where: str, name: str):
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check(inner, value, where, name)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise LiquidgenError(f"{where} is malformed: '{name}' is not an object")
        return _build(kind, value, where, f"{name}.")
    if origin is list:
        if not isinstance(value, list):
            raise LiquidgenError(f"{where} is malformed: '{name}' is not a list")
        return [_check(args[0], v, where, f"{name}[{i}]") for i, v in enumerate(value)]
    expected = origin or kind
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise LiquidgenError(f"{where} is malformed: '{name}' is {type(value).__name__}, not {expected.__name__}")
    return value


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temporary name and rename: a reader sees the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise LiquidgenError(f"cannot write {path}: {exc.strerror or exc}") from None


def parse_manifest(text: str | bytes, where: str) -> Manifest:
    """A manifest from its JSON text, refused with one line if it is not one."""
    if len(text) > MAX_MANIFEST_BYTES:
        raise LiquidgenError(f"{where} is larger than {MAX_MANIFEST_BYTES} bytes: refusing to parse it")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LiquidgenError(f"{where} is not valid JSON ({exc.__class__.__name__}): the cache is damaged") from None
    except RecursionError:
        raise LiquidgenError(f"{where} nests too deep to be a manifest: refusing it") from None
    return Manifest.from_json(data, where)


def read_manifest(cache_dir: str | Path) -> Manifest:
    path = Path(cache_dir) / MANIFEST
    if not path.exists():
        raise LiquidgenError(f"{cache_dir} is not a liquidgen cache (no {MANIFEST})")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise LiquidgenError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes: refusing to parse it")
    return parse_manifest(path.read_bytes(), str(path))


def merge_stats(parts: list[dict | None]) -> dict | None:
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
