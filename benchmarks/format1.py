"""Shards as liquidgen's format 1 wrote them (one Zarr chunk, or one set of tar members, per
latent), for the benchmark that compares layouts and the tests that check such caches still read.
liquidgen itself writes only format 2."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

from liquidgen.cache.shards import ShardData


def write_zarr_v1(path: Path, data: ShardData) -> None:
    import zarr
    from zarr.codecs import BloscCodec

    group = zarr.open_group(zarr.storage.LocalStore(str(path)), mode="w", zarr_format=3)
    group.attrs["keys"] = list(data.keys)
    for name, arr in data.arrays().items():
        n = max(len(arr), 1)
        group.create_array(
            name, shape=arr.shape, dtype=arr.dtype, chunks=(1,) + arr.shape[1:] if arr.ndim > 1 else (n,),
            shards=(n,) + arr.shape[1:] if arr.ndim > 1 else None,
            compressors=BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),
        )[...] = arr


def write_tar_v1(path: Path, data: ShardData) -> None:
    def npy(arr: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        return buf.getvalue()

    with tarfile.open(path, "w") as tar:
        for i in range(len(data)):
            key = f"{int(data.indices[i]):09d}"
            members = {"latent.npy": npy(data.latents[i]), "cls": str(int(data.labels[i])).encode(),
                       "key.txt": data.keys[i].encode()}
            if data.flipped is not None:
                members["flipped.npy"] = npy(data.flipped[i])
            for ext, payload in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mode = len(payload), 0o444
                tar.addfile(info, io.BytesIO(payload))
