"""Shard files: one Zarr v3 group or one WebDataset tar per shard, written under a temporary name
and published by an atomic rename, read back without pickle.

Format 2 (this version writes it) stores each array of a shard whole: one uncompressed Zarr chunk,
or one `.npy` member of the tar, so reading a shard is a few large reads. Format 1 shards (one
Zarr chunk, or one set of tar members, per latent) still read, through the same functions.

A shard holds `latents` (N, C', h, w) in the stored dtype, optionally `flipped` (the horizontally
mirrored image's latents), int32 `labels`, int64 source `indices` and the string `keys`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch

from liquidgen.cache.lock import temporary
from liquidgen.config import DTYPES
from liquidgen.errors import LiquidgenError

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

    def arrays(self) -> dict[str, np.ndarray]:
        """The shard's arrays by their stored names (`flipped` only where there is one)."""
        out = {"latents": self.latents, "labels": self.labels, "indices": self.indices}
        if self.flipped is not None:
            out["flipped"] = self.flipped
        return out


@dataclass(frozen=True)
class Expect:
    """What a cache's manifest promises one shard holds. A reader given it refuses a shard that
    says otherwise, and checks sizes before it reads, so a shard cannot make it allocate more
    than the manifest declared."""

    count: int
    latent_shape: tuple[int, ...]
    dtype: str  # the storage dtype's name (DTYPES)
    flipped: bool  # a `flipped` array must be there
    classes: int  # labels lie in [-1, classes): -1 is "no label"; any when the cache names no classes
    nbytes: int  # the shard's size on disk

    def shape(self, name: str) -> tuple[int, ...]:
        return (self.count, *self.latent_shape) if name in ("latents", "flipped") else (self.count,)

    def check(self, data: "ShardData", where: str) -> None:
        """Shape, dtype, count and label range of what was read (cheap: no pass over the latents)."""
        want = np.dtype(NUMPY_DTYPE[self.dtype])
        for name in ("latents", "flipped"):
            arr = getattr(data, name)
            if arr is None:
                if name == "latents" or self.flipped:
                    raise LiquidgenError(f"{where}: has no {name} array, its manifest says it has")
                continue
            if tuple(arr.shape) != self.shape(name) or arr.dtype != want:
                raise LiquidgenError(f"{where}: its {name} are {tuple(arr.shape)} {arr.dtype}, its manifest says "
                                     f"{self.shape(name)} {want}")
        if len(data.labels) != self.count:
            raise LiquidgenError(f"{where}: holds {len(data.labels)} latents, its manifest says {self.count}")
        # without label names the labels are a source's own numbers, unused by training
        top = self.classes if self.classes else np.iinfo(np.int32).max
        if len(data.labels) and (data.labels.min() < -1 or data.labels.max() >= top):
            bad = int(data.labels.max() if data.labels.max() >= top else data.labels.min())
            raise LiquidgenError(f"{where}: holds label {bad}, outside the {self.classes} classes its manifest names")


def check_finite(data: ShardData, dtype: str, where: str) -> None:
    """Every stored float is finite (one pass over the shard; done once per shard and remembered,
    see store.py). uint8 codes are finite by construction."""
    if dtype == "uint8":
        return
    for name in ("latents", "flipped"):
        arr = getattr(data, name)
        if arr is None:
            continue
        if dtype == "bf16":  # bf16 bits in uint16: all-ones exponent is inf or nan
            bad = bool(np.any((arr & 0x7F80) == 0x7F80))
        else:
            bad = not bool(np.isfinite(arr).all())
        if bad:
            raise LiquidgenError(f"{where}: its {name} hold NaN or infinite values; the cache is damaged "
                                 "(re-encode it, or fetch it again)")


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
    tmp = temporary(final)
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
        # zarr's own writer may still be removing its `.partial` files (a full disk): a file that
        # vanishes under us is what cleaning up wants, not a second error
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        raise LiquidgenError(f"cannot write shard {final}: {exc.strerror or exc}") from None
    return digest


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _write_zarr(path: Path, data: ShardData) -> None:
    """One chunk per array, no codec: a shard is read whole, and fp16 latents do not compress
    (Blosc-zstd saved 7% and cost over 100x the read time; docs/benchmarks.md, shard layouts)."""
    import zarr

    group = zarr.open_group(zarr.storage.LocalStore(str(path)), mode="w", zarr_format=3)
    group.attrs["keys"] = list(data.keys)
    for name, arr in data.arrays().items():
        chunks = (max(len(arr), 1),) + arr.shape[1:]
        group.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=chunks, compressors=None)[...] = arr


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _write_tar(path: Path, data: ShardData) -> None:
    """One sample `shard` whose members are whole arrays (`shard.latents.npy`, ...): a reader
    fills each array with one read instead of one `np.load` per latent."""
    members = {"latents.npy": _npy_bytes(data.latents), "labels.npy": _npy_bytes(data.labels),
               "indices.npy": _npy_bytes(data.indices), "keys.json": json.dumps(list(data.keys)).encode()}
    if data.flipped is not None:
        members["flipped.npy"] = _npy_bytes(data.flipped)
    with tarfile.open(path, "w") as tar:
        for ext, payload in members.items():
            info = tarfile.TarInfo(f"shard.{ext}")
            info.size, info.mode = len(payload), 0o444
            tar.addfile(info, io.BytesIO(payload))


