"""Image sources: dataset presets, Hugging Face datasets (streamed), local folders, WebDataset
tars of images.

A source is cut into `Piece`s: disjoint runs of items that one worker reads alone, from bytes no
other piece touches (a slice of a folder listing, a run of parquet row groups, a run of samples of
a tar found through its member offsets). Pieces are the unit of parallel work and each becomes one
cache shard, so ranks and DataLoader workers divide a source by taking whole pieces and every
input byte is read once in total. An item is named by its piece's input shard and its position
there: resume, exactly-once and the source fingerprint rest on that.

`--limit N` draws from the whole source, not its first files: a source lists its *units* (runs
that a read can start at without touching anything before them: a parquet row group, 16 items of
a folder listing or of an indexed tar), and N is shared out over units spaced evenly through the
source (`spread`), each giving a prefix. A class-blocked dataset so gives every class, and a
limited encode reads about what it uses.
"""

from __future__ import annotations

import glob
import hashlib
import os
import random
import tarfile
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Iterator

from liquidgen.cache.manifest import Source
from liquidgen.embedded import PAINTINGS_MINI
from liquidgen.errors import LiquidgenError
from liquidgen.pipeline.images import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class DatasetPreset:
    hf_id: str
    split: str = "train"
    image_column: str = "image"
    label_column: str = "none"  # a ClassLabel column, or "none": unconditional
    limit: int | None = None
    note: str = ""
    folder: Path | None = None  # shipped with the package: read from here, never from the network


# The datasets the reference designs name, with the columns their Hub files hold (all but
# anime-faces are parquet pushed in 2022, whose features live in dataset_infos.json or the README
# YAML, see hub.py). `paintings` is 8,000 WikiArt paintings drawn across the dataset (the seeds'
# exact subsets were never published); `paintings_mini` ships with liquidgen.
PRESETS: dict[str, DatasetPreset] = {
    "paintings": DatasetPreset("huggan/wikiart", label_column="style", limit=8000, note="8K WikiArt paintings, 27 styles"),
    "paintings_mini": DatasetPreset("embedded", note="200 public-domain paintings, 128 px, 2 styles: shipped, offline",
                                    folder=PAINTINGS_MINI),
    "wikiart_stream": DatasetPreset("huggan/wikiart", label_column="style", note="all 81K WikiArt paintings, streamed"),
    "flowers": DatasetPreset("huggan/flowers-102-categories", note="8K flower photographs"),
    "cartoon": DatasetPreset("Norod78/cartoon-blip-captions", note="~3K cartoon characters"),
    "afhq": DatasetPreset("huggan/AFHQv2", label_column="label", note="16K animal faces: cat, dog, wild"),
    "celeba": DatasetPreset("nielsr/CelebA-faces", note="202K celebrity faces"),
    "anime": DatasetPreset("huggan/anime-faces", note="63K anime faces, 64 px (loose PNG files)"),
    "pokemon": DatasetPreset("reach-vb/pokemon-blip-captions", note="833 Pokemon illustrations"),
}

RUN = 16  # the shortest run --limit takes from one place, and a folder's or a tar's unit for it


@dataclass(frozen=True)
class Piece:
    """A run of items one worker reads alone; its bytes belong to no other piece."""

    number: int  # its place in the source's list of pieces: names its cache shard
    unit: str  # the input shard it comes from: a file of the listing, a parquet file, a tar
    start: int  # position of its first item within that unit
    length: int | None  # items in it; None where only reading can tell (a tar behind a URL)
    where: tuple = ()  # how the source finds its bytes (row-group shards, member offsets)


@dataclass
class RawItem:
    position: int  # within the piece's unit
    key: str  # unique within the source and stable across runs
    label: int  # index into the source's label_names, -1 when unlabelled
    data: bytes | str | None  # encoded image bytes or a local path
    error: str | None = None


