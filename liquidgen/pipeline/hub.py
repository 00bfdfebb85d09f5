"""Hugging Face datasets as the Hub holds them: a Hub id, or a local snapshot of the repo.

Three layouts, each cut into pieces by what its files allow (see sources.py for pieces):
- **parquet** (nearly every dataset): a piece is a run of whole row groups of one file, read with
  pyarrow given the file's footer, which is read once, exactly. A row group of more than twice
  the shard size (a file written as one row group) is cut into several pieces; one rank reads
  it once into a spool in the cache folder (`prepare`) and every worker of every rank takes its
  pieces from there, so the costly part, decoding and resizing, is shared while the source's
  bytes are still read once.
- **files**: an image-folder dataset of loose files (huggan/anime-faces); a piece is a run of
  the sorted file list. An archive beside loose files is not read (on the Hub it repeats them).
- **stream**: anything else `datasets` reads (an archive-only image folder, JSON lines), cut at
  its own shards, whose lengths are known only once read.

Features are what the dataset declares (`dataset_infos.json`, the README's `dataset_info` YAML:
`load_dataset_builder(...).info.features`), then the files' own `huggingface` metadata. Parquet
pushed before `datasets` 2.10 has neither in its footer: an image column is a plain
`struct<bytes: binary, path: string>` and a ClassLabel an `int64`, so with nothing declared such
a struct is taken as images (and said so).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from liquidgen.errors import LiquidgenError
from liquidgen.network import hub_unreachable
from liquidgen.pipeline.images import IMAGE_EXTENSIONS
from liquidgen.pipeline.sources import RUN, ImageSource, Piece, RawItem

ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".7z")
_HUB_FILE = re.compile(r"^hf://datasets/(?:[^/@]+/)?[^/@]+(?:@([^/]+))?/(.*)$")


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:300]


def _builder(path: str, revision: str | None, offline_hint: str | None):
    """datasets' builder for the dataset (resolves its files and declared features), or one line
    saying why there is none."""
    import datasets

    local = Path(path).expanduser().exists()
    if not local:
        why = hub_unreachable(path, "dataset")
        if why:
            raise LiquidgenError(f"cannot reach the Hugging Face Hub for the dataset {path} ({why}); "
                                 + _offline_hint(path, offline_hint))
    import logging

    verbosity, card = datasets.logging.get_verbosity(), logging.getLogger("huggingface_hub.repocard")
    datasets.logging.set_verbosity_error()  # "Repo card metadata block was not found" and the like
    card.disabled = True
    try:
        return datasets.load_dataset_builder(path, revision=revision)
    except Exception as exc:  # datasets raises many types for a missing/unreachable dataset
        text = _first_line(exc)
        if "scripts are no longer supported" in text:
            raise LiquidgenError(
                f"{path} is read by a loading script ({text.rsplit(' ', 1)[-1]}), which datasets >= 4 no longer runs: "
                f"encode the Hub's parquet conversion instead (hf:{path}@refs/convert/parquet), or download the "
                "images and encode their folder") from None
        raise LiquidgenError(f"could not open the Hugging Face dataset {path}: {text}"
                             + ("" if local else "; " + _offline_hint(path, offline_hint))) from None
    finally:
        datasets.logging.set_verbosity(verbosity)
        card.disabled = False


def _offline_hint(path: str, preset: str | None) -> str:
    fetch = f"hf download {path} --repo-type dataset --local-dir DIR"
    if preset:
        return f"offline, put a copy in $LIQUIDGEN_DATA_DIR/{preset} ({fetch.replace('DIR', '$LIQUIDGEN_DATA_DIR/' + preset)})"
    return f"offline, download it ({fetch}) and encode hf:DIR"


class HFSource(ImageSource):
    """A Hugging Face dataset, streamed (never downloaded whole); a Hub id or a local snapshot.

    `image_column`/`label_column`: None takes the first image column and the first ClassLabel;
    `label_column="none"` reads no labels. `name` replaces a local snapshot's path as the
    source's id (a preset read from LIQUIDGEN_DATA_DIR is recorded as its Hub id)."""

    def __init__(self, path: str, split: str = "train", image_column: str | None = None,
                 label_column: str | None = None, limit: int | None = None, seed: int = 0,
                 revision: str | None = None, name: str | None = None, offline_hint: str | None = None):
        import datasets
        from datasets.packaged_modules.folder_based_builder.folder_based_builder import FolderBasedBuilder
        from datasets.packaged_modules.parquet.parquet import Parquet

        self.path = path
        builder = _builder(path, revision, offline_hint)
        data_files = builder.config.data_files or {}
        files = list(data_files.get(split) or [])
        if not files:
            raise LiquidgenError(f"dataset {path} has no split '{split}' (splits: {', '.join(map(str, data_files))})")
        local = Path(path).expanduser().exists()
        self._root = str(Path(path).expanduser().resolve()) if local else None
        revision = revision or next((m.group(1) for f in files[:1] if (m := _HUB_FILE.match(f)) and m.group(1)), None)
        declared = builder.info.features  # dataset_infos.json or README YAML: these win
        source_id = name or (self._root if local else path)
        super().__init__(id=source_id, kind="hf", split=split, revision=revision, limit=limit, limit_seed=seed)
        self._ds = self._spool = None
        self._footers: dict | None = None
        self.files: list[str] = []
        if isinstance(builder, Parquet):
            self.layout = "parquet"
            self._footers = {f: _footer(f) for f in files}
            features = declared or datasets.Features.from_arrow_schema(
                next(iter(self._footers.values())).schema.to_arrow_schema())
            if local:
                self.extra["sizes"] = {self._unit(f): os.path.getsize(f) for f in files}
        elif isinstance(builder, FolderBasedBuilder) and any(_is_image(f) for f in files):
            self.layout = "files"
            self.files = sorted((f for f in files if _is_image(f)), key=self._unit)
            archives = [self._unit(f) for f in files if f.lower().endswith(ARCHIVES)]
            if archives:
                self.notes.append(f"{source_id}: reading its {len(self.files)} loose image files; {len(archives)} archive(s) "
                                  f"beside them not read ({', '.join(archives[:3])}): on the Hub they repeat the loose files")
            features = self._folder_features(declared)
            self.extra["sizes"] = {"listing": hashlib.sha256("\n".join(map(self._unit, self.files)).encode()).hexdigest()}
        else:
            self.layout = "stream"
            features = self._stream(image_column).features or declared or {}
        self.image_column = self._choose_image(features, image_column)
        self.label_column, self.label_names = self._choose_label(features, label_column)
        if self.layout == "parquet":
            present = self._footers[files[0]].schema.to_arrow_schema().names
            for column in filter(None, (self.image_column, self.label_column)):
                if column not in present:
                    raise LiquidgenError(f"dataset {path} declares a column '{column}' its files lack (they hold: "
                                         f"{', '.join(present)})")

    # -- what the dataset holds ---------------------------------------------------------------------

    def _unit(self, file: str) -> str:
        return repo_path(file, self._root)

    def _folder_features(self, declared):
        """An image folder's features as datasets gives them: the image, and a label from the
        parent folder's name when the files sit in more than one."""
        import datasets

        if declared:
            return declared
        parents = sorted({self._unit(f).rsplit("/", 2)[-2] for f in self.files if "/" in self._unit(f)})
        features = {"image": datasets.Image()}
        if len(parents) > 1:
            features["label"] = datasets.ClassLabel(names=parents)
        return datasets.Features(features)

    def _choose_image(self, features, wanted: str | None) -> str:
        import datasets

        if self.layout == "files":
            if wanted not in (None, "image"):
                raise LiquidgenError(f"dataset {self.id} is a folder of image files: its only image column is 'image'")
            return "image"
        images = [k for k, v in features.items() if isinstance(v, datasets.Image)]
        raw = [k for k, v in features.items() if isinstance(v, dict) and {"bytes", "path"} <= set(v)]
        if wanted is not None:
            if wanted not in features:
                raise LiquidgenError(f"dataset {self.id} has no column '{wanted}' (columns: {', '.join(features)})")
            if wanted not in images + raw:
                raise LiquidgenError(f"column '{wanted}' of {self.id} holds {_kind(features[wanted])}, not images "
                                     f"(image columns: {', '.join(images + raw) or 'none'})")
            return wanted
        if images:
            return images[0]
        if raw:
            self.notes.append(f"{self.id}: no features declared (parquet from datasets < 2.10, no dataset_infos.json or "
                              f"README dataset_info); taking column '{raw[0]}' (struct<bytes, path>) as the images")
            return raw[0]
        raise LiquidgenError(f"dataset {self.id} has no image column (columns: {', '.join(features)}); "
                             "name one with --image-column")

    def _choose_label(self, features, wanted: str | None) -> tuple[str | None, list[str] | None]:
        import datasets

        if wanted == "none":
            return None, None
        if wanted is None:
            wanted = next((k for k, v in features.items() if isinstance(v, datasets.ClassLabel)), None)
            if wanted is None:
                return None, None
        if wanted not in features:
            raise LiquidgenError(f"dataset {self.id} has no column '{wanted}' (columns: {', '.join(features)}); "
                                 "--label-column none trains unconditionally")
        feature = features[wanted]
        if isinstance(feature, datasets.ClassLabel):
            return wanted, list(feature.names) or None
        if isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
            return wanted, None  # class ids without names
        raise LiquidgenError(f"column '{wanted}' of {self.id} holds {_kind(feature)}, not class labels: "
                             "use --label-column none, or name a ClassLabel column")

    # -- pieces ---------------------------------------------------------------------------------------

    def _units(self) -> list[Piece]:
        if self.layout == "files":
            return [replace(p, number=-1) for p in self._pieces(RUN)]
        if self.layout == "stream":
            return self._pieces(0)
        units = []
        for file, meta in self._footers.items():
            start = 0
            for group in range(meta.num_row_groups):
                rows = meta.row_group(group).num_rows
                units.append(Piece(-1, self._unit(file), start, rows, ("parquet", file, group, group + 1, 0, False)))
                start += rows
        return units

    def _shortest_run(self) -> int:
        """pyarrow checks its dictionary-page limit only every 1,024 rows it writes, so a row group
        of large images often keeps most of its rows in the image column's dictionary page, which
        is read whole before the first row: then a prefix costs about the whole group, and
        --limit draws whole groups. With plain pages a prefix costs its own bytes: RUN. The
        median over the row groups, from the footers."""
        if self.layout != "parquet":
            return RUN
        runs = []
        for meta in self._footers.values():
            for group in range(meta.num_row_groups):
                rg = meta.row_group(group)
                chunks = [rg.column(c) for c in range(rg.num_columns)
                          if rg.column(c).path_in_schema.split(".")[0] == self.image_column]
                size = sum(c.total_compressed_size for c in chunks) or 1
                dictionary = sum(c.data_page_offset - c.dictionary_page_offset for c in chunks if c.has_dictionary_page)
                runs.append(rg.num_rows if 2 * dictionary >= size else RUN)
        return max(RUN, sorted(runs)[len(runs) // 2]) if runs else RUN

    def _cut(self, run: Piece, size: int) -> list[Piece]:
        """A run of one row group stays whole up to 2 x size rows; a longer one is cut into
        pieces of about `size` rows, which are read through the spool (`prepare`)."""
        if run.where[0] != "parquet":
            return super()._cut(run, size)
        if run.length <= 2 * size:
            return [run]
        k = -(-run.length // size)
        bounds = [run.length * i // k for i in range(k + 1)]
        return [replace(run, start=run.start + a, length=b - a, where=(*run.where[:4], a, True))
                for a, b in zip(bounds, bounds[1:])]

    def _pieces(self, size: int) -> list[Piece]:
        if self.layout == "stream":
            n = self._stream().n_shards
            return [Piece(k, f"shard{k:05d}", 0, None, ("shard", k, n)) for k in range(n)]
        if self.layout == "files":
            n = len(self.files)
            return [Piece(k, "files", s, min(size, n - s), ("files",)) for k, s in enumerate(range(0, n, size))]
        pieces: list[Piece] = []
        run: Piece | None = None  # row groups of one file merged up to `size` rows
        for unit in self._units() + [None]:
            fits = unit is not None and run is not None and unit.unit == run.unit and run.length + unit.length <= size
            if fits:
                run = replace(run, length=run.length + unit.length, where=(*run.where[:3], unit.where[3], 0, False))
                continue
            if run is not None:
                pieces += self._cut(run, size)
            run = unit
        return [replace(p, number=n) for n, p in enumerate(pieces)]

    def fingerprint(self, pieces: list[Piece]) -> str:
        sizes = self.extra.get("sizes", {})
        layout = [(p.unit, p.start, p.length) for p in pieces]
        return hashlib.sha256(f"{self.revision}:{layout}:{sorted(sizes.values())}".encode()).hexdigest()[:16]

    # -- reading ----------------------------------------------------------------------------------------

    def _read(self, piece: Piece) -> Iterator[RawItem]:
        kind = piece.where[0]
        if kind == "files":
            yield from self._read_files(piece)
        elif kind == "shard":
            yield from self._read_shard(piece)
        elif piece.where[5] and self._spool and self._spooled(piece).is_file():
            yield from self._read_spool(piece)
        else:
            yield from self._read_parquet(piece)

    def _columns(self) -> list[str]:
        return [self.image_column] + ([self.label_column] if self.label_column else [])

    def _batches(self, file: str, groups: list[int]):
        """Record batches of the piece's row groups, the file opened once and read through a
        buffer, so stopping early leaves the rest of the row group unread."""
        import pyarrow.parquet as pq
        from datasets.utils.file_utils import xopen

        meta = self._footers[file]
        with xopen(file, "rb") as fh:
            reader = pq.ParquetFile(fh, metadata=meta, buffer_size=_read_buffer(meta, groups), pre_buffer=False)
            yield from reader.iter_batches(batch_size=16, row_groups=groups, columns=self._columns())

    def _read_parquet(self, piece: Piece) -> Iterator[RawItem]:
        _, file, first, end, skip, _ = piece.where
        position = piece.start - skip
        for batch in self._batches(file, list(range(first, end))):
            for item in self._rows(piece, position, batch):
                if item.position >= piece.start:
                    yield item
            position += batch.num_rows

    def _rows(self, piece: Piece, position: int, batch) -> Iterator[RawItem]:
        rows = batch.to_pydict()
        labels = rows.get(self.label_column) if self.label_column else None
        for i, image in enumerate(rows[self.image_column]):
            data = (image.get("bytes") or image.get("path")) if isinstance(image, dict) else None
            label = labels[i] if labels is not None and isinstance(labels[i], int) else -1
            yield RawItem(position + i, f"{piece.unit}/{position + i}", label, data, None if data else "no image in this row")

    # -- one big row group, shared by every worker through a spool -------------------------------------

    def _spooled(self, piece: Piece) -> Path:
        _, file, group, _, skip, _ = piece.where
        name = hashlib.sha256(f"{self.id}:{file}:{group}:{skip}:{piece.length}".encode()).hexdigest()[:20]
        return Path(self._spool) / f"{name}.parquet"

    def prepare(self, todo: list[Piece], scratch: Path, rank: int, world: int) -> None:
        """Each row group cut into several pieces is read once, by rank (its number mod world),
        into one spool file per piece; every rank then reads its pieces from those."""
        self._spool = str(scratch)
        groups: dict[tuple[str, int], list[Piece]] = {}
        for piece in todo:
            if piece.where[0] == "parquet" and piece.where[5]:
                groups.setdefault(piece.where[1:3], []).append(piece)
        for j, key in enumerate(sorted(groups)):
            missing = [p for p in groups[key] if not self._spooled(p).is_file()]
            if j % world == rank and missing:
                self._spool_row_group(*key, sorted(missing, key=lambda p: p.start))

    def _spool_row_group(self, file: str, group: int, pieces: list[Piece]) -> None:
        import pyarrow.parquet as pq

        Path(self._spool).mkdir(parents=True, exist_ok=True)
        end = max(p.where[4] + p.length for p in pieces)
        print(f"reading row group {group} of {self._unit(file)} once for {len(pieces)} pieces "
              f"({end} rows): one row group shared by every worker", flush=True)
        pending, writer, offset = list(pieces), None, 0
        try:
            for batch in self._batches(file, [group]):
                while pending and batch.num_rows:
                    piece = pending[0]
                    lo, hi = piece.where[4], piece.where[4] + piece.length
                    a, b = max(lo - offset, 0), min(hi - offset, batch.num_rows)
                    if b <= 0:
                        break
                    if a < b:
                        if writer is None:
                            tmp = self._spooled(piece).with_suffix(f".tmp{os.getpid()}")
                            writer = pq.ParquetWriter(tmp, batch.schema, compression="none")
                        writer.write_batch(batch.slice(a, b - a))
                    if offset + batch.num_rows < hi:
                        break
                    if writer is not None:  # the piece is whole: publish it under its name
                        writer.close()
                        os.replace(tmp, self._spooled(piece))
                        writer = None
                    pending.pop(0)
                offset += batch.num_rows
                if not pending:
                    break
        finally:
            if writer is not None:
                writer.close()
                os.unlink(tmp)
        if pending:
            raise LiquidgenError(f"{self._unit(file)} row group {group} ended at row {offset}, before its pieces "
                                 "did: the source changed; encode it into a new --out folder")

    def _read_spool(self, piece: Piece) -> Iterator[RawItem]:
        import pyarrow.parquet as pq

        position = piece.start
        for batch in pq.ParquetFile(self._spooled(piece)).iter_batches(batch_size=16):
            yield from self._rows(piece, position, batch)
            position += batch.num_rows

    # -- loose files and datasets' own shards -------------------------------------------------------------

    def _read_files(self, piece: Piece) -> Iterator[RawItem]:
        from datasets.utils.file_utils import xopen

        for i in range(piece.start, piece.start + piece.length):
            file = self.files[i]
            rel = self._unit(file)
            label = self.label_names.index(rel.rsplit("/", 2)[-2]) if self.label_names and "/" in rel else -1
            if file.startswith("hf://"):
                with xopen(file, "rb") as fh:
                    data: bytes | str = fh.read()
            else:
                data = file
            yield RawItem(i, rel, label, data)

    def _stream(self, image_column: str | None = None):
        """A dataset of the stream layout, images undecoded; opened once per process (DataLoader
        workers forked later inherit it)."""
        import datasets

        if self._ds is None:
            try:
                ds = datasets.load_dataset(self.path, split=self.split, streaming=True, revision=self.revision)
            except Exception as exc:  # datasets raises many types for a missing/unreachable dataset
                raise LiquidgenError(f"could not open the Hugging Face dataset {self.path}: {_first_line(exc)}") from None
            column = image_column or getattr(self, "image_column", None) or next(
                (k for k, v in (ds.features or {}).items() if isinstance(v, datasets.Image)), None)
            self._ds = ds.cast_column(column, datasets.Image(decode=False)) if column else ds
        return self._ds

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_ds": None}  # a spawned worker opens its own

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
                data = (image.get("bytes") or image.get("path")) if isinstance(image, dict) else None
                label = labels[i] if labels is not None and isinstance(labels[i], int) else -1
                yield RawItem(position, f"{piece.unit}/{position}", label, data, None if data else "no image in this row")
                position += 1


def repo_path(file: str, root: str | None) -> str:
    """A data file's path within the dataset repo, the same for a Hub URL
    (hf://datasets/ORG/NAME@REV/data/x.parquet) and for a local snapshot under `root`: the
    input-shard part of every key."""
    match = _HUB_FILE.match(file)
    if match:
        return match.group(2)
    return Path(os.path.relpath(file, root)).as_posix() if root else file


def _read_buffer(meta, groups: list[int]) -> int:
    """pyarrow reads a column chunk through a buffer instead of whole, so a prefix of a big row
    group costs about its own bytes (a --limit draw, a spool that stops early): two rows' worth,
    between 8 KB and 1 MB (a page larger than that is read whole all the same)."""
    rows = sum(meta.row_group(g).num_rows for g in groups) or 1
    size = sum(meta.row_group(g).total_byte_size for g in groups)
    return int(min(1 << 20, max(1 << 13, 2 * size / rows)))


def _is_image(file: str) -> bool:
    return os.path.splitext(file)[1].lower() in IMAGE_EXTENSIONS


def _kind(feature) -> str:
    return getattr(feature, "dtype", None) or feature.__class__.__name__


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
