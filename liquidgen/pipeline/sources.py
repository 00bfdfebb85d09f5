"""Image sources: dataset presets, Hugging Face datasets (streamed), local folders, WebDataset
tars of images.

A source is an ordered, re-iterable stream of `RawItem`s (undecoded bytes or a file path, a key,
a label). Order is fixed, so an item's position is a stable index: resume, sharding across
ranks and de-duplication all work on it without reading a single pixel twice.
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from liquidgen.errors import LiquidgenError
from liquidgen.pipeline.images import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class DatasetPreset:
    hf_id: str
    split: str = "train"
    label_column: str | None = None
    limit: int | None = None
    note: str = ""


# The datasets the reference designs name. `paintings`/`paintings_mini` are the first images of
# the WikiArt stream (the seeds' exact subsets were never published).
PRESETS: dict[str, DatasetPreset] = {
    "paintings": DatasetPreset("huggan/wikiart", label_column="style", limit=8000, note="8K WikiArt paintings, 27 styles"),
    "paintings_mini": DatasetPreset("huggan/wikiart", label_column="style", limit=200, note="200 paintings: a smoke test"),
    "wikiart_stream": DatasetPreset("huggan/wikiart", label_column="style", note="all 81K WikiArt paintings, streamed"),
    "flowers": DatasetPreset("huggan/flowers-102-categories", note="8K flower photographs"),
    "cartoon": DatasetPreset("Norod78/cartoon-blip-captions", note="~3K cartoon characters"),
    "afhq": DatasetPreset("huggan/AFHQv2", note="16K animal faces"),
    "celeba": DatasetPreset("nielsr/CelebA-faces", note="202K celebrity faces"),
    "anime": DatasetPreset("huggan/anime-faces", note="63K anime faces, 64 px"),
    "pokemon": DatasetPreset("reach-vb/pokemon-blip-captions", note="833 Pokemon illustrations"),
}


@dataclass
class RawItem:
    index: int
    key: str
    label: int  # index into the source's label_names, -1 when unlabelled
    data: bytes | str | None  # encoded image bytes or a local path
    error: str | None = None


@dataclass
class ImageSource:
    """Base: subclasses fill the description and implement `items()`."""

    id: str
    kind: str
    split: str | None = None
    revision: str | None = None
    length: int | None = None  # None for a stream of unknown length
    label_names: list[str] | None = None
    fingerprint: str | None = None  # changes when the listing changes: refuses a stale resume
    limit: int | None = None
    extra: dict = field(default_factory=dict)

    def items(self) -> Iterator[RawItem]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[RawItem]:
        for item in self.items():
            if self.limit is not None and item.index >= self.limit:
                return
            yield item

    @property
    def count(self) -> int | None:
        """How many items the encode will see (None when the stream length is unknown)."""
        if self.length is None:
            return None
        return self.length if self.limit is None else min(self.length, self.limit)

    def describe(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "split": self.split,
            "revision": self.revision,
            "limit": self.limit,
            "fingerprint": self.fingerprint,
            "label_names": self.label_names,
        }


class FolderSource(ImageSource):
    """A local folder; first-level subfolder names become class labels."""

    def __init__(self, root: str | Path, limit: int | None = None):
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
        digest = hashlib.sha256()
        for f in files:
            digest.update(f"{f}:{(path / f).stat().st_size}\n".encode())
        super().__init__(
            id=str(path), kind="folder", length=len(files), label_names=names,
            fingerprint=digest.hexdigest()[:16], limit=limit,
        )
        self.root, self.files = path, files
        self._label_of = {n: i for i, n in enumerate(names)} if names else {}

    def items(self) -> Iterator[RawItem]:
        for i, rel in enumerate(self.files):
            label = self._label_of.get(rel.split("/", 1)[0], -1)
            yield RawItem(i, rel, label, str(self.root / rel))


class HFSource(ImageSource):
    """A Hugging Face dataset, streamed (never downloaded whole); a Hub id or a local dataset path."""

    def __init__(self, name: str, split: str = "train", label_column: str | None = None,
                 limit: int | None = None, revision: str | None = None):
        ds = self._open(name, split, revision)
        features = ds.features or {}
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
        length = None
        splits = getattr(ds.info, "splits", None) or {}
        if split in splits and splits[split].num_examples:
            length = int(splits[split].num_examples)
        source_id = str(Path(name).resolve()) if Path(name).exists() else name
        super().__init__(
            id=source_id, kind="hf", split=split, revision=revision, length=length,
            label_names=names, fingerprint=None, limit=limit,
        )
        self.name, self.image_column, self.label_column = name, image_cols[0], label_column

    @staticmethod
    def _open(name: str, split: str, revision: str | None):
        import datasets

        try:
            return datasets.load_dataset(name, split=split, streaming=True, revision=revision)
        except Exception as exc:  # datasets raises many types for a missing/unreachable dataset
            first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:300]
            raise LiquidgenError(
                f"could not open the Hugging Face dataset {name} (split {split}): {first}. "
                "Offline, set LIQUIDGEN_DATA_DIR to a folder holding a local copy"
            ) from None

    def items(self) -> Iterator[RawItem]:
        import datasets

        ds = self._open(self.name, self.split, self.revision)
        ds = ds.cast_column(self.image_column, datasets.Image(decode=False))
        if self.limit is not None:
            ds = ds.take(self.limit)
        for i, row in enumerate(ds):
            image = row.get(self.image_column) or {}
            data = image.get("bytes") or image.get("path")
            label = row.get(self.label_column, -1) if self.label_column else -1
            label = label if isinstance(label, int) else -1
            key = f"{self.split}/{i}"
            yield RawItem(i, key, label, data, None if data else "no image in this row")


class TarSource(ImageSource):
    """WebDataset tars of images (`.jpg`/`.png`/... members, optional `.cls` integer labels)."""

    def __init__(self, pattern: str, limit: int | None = None):
        import braceexpand

        urls: list[str] = []
        for part in braceexpand.braceexpand(pattern):
            urls += sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part]
        local = [u for u in urls if "://" not in u]
        missing = [u for u in local if not os.path.exists(u)]
        if not urls or missing:
            raise LiquidgenError(f"no tar files at {missing[0] if missing else pattern}")
        digest = hashlib.sha256("".join(f"{u}:{os.path.getsize(u)}\n" for u in local).encode())
        super().__init__(
            id=pattern if "://" in pattern else str(Path(pattern).resolve()), kind="wds",
            length=None, fingerprint=digest.hexdigest()[:16], limit=limit,
        )
        self.urls = urls

    def items(self) -> Iterator[RawItem]:
        import webdataset as wds

        pipeline = wds.DataPipeline(wds.SimpleShardList(self.urls), wds.tarfile_to_samples())
        for i, sample in enumerate(pipeline):
            key = f"{os.path.basename(sample.get('__url__', ''))}/{sample['__key__']}"
            image_ext = next((e for e in sample if "." + e.lower() in IMAGE_EXTENSIONS), None)
            label = -1
            if "cls" in sample:
                try:
                    label = int(sample["cls"].decode().strip())
                except ValueError:
                    label = -1
            data = sample[image_ext] if image_ext else None
            yield RawItem(i, key, label, data, None if image_ext else "no image member in this sample")


def open_source(spec: str, limit: int | None = None, data_dir: str | None = None) -> ImageSource:
    """Resolve what the user typed: a preset, `hf:ORG/NAME[:split]`, a folder, or tar files."""
    data_dir = data_dir or os.environ.get("LIQUIDGEN_DATA_DIR")
    if spec in PRESETS:
        preset = PRESETS[spec]
        limit = limit if limit is not None else preset.limit
        if data_dir and (Path(data_dir) / spec).is_dir():
            return FolderSource(Path(data_dir) / spec, limit=limit)
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
