"""Sharing caches through any fsspec URL: `file://`, `memory://`, `hf://` (huggingface_hub's
HfFileSystem), `s3://`, `gs://`, and HTTP(S) for reading.

push uploads shards first, a `<shard>.sha256` marker after each finished shard, the dataset
card, and the manifest last: a reader never sees a manifest naming missing shards, and a rerun
skips every shard whose marker already carries the same checksum.

pull reads the manifest (size-bounded, format-checked), downloads shards in parallel into
temporary names, checks each one's size and sha256 before it is renamed into place, and writes
the manifest last. Shards come from strangers: nothing unverified is ever kept.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from liquidgen.cache.lock import remove_stale, temporary
from liquidgen.cache.manifest import MANIFEST, MAX_MANIFEST_BYTES, Manifest, Shard, parse_manifest
from liquidgen.cache.shards import shard_digest, shard_files
from liquidgen.cache.store import CacheDir, verify_cache
from liquidgen.errors import LiquidgenError


@dataclass
class Transfer:
    sent: int  # shards transferred
    skipped: int  # shards already there with the same checksum
    bytes: int


def _fs(url: str):
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise LiquidgenError(f"cannot open {url}: {exc}") from None


def _open_kwargs(fs) -> dict:
    """Plain HTTP servers need not support range requests: read HTTP files as one stream."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return {"block_size": 0} if {"http", "https"} & set(protocols) else {}


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def dataset_card(manifest: Manifest, source_name: str | None = None) -> str:
    """The README.md pushed beside a cache; `source_name` (e.g. "WikiArt, huggan/wikiart") names
    the images in place of the source's id, which for a local folder is only its last part."""
    src = dict(manifest.sources[0].__dict__) if manifest.sources else {}
    if source_name:
        src["id"] = source_name
    vae, st = manifest.vae, manifest.storage
    classes = ", ".join(manifest.label_names) or "none (unconditional)"
    return f"""---
tags: [liquidgen, latents]
---
# Latent cache: {src.get('id', 'images') if source_name else Path(str(src.get('id', 'images'))).name} through {Path(vae['id']).name}

{manifest.count} latents made by liquidgen (`pip install liquidgen`) from `{src.get('id')}`
({src.get('kind')}{', split ' + src['split'] if src.get('split') else ''}).

| | |
|---|---|
| resolution | {manifest.preprocess['resolution']} px, {manifest.preprocess['resize']} |
| VAE | `{vae['id']}` ({vae['class']}, {vae['latent_channels']} channels, /{vae['downscale']}) |
| latents | {'x'.join(map(str, st.latent_shape))} {st.dtype}, stored: {st.stored}, flip: {st.flip} |
| storage | {st.backend}, {len(manifest.shards)} shards |
| classes | {classes} |

Licence: these latents inherit the licence of the source images; check it before use.

Train on it without re-encoding:

```bash
liquidgen train --cache <this URL> --out runs/mine        # streamed, each shard sha256-checked
liquidgen cache pull <this URL> cache/mine && liquidgen cache verify cache/mine   # or a local copy
```
"""


def push(cache_dir: str, url: str, progress: bool = True, source_name: str | None = None) -> Transfer:
    manifest, problems = verify_cache(cache_dir)
    if problems:
        raise LiquidgenError(f"refusing to push {cache_dir}: {problems[0]}")
    cache = CacheDir(cache_dir)
    fs, root = _fs(url)
    sent = skipped = nbytes = 0
    bar = tqdm(total=sum(s.bytes for s in manifest.shards), unit="B", unit_scale=True,
               desc=f"push {Path(cache_dir).name}", disable=not progress)
    try:
        fs.makedirs(_join(root, "shards"), exist_ok=True)
        for shard in manifest.shards:
            name, local = shard.name, cache.shard_path(shard.name)
            shard.files = shard.files or shard_files(local)
            marker = _join(root, "shards", name + ".sha256")
            if fs.exists(marker) and fs.cat_file(marker).decode().strip() == shard.sha256:
                skipped += 1
                bar.update(shard.bytes)
                continue
            for rel in shard.files or [""]:
                target = _join(root, "shards", name, rel) if rel else _join(root, "shards", name)
                fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                fs.put_file(str(local / rel if rel else local), target)
            fs.pipe_file(marker, shard.sha256.encode())
            sent += 1
            nbytes += shard.bytes
            bar.update(shard.bytes)
        public = manifest.published()  # no absolute paths of this machine
        fs.pipe_file(_join(root, "README.md"), dataset_card(public, source_name).encode())
        fs.pipe_file(_join(root, MANIFEST), public.dumps().encode())  # last
    except Exception as exc:  # any backend's error type; markers make the rerun resume
        raise LiquidgenError(f"push to {url} failed ({exc.__class__.__name__}: {exc}); rerun to resume") from None
    finally:
        bar.close()
    return Transfer(sent, skipped, nbytes)


