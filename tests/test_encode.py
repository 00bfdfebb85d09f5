"""The encode stage end to end: real paintings, the real TAEF2 VAE, real Zarr and tar shards."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import TAEF2, make_subset, psnr, source_image
from liquidgen.cache.shards import dequantize
from liquidgen.cache.store import CacheDir, verify_cache
from liquidgen.errors import LiquidgenError
from liquidgen.pipeline.encode import EncodeConfig, encode
from liquidgen.pipeline.vae import load_vae


def config(source, out, **kw) -> EncodeConfig:
    defaults = dict(vae=str(TAEF2), resolution=64, batch_size=8, shard_size=8, workers=1, progress=False)
    return EncodeConfig(source=str(source), out=str(out), **{**defaults, **kw})


def read_all(out) -> tuple[dict, np.ndarray, list[str], np.ndarray]:
    """Every latent of a cache as float32, with keys and labels, in shard order."""
    cache = CacheDir(out)
    m = cache.manifest()
    lat, keys, labels = [], [], []
    for shard in m.shards:
        data = cache.read(shard.name, m.storage.backend)
        lat.append(dequantize(data.latents, m.storage.dtype, m.storage.quant))
        keys += data.keys
        labels.append(data.labels)
    return m, np.concatenate(lat), keys, np.concatenate(labels)


def test_encode_writes_a_verified_self_describing_cache(paintings12, tmp_path):
    result = encode(config(paintings12, tmp_path / "c"))
    m, latents, keys, labels = read_all(tmp_path / "c")
    assert result.total == m.count == 12 and m.complete
    assert latents.shape == (12, 32, 8, 8)
    assert len(m.shards) == 2  # shard size 8: 8 + 4
    assert sorted(keys) == keys and len(set(keys)) == 12
    assert m.label_names == ["Baroque", "Rococo"]
    assert [m.label_names[i] for i in labels] == [k.split("/")[0] for k in keys]
    assert m.vae["latent_channels"] == 32 and m.vae["downscale"] == 8
    assert m.vae["input_range"] == [0.0, 1.0]
    stats = m.stats
    assert np.allclose(stats["mean"], latents.mean(axis=(0, 2, 3)), atol=1e-4)
    assert np.allclose(stats["std"], latents.std(axis=(0, 2, 3)), atol=1e-4)
    assert verify_cache(tmp_path / "c")[1] == []
    assert not (tmp_path / "c" / ".lock").exists() and not (tmp_path / "c" / ".parts").exists()


def test_cached_latents_decode_close_to_their_source(tmp_path, paintings12):
    encode(config(paintings12, tmp_path / "c", resolution=128))
    m, latents, keys, _ = read_all(tmp_path / "c")
    vae = load_vae(m.vae)  # the manifest alone names the VAE
    images = (vae.decode(__import__("torch").from_numpy(latents[:6])).numpy() * 255).round()
    scores = [psnr(images[i], source_image(paintings12, keys[i], 128)) for i in range(6)]
    assert np.mean(scores) > 25.0, scores  # TAEF2's README measures 27.8 dB at 128 px


def test_zarr_and_webdataset_hold_the_same_latents(paintings12, tmp_path):
    encode(config(paintings12, tmp_path / "z", format="zarr"))
    encode(config(paintings12, tmp_path / "w", format="wds"))
    mz, lz, kz, yz = read_all(tmp_path / "z")
    mw, lw, kw, yw = read_all(tmp_path / "w")
    assert [s.name for s in mw.shards] == ["s00-000000.tar", "s00-000001.tar"]
    assert kz == kw and np.array_equal(yz, yw)
    assert np.array_equal(lz, lw)
    assert verify_cache(tmp_path / "w")[1] == []


def test_rerun_of_a_finished_cache_is_a_noop(paintings12, tmp_path):
    encode(config(paintings12, tmp_path / "c"))
    before = (tmp_path / "c" / "manifest.json").read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "c" / "shards").rglob("*")}
    result = encode(config(paintings12, tmp_path / "c"))
    assert result.noop and result.encoded == 0 and result.shards_written == 0
    assert (tmp_path / "c" / "manifest.json").read_text() == before
    assert mtimes == {p: p.stat().st_mtime_ns for p in (tmp_path / "c" / "shards").rglob("*")}


@pytest.mark.reliability('corrupt, truncated, empty, tiny and odd-mode images among good ones', 'each bad one skipped, counted in the manifest and logged with its reason; the rest encoded')
def test_bad_inputs_are_skipped_counted_and_logged(bad_images, tmp_path):
    folder, expected = bad_images
    result = encode(config(folder, tmp_path / "c", shard_size=4, batch_size=3))
    m = result.manifest
    bad = {k for k, v in expected.items() if v}
    assert result.skipped == len(bad) and m.count == len(expected) - len(bad)
    assert {s.key for s in m.skipped} == bad
    for item in m.skipped:
        assert item.reason.startswith(expected[item.key])
    log = (tmp_path / "c" / "skipped.log").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in log) == sorted(bad)
    assert m.sources[0].skipped == len(bad)


def test_appending_another_source_grows_the_cache(paintings12, paintings40, tmp_path):
    encode(config(paintings12, tmp_path / "c"))
    more = tmp_path / "more"  # Rococo again, and a style the cache has not seen
    for style, new in (("Rococo", "Rococo"), ("Baroque", "Baroque_copies")):
        (more / new).mkdir(parents=True)
        for f in sorted((paintings40 / style).iterdir())[:8]:
            (more / new / f.name).symlink_to(f)
    result = encode(config(more, tmp_path / "c", limit=16))
    m = result.manifest
    assert m.count == 12 + 16 and [s.count for s in m.sources] == [12, 16]
    assert {s.name[:3] for s in m.shards} == {"s00", "s01"}
    assert m.label_names == ["Baroque", "Rococo", "Baroque_copies"]  # new styles after the old ones
    assert m.stats["n"] == 28 * 8 * 8


@pytest.mark.parametrize("change", [{"resolution": 128}, {"dtype": "fp32"}, {"format": "wds"}])
@pytest.mark.reliability('encoding into a cache made with another VAE, resolution, dtype or layout', 'refused naming the field that differs')
def test_a_mismatched_append_is_refused(paintings12, tmp_path, change):
    encode(config(paintings12, tmp_path / "c", limit=8))
    before = (tmp_path / "c" / "manifest.json").read_text()
    with pytest.raises(LiquidgenError, match="encode into a new --out folder"):
        encode(config(paintings12, tmp_path / "c", **change))
    assert (tmp_path / "c" / "manifest.json").read_text() == before
    assert not (tmp_path / "c" / ".lock").exists()


@pytest.mark.reliability('resuming an encode after files were added to the source', 'refused: encode into a new folder')
def test_a_changed_source_is_refused_on_resume(tmp_path):
    folder = make_subset(tmp_path / "imgs", per_class=2, classes=2)
    encode(config(folder, tmp_path / "c"))
    shutil.copy(next((folder / "Baroque").iterdir()), folder / "Baroque" / "added.jpg")
    with pytest.raises(LiquidgenError, match="changed since it was encoded"):
        encode(config(folder, tmp_path / "c"))


def test_uint8_storage_is_close_to_fp32(paintings12, tmp_path):
    encode(config(paintings12, tmp_path / "f", dtype="fp32"))
    encode(config(paintings12, tmp_path / "q", dtype="uint8"))
    _, exact, _, _ = read_all(tmp_path / "f")
    mq, approx, _, _ = read_all(tmp_path / "q")
    assert mq.storage.quant["scale"] and len(mq.storage.quant["offset"]) == 32
    rel = np.abs(approx - exact).mean() / exact.std()
    assert rel < 0.02, rel


def test_flip_both_stores_the_mirrored_latents(paintings12, tmp_path):
    encode(config(paintings12, tmp_path / "c", flip="both", limit=4))
    cache = CacheDir(tmp_path / "c")
    m = cache.manifest()
    data = cache.read(m.shards[0].name, "zarr")
    assert data.flipped is not None and data.flipped.shape == data.latents.shape
    vae = load_vae(m.vae)
    import torch

    a = vae.decode(torch.from_numpy(data.latents[:1].astype(np.float32)))
    b = vae.decode(torch.from_numpy(data.flipped[:1].astype(np.float32)))
    assert torch.mean((a - b.flip(-1)) ** 2) < torch.mean((a - b) ** 2) / 4  # b is a mirror of a


@pytest.mark.reliability('two encodes into one folder at once', 'the second is refused while the first lives')
def test_a_live_writer_locks_the_cache(paintings12, tmp_path):
    (tmp_path / "c").mkdir()
    import os
    import socket

    (tmp_path / "c" / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}))
    with pytest.raises(LiquidgenError, match="is being written by pid"):
        encode(config(paintings12, tmp_path / "c"))


@pytest.mark.reliability('a lock file left by a killed writer', 'taken over by the next run')
def test_a_stale_lock_from_a_dead_writer_is_taken_over(paintings12, tmp_path):
    import socket

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / ".lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))
    assert encode(config(paintings12, tmp_path / "c", limit=4)).total == 4


@pytest.mark.reliability("a lock file left empty or half-written (a writer killed between creating and filling it)",
                         "taken over once it is seconds old; a fresh one is respected")
@pytest.mark.parametrize("content", ["", '{"pid": 12', "[1, 2]"])
def test_an_interrupted_lock_file_is_taken_over(paintings12, tmp_path, content):
    import os
    import time

    from liquidgen.cache.lock import HALF_WRITTEN_S

    lock = tmp_path / "c" / ".lock"
    lock.parent.mkdir()
    lock.write_text(content)
    with pytest.raises(LiquidgenError, match="is being written"):  # as old as a live writer's: respected
        encode(config(paintings12, tmp_path / "c", limit=4))
    old = time.time() - HALF_WRITTEN_S - 1
    os.utime(lock, (old, old))
    assert encode(config(paintings12, tmp_path / "c", limit=4)).total == 4
    assert not lock.exists()


@pytest.mark.parametrize("flag", [("--limit", "0"), ("--limit", "-1"), ("--workers", "-1"), ("--shard-size", "0")])
@pytest.mark.reliability('encode --limit 0, --limit -1, --workers -1, --shard-size 0', 'refused before anything is written')
def test_nonsense_flags_are_refused_before_anything_is_written(paintings12, tmp_path, flag):
    from conftest import run_cli

    out = tmp_path / "c"
    done = run_cli("encode", str(paintings12), "--out", str(out), "--vae", str(TAEF2), "-r", "64", *flag)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert flag[0] in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not out.exists()


@pytest.mark.reliability('an unreadable file whose name holds a newline and a tab', 'one escaped line in skipped.log; no forged lines')
def test_a_file_name_with_a_newline_and_a_tab_stays_one_line_of_skipped_log(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "evil\nname\tforged.jpg").write_text("not an image")
    shutil.copy(next(iter(sorted((make_subset(tmp_path / "src", 1, 1) / "Baroque").iterdir()))), folder / "good.jpg")
    result = encode(config(folder, tmp_path / "c"))
    assert result.total == 1 and result.skipped == 1
    log = (tmp_path / "c" / "skipped.log").read_text()
    assert log.count("\n") == 1 and log.count("\t") == 1, repr(log)
    assert log.startswith("evil\\nname\\tforged.jpg\t")
