"""Sharing caches: push and pull through fsspec (file://, memory://, HTTP on loopback), resume,
training straight from a URL, and shards crafted by strangers refused."""

from __future__ import annotations

import functools
import http.server
import io
import json
import shutil
import tarfile
import threading
import time

import numpy as np
import pytest
import torch

from conftest import TAEF2
from liquidgen.cache.loader import InMemoryLatents, StreamingLatents
from liquidgen.cache.remote import RemoteShards, home_folder, pull, push
from liquidgen.cache.shards import read_tar, shard_digest
from liquidgen.cache.store import CacheDir, verify_cache
from liquidgen.errors import LiquidgenError
from liquidgen.pipeline.encode import EncodeConfig, encode
from liquidgen.pipeline.train import TrainConfig, train

from test_encode import read_all


@pytest.fixture(scope="module", params=["zarr", "wds"])
def cache(request, paintings12, tmp_path_factory):
    out = tmp_path_factory.mktemp("share") / request.param
    encode(EncodeConfig(str(paintings12), str(out), vae=str(TAEF2), resolution=64, shard_size=4,
                        format=request.param, workers=1, progress=False))
    return out


@pytest.fixture
def http_server(tmp_path):
    """A plain `http.server` on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_push_then_pull_through_file_and_memory(cache, tmp_path):
    for url in (f"file://{tmp_path}/remote", f"memory://liquidgen-test/{cache.name}"):
        first = push(str(cache), url, progress=False)
        assert (first.sent, first.skipped) == (3, 0)
        again = push(str(cache), url, progress=False)
        assert (again.sent, again.skipped) == (0, 3)  # same checksums: nothing re-sent
        local = tmp_path / f"pulled-{url.split(':')[0]}"
        got = pull(url, str(local), progress=False)
        assert got.sent == 3 and verify_cache(local)[1] == []
        assert np.array_equal(read_all(local)[1], read_all(cache)[1])
    card = (tmp_path / "remote" / "README.md").read_text()
    assert "12 latents" in card and "liquidgen train --cache" in card and "Licence" in card


@pytest.mark.reliability('push and pull interrupted part-way', 'the rerun resumes; finished shards are not sent again')
def test_an_interrupted_push_and_pull_resume(cache, tmp_path):
    remote = tmp_path / "remote"
    push(str(cache), f"file://{remote}", progress=False)
    # what a push killed during the last shard leaves: no manifest, no marker for that shard
    (remote / "manifest.json").unlink()
    last = sorted(remote.glob("shards/*.sha256"))[-1]
    last.unlink()
    resumed = push(str(cache), f"file://{remote}", progress=False)
    assert (resumed.sent, resumed.skipped) == (1, 2) and (remote / "manifest.json").exists()

    local = tmp_path / "local"
    pull(f"file://{remote}", str(local), progress=False)
    names = sorted(p.name for p in (local / "shards").iterdir())
    damaged = local / "shards" / names[0]
    shutil.rmtree(local / "shards" / names[1]) if (local / "shards" / names[1]).is_dir() else (local / "shards" / names[1]).unlink()
    victim = damaged if damaged.is_file() else sorted(p for p in damaged.rglob("*") if p.is_file())[-1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    again = pull(f"file://{remote}", str(local), progress=False)
    assert (again.sent, again.skipped) == (2, 1) and verify_cache(local)[1] == []


def test_train_straight_from_a_cache_served_over_http(cache, tmp_path, http_server, monkeypatch):
    root, base = http_server
    push(str(cache), f"file://{root / 'paintings'}", progress=False)
    local = tmp_path / "pulled"
    assert pull(f"{base}/paintings", str(local), workers=4, progress=False).sent == 3
    assert verify_cache(local)[1] == []
    monkeypatch.setenv("LIQUIDGEN_HOME", str(tmp_path / "home"))
    result = train(TrainConfig(cache=f"{base}/paintings", out=str(tmp_path / "run"), model="nano", batch_size=4,
                               steps=3, preview_every=0, progress=False))
    assert result.step == 3 and np.isfinite(result.losses).all()
    # the streamed shards were kept, verified: the folder is now a complete local cache
    kept = home_folder(f"{base}/paintings")
    assert verify_cache(kept)[1] == [] and read_all(kept)[2] == read_all(cache)[2]


def test_streaming_from_a_url_gives_the_batches_of_the_local_cache(cache, tmp_path, http_server):
    root, base = http_server
    push(str(cache), f"file://{root / 'paintings'}", progress=False)
    local = StreamingLatents(str(cache), 4, buffer_shards=2, seed=3)
    remote = StreamingLatents(f"{base}/paintings", 4, buffer_shards=2, seed=3,
                              remote=RemoteShards(f"{base}/paintings", tmp_path / "streamed", keep=False))
    for epoch in range(2):  # the second epoch's first buffer is fetched during the first
        for (a, la), (b, lb) in zip(local.batches(epoch), remote.batches(epoch), strict=True):
            assert torch.equal(a, b) and torch.equal(la, lb)
    remote.pool.shutdown(wait=True)
    assert not list((tmp_path / "streamed" / "shards").iterdir())  # --no-keep-shards: nothing left behind


@pytest.mark.reliability('a corrupt shard on a server, streamed', 'refused before it is trained on')
def test_a_corrupt_remote_shard_stops_streaming_before_it_is_trained_on(cache, tmp_path, http_server, monkeypatch):
    root, base = http_server
    push(str(cache), f"file://{root / 'paintings'}", progress=False)
    shard = sorted(p for p in (root / "paintings" / "shards").iterdir() if p.suffix != ".sha256")[1]
    target = shard if shard.is_file() else sorted(p for p in shard.rglob("*") if p.is_file())[-1]
    target.write_bytes(target.read_bytes()[:-1] + bytes([target.read_bytes()[-1] ^ 1]))
    monkeypatch.setenv("LIQUIDGEN_HOME", str(tmp_path / "home"))
    with pytest.raises(LiquidgenError, match="does not match its sha256"):
        train(TrainConfig(cache=f"{base}/paintings", out=str(tmp_path / "run"), model="nano", batch_size=4,
                          steps=3, preview_every=0, progress=False))
    assert not (home_folder(f"{base}/paintings") / "shards" / shard.name).exists()
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.reliability('a download whose sha256 differs', 'never kept on disk')
def test_a_shard_with_a_wrong_checksum_is_never_kept(cache, tmp_path):
    remote = tmp_path / "remote"
    push(str(cache), f"file://{remote}", progress=False)
    shard = sorted((remote / "shards").iterdir())[0]
    target = shard if shard.is_file() else sorted(p for p in shard.rglob("*") if p.is_file())[-1]
    data = bytearray(target.read_bytes())
    data[-10] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(LiquidgenError, match="does not match its sha256"):
        pull(f"file://{remote}", str(tmp_path / "local"), progress=False)
    assert not (tmp_path / "local" / "shards" / shard.name).exists()
    assert not (tmp_path / "local" / "manifest.json").exists()


@pytest.mark.reliability('a manifest of a future version, with `..` shard names, negative sizes, broken JSON; a missing shard', 'refused with one line each')
def test_malformed_or_unknown_manifests_and_missing_shards_are_refused(cache, tmp_path):
    remote = tmp_path / "remote"
    push(str(cache), f"file://{remote}", progress=False)
    manifest = json.loads((remote / "manifest.json").read_text())
    for broken, message in [
        ({**manifest, "format_version": 99}, "format version 99"),
        ({**manifest, "shards": [{**manifest["shards"][0], "name": "../../etc/passwd"}]}, "bad shard name"),
        ({**manifest, "shards": [{**manifest["shards"][0], "bytes": -1}]}, "bad bytes"),
        ({**manifest, "shards": [{**manifest["shards"][0], "files": ["../../x"]}]}, "names the file"),
    ]:
        (remote / "manifest.json").write_text(json.dumps(broken))
        with pytest.raises(LiquidgenError, match=message):
            pull(f"file://{remote}", str(tmp_path / "local"), progress=False)
    (remote / "manifest.json").write_text("{not json")
    with pytest.raises(LiquidgenError, match="not valid JSON"):
        pull(f"file://{remote}", str(tmp_path / "local"), progress=False)
    (remote / "manifest.json").write_text(json.dumps(manifest))
    shard = sorted((remote / "shards").iterdir())[0]
    shutil.rmtree(shard) if shard.is_dir() else shard.unlink()
    with pytest.raises(LiquidgenError, match="cannot fetch shard"):
        pull(f"file://{remote}", str(tmp_path / "local"), progress=False)


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def _npy(arr, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


@pytest.mark.parametrize("members, message", [
    ({"000000000.latent.npy": _npy(np.array([{"x": 1}], dtype=object), allow_pickle=True),
      "000000000.cls": b"0", "000000000.key.txt": b"k"}, "not a plain array"),
    ({"../000000000.latent.npy": _npy(np.zeros((2, 2, 2), np.float16)), "000000000.cls": b"0"}, "not a plain file name"),
    ({"/abs.latent.npy": _npy(np.zeros((2, 2, 2), np.float16))}, "not a plain file name"),
    ({"000000000.latent.npy": _npy(np.zeros((2, 2, 2), np.float16))}, "lacks its cls member"),
])
@pytest.mark.reliability('tar shards holding pickled objects, `..` or absolute member names, missing members', 'refused; no pickle is ever loaded')
def test_crafted_tar_shards_are_refused(members, message):
    with pytest.raises(LiquidgenError, match=message):
        read_tar(io.BytesIO(_tar(members)), "crafted.tar")


@pytest.mark.reliability('a pickled or truncated shard whose manifest checksum matches', 'refused by the loader')
def test_a_malicious_shard_with_a_matching_checksum_is_refused_by_the_loader(paintings12, tmp_path):
    """A stranger controls the manifest too, so checksums alone are not enough: reading refuses."""
    out = tmp_path / "c"
    encode(EncodeConfig(str(paintings12), str(out), vae=str(TAEF2), resolution=64, format="wds", limit=4,
                        workers=0, progress=False))
    cache = CacheDir(out)
    manifest = cache.manifest()
    shard = cache.shard_path(manifest.shards[0].name)
    for payload, message in [
        (_tar({"000000000.latent.npy": _npy(np.array([{"x": 1}], dtype=object), allow_pickle=True),
               "000000000.cls": b"0", "000000000.key.txt": b"k"}), "not a plain array"),
        (shard.read_bytes()[:700], "cannot read shard"),  # truncated
    ]:
        shard.write_bytes(payload)
        manifest.shards[0].sha256, manifest.shards[0].bytes = shard_digest(shard)
        cache.write_manifest(manifest)
        with pytest.raises(LiquidgenError, match=message):
            InMemoryLatents(str(out), 2)


def test_push_and_pull_from_the_command_line(cache, tmp_path):
    from conftest import run_cli

    url = f"file://{tmp_path}/shared"
    pushed = run_cli("cache", "push", str(cache), url)
    assert pushed.returncode == 0 and "3 shards sent, 0 already there" in pushed.stdout, pushed.stderr
    pulled = run_cli("cache", "pull", url, str(tmp_path / "mine"))
    assert pulled.returncode == 0 and "3 shards fetched" in pulled.stdout, pulled.stderr
    assert run_cli("cache", "verify", str(tmp_path / "mine")).returncode == 0
    missing = run_cli("cache", "pull", f"file://{tmp_path}/nothing-here", str(tmp_path / "x"))
    assert missing.returncode == 1 and "has no readable manifest.json" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_hf_urls_take_the_same_fsspec_path_through_huggingface_hub(monkeypatch):
    """No network here: check the route only — `hf://` resolves to huggingface_hub's
    HfFileSystem, and an unreachable Hub is one clear line, not a traceback."""
    from huggingface_hub import HfFileSystem

    from liquidgen.cache.remote import _fs, read_remote_manifest

    fs, root = _fs("hf://datasets/me/paintings-flux-256")
    assert isinstance(fs, HfFileSystem) and root == "datasets/me/paintings-flux-256"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LiquidgenError, match="hf://datasets/me/paintings-flux-256"):
        read_remote_manifest("hf://datasets/me/paintings-flux-256")


class _Flaky(http.server.SimpleHTTPRequestHandler):
    """Sends every file in 4 KB pieces with a pause between them, and drops the connection
    half-way through the first request for each shard file."""

    dropped: set = set()

    def log_message(self, *args):
        pass

    def copyfile(self, source, outputfile):
        data = source.read()
        drop = "/shards/" in self.path and self.path not in _Flaky.dropped
        if drop:
            _Flaky.dropped.add(self.path)
        end = len(data) // 2 if drop else len(data)
        for at in range(0, end, 4096):
            outputfile.write(data[at : min(at + 4096, end)])
            outputfile.flush()
            time.sleep(0.0005)
        if drop:
            self.close_connection = True


@pytest.fixture
def flaky_server(tmp_path):
    root = tmp_path / "flaky"
    root.mkdir()
    _Flaky.dropped = set()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Flaky, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.reliability('a server sending small delayed chunks and dropping connections', 'reads retried with backoff; the cache opens and streams')
def test_a_server_that_trickles_and_drops_connections_still_serves_the_cache(cache, tmp_path, flaky_server):
    root, base = flaky_server
    push(str(cache), f"file://{root / 'c'}", progress=False)
    pull(f"{base}/c", str(tmp_path / "copy"), progress=False)
    assert verify_cache(tmp_path / "copy")[1] == []
    files = sum(len(s.files) or 1 for s in CacheDir(cache).manifest().shards)
    assert len(_Flaky.dropped) == files  # every shard file was cut off once, then fetched again
    _, local, keys, _ = read_all(cache)
    _, fetched, keys2, _ = read_all(tmp_path / "copy")
    assert keys == keys2 and np.array_equal(local, fetched)


@pytest.mark.reliability("streaming a URL with --cache-limit-gb below the cache's size", 'never more on disk than the limit plus one shard')
def test_the_local_shard_cache_of_a_url_never_exceeds_its_limit(cache, tmp_path, http_server):
    root, base = http_server
    push(str(cache), f"file://{root / 'c'}", progress=False)
    sizes = [s.bytes for s in CacheDir(cache).manifest().shards]
    limit = 2.5 * max(sizes)
    remote = RemoteShards(f"{base}/c", folder=tmp_path / "local", limit_gb=limit / 2**30)
    data = StreamingLatents(f"{base}/c", 4, remote=remote, buffer_shards=1)
    peaks = []
    real = remote.ensure
    remote.ensure = lambda name: real(name) or peaks.append(remote.on_disk())
    for epoch in range(2):
        assert len(list(data.batches(epoch))) == data.steps_per_epoch()
    data.pool.shutdown(wait=True)
    assert len(peaks) >= 2 * len(sizes) - 1 and max(peaks) <= limit, (peaks, limit)
    assert not (tmp_path / "local" / "manifest.json").exists()  # never a complete local cache under a limit
