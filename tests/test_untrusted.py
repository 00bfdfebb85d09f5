"""Caches from strangers: every lie a shard or a manifest can tell is refused with one line
before its data is used, whichever path reads it (resident and streaming training, decode,
verify, pull). A stranger writes the manifest too, so each crafted shard here comes with a
manifest whose checksums match it: only the checks of content against manifest can catch it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TAEF2, run_cli
from liquidgen.cache.loader import InMemoryLatents, StreamingLatents
from liquidgen.cache.manifest import MAX_MANIFEST_BYTES
from liquidgen.cache.shards import ShardData, read_shard, shard_digest, shard_files, write_shard
from liquidgen.cache.store import VERIFIED, CacheDir, verify_cache
from liquidgen.errors import LiquidgenError
from liquidgen.pipeline.decode import DecodeConfig, decode
from liquidgen.pipeline.encode import EncodeConfig, encode

reliability = pytest.mark.reliability


@pytest.fixture(scope="module", params=["zarr", "wds"])
def clean(request, paintings12, tmp_path_factory) -> Path:
    """12 real paintings at 64 px (latents 32x8x8, fp16), shards of 4."""
    out = tmp_path_factory.mktemp("untrusted") / request.param
    encode(EncodeConfig(str(paintings12), str(out), vae=str(TAEF2), resolution=64, shard_size=4,
                        format=request.param, workers=0, progress=False))
    return out


@pytest.fixture
def cache(clean, tmp_path) -> Path:
    """A fresh copy of the clean cache to tamper with."""
    return Path(shutil.copytree(clean, tmp_path / clean.name, symlinks=True))


def first_shard(root: Path) -> ShardData:
    c = CacheDir(root)
    m = c.manifest()
    return c.read(m.shards[0].name, m.storage.backend)


def forge(root: Path, data: ShardData | None = None, **manifest_changes) -> None:
    """Replace shard 0 with `data` and/or change manifest fields, then make every checksum in the
    manifest match, as a stranger who wrote both would."""
    c = CacheDir(root)
    raw = json.loads(c.manifest_path.read_text())
    shard = raw["shards"][0]
    path = c.shard_path(shard["name"])
    if data is not None:
        write_shard(path, data, raw["storage"]["backend"])
    shard["sha256"], shard["bytes"] = shard_digest(path)
    shard["files"] = shard_files(path)
    for key, value in manifest_changes.items():
        section, _, field = key.partition("__")
        (raw[section] if field else raw).__setitem__(field or section, value)
    c.manifest_path.write_text(json.dumps(raw))
    (root / VERIFIED).unlink(missing_ok=True)


READERS = {
    "resident": lambda root: InMemoryLatents(str(root), 2),
    "streaming": lambda root: list(StreamingLatents(str(root), 2, buffer_shards=1).stored_batches(0)),
    "decode": lambda root: decode(DecodeConfig(str(root), str(root.parent / "decoded"), limit=12, vae=str(TAEF2))),
}


def refused_by_every_reader(root: Path, message: str) -> None:
    for name, read in READERS.items():
        with pytest.raises(LiquidgenError, match=message):
            read(root)
    _, problems = verify_cache(root)
    assert problems and any(__import__("re").search(message, p) for p in problems), problems


@reliability("a manifest declaring latents of 16x16 over shards of 8x8", "refused naming the shard and both shapes")
def test_a_manifest_that_lies_about_the_latent_shape(cache):
    forge(cache, storage__latent_shape=[32, 16, 16])
    refused_by_every_reader(cache, r"its manifest says \(4, 32, 16, 16\)")


@reliability("a manifest declaring 16 channels over 32", "refused naming the shard and both shapes")
def test_a_manifest_that_lies_about_the_channels(cache):
    forge(cache, storage__latent_shape=[16, 8, 8])
    refused_by_every_reader(cache, r"its manifest says \(4, 16, 8, 8\)")


@reliability("a manifest declaring uint8 over fp16 shards", "refused naming the shard and both dtypes")
def test_a_manifest_that_lies_about_the_dtype(cache):
    forge(cache, storage__dtype="uint8", storage__quant={"scale": [1.0] * 32, "offset": [0.0] * 32})
    refused_by_every_reader(cache, "uint8")


@reliability("a shard whose labels are 999 in a cache of 2 classes", "refused naming the label and the class count")
def test_labels_out_of_range(cache):
    data = first_shard(cache)
    data.labels[:] = 999
    forge(cache, data)
    refused_by_every_reader(cache, "holds label 999, outside the 2 classes")


@reliability("a shard of NaN latents (checksums matching)", "refused on its first read: the floats are checked once per shard")
def test_nan_latents(cache):
    data = first_shard(cache)
    data.latents[1] = np.nan
    forge(cache, data)
    refused_by_every_reader(cache, "NaN or infinite")


@reliability("a shard holding 3 latents where its manifest says 4", "refused naming both counts")
def test_a_shard_shorter_than_its_manifest_entry(cache):
    data = first_shard(cache)
    short = ShardData(latents=data.latents[:3], labels=data.labels[:3], indices=data.indices[:3], keys=data.keys[:3])
    forge(cache, short)
    refused_by_every_reader(cache, r"\(3, 32, 8, 8\)|holds 3 latents")


@reliability("a manifest whose count is 100x what its shards hold; a negative count; a fractional one",
             "refused when the manifest is read, before any shard")
@pytest.mark.parametrize("count, message", [(1200, "its shards hold 12 latents but it says count 1200"),
                                            (-1, "count -1 is out of range|hold 12"), (12.5, "is float, not int")])
def test_a_manifest_that_lies_about_its_count(cache, count, message):
    forge(cache, count=count)
    for read in READERS.values():
        with pytest.raises(LiquidgenError, match=message):
            read(cache)


@reliability("a Zarr shard of a few KB whose metadata declares 4 GiB of latents",
             "refused from its metadata before anything is decompressed")
@pytest.mark.parametrize("clean", ["zarr"], indirect=True)  # a Zarr shard's metadata
def test_a_zarr_shard_that_would_decompress_to_gigabytes(cache):
    import zarr

    path = CacheDir(cache).shard_path(CacheDir(cache).manifest().shards[0].name) / "latents"
    shutil.rmtree(path)
    # all fill value: zarr writes no chunk, so 4 GiB of latents take a few hundred bytes on disk
    zarr.create_array(zarr.storage.LocalStore(str(path)), shape=(4, 32, 2**14, 2**12), chunks=(1, 32, 2**14, 2**12),
                      dtype="float16", fill_value=0, compressors=zarr.codecs.ZstdCodec())
    forge(cache)
    refused_by_every_reader(cache, r"declares its latents \(4, 32, 16384, 4096\)")


@reliability("a tar shard with two members of the same name", "refused: which one is meant is not for the reader to guess")
@pytest.mark.parametrize("clean", ["wds"], indirect=True)  # a tar shard
def test_a_tar_with_duplicate_members(cache):
    import tarfile

    path = CacheDir(cache).shard_path(CacheDir(cache).manifest().shards[0].name)
    with tarfile.open(path, "a") as tar:
        tar.add(str(path.parent / sorted(p.name for p in path.parent.iterdir())[1]), arcname="shard.labels.npy")
    forge(cache)
    refused_by_every_reader(cache, "twice|duplicate")


@reliability("one flipped bit in a local shard, the manifest untouched", "training and decode refuse naming the shard")
def test_a_flipped_bit_is_caught_on_the_training_path(cache):
    c = CacheDir(cache)
    shard = c.manifest().shards[-1]
    target = c.shard_path(shard.name)
    target = target if target.is_file() else target / "latents" / "c" / "0" / "0" / "0" / "0"
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 1
    target.write_bytes(bytes(raw))
    for read in READERS.values():
        with pytest.raises(LiquidgenError, match=f"shard {shard.name} does not match its manifest"):
            read(cache)


def test_a_verified_cache_is_not_hashed_again_but_a_changed_shard_is(cache, monkeypatch):
    import liquidgen.cache.store as store

    hashed = []
    real = store.shard_digest
    monkeypatch.setattr(store, "shard_digest", lambda p: hashed.append(p.name) or real(p))
    InMemoryLatents(str(cache), 2)
    shards = [s.name for s in CacheDir(cache).manifest().shards]
    assert sorted(hashed) == sorted(shards)  # the first run hashes each shard once
    hashed.clear()
    InMemoryLatents(str(cache), 2)
    list(StreamingLatents(str(cache), 2, buffer_shards=1).stored_batches(0))
    assert hashed == []  # the stamp holds
    path = CacheDir(cache).shard_path(shards[0])
    touched = path if path.is_file() else path / "zarr.json"
    import os

    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    InMemoryLatents(str(cache), 2)
    assert hashed == [shards[0]]
    # a copy of the cache, its stamp and mtimes kept (tar, rsync -a), is hashed again: the stamp
    # says what this machine checked in that place, not what a sender says
    hashed.clear()
    copy = Path(shutil.copytree(cache, cache.parent / "copy", copy_function=shutil.copy2))
    assert (copy / VERIFIED).exists()
    InMemoryLatents(str(copy), 2)
    assert sorted(hashed) == sorted(shards)


@reliability("a shard that is a folder where a file belongs (or a file where a folder belongs)", "refused naming it")
def test_a_shard_of_the_wrong_kind(cache):
    c = CacheDir(cache)
    path = c.shard_path(c.manifest().shards[0].name)
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    (path.mkdir() if c.manifest().storage.backend == "wds" else path.write_bytes(b"x"))
    for read in READERS.values():
        with pytest.raises(LiquidgenError, match="the shard is (a folder|not a folder)|does not match"):
            read(cache)


@reliability("a shard that is a symlink to a file outside the cache", "refused: a cache reads only its own files")
def test_a_symlinked_shard_pointing_outside(cache, tmp_path):
    c = CacheDir(cache)
    path = c.shard_path(c.manifest().shards[0].name)
    outside = tmp_path / "elsewhere" / path.name
    outside.parent.mkdir()
    shutil.move(str(path), str(outside))
    path.symlink_to(outside)
    for read in READERS.values():
        with pytest.raises(LiquidgenError, match="link to a file outside the cache"):
            read(cache)


@reliability("a manifest listing 10^6 shards", "refused in under a second, by its size or its empty shards")
def test_a_manifest_of_a_million_shards(cache):
    raw = json.loads((cache / "manifest.json").read_text())
    real, entry = raw["shards"], {**raw["shards"][0], "count": 0}
    # the million as a stranger would write them, with only the fields a shard needs: 150 MB, not
    # the 1.5 GB (and 40 s of writing) of full entries, and refused by size all the same
    slim = {k: entry[k] for k in ("source", "count", "bytes", "sha256")}
    for n, message, shard in [(10**6, "larger than", slim), (5000, "lists 5000 shards that hold nothing", entry)]:
        raw["shards"] = real + [{**shard, "name": f"x{i}.zarr"} for i in range(n)]
        (cache / "manifest.json").write_text(json.dumps(raw, separators=(",", ":")))
        assert n < 10**6 or (cache / "manifest.json").stat().st_size > MAX_MANIFEST_BYTES
        for command in (["cache", "info", str(cache)], ["cache", "verify", str(cache)]):
            result = run_cli(*command)
            assert result.returncode == 1 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr


@reliability("a 0-byte manifest", "refused: not valid JSON")
def test_an_empty_manifest(cache):
    (cache / "manifest.json").write_bytes(b"")
    result = run_cli("cache", "info", str(cache))
    assert result.returncode == 1 and "not valid JSON" in result.stderr and "Traceback" not in result.stderr


def test_verify_names_at_most_twenty_bad_shards(cache):
    c = CacheDir(cache)
    for shard in c.manifest().shards:
        path = c.shard_path(shard.name)
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    _, problems = verify_cache(cache)
    assert len(problems) == 3  # 12 latents in shards of 4
    result = run_cli("cache", "verify", str(cache))
    assert result.returncode == 1 and result.stderr.count("missing") == 3


def test_a_clean_cache_reads_through_every_checked_path(cache):
    """The checks refuse lies, not caches: the untampered cache passes every reader."""
    for read in READERS.values():
        read(cache)
    assert verify_cache(cache)[1] == []
    c = CacheDir(cache)
    m = c.manifest()
    for s in m.shards:
        read_shard(c.shard_path(s.name), m.storage.backend, expect=m.expect(s))