@dataclass
class ImageSource:
    """Base: subclasses fill the description and implement `_pieces` and `_read`."""

    id: str
    kind: str
    split: str | None = None
    revision: str | None = None
    label_names: list[str] | None = None
    limit: int | None = None
    limit_seed: int = 0  # where --limit's evenly spaced draw starts (recorded in the manifest)
    extra: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the user should know of how it is read

    def _pieces(self, size: int) -> list[Piece]:
        raise NotImplementedError

    def _units(self) -> list[Piece]:
        """Runs of items a read can start at without reading anything before them; --limit
        takes prefixes of these. Numbers are unused (-1)."""
        raise NotImplementedError

    def _shortest_run(self) -> int:
        """The fewest items worth drawing from one unit: reading fewer costs as much."""
        return RUN

    def _cut(self, run: Piece, size: int) -> list[Piece]:
        """A run (a prefix of a unit) as pieces of at most `size` items (numbers unset)."""
        return [replace(run, start=run.start + k, length=min(size, run.length - k)) for k in range(0, run.length, size)]

    def _read(self, piece: Piece) -> Iterator[RawItem]:
        raise NotImplementedError

    def pieces(self, size: int) -> list[Piece]:
        """The source cut into pieces of at most `size` items where lengths are known; with
        `limit`, `limit` items drawn across the whole source (`spread`). Deterministic: the same
        source, size, limit and seed give the same list."""
        pieces = self._pieces(size)
        if self.limit is None:
            return pieces
        if None in (p.length for p in pieces):
            raise LiquidgenError(f"--limit needs a source whose length is known before reading; {self.id} is not "
                                 "(it is read as a stream): encode it whole")
        if self.limit >= sum(p.length for p in pieces):
            return pieces
        runs = spread(self._units(), self.limit, self.limit_seed, self._shortest_run())
        return [replace(p, number=n) for n, p in enumerate(p for run in runs for p in self._cut(run, size))]

    def prepare(self, todo: list[Piece], scratch: Path, rank: int, world: int) -> None:
        """Called on every rank before the pieces are read: a source whose pieces share bytes
        (one big parquet row group) reads those bytes once here into `scratch`, which is on the
        cache's storage and so seen by every rank. Nothing to do for most sources."""

    def read(self, piece: Piece) -> Iterator[RawItem]:
        """The items of one piece, in order."""
        items = self._read(piece)
        return items if piece.length is None else islice(items, piece.length)

    def shared_state(self):
        """What one process learnt by reading the source (a tar's index) that the others can
        adopt instead of reading it again; None when there is nothing to share."""
        return None

    def adopt(self, state) -> None:
        pass

    def fingerprint(self, pieces: list[Piece]) -> str:
        """Changes when the source's layout changes (files added, removed, resized): a resume
        against a changed source is refused instead of mixing two versions."""
        digest = hashlib.sha256()
        for p in pieces:
            digest.update(f"{p.unit}:{p.start}:{p.length}:{self.extra.get('sizes', {}).get(p.unit, '')}\n".encode())
        return digest.hexdigest()[:16]

    def describe(self, size: int) -> Source:
        """What the manifest records of this source; `expected` is None where the length is
        only known once read, `limit` None where it took nothing away (a preset's 8,000 of a
        2,000-image folder)."""
        whole = self._pieces(size)
        lengths = [p.length for p in self.pieces(size)]
        applied = self.limit if self.limit is not None and self.limit < sum(p.length or 0 for p in whole) else None
        return Source(id=self.id, kind=self.kind, split=self.split, revision=self.revision, limit=applied,
                      fingerprint=self.fingerprint(whole), label_names=self.label_names,
                      expected=None if None in lengths else sum(lengths),
                      limit_seed=None if applied is None else self.limit_seed)