# -- reading -----------------------------------------------------------------------------------

def read_shard(path: Path, backend: str, into: dict[str, np.ndarray] | None = None,
               expect: Expect | None = None) -> ShardData:
    """A shard's arrays. With `into` ({"latents": array, "flipped": array}), those arrays are
    filled where they lie (one read straight into a caller's buffer, e.g. the resident cache)
    and returned as the shard's; they must have the shard's exact shape and stored dtype.
    With `expect`, the shard's size on disk and every array's declared shape and dtype are
    checked before anything is read, and what was read is checked after (`Expect.check`)."""
    try:
        if expect is not None:
            check_on_disk(path, backend, expect)
        if backend == "zarr":
            data = _read_zarr(path, into or {}, expect)
        else:
            data = _read_tar_blocks(path, into or {}, expect) or read_tar(open(path, "rb"), str(path))
        for name, out in (into or {}).items():
            got = getattr(data, name)
            if got is not out:  # a layout read whole first (format 1): copied over once
                if got is None or got.shape != out.shape:
                    raise LiquidgenError(f"{path}: its {name} are {None if got is None else got.shape}, expected {out.shape}")
                out[...] = got
                setattr(data, name, out)
        if expect is not None:
            expect.check(data, str(path))
        return data
    except LiquidgenError:
        raise
    except Exception as exc:  # zarr/numpy raise many types on damaged data
        raise LiquidgenError(f"cannot read shard {path}: {exc.__class__.__name__}: {str(exc)[:200]}") from None


def disk_bytes(path: Path) -> int:
    """A shard's bytes on disk: the tar, or every file of the Zarr folder."""
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def check_on_disk(path: Path, backend: str, expect: Expect) -> None:
    """The shard is what its manifest says on disk: a file (tar) or a folder of files (Zarr), of
    the declared size. A lying header cannot then make a reader read more than that."""
    if backend == "wds" and not path.is_file() or backend == "zarr" and not path.is_dir():
        what = "missing" if not path.exists() else "a folder" if path.is_dir() else "not a folder"
        raise LiquidgenError(f"{path}: the shard is {what}; run `liquidgen cache verify` on the cache")
    size = disk_bytes(path)
    if size != expect.nbytes:
        raise LiquidgenError(f"{path}: the shard is {size} bytes, its manifest says {expect.nbytes} (damaged or replaced: "
                             "run `liquidgen cache verify`)")


def _declared(name: str, shape, dtype, expect: Expect | None, where: str) -> None:
    """An array's header (shape, dtype) against the manifest, before its data is read."""
    if expect is None or name not in ("latents", "flipped", "labels", "indices"):
        return
    if tuple(shape) != expect.shape(name):
        raise LiquidgenError(f"{where}: declares its {name} {tuple(shape)}, its manifest says {expect.shape(name)}")
    if name in ("latents", "flipped") and np.dtype(dtype) != np.dtype(NUMPY_DTYPE[expect.dtype]):
        raise LiquidgenError(f"{where}: declares its {name} {np.dtype(dtype)}, its manifest says {expect.dtype}")


