"""Image sources: dataset presets, Hugging Face datasets (streamed), local folders, WebDataset
tars of images.

A source is cut into `Piece`s: disjoint runs of items that one worker reads alone, from bytes no
other piece touches (a slice of a folder listing, a run of parquet row groups, a run of samples of
a tar found through its member offsets). Pieces are the unit of parallel work and each becomes one
cache shard, so ranks and DataLoader workers divide a source by taking whole pieces and every
input byte is read once in total. An item is named by its piece's input shard and its position
there: resume, exactly-once and the source fingerprint rest on that.
"""

from __future__ import annotations

import glob
import hashlib
import os
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
    label_column: str | None = None
    limit: int | None = None
    note: str = ""
    folder: Path | None = None  # shipped with the package: read from here, never from the network


# The datasets the reference designs name. `paintings` is the first images of the WikiArt stream
# (the seeds' exact subsets were never published); `paintings_mini` ships with liquidgen.
PRESETS: dict[str, DatasetPreset] = {
    "paintings": DatasetPreset("huggan/wikiart", label_column="style", limit=8000, note="8K WikiArt paintings, 27 styles"),
    "paintings_mini": DatasetPreset("embedded", note="200 public-domain paintings, 128 px, 2 styles: shipped, offline",
                                    folder=PAINTINGS_MINI),
    "wikiart_stream": DatasetPreset("huggan/wikiart", label_column="style", note="all 81K WikiArt paintings, streamed"),
    "flowers": DatasetPreset("huggan/flowers-102-categories", note="8K flower photographs"),
    "cartoon": DatasetPreset("Norod78/cartoon-blip-captions", note="~3K cartoon characters"),
    "afhq": DatasetPreset("huggan/AFHQv2", note="16K animal faces"),
    "celeba": DatasetPreset("nielsr/CelebA-faces", note="202K celebrity faces"),
    "anime": DatasetPreset("huggan/anime-faces", note="63K anime faces, 64 px"),
    "pokemon": DatasetPreset("reach-vb/pokemon-blip-captions", note="833 Pokemon illustrations"),
}


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
    extra: dict = field(default_factory=dict)

    def _pieces(self, size: int) -> list[Piece]:
        raise NotImplementedError

    def _read(self, piece: Piece) -> Iterator[RawItem]:
        raise NotImplementedError

    def pieces(self, size: int) -> list[Piece]:
        """The source cut into pieces of at most `size` items where lengths are known, the last
        ones shortened to `limit`. Deterministic: the same source and size give the same list."""
        pieces = self._pieces(size)
        if self.limit is None:
            return pieces
        out, left = [], self.limit
        for piece in pieces:
            if left <= 0:
                break
            if piece.length is None:
                raise LiquidgenError(f"--limit needs a source whose length is known before reading; {self.id} is not")
            out.append(replace(piece, length=min(piece.length, left)))
            left -= out[-1].length
        return out

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
        only known once read."""
        lengths = [p.length for p in self.pieces(size)]
        return Source(id=self.id, kind=self.kind, split=self.split, revision=self.revision, limit=self.limit,
                      fingerprint=self.fingerprint(self._pieces(size)), label_names=self.label_names,
                      expected=None if None in lengths else sum(lengths))


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

    def _read(self, piece: Piece) -> Iterator[RawItem]:
        for i in range(piece.start, piece.start + piece.length):
            rel = self.files[i]
            yield RawItem(i, rel, self._label_of.get(rel.split("/", 1)[0], -1), str(self.root / rel))


def _unreachable(name: str, split: str, exc: Exception) -> LiquidgenError:
    first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:300]
    return LiquidgenError(
        f"could not open the Hugging Face dataset {name} (split {split}): {first}. "
        "Offline, set LIQUIDGEN_DATA_DIR to a folder holding a local copy"
    )


class HFSource(ImageSource):
    """A Hugging Face dataset, streamed (never downloaded whole); a Hub id or a local dataset path.

    Parquet datasets (everything on the Hub): `datasets` resolves the split's data files and the
    features; each file's footer is read once, exactly (a few KB), and a piece is a run of whole
    row groups of one file, read with pyarrow (datasets' own reader) given that footer, so no
    byte is read twice. (`IterableDataset.reshard()` would cut at the same row groups, but it and
    every worker's iteration re-read each file's last 64 KB: 3-4x the source bytes, measured, on
    files of a few hundred KB.) Other formats are cut at datasets' own shards (`n_shards`), one
    piece each, their lengths known only once read.
    """

    def __init__(self, name: str, split: str = "train", label_column: str | None = None,
                 limit: int | None = None, revision: str | None = None):
        self.name = name
        files = self._parquet_files(name, split, revision)
        self._footers = {f: self._footer(f) for f in files} if files else None
        self._ds = None
        if self._footers:
            import datasets

            features = datasets.Features.from_arrow_schema(next(iter(self._footers.values())).schema.to_arrow_schema())
        else:
            features = self._open(name, split, revision).features or {}
        image_cols = [k for k, v in features.items() if v.__class__.__name__ == "Image"]
        if not image_cols:
            raise LiquidgenError(f"dataset {name} has no image column (columns: {', '.join(features)})")
        if label_column is None:
            label_column = next((k for k, v in features.items() if v.__class__.__name__ == "ClassLabel"), None)
        elif label_column not in features:
            raise LiquidgenError(f"dataset {name} has no column '{label_column}' (columns: {', '.join(features)})")
        names = None
        if label_column is not None:
            names = list(getattr(features[label_column], "names", None) or []) or None
        source_id = str(Path(name).resolve()) if Path(name).exists() else name
        super().__init__(id=source_id, kind="hf", split=split, revision=revision, label_names=names, limit=limit)
        self.image_column, self.label_column = image_cols[0], label_column
        if self._footers:
            self.extra["sizes"] = {f: os.path.getsize(f) for f in files if os.path.exists(f)}

    @staticmethod
    def _parquet_files(name: str, split: str, revision: str | None) -> list[str] | None:
        """The split's parquet files as `datasets` resolves them (local paths or hf:// URLs), or
        None when the dataset is not parquet."""
        import datasets
        from datasets.packaged_modules.parquet.parquet import Parquet

        try:
            builder = datasets.load_dataset_builder(name, revision=revision)
        except Exception as exc:  # datasets raises many types for a missing/unreachable dataset
            raise _unreachable(name, split, exc) from None
        if not isinstance(builder, Parquet):
            return None
        files = (builder.config.data_files or {}).get(split)
        if not files:
            raise LiquidgenError(f"dataset {name} has no split '{split}' (splits: {', '.join(builder.config.data_files or {})})")
        return list(files)

    @staticmethod
    def _footer(file: str):
        """A parquet file's metadata from exactly its footer bytes."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        from datasets.utils.file_utils import xopen

        try:
            with xopen(file, "rb") as fh:
                fh.seek(-8, os.SEEK_END)
                tail = fh.read(8)
                size = int.from_bytes(tail[:4], "little")
                if tail[4:] != b"PAR1" or size <= 0:
                    raise ValueError("no parquet footer")
                fh.seek(-(8 + size), os.SEEK_END)
                footer = fh.read(size)
            return pq.read_metadata(pa.BufferReader(b"PAR1" + footer + tail))
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise LiquidgenError(f"cannot read the parquet file {file}: {exc}") from None

    @staticmethod
    def _open(name: str, split: str, revision: str | None):
        import datasets

        try:
            return datasets.load_dataset(name, split=split, streaming=True, revision=revision)
        except Exception as exc:  # datasets raises many types for a missing/unreachable dataset
            raise _unreachable(name, split, exc) from None

    def _stream(self):
        """A non-parquet dataset as datasets shards, images undecoded; opened once per process
        (DataLoader workers forked later inherit it)."""
        import datasets

        if self._ds is None:
            ds = self._open(self.name, self.split, self.revision)
            self._ds = ds.cast_column(self.image_column, datasets.Image(decode=False))
        return self._ds

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_ds": None}  # a spawned worker opens its own

    def _pieces(self, size: int) -> list[Piece]:
        if self._footers is None:
            n = self._stream().n_shards
            return [Piece(k, f"shard{k:05d}", 0, None, ("shard", k, n)) for k in range(n)]
        files = list(self._footers)
        prefix = os.path.commonpath(files) if len(files) > 1 else os.path.dirname(files[0])
        pieces: list[Piece] = []
        for file in files:
            unit = file[len(prefix):].lstrip("/") if prefix else file
            meta, group, start = self._footers[file], 0, 0
            while group < meta.num_row_groups:
                first, rows = group, 0
                while group < meta.num_row_groups and (rows == 0 or rows + meta.row_group(group).num_rows <= size):
                    rows += meta.row_group(group).num_rows
                    group += 1
                if rows:
                    pieces.append(Piece(len(pieces), unit, start, rows, ("parquet", file, first, group)))
                start += rows
        return pieces

    def _read(self, piece: Piece) -> Iterator[RawItem]:
        if piece.where[0] == "shard":
            yield from self._read_shard(piece)
            return
        import pyarrow.parquet as pq
        from datasets.utils.file_utils import xopen

        _, file, first, end = piece.where
        columns = [self.image_column] + ([self.label_column] if self.label_column else [])
        position = piece.start
        with xopen(file, "rb") as fh:
            reader = pq.ParquetFile(fh, metadata=self._footers[file])
            for batch in reader.iter_batches(batch_size=64, row_groups=list(range(first, end)), columns=columns):
                rows = batch.to_pydict()
                labels = rows.get(self.label_column) if self.label_column else None
                for i, image in enumerate(rows[self.image_column]):
                    yield self._row(piece, position, image, labels[i] if labels is not None else -1)
                    position += 1

    def _read_shard(self, piece: Piece) -> Iterator[RawItem]:
        _, shard, n = piece.where
        ds = self._stream()
        if ds.n_shards != n:
            raise LiquidgenError(f"{self.id} changed while it was being encoded ({ds.n_shards} shards, was {n})")
        position = 0
        # `iter` rather than `__iter__`: inside a DataLoader worker datasets' `__iter__` would
        # hand this worker only its share of the (single) shard.
        for batch in ds.shard(num_shards=n, index=shard, contiguous=True).iter(batch_size=64):
            labels = batch.get(self.label_column) if self.label_column else None
            for i, image in enumerate(batch[self.image_column]):
                yield self._row(piece, position, image, labels[i] if labels is not None else -1)
                position += 1

    @staticmethod
    def _row(piece: Piece, position: int, image, label) -> RawItem:
        data = (image or {}).get("bytes") or (image or {}).get("path") if isinstance(image, dict) else None
        label = label if isinstance(label, int) else -1
        return RawItem(position, f"{piece.unit}/{position}", label, data, None if data else "no image in this row")

    def fingerprint(self, pieces: list[Piece]) -> str:
        sizes = self.extra.get("sizes", {})
        layout = [(p.unit, p.start, p.length) for p in pieces]
        return hashlib.sha256(f"{self.revision}:{layout}:{sorted(sizes.values())}".encode()).hexdigest()[:16]


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


def open_source(spec: str, limit: int | None = None, data_dir: str | None = None) -> ImageSource:
    """Resolve what the user typed: a preset, `hf:ORG/NAME[:split]`, a folder, or tar files."""
    data_dir = data_dir or os.environ.get("LIQUIDGEN_DATA_DIR")
    if spec in PRESETS:
        preset = PRESETS[spec]
        limit = limit if limit is not None else preset.limit
        if data_dir and (Path(data_dir) / spec).is_dir():
            return FolderSource(Path(data_dir) / spec, limit=limit)
        if preset.folder is not None:
            return FolderSource(preset.folder, limit=limit, name=spec)
        return HFSource(preset.hf_id, preset.split, preset.label_column, limit=limit)
    if spec.startswith("hf:"):
        name, _, split = spec[3:].partition(":")
        return HFSource(name, split or "train", limit=limit)
    if ".tar" in spec:
        return TarSource(spec, limit=limit)
    if Path(spec).expanduser().is_dir():
        return FolderSource(spec, limit=limit)
    raise LiquidgenError(
        f"unknown source '{spec}': use a preset ({', '.join(PRESETS)}), hf:ORG/NAME[:split], "
        "a folder of images, or .tar files"
    )