def spread(units: list[Piece], limit: int, seed: int, run: int = RUN) -> list[Piece]:
    """`limit` items as prefixes of units spaced evenly through the source.

    k = limit / `run` units (all of them when the limit allows) are taken at a fixed stride from a
    seeded offset, and the limit is shared equally among them; a unit too short for its share
    passes the rest to the others, and where the chosen units together are too short the next
    ones (in a seeded order) join. Every share starts at its unit's start, so nothing before it
    is read. `run` is the shortest share worth reading from one place. Returns the runs in
    source order."""
    n = len(units)
    k = min(n, max(1, -(-limit // run)))
    step = n / k
    rng = random.Random(seed)
    offset = rng.random() * step
    chosen = [int(offset + i * step) for i in range(k)]
    rest = [i for i in rng.sample(range(n), n) if i not in set(chosen)]
    take, left, pool = [0] * n, limit, chosen
    while left > 0:
        if not pool:
            if not rest:
                break
            pool = [rest.pop(0)]
        share, keep = max(1, left // len(pool)), []
        for i in pool:
            t = min(share, units[i].length - take[i], left)
            take[i] += t
            left -= t
            if take[i] < units[i].length:
                keep.append(i)
        pool = keep
    return [replace(u, length=t) for u, t in zip(units, take) if t]


class FolderSource(ImageSource):
    """A local folder; first-level subfolder names become class labels. A piece is a slice of
    the sorted listing."""

    def __init__(self, root: str | Path, limit: int | None = None, name: str | None = None):
        """`name` replaces the folder's absolute path as the source's id (a shipped preset), so
        the manifest says where the images came from on any machine."""
        path = Path(root).expanduser().resolve()
        if not path.is_dir():
            raise LiquidgenError(f"image folder {root} does not exist")
        files = sorted(
            p.relative_to(path).as_posix()
            for p in path.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
        )
        if not files:
            raise LiquidgenError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
        labelled = all("/" in f for f in files)
        names = sorted({f.split("/", 1)[0] for f in files}) if labelled else None
        listing = hashlib.sha256("".join(f"{f}:{(path / f).stat().st_size}\n" for f in files).encode()).hexdigest()
        super().__init__(id=name or str(path), kind="folder", label_names=names, limit=limit, extra={"sizes": {"listing": listing}})
        self.root, self.files = path, files
        self._label_of = {n: i for i, n in enumerate(names)} if names else {}

    def _pieces(self, size: int) -> list[Piece]:
        n = len(self.files)
        return [Piece(k, "listing", k * size, min(size, n - k * size)) for k in range(-(-n // size))]

    def _units(self) -> list[Piece]:
        return [replace(p, number=-1) for p in self._pieces(RUN)]

    def _read(self, piece: Piece) -> Iterator[RawItem]:
        for i in range(piece.start, piece.start + piece.length):
            rel = self.files[i]
            yield RawItem(i, rel, self._label_of.get(rel.split("/", 1)[0], -1), str(self.root / rel))


class TarSource(ImageSource):
    """WebDataset tars of images (`.jpg`/`.png`/... members, optional `.cls` integer labels).

    A local tar is indexed by its headers alone (tarfile seeks over the member data), so a piece
    is a run of samples whose members are read by offset: one tar still feeds every worker. A tar
    behind a URL is read as one stream, one piece per tar."""

    def __init__(self, pattern: str, limit: int | None = None):
        import braceexpand

        urls: list[str] = []
        for part in braceexpand.braceexpand(pattern):
            urls += sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part]
        local = [u for u in urls if "://" not in u]
        missing = [u for u in local if not os.path.exists(u)]
        if not urls or missing:
            raise LiquidgenError(f"no tar files at {missing[0] if missing else pattern}")
        super().__init__(id=pattern if "://" in pattern else str(Path(pattern).resolve()), kind="wds", limit=limit,
                         extra={"sizes": {os.path.basename(u): os.path.getsize(u) for u in local}})
        self.urls, self._local = urls, local
        self._index: dict | None = None  # built on first use, or adopted from rank 0

    def _indexed(self) -> dict:
        if self._index is None:
            self._index = {u: self._samples(u) for u in self._local}
        return self._index

    def shared_state(self) -> dict:
        return self._indexed()

    def adopt(self, state: dict) -> None:
        self._index = {u: [(k, tuple(tuple(m) for m in ms)) for k, ms in samples] for u, samples in state.items()}

    @staticmethod
    def _samples(path: str) -> list[tuple[str, tuple[tuple[str, int, int], ...]]]:
        """[(sample key, ((extension, data offset, size), ...))] from the tar's headers."""
        samples: dict[str, list[tuple[str, int, int]]] = {}
        try:
            with tarfile.open(path, "r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    base = os.path.basename(member.name)
                    stem, dot, ext = base.partition(".")
                    key = f"{os.path.dirname(member.name)}/{stem}".lstrip("/")
                    samples.setdefault(key, []).append((ext.lower(), member.offset_data, member.size))
        except (tarfile.TarError, OSError) as exc:
            raise LiquidgenError(f"cannot read the tar {path}: {exc}") from None
        return [(k, tuple(v)) for k, v in samples.items()]

    def _pieces(self, size: int) -> list[Piece]:
        pieces: list[Piece] = []
        index = self._indexed()
        for url in self.urls:
            name = os.path.basename(url)
            if url not in index:
                pieces.append(Piece(len(pieces), name, 0, None, (url,)))
                continue
            n = len(index[url])
            for start in range(0, n, size):
                pieces.append(Piece(len(pieces), name, start, min(size, n - start), (url,)))
        return pieces

    def _units(self) -> list[Piece]:
        return [replace(p, number=-1) for p in self._pieces(RUN)]

    def _read(self, piece: Piece) -> Iterator[RawItem]:
        url = piece.where[0]
        if url not in self._indexed():
            yield from self._stream(piece, url)
            return
        samples = self._indexed()[url][piece.start : piece.start + piece.length]
        with open(url, "rb") as fh:
            for i, (key, members) in enumerate(samples, piece.start):
                found = {ext: (offset, size) for ext, offset, size in members}

                def member(ext: str) -> bytes:
                    offset, size = found[ext]
                    fh.seek(offset)
                    return fh.read(size)

                yield self._item(i, f"{piece.unit}/{key}", found, member)

    def _stream(self, piece: Piece, url: str) -> Iterator[RawItem]:
        import fsspec

        with fsspec.open(url, "rb") as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
            current, members, position = None, {}, 0
            for member in tar:
                if not member.isfile():
                    continue
                stem, _, ext = os.path.basename(member.name).partition(".")
                key = f"{os.path.dirname(member.name)}/{stem}".lstrip("/")
                if current is not None and key != current:
                    yield self._item(position, f"{piece.unit}/{current}", members, members.__getitem__)
                    position, members = position + 1, {}
                current = key
                members[ext.lower()] = tar.extractfile(member).read()
            if current is not None:
                yield self._item(position, f"{piece.unit}/{current}", members, members.__getitem__)

    @staticmethod
    def _item(position: int, key: str, found, member) -> RawItem:
        image_ext = next((e for e in found if "." + e in IMAGE_EXTENSIONS), None)
        label = -1
        if "cls" in found:
            try:
                label = int(member("cls").decode().strip())
            except (ValueError, UnicodeDecodeError):
                label = -1
        data = member(image_ext) if image_ext else None
        return RawItem(position, key, label, data, None if image_ext else "no image member in this sample")


def open_source(spec: str, limit: int | None = None, data_dir: str | None = None, seed: int = 0,
                image_column: str | None = None, label_column: str | None = None) -> ImageSource:
    """Resolve what the user typed: a preset, `hf:ORG/NAME[@REVISION][:split]` (or `hf:PATH` of a
    local copy), a folder, or tar files. A preset reads `data_dir/<preset>` when it is there: a
    snapshot of the Hub repo (its parquet files, README, dataset_infos.json) is read exactly as
    the Hub copy would be, with the preset's columns; a plain folder of class subfolders as a
    folder. `seed` places --limit's draw."""
    from liquidgen.pipeline.hub import HFSource

    data_dir = data_dir or os.environ.get("LIQUIDGEN_DATA_DIR")
    hf_spec = spec.startswith("hf:") or (spec in PRESETS and PRESETS[spec].folder is None)
    if (image_column is not None or label_column is not None) and not hf_spec:
        raise LiquidgenError("--image-column and --label-column choose columns of a Hugging Face dataset (hf:... or "
                             f"a Hub preset); {spec} has none (a folder's labels are its subfolders)")
    if spec in PRESETS:
        preset = PRESETS[spec]
        limit = limit if limit is not None else preset.limit
        columns = dict(image_column=image_column or preset.image_column, label_column=label_column or preset.label_column)
        local = Path(data_dir) / spec if data_dir else None
        if local is not None and local.is_dir():
            if is_hub_snapshot(local):
                return HFSource(str(local), preset.split, **columns, limit=limit, seed=seed, name=preset.hf_id)
            source = FolderSource(local, limit=limit)
        elif preset.folder is not None:
            source = FolderSource(preset.folder, limit=limit, name=spec)
        else:
            return HFSource(preset.hf_id, preset.split, **columns, limit=limit, seed=seed, offline_hint=spec)
        source.limit_seed = seed
        return source
    if spec.startswith("hf:"):
        name, split, revision = spec[3:], "", ""
        if not Path(name).expanduser().exists():  # a local path is taken whole; an id may say more
            name, _, split = name.partition(":")
            name, _, revision = name.partition("@")
        return HFSource(name, split or "train", image_column, label_column, limit=limit, seed=seed, revision=revision or None)
    if ".tar" in spec:
        source = TarSource(spec, limit=limit)
    elif Path(spec).expanduser().is_dir():
        source = FolderSource(spec, limit=limit)
    else:
        raise LiquidgenError(
            f"unknown source '{spec}': use a preset ({', '.join(PRESETS)}), hf:ORG/NAME[:split], "
            "a folder of images, or .tar files"
        )
    source.limit_seed = seed
    return source


def is_hub_snapshot(folder: Path) -> bool:
    """A local copy of a Hub dataset repo (as `hf download --repo-type dataset` writes it) rather
    than a plain folder of class subfolders: it has parquet files, the legacy dataset_infos.json,
    or a dataset card (a README.md opening with YAML front matter, as every Hub card does; a
    plain folder's README, like paintings_mini's credits, does not)."""
    if (folder / "dataset_infos.json").is_file() or next(folder.rglob("*.parquet"), None) is not None:
        return True
    readme = folder / "README.md"
    try:
        return readme.is_file() and readme.read_text(errors="replace").lstrip().startswith("---")
    except OSError:
        return False