def _read_tar_blocks(path: Path, into: dict[str, np.ndarray], expect: Expect | None = None) -> ShardData | None:
    """A shard tar of whole-array members, each read straight into its array by offset; None
    for a tar of one member per latent (caches of format 1), which `read_tar` streams."""
    where = str(path)
    with open(path, "rb") as fh:
        with tarfile.open(fileobj=fh, mode="r:") as tar:
            listed = tar.getmembers()
            members = {m.name: m for m in listed}
            if len(members) != len(listed):
                raise LiquidgenError(f"{where}: a member name appears twice in the tar; refusing to guess which is meant")
            for name, member in members.items():
                _check_member(member, where)
            if "shard.latents.npy" not in members:
                return None
            keys = _keys(tar.extractfile(members["shard.keys.json"]).read() if "shard.keys.json" in members else None, where)
        arrays = {}
        for name in ("latents", "flipped", "labels", "indices"):
            member = members.get(f"shard.{name}.npy")
            if member is not None:
                fh.seek(member.offset_data)
                arrays[name] = _read_npy(fh, member.size, where, into.get(name), lambda shape, dtype, n=name: _declared(n, shape, dtype, expect, where))
    return _block_data(arrays, keys, where)


def _read_npy(fh, size: int, where: str, out: np.ndarray | None = None, declared=None) -> np.ndarray:
    """An .npy member read with one `fromfile`, refusing object arrays and headers that promise
    more (or less) data than the member holds."""
    start = fh.tell()
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise LiquidgenError(f"{where}: an .npy member of version {version} is not a plain array")
    if dtype.hasobject or fortran:
        raise LiquidgenError(f"{where}: refusing a .npy member that is not a plain array ({dtype})")
    count = int(np.prod(shape))
    if fh.tell() - start + count * dtype.itemsize != size:
        raise LiquidgenError(f"{where}: an .npy member's header says {shape} {dtype}, its size says otherwise")
    if declared is not None:
        declared(shape, dtype)
    return _fill(fh, dtype, shape, out, where)


def _fill(fh, dtype, shape, out: np.ndarray | None, where: str) -> np.ndarray:
    """The array at `fh`'s position: read into `out` when given (it must match), else new."""
    count = int(np.prod(shape))
    if out is None:
        return np.fromfile(fh, dtype=dtype, count=count).reshape(shape)
    if tuple(out.shape) != tuple(shape) or out.dtype != np.dtype(dtype) or not out.flags.c_contiguous:
        raise LiquidgenError(f"{where}: holds {tuple(shape)} {np.dtype(dtype)}, the buffer given is {out.shape} {out.dtype}")
    view = memoryview(out).cast("B")
    if fh.readinto(view) != view.nbytes:
        raise LiquidgenError(f"{where}: ended before its {tuple(shape)} {np.dtype(dtype)} array")
    return out


def _keys(payload: bytes | list | None, where: str) -> list[str]:
    """The shard's source keys, from a tar's `keys.json` member or a Zarr group's attributes."""
    try:
        keys = json.loads(payload) if isinstance(payload, bytes) else payload
    except (ValueError, UnicodeDecodeError):
        keys = None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise LiquidgenError(f"{where}: the shard's keys member is missing or not a list of strings")
    return keys


def _block_data(arrays: dict, keys: list[str], where: str) -> ShardData:
    if "labels" not in arrays or "indices" not in arrays:
        raise LiquidgenError(f"{where}: the shard lacks its labels or indices member")
    n = len(arrays["latents"])
    if any(len(a) != n for a in arrays.values()) or len(keys) != n:
        raise LiquidgenError(f"{where}: the shard's arrays disagree on how many latents it holds")
    return ShardData(latents=arrays["latents"], labels=arrays["labels"].astype(np.int32),
                     indices=arrays["indices"].astype(np.int64), keys=keys, flipped=arrays.get("flipped"))


def _check_member(member: tarfile.TarInfo, where: str) -> None:
    name = member.name
    if not member.isfile() or name.startswith("/") or ".." in name.split("/") or "/" in name:
        raise LiquidgenError(f"{where}: refusing tar member {name!r} (not a plain file name)")
    if member.size > MAX_MEMBER_BYTES:
        raise LiquidgenError(f"{where}: tar member {name!r} is {member.size} bytes, too large")


