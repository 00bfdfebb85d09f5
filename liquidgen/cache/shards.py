"""Shard files: one Zarr v3 group or one WebDataset tar per shard, written under a temporary name
and published by an atomic rename, read back without pickle.

A shard holds `latents` (N, C', h, w) in the stored dtype, optionally `flipped` (the horizontally
mirrored image's latents), int32 `labels`, int64 source `indices` and the string `keys`.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch

from liquidgen.errors import LiquidgenError

DTYPES = ("fp16", "bf16", "fp32", "uint8")
NUMPY_DTYPE = {"fp16": np.float16, "bf16": np.uint16, "fp32": np.float32, "uint8": np.uint8}
SUFFIX = {"zarr": ".zarr", "wds": ".tar"}
MAX_MEMBER_BYTES = 1 << 30  # a single latent over 1 GiB is not a latent


@dataclass
class ShardData:
    latents: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    keys: list[str]
    flipped: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


# -- dtype conversion --------------------------------------------------------------------------

def quantize(x: np.ndarray, dtype: str, quant: dict | None = None) -> np.ndarray:
    """float32 latents -> the stored representation (bf16 is kept as its uint16 bit pattern)."""
    if dtype == "fp32":
        return x.astype(np.float32)
    if dtype == "fp16":
        return x.astype(np.float16)
    if dtype == "bf16":
        return torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    if dtype == "uint8":
        scale, offset = _affine(quant, x.shape[1])
        return np.clip(np.rint((x - offset) / scale), 0, 255).astype(np.uint8)
    raise LiquidgenError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")


def dequantize(x: np.ndarray, dtype: str, quant: dict | None = None) -> np.ndarray:
    """The stored representation -> float32."""
    if dtype == "bf16":
        return torch.from_numpy(np.ascontiguousarray(x).view(np.int16)).view(torch.bfloat16).float().numpy()
    if dtype == "uint8":
        scale, offset = _affine(quant, x.shape[1])
        return x.astype(np.float32) * scale + offset
    return x.astype(np.float32)


def _affine(quant: dict | None, channels: int) -> tuple[np.ndarray, np.ndarray]:
    if not quant:
        raise LiquidgenError("uint8 storage needs a quantization scale and offset in the manifest")
    shape = (1, channels, 1, 1)
    return (np.asarray(quant["scale"], np.float32).reshape(shape),
            np.asarray(quant["offset"], np.float32).reshape(shape))


def calibrate_uint8(x: np.ndarray, sigmas: float = 4.0) -> dict:
    """Per-channel affine map covering mean ± `sigmas` std of a first batch: 255 steps over
    8 std keeps the rounding error at ~1.3% of a std, and clips only far tails."""
    mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
    std = x.std(axis=(0, 2, 3), dtype=np.float64) + 1e-6
    lo = mean - sigmas * std
    return {"scale": (2 * sigmas * std / 255.0).tolist(), "offset": lo.tolist(), "sigmas": sigmas}


# -- checksums ---------------------------------------------------------------------------------

def shard_files(path: Path) -> list[str]:
    """The files of a shard relative to it: [] for a single-file (tar) shard."""
    return [] if path.is_file() else sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


def shard_digest(path: Path) -> tuple[str, int]:
    """sha256 and size of a shard: the file, or every file of a Zarr directory in sorted order
    (each prefixed by its relative path, so renames are caught too)."""
    sha, total = hashlib.sha256(), 0
    for rel in shard_files(path) or [""]:
        f = path / rel if rel else path
        if rel:
            sha.update(rel.encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                sha.update(chunk)
                total += len(chunk)
    return sha.hexdigest(), total


# -- writing -----------------------------------------------------------------------------------

def write_shard(final: Path, data: ShardData, backend: str) -> tuple[str, int]:
    """Write to `.<name>.tmp`, checksum, rename into place. Returns (sha256, bytes)."""
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    _remove(tmp)
    try:
        if backend == "zarr":
            _write_zarr(tmp, data)
        else:
            _write_tar(tmp, data)
        digest = shard_digest(tmp)
        _remove(final)  # a shard left by a killed run without its record is redone
        os.replace(tmp, final)
    except OSError as exc:
        _remove(tmp)
        raise LiquidgenError(f"cannot write shard {final}: {exc.strerror or exc}") from None
    return digest


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _write_zarr(path: Path, data: ShardData) -> None:
    import zarr
    from zarr.codecs import BloscCodec

    group = zarr.open_group(zarr.storage.LocalStore(str(path)), mode="w", zarr_format=3)
    group.attrs["keys"] = list(data.keys)
    arrays = {"latents": data.latents, "labels": data.labels, "indices": data.indices}
    if data.flipped is not None:
        arrays["flipped"] = data.flipped
    for name, arr in arrays.items():
        n = max(len(arr), 1)
        # One chunk per sample for random access, all chunks of an array in one shard file.
        group.create_array(
            name, shape=arr.shape, dtype=arr.dtype, chunks=(1,) + arr.shape[1:] if arr.ndim > 1 else (n,),
            shards=(n,) + arr.shape[1:] if arr.ndim > 1 else None,
            compressors=BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),
        )[...] = arr


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _write_tar(path: Path, data: ShardData) -> None:
    with tarfile.open(path, "w") as tar:
        for i in range(len(data)):
            key = f"{int(data.indices[i]):09d}"
            members = {
                "latent.npy": _npy_bytes(data.latents[i]),
                "cls": str(int(data.labels[i])).encode(),
                "key.txt": data.keys[i].encode(),
            }
            if data.flipped is not None:
                members["flipped.npy"] = _npy_bytes(data.flipped[i])
            for ext, payload in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mode = len(payload), 0o444
                tar.addfile(info, io.BytesIO(payload))


# -- reading -----------------------------------------------------------------------------------

def read_shard(path: Path, backend: str) -> ShardData:
    try:
        return _read_zarr(path) if backend == "zarr" else read_tar(open(path, "rb"), str(path))
    except LiquidgenError:
        raise
    except Exception as exc:  # zarr/numpy raise many types on damaged data
        raise LiquidgenError(f"cannot read shard {path}: {exc.__class__.__name__}: {str(exc)[:200]}") from None


def _read_zarr(path: Path) -> ShardData:
    import zarr

    group = zarr.open_group(zarr.storage.LocalStore(str(path), read_only=True), mode="r")
    names = set(group.array_keys())
    return ShardData(
        latents=group["latents"][...],
        labels=group["labels"][...],
        indices=group["indices"][...],
        keys=list(group.attrs["keys"]),
        flipped=group["flipped"][...] if "flipped" in names else None,
    )


def read_tar(fileobj: IO[bytes], where: str) -> ShardData:
    """Stream a shard tar; refuse links, absolute paths, `..` and oversized members."""
    samples: dict[str, dict[str, bytes]] = {}
    with fileobj, tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for member in tar:
            name = member.name
            if not member.isfile() or name.startswith("/") or ".." in name.split("/") or "/" in name:
                raise LiquidgenError(f"{where}: refusing tar member {name!r} (not a plain file name)")
            if member.size > MAX_MEMBER_BYTES:
                raise LiquidgenError(f"{where}: tar member {name!r} is {member.size} bytes, too large")
            key, _, ext = name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    keys = sorted(samples)
    try:
        latents = [_load_npy(samples[k]["latent.npy"]) for k in keys]
        flipped = [_load_npy(samples[k]["flipped.npy"]) for k in keys] if keys and "flipped.npy" in samples[keys[0]] else None
        labels = np.array([int(samples[k]["cls"]) for k in keys], np.int32)
        source_keys = [samples[k]["key.txt"].decode() for k in keys]
    except KeyError as exc:
        raise LiquidgenError(f"{where}: a sample lacks its {exc.args[0]} member") from None
    return ShardData(
        latents=np.stack(latents) if latents else np.zeros((0,)),
        labels=labels,
        indices=np.array([int(k) for k in keys], np.int64),
        keys=source_keys,
        flipped=np.stack(flipped) if flipped else None,
    )


def _load_npy(payload: bytes) -> np.ndarray:
    try:
        return np.load(io.BytesIO(payload), allow_pickle=False)
    except ValueError as exc:
        raise LiquidgenError(f"refusing a .npy member that is not a plain array ({exc})") from None