def _unreachable_host(url: str) -> str | None:
    """Why an http(s) URL's host cannot be reached (fsspec's HTTP backend reports a refused
    connection as FileNotFoundError, like a missing file), or None."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=5).close()
    except OSError as exc:
        return f"{parts.hostname}:{port} {exc.strerror or exc.__class__.__name__}".strip()
    return None


def read_remote_manifest(url: str) -> Manifest:
    fs, root = _fs(url)
    path = _join(root, MANIFEST)
    try:
        with fs.open(path, "rb", **_open_kwargs(fs)) as fh:
            raw = b""
            while len(raw) <= MAX_MANIFEST_BYTES:  # one read() may come back short over HTTP
                chunk = fh.read(MAX_MANIFEST_BYTES + 1 - len(raw))
                if not chunk:
                    break
                raw += chunk
    except Exception as exc:  # fsspec backends raise their own types (httpx, aiohttp, botocore, ...)
        why = _unreachable_host(url)
        if why:
            raise LiquidgenError(f"cannot reach {url}: {why}; check the address and the network") from None
        raise LiquidgenError(f"{url} has no readable {MANIFEST} ({exc.__class__.__name__}: {str(exc)[:120]})") from None
    manifest = parse_manifest(raw, f"{url}/{MANIFEST}")
    if not manifest.complete:
        raise LiquidgenError(f"{url} is an unfinished cache (its encode did not complete)")
    return manifest


class _Transient(Exception):
    """A download that ended early or failed on the way: worth another try."""


def fetch_shard(url: str, shard: Shard, cache: CacheDir, on_bytes=lambda n: None, attempts: int = 5) -> bool:
    """Download one shard of the cache at `url` into `cache`, keeping it only if its size and
    sha256 match the manifest entry. False when a matching copy was already there. Each file
    whose connection drops or whose body comes short is fetched again, up to `attempts` times
    with exponential backoff (0.25 s, 0.5 s, ...); a complete shard with the wrong checksum is
    refused at once."""
    fs, root = _fs(url)
    final = cache.shard_path(shard.name)
    if final.exists() and shard_digest(final) == (shard.sha256, shard.bytes):
        on_bytes(shard.bytes)
        return False
    tmp = temporary(final, "part")
    got = 0
    # hashed as it arrives, in `shard_digest`'s order (sorted files, each prefixed by its path),
    # so the shard is not read back from disk to be checked
    sha = hashlib.sha256()
    try:
        for rel in sorted(shard.files) or [""]:
            src = _join(root, "shards", shard.name, rel) if rel else _join(root, "shards", shard.name)
            dst = tmp / rel if rel else tmp
            dst.parent.mkdir(parents=True, exist_ok=True)
            before = sha.copy()
            for attempt in range(attempts):
                try:
                    if rel:
                        sha.update(rel.encode() + b"\0")
                    got += _download(fs, src, dst, shard.bytes - got, shard.name, on_bytes, sha)
                    break
                except _Transient as exc:
                    sha = before.copy()  # the file starts again
                    if attempt + 1 == attempts:
                        raise LiquidgenError(f"cannot fetch shard {shard.name} from {url} after {attempts} tries "
                                             f"({exc}); rerun to resume") from None
                    time.sleep(0.25 * 2**attempt)
        if (sha.hexdigest(), got) != (shard.sha256, shard.bytes):
            raise LiquidgenError(f"shard {shard.name} from {url} does not match its sha256: refusing it")
        if final.is_dir():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    return True


def _download(fs, src: str, dst: Path, budget: int, name: str, on_bytes, sha) -> int:
    """One file, read to its end (never more than `budget` bytes: what the manifest promised),
    each chunk fed to `sha` as it is written."""
    got = 0
    try:
        with fs.open(src, "rb", **_open_kwargs(fs)) as fin, open(dst, "wb") as fout:
            expected = getattr(fin, "size", None)
            while chunk := fin.read(1 << 20):
                got += len(chunk)
                if got > budget:
                    raise LiquidgenError(f"shard {name} is larger than its manifest entry: refusing it")
                sha.update(chunk)
                fout.write(chunk)
                on_bytes(len(chunk))
    except LiquidgenError:
        raise
    except Exception as exc:  # any backend's network or file error: this file is simply not here yet
        on_bytes(-got)
        raise _Transient(f"{exc.__class__.__name__}: {str(exc)[:120]}") from None
    if isinstance(expected, int) and got < expected:
        on_bytes(-got)
        raise _Transient(f"{got} of {expected} bytes of {src.rsplit('/', 1)[-1]} arrived")
    return got


def _open_local(url: str, cache_dir: str | Path, manifest: Manifest) -> CacheDir:
    cache = CacheDir(cache_dir)
    if cache.exists():
        cache.manifest().check_contract(manifest, str(cache_dir))
    cache.shards_dir.mkdir(parents=True, exist_ok=True)
    remove_stale(cache.shards_dir)  # downloads a killed pull left half done
    return cache


def pull(url: str, cache_dir: str, workers: int = 8, progress: bool = True) -> Transfer:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise LiquidgenError(f"--workers must be a whole number of at least 1 (got {workers!r})")
    manifest = read_remote_manifest(url)
    cache = _open_local(url, cache_dir, manifest)
    bar = tqdm(total=sum(s.bytes for s in manifest.shards), unit="B", unit_scale=True,
               desc=f"pull {Path(cache_dir).name}", disable=not progress)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda s: fetch_shard(url, s, cache, bar.update), manifest.shards))
    finally:
        bar.close()
    cache.write_manifest(manifest)  # last: the cache is complete only now
    sent = sum(results)
    return Transfer(sent, len(results) - sent, sum(s.bytes for s, r in zip(manifest.shards, results) if r))


def home_folder(url: str) -> Path:
    """Where shards of the cache at `url` are kept: $LIQUIDGEN_HOME/caches/<hash of the URL>."""
    home = Path(os.environ.get("LIQUIDGEN_HOME", Path.home() / ".cache" / "liquidgen"))
    return home / "caches" / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


class RemoteShards:
    """The shards of a remote cache, fetched when a reader asks for them and verified before
    anyone reads them. With `keep`, they stay in `folder` (later epochs and runs read the disk,
    and once all are there the folder is a complete local cache); without, each is deleted as
    soon as it has been read."""

    def __init__(self, url: str, folder: str | Path | None = None, keep: bool = True, limit_gb: float | None = None):
        self.url, self.keep = url, keep
        self.limit = None if limit_gb is None else int(limit_gb * 2**30)
        self.manifest = read_remote_manifest(url)
        self.cache = _open_local(url, folder or home_folder(url), self.manifest)
        remove_stale(self.cache.shards_dir)  # downloads a killed run left half done
        self.entries = {s.name: s for s in self.manifest.shards}
        self.ready: set[str] = set()  # verified by this process
        self.kept: OrderedDict[str, int] = OrderedDict()  # on disk, least recently used first
        self.busy: Counter[str] = Counter()  # being read now: never evicted
        self.reserved = 0  # bytes of downloads in flight
        self.fetching: dict[str, threading.Event] = {}  # downloads in flight, set when each ends
        self._lock = threading.Lock()

    def ensure(self, name: str) -> None:
        """The shard is on disk and verified, and stays until `release`. A shard asked for again
        while it downloads (read ahead for the next epoch, say) is waited for, never fetched a
        second time: a second fetch would replace the files under the first reader."""
        size = self.entries[name].bytes
        with self._lock:
            self.busy[name] += 1
            if name in self.ready and self.cache.shard_path(name).exists():
                self.kept.move_to_end(name)
                return
            other = self.fetching.get(name)
            if other is None:
                self.fetching[name] = mine = threading.Event()
                if self.limit is not None:
                    self._make_room(size)
                self.reserved += size
        if other is not None:
            other.wait()
            with self._lock:
                self.busy[name] -= 1
            return self.ensure(name)  # ready now, or (its fetch failed) fetched here
        try:
            fetch_shard(self.url, self.entries[name], self.cache)
        except BaseException:
            with self._lock:
                self.reserved -= size
                self.busy[name] -= 1
                del self.fetching[name]
            mine.set()
            raise
        with self._lock:
            self.reserved -= size
            self.ready.add(name)
            self.kept[name] = size
            del self.fetching[name]
            if self.keep and self.limit is None and len(self.ready) == len(self.entries) and not self.cache.exists():
                self.cache.write_manifest(self.manifest)  # every shard is here now
        mine.set()

    def _make_room(self, size: int) -> None:
        """Evict least recently used shards (none being read) until this one fits the limit."""
        for victim in list(self.kept):
            if sum(self.kept.values()) + self.reserved + size <= self.limit:
                return
            if self.busy[victim] == 0:
                self._delete(victim)

    def _delete(self, name: str) -> None:
        path = self.cache.shard_path(name)
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        self.ready.discard(name)
        self.kept.pop(name, None)

    def on_disk(self) -> int:
        """Bytes of this cache's shards on disk now."""
        return sum(f.stat().st_size for f in self.cache.shards_dir.rglob("*") if f.is_file())

    def release(self, name: str) -> None:
        with self._lock:
            self.busy[name] -= 1
            if not self.keep and self.busy[name] == 0:
                self._delete(name)