def _read_zarr(path: Path, into: dict[str, np.ndarray], expect: Expect | None = None) -> ShardData:
    try:
        group = json.loads((path / "zarr.json").read_text())
        keys = group["attributes"]["keys"]
    except (OSError, ValueError, KeyError, TypeError):
        raise LiquidgenError(f"cannot read shard {path}: no Zarr group metadata with its keys") from None
    arrays = {name: _read_zarr_array(path / name, into.get(name), expect, name) for name in ("latents", "flipped", "labels", "indices")
              if (path / name / "zarr.json").exists()}
    if "latents" not in arrays:
        raise LiquidgenError(f"cannot read shard {path}: it has no latents array")
    return _block_data(arrays, _keys(keys, str(path)), str(path))


_ZARR_DTYPES = {"float16": "<f2", "float32": "<f4", "uint16": "<u2", "uint8": "u1", "int32": "<i4", "int64": "<i8"}
_WHOLE = ([{"name": "bytes", "configuration": {"endian": "little"}}], {"name": "default", "configuration": {"separator": "/"}})


def _read_zarr_array(path: Path, out: np.ndarray | None = None, expect: Expect | None = None,
                     name: str = "") -> np.ndarray:
    """An array as format 2 stores it (one chunk, `bytes` codec, little-endian: by the Zarr v3
    spec its chunk file is the raw array) read with one `fromfile`; any other array through zarr,
    its declared shape checked first (compressed chunks decode to what the metadata declares)."""
    meta = json.loads((path / "zarr.json").read_text())
    shape, dtype = meta.get("shape"), _ZARR_DTYPES.get(meta.get("data_type"))
    chunk_shape = ((meta.get("chunk_grid") or {}).get("configuration") or {}).get("chunk_shape")
    if dtype is None or chunk_shape != shape or (meta.get("codecs"), meta.get("chunk_key_encoding")) != _WHOLE \
            or meta.get("storage_transformers") or not isinstance(shape, list):
        import zarr

        array = zarr.open_array(zarr.storage.LocalStore(str(path), read_only=True), mode="r")
        _declared(name, array.shape, array.dtype, expect, str(path))
        if expect is not None and np.prod(array.chunks) > 2 * np.prod(expect.shape(name)) + 1:
            raise LiquidgenError(f"{path}: declares chunks of {array.chunks}, larger than its manifest's arrays")
        return array[...]
    _declared(name, shape, dtype, expect, str(path))
    count, chunk = int(np.prod(shape)), path.joinpath("c", *["0"] * len(shape))
    if not chunk.exists():  # zarr does not write a chunk that is all fill value
        return np.full(shape, meta.get("fill_value", 0), np.dtype(dtype))
    if chunk.stat().st_size != count * np.dtype(dtype).itemsize:
        raise LiquidgenError(f"{path}: its chunk holds {chunk.stat().st_size} bytes, its metadata promises {shape} {dtype}")
    with open(chunk, "rb") as fh:
        return _fill(fh, np.dtype(dtype).newbyteorder("="), shape, out, str(path))


def read_tar(fileobj: IO[bytes], where: str) -> ShardData:
    """Stream a shard tar (from a file or a download) of either layout; refuse links, absolute
    paths, `..` and oversized members."""
    samples: dict[str, dict[str, bytes]] = {}
    with fileobj, tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for member in tar:
            _check_member(member, where)
            key, _, ext = member.name.partition(".")
            if ext in samples.setdefault(key, {}):
                raise LiquidgenError(f"{where}: the member {member.name!r} appears twice in the tar; refusing to guess which is meant")
            samples[key][ext] = tar.extractfile(member).read()
    if "latents.npy" in samples.get("shard", {}):  # whole arrays
        block = samples["shard"]
        arrays = {name: _load_npy(block[f"{name}.npy"]) for name in ("latents", "flipped", "labels", "indices")
                  if f"{name}.npy" in block}
        return _block_data(arrays, _keys(block.get("keys.json"), where), where)
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
