"""Local snapshots of the Hub datasets liquidgen's presets name, laid out as the Hub holds them
(as `hf download --repo-type dataset` writes them), at small scale, with real images.

Built from the facts of those repos, not from today's `datasets` writer:
- parquet pushed with datasets < 2.10 (2022) carries no `huggingface` schema metadata: the files
  are written here with `pa.schema(features.type)`, so an Image column is a plain
  `struct<bytes: binary, path: string>` and a ClassLabel an `int64`;
- the features live in the legacy `dataset_infos.json` (keyed `org--name`) or, for
  Norod78/cartoon-blip-captions, only in the README's `dataset_info` YAML;
- each file is one row group (huggan/wikiart: 72 files of ~1,131 rows);
- huggan/wikiart's rows are shuffled, with its real label lists (style: 27 names, alphabetical,
  Baroque = 4, Rococo = 22); huggan/AFHQv2's are in class blocks (cat, dog, wild), as an image
  folder pushed in order gives;
- huggan/anime-faces is loose `images/N.png` files beside a `data.zip` that repeats them.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from liquidgen.embedded import PAINTINGS_MINI

# huggan/wikiart's label lists (from its dataset_infos.json); 129 artists are stood for by names.
WIKIART_STYLES = [
    "Abstract_Expressionism", "Action_painting", "Analytical_Cubism", "Art_Nouveau", "Baroque",
    "Color_Field_Painting", "Contemporary_Realism", "Cubism", "Early_Renaissance", "Expressionism",
    "Fauvism", "High_Renaissance", "Impressionism", "Mannerism_Late_Renaissance", "Minimalism",
    "Naive_Art_Primitivism", "New_Realism", "Northern_Renaissance", "Pointillism", "Pop_Art",
    "Post_Impressionism", "Realism", "Rococo", "Romanticism", "Symbolism", "Synthetic_Cubism", "Ukiyo_e",
]
WIKIART_GENRES = ["abstract_painting", "cityscape", "genre_painting", "illustration", "landscape", "nude_painting",
                  "portrait", "religious_painting", "sketch_and_study", "still_life", "Unknown Genre"]
AFHQ = ["cat", "dog", "wild"]


@dataclass
class Snapshot:
    """A snapshot folder and, per key liquidgen will give each row, the sha256 of its image bytes
    and its label's name (None: unlabelled): the truth, known without liquidgen's readers."""

    root: Path
    truth: dict[str, tuple[str, str | None]] = field(default_factory=dict)


def paintings(n: int, offset: int = 0) -> list[tuple[bytes, str]]:
    """n real paintings (bytes, style) from the shipped 200, taken alternately from both styles."""
    styles = {s: sorted((PAINTINGS_MINI / s).iterdir()) for s in ("Baroque", "Rococo")}
    out = []
    for i in range(offset, offset + n):
        style = ("Baroque", "Rococo")[i % 2]
        out.append((styles[style][i // 2].read_bytes(), style))
    return out


def _schema(features):
    import pyarrow as pa

    schema = pa.schema(features.type)
    assert not schema.metadata  # no `huggingface` key: as datasets < 2.10 wrote it
    return schema


def _write_parquet(root: Path, features, rows: list[dict], files: int, pages: str | None = None) -> list[Path]:
    """`files` parquet files of one row group each under data/, named as push_to_hub names them.

    pyarrow checks its 1 MB data- and dictionary-page limits once per 1,024 rows written, so a
    2022 file of ~1,131 large images (huggan/wikiart) keeps its first 1,024 in the image
    column's dictionary page and the rest in plain pages of about two images. `pages` scales
    that layout down with the images: "dictionary" keeps the same share of each row group in the
    dictionary page; "small" is what a writer checking row by row gives, pages of two images
    from the start. None: pyarrow's defaults as they fall at this size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "data").mkdir(parents=True)
    paths, per = [], -(-len(rows) // files)
    for i in range(files):
        part = rows[i * per : (i + 1) * per]
        path = root / "data" / f"train-{i:05d}-of-{files:05d}.parquet"
        options = {}
        if pages:
            page = 2 * sum(len(r["image"]["bytes"]) for r in part) // len(part)
            batch = max(1, len(part) * 1024 // 1131) if pages == "dictionary" else 1
            options = {"data_page_size": page, "dictionary_pagesize_limit": page, "write_batch_size": batch}
        pq.write_table(pa.Table.from_pylist(part, schema=_schema(features)), path, row_group_size=len(part), **options)
        assert pq.ParquetFile(path).metadata.num_row_groups == 1
        paths.append(path)
    return paths


def _declare(root: Path, repo: str, features, how: str, rows: int) -> None:
    """The features where 2022 repos keep them: legacy dataset_infos.json, or README YAML."""
    if how == "infos":
        info = {"description": "", "citation": "", "homepage": "", "license": "", "features": features.to_dict(),
                "splits": {"train": {"name": "train", "num_bytes": 0, "num_examples": rows, "dataset_name": repo}},
                "download_size": 0, "dataset_size": 0}
        (root / "dataset_infos.json").write_text(json.dumps({repo.replace("/", "--"): info}))
        (root / "README.md").write_text(f"# {repo}\n\nA dataset card without YAML.\n")
    elif how == "yaml":
        import yaml

        card = {"dataset_info": {"features": features._to_yaml_list(),
                                 "splits": [{"name": "train", "num_bytes": 0, "num_examples": rows}]}}
        (root / "README.md").write_text("---\n" + yaml.safe_dump(card, sort_keys=False) + "---\n# " + repo + "\n")


def _truth(paths: list[Path], root: Path, label: str | None, names: list[str] | None) -> dict:
    import pyarrow.parquet as pq

    truth = {}
    for path in paths:
        for row, r in enumerate(pq.read_table(path).to_pylist()):
            name = names[r[label]] if label else None
            truth[f"{path.relative_to(root).as_posix()}/{row}"] = (hashlib.sha256(r["image"]["bytes"]).hexdigest(), name)
    return truth


def wikiart(root: Path, n: int = 24, files: int = 3, pages: str | None = None, images=None) -> Snapshot:
    """huggan/wikiart: image, artist, genre, style; rows shuffled; dataset_infos.json."""
    import datasets

    features = datasets.Features({
        "image": datasets.Image(), "artist": datasets.ClassLabel(names=[f"artist_{i}" for i in range(129)]),
        "genre": datasets.ClassLabel(names=WIKIART_GENRES), "style": datasets.ClassLabel(names=WIKIART_STYLES)})
    images = images or paintings(n)
    rng = random.Random(0)
    rows = [{"image": {"bytes": data, "path": None}, "artist": rng.randrange(129), "genre": rng.randrange(11),
             "style": WIKIART_STYLES.index(style)} for data, style in images]
    rng.shuffle(rows)
    paths = _write_parquet(root, features, rows, files, pages)
    _declare(root, "huggan/wikiart", features, "infos", len(rows))
    return Snapshot(root, _truth(paths, root, "style", WIKIART_STYLES))


def image_only(root: Path, repo: str, n: int, files: int, offset: int = 0) -> Snapshot:
    """huggan/flowers-102-categories (one file) or nielsr/CelebA-faces (three): image only."""
    import datasets

    features = datasets.Features({"image": datasets.Image()})
    rows = [{"image": {"bytes": data, "path": f"{i}.jpg"}} for i, (data, _) in enumerate(paintings(n, offset))]
    paths = _write_parquet(root, features, rows, files)
    _declare(root, repo, features, "infos", n)
    return Snapshot(root, _truth(paths, root, None, None))


def captioned(root: Path, repo: str, n: int, declare: str, offset: int = 0) -> Snapshot:
    """Norod78/cartoon-blip-captions (README YAML only) or reach-vb/pokemon-blip-captions
    (dataset_infos.json): image and text, one file."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    rows = [{"image": {"bytes": data, "path": None}, "text": f"a painting in the {style} style"}
            for data, style in paintings(n, offset)]
    paths = _write_parquet(root, features, rows, 1)
    _declare(root, repo, features, declare, n)
    return Snapshot(root, _truth(paths, root, None, None))


def afhq(root: Path, n: int = 24, files: int = 3, offset: int = 0) -> Snapshot:
    """huggan/AFHQv2: image, label [cat, dog, wild]; rows in class blocks; dataset_infos.json."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=AFHQ)})
    rows = [{"image": {"bytes": data, "path": None}, "label": 3 * i // n} for i, (data, _) in enumerate(paintings(n, offset))]
    paths = _write_parquet(root, features, rows, files)
    _declare(root, "huggan/AFHQv2", features, "infos", n)
    return Snapshot(root, _truth(paths, root, "label", AFHQ))


def anime(root: Path, n: int = 16, offset: int = 0) -> Snapshot:
    """huggan/anime-faces: loose images/N.png and a data.zip of the same files; a plain README."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    truth, archive = {}, io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for i, (data, _) in enumerate(paintings(n, offset)):
            buf = io.BytesIO()
            Image.open(io.BytesIO(data)).convert("RGB").resize((64, 64)).save(buf, "PNG")
            (root / "images" / f"{i}.png").write_bytes(buf.getvalue())
            zf.writestr(f"{i}.png", buf.getvalue())
            truth[f"images/{i}.png"] = (hashlib.sha256(buf.getvalue()).hexdigest(), None)
    (root / "data.zip").write_bytes(archive.getvalue())
    (root / "README.md").write_text("---\nlicense: cc0-1.0\n---\n# huggan/anime-faces\n\nLoose PNG files and an archive of them.\n")
    return Snapshot(root, truth)


def presets(data_dir: Path) -> dict[str, Snapshot]:
    """Every Hub preset's snapshot under `data_dir/<preset>` (LIQUIDGEN_DATA_DIR), ~16-24 rows
    each, from disjoint paintings where it matters little."""
    return {
        "paintings": wikiart(data_dir / "paintings"),
        "wikiart_stream": wikiart(data_dir / "wikiart_stream"),
        "flowers": image_only(data_dir / "flowers", "huggan/flowers-102-categories", 20, 1, offset=30),
        "cartoon": captioned(data_dir / "cartoon", "Norod78/cartoon-blip-captions", 12, "yaml", offset=60),
        "afhq": afhq(data_dir / "afhq", offset=80),
        "celeba": image_only(data_dir / "celeba", "nielsr/CelebA-faces", 18, 3, offset=110),
        "anime": anime(data_dir / "anime", offset=130),
        "pokemon": captioned(data_dir / "pokemon", "reach-vb/pokemon-blip-captions", 10, "infos", offset=150),
    }
