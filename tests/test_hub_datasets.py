"""The Hub's datasets as they really are, read from local snapshots laid out as the Hub holds them
(tests/hub_snapshots.py): parquet from 2022 without feature metadata, features in
dataset_infos.json or README YAML, one row group per file, class-blocked rows, loose PNG files.

Every preset encodes its snapshot exactly once, with its labels, at DataLoader workers 0 and 2 and
at two ranks; the truth (each key's image bytes and label name) is read with pyarrow, and each
image's reference latent comes from pushing it through the VAE alone.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import hub_snapshots as hub
from conftest import TAEF2, run_cli
from liquidgen.errors import LiquidgenError
from liquidgen.pipeline.encode import EncodeConfig, encode
from liquidgen.pipeline.hub import HFSource, repo_path
from liquidgen.pipeline.images import Preprocess, load_image
from liquidgen.pipeline.sources import PRESETS, open_source
from liquidgen.pipeline.vae import load_vae

from test_encode import read_all
from test_partition import torchrun

ROOT = Path(__file__).resolve().parents[1]
RES, SHARD = 64, 4
HUB_PRESETS = [name for name, p in PRESETS.items() if p.folder is None]


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory) -> tuple[Path, dict[str, hub.Snapshot]]:
    data_dir = tmp_path_factory.mktemp("hub")
    return data_dir, hub.presets(data_dir)


@pytest.fixture(scope="module")
def reference():
    """sha256 of an image's bytes -> its latent, the image alone through the VAE."""
    vae, pre, memo = load_vae(str(TAEF2)), Preprocess(resolution=RES), {}

    def latent(data: bytes) -> np.ndarray:
        sha = hashlib.sha256(data).hexdigest()
        if sha not in memo:
            memo[sha] = vae.encode(torch.from_numpy(load_image(data, pre))[None]).numpy()[0]
        return memo[sha]

    return latent


def image_bytes(snapshot: hub.Snapshot) -> dict[str, bytes]:
    """sha256 -> bytes of every image in a snapshot, read without liquidgen."""
    import pyarrow.parquet as pq

    out = {}
    for path in snapshot.root.rglob("*.parquet"):
        for r in pq.read_table(path, columns=["image"]).to_pylist():
            out[hashlib.sha256(r["image"]["bytes"]).hexdigest()] = r["image"]["bytes"]
    for path in snapshot.root.rglob("*.png"):
        out[hashlib.sha256(path.read_bytes()).hexdigest()] = path.read_bytes()
    return out


def check_exactly_once(out: Path, snapshot: hub.Snapshot, reference, expect_id: str) -> None:
    m, latents, keys, labels = read_all(out)
    assert m.complete and m.sources[0].id == expect_id
    assert sorted(keys) == sorted(snapshot.truth), set(keys) ^ set(snapshot.truth)
    assert m.count == len(snapshot.truth) == m.sources[0].expected
    images = image_bytes(snapshot)
    for latent, key, label in zip(latents, keys, labels):
        sha, name = snapshot.truth[key]
        assert (m.label_names[label] if name is not None else label) == (name if name is not None else -1), key
        assert np.abs(latent - reference(images[sha])).max() < 0.02, key  # fp16 storage


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("preset", HUB_PRESETS)
def test_every_preset_encodes_its_hub_snapshot_exactly_once(snapshots, reference, tmp_path, preset, workers):
    data_dir, snaps = snapshots
    out = tmp_path / "c"
    encode(EncodeConfig(preset, str(out), vae=str(TAEF2), resolution=RES, shard_size=SHARD, batch_size=4,
                        workers=workers, data_dir=str(data_dir), progress=False))
    check_exactly_once(out, snaps[preset], reference, PRESETS[preset].hf_id)
    assert not (out / ".scratch").exists()  # the spool of a big row group is gone once the cache is done


TWO_RANKS = """
import json, sys
from liquidgen.pipeline.encode import EncodeConfig, encode
for cell in json.load(open(sys.argv[1])):
    encode(EncodeConfig(cell["preset"], cell["out"], vae=cell["vae"], resolution=cell["res"], shard_size=cell["shard"],
                        batch_size=4, workers=2, data_dir=cell["data_dir"], progress=False))
"""


def test_every_preset_encodes_its_hub_snapshot_at_two_ranks(snapshots, reference, tmp_path):
    """Two ranks (torchrun, gloo) of two workers each, every preset in one launch."""
    data_dir, snaps = snapshots
    cells = [{"preset": p, "out": str(tmp_path / p), "vae": str(TAEF2), "res": RES, "shard": SHARD,
              "data_dir": str(data_dir)} for p in HUB_PRESETS]
    (tmp_path / "cells.json").write_text(json.dumps(cells))
    (tmp_path / "run.py").write_text(TWO_RANKS)
    done = torchrun(str(tmp_path / "run.py"), str(tmp_path / "cells.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    for cell in cells:
        check_exactly_once(Path(cell["out"]), snaps[cell["preset"]], reference, PRESETS[cell["preset"]].hf_id)
        # flowers is one file of one row group: its pieces still went to both ranks
        assert {s.rank for s in read_all(cell["out"])[0].shards} == {0, 1}, cell["preset"]


@pytest.mark.parametrize("declared", ["infos", "yaml", None])
def test_features_are_what_the_dataset_declares_not_what_the_footer_says(tmp_path, declared):
    """2022 parquet: struct<bytes, path> and int64 in the footer; the labels' names only in
    dataset_infos.json or the README YAML. With neither, the struct is taken as images, said so."""
    snap = hub.wikiart(tmp_path / "w", n=8, files=1)
    if declared != "infos":
        (snap.root / "dataset_infos.json").unlink()
        if declared == "yaml":
            import datasets

            features = datasets.Features({"image": datasets.Image(), "artist": datasets.ClassLabel(num_classes=129),
                                          "genre": datasets.ClassLabel(names=hub.WIKIART_GENRES),
                                          "style": datasets.ClassLabel(names=hub.WIKIART_STYLES)})
            hub._declare(snap.root, "huggan/wikiart", features, "yaml", 8)
    source = open_source(f"hf:{snap.root}", label_column="style")
    assert isinstance(source, HFSource) and source.image_column == "image" and source.label_column == "style"
    if declared:
        assert source.label_names == hub.WIKIART_STYLES and source.notes == []
        assert open_source(f"hf:{snap.root}").label_column == "artist"  # the first ClassLabel, as before
    else:
        assert source.label_names is None  # class ids without names: int64 and nothing declared
        assert "struct<bytes, path>" in source.notes[0] and "taking column 'image'" in source.notes[0]
        assert open_source(f"hf:{snap.root}").label_column is None  # no ClassLabel to take
    items = [it for p in source.pieces(4) for it in source.read(p)]
    assert [hub.WIKIART_STYLES[it.label] for it in items] == [snap.truth[it.key][1] for it in items]
    assert open_source(f"hf:{snap.root}", label_column="none").label_column is None


def test_columns_that_cannot_serve_are_refused_in_one_line(tmp_path, paintings12):
    snap = hub.captioned(tmp_path / "cartoon", "Norod78/cartoon-blip-captions", 4, "yaml")
    for flag, value, words in (("--image-column", "text", "holds string, not images"),
                               ("--label-column", "text", "not class labels: use --label-column none"),
                               ("--label-column", "style", "has no column 'style'")):
        done = run_cli("encode", f"hf:{snap.root}", "--out", str(tmp_path / "c"), "--vae", str(TAEF2), flag, value)
        assert done.returncode == 1 and words in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    done = run_cli("encode", str(paintings12), "--out", str(tmp_path / "c"), "--label-column", "none")
    assert done.returncode == 1 and "choose columns of a Hugging Face dataset" in done.stderr
    assert not (tmp_path / "c").exists()


def test_limit_draws_every_class_from_class_blocked_rows(tmp_path):
    """huggan/AFHQv2 as the Hub holds it: 13 files of one row group, rows in class blocks (cat,
    dog, wild); the README's `--limit 5000` is about a third of it. The first rows would be all
    cats; --limit takes evenly spaced prefixes, so every class comes, at any seed."""
    snap = hub.afhq(tmp_path / "afhq", n=117, files=13)
    first = [snap.truth[f"data/train-{i:05d}-of-00013.parquet/{r}"][1] for i in range(4) for r in range(9)]
    assert set(first) == {"cat"}  # what the first files would give
    for seed in range(4):
        source = open_source(f"hf:{snap.root}", limit=40, seed=seed)
        items = [it for p in source.pieces(8) for it in source.read(p)]
        assert len({it.key for it in items}) == 40
        assert {source.label_names[it.label] for it in items} == {"cat", "dog", "wild"}, seed
        # each file gives a prefix of its row group: nothing before a drawn row is read
        for file in {it.key.rsplit("/", 1)[0] for it in items}:
            rows = sorted(int(it.key.rsplit("/", 1)[1]) for it in items if it.key.startswith(file))
            assert rows == list(range(len(rows)))
    out = tmp_path / "c"
    encode(EncodeConfig(f"hf:{snap.root}", str(out), vae=str(TAEF2), resolution=RES, shard_size=SHARD,
                        batch_size=4, workers=0, limit=40, seed=3, progress=False))
    m, _, keys, labels = read_all(out)
    assert m.count == 40 and m.sources[0].limit == 40 and m.sources[0].limit_seed == 3
    assert all(snap.truth[k][1] == m.label_names[label] for k, label in zip(keys, labels))


def test_limit_on_a_class_sorted_folder_spreads_and_the_seed_places_it(paintings40):
    """A folder lists its class subfolders in order (20 Baroque, then 20 Rococo): --limit draws
    runs of 16 or more spaced through it."""
    for seed in (0, 1, 2):
        source = open_source(str(paintings40), limit=20, seed=seed)
        items = [it for p in source.pieces(4) for it in source.read(p)]
        assert len(items) == len({it.key for it in items}) == 20
        assert {it.label for it in items} == {0, 1}, seed
    draws = {tuple(it.key for p in open_source(str(paintings40), limit=20, seed=s).pieces(4)
                   for it in open_source(str(paintings40), limit=20, seed=s).read(p)) for s in range(4)}
    assert len(draws) > 1  # the seed moves the draw


def count_reads(tmp_path: Path, root: Path, *args: str, ranks: int = 1) -> int:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from count_reads import total

    log = tmp_path / "reads.log"
    env = {"COUNT_READS_ROOT": str(root), "COUNT_READS_LOG": str(log)}
    if ranks == 1:
        import os

        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "count_reads.py"), *args], capture_output=True,
                              text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore", **env})
    else:
        done = torchrun(str(ROOT / "benchmarks" / "count_reads.py"), *args, env_extra=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return total(log)


@pytest.mark.parametrize("pages,files,limit", [("dictionary", 10, 120), ("small", 2, 160)])
def test_a_limited_encode_of_big_row_groups_reads_about_what_it_uses(tmp_path, pages, files, limit):
    """huggan/wikiart's files are one row group each. Where the writer kept most of a group's
    images in its dictionary page (pyarrow's defaults), a prefix costs the whole group, so
    --limit draws whole groups spread over the files; with small pages it reads a prefix of
    every file through a small buffer. Either way it reads about what it encodes."""
    snap = hub.wikiart(tmp_path / "w", n=200, files=files, pages=pages)
    out = tmp_path / "c"
    read = count_reads(tmp_path, snap.root, "encode", f"hf:{snap.root}", "--out", str(out), "--vae", str(TAEF2),
                       "--resolution", str(RES), "--limit", str(limit), "--workers", "2", "--shard-size", "32")
    m, _, keys, _ = read_all(out)
    assert m.count == limit
    by_sha = image_bytes(snap)
    used = sum(len(by_sha[snap.truth[k][0]]) for k in keys)
    places = {k.rsplit("/", 1)[0] for k in keys}
    assert len(places) == (6 if pages == "dictionary" else 2)  # 6 whole files of 20 rows, or 80 of each 100
    assert read / used <= 1.2, (read, used)


def test_one_row_group_feeds_every_rank_and_worker_reading_it_once(tmp_path, reference):
    """huggan/flowers-102-categories is one file of one row group: it is cut into pieces that
    both ranks and their workers decode, while its bytes are read once (counted)."""
    snap = hub.image_only(tmp_path / "flowers", "huggan/flowers-102-categories", 40, 1)
    out = tmp_path / "c"
    read = count_reads(tmp_path, snap.root, "encode", f"hf:{snap.root}", "--out", str(out), "--vae", str(TAEF2),
                       "--resolution", str(RES), "--shard-size", "8", "--workers", "2", "--batch-size", "4", ranks=2)
    check_exactly_once(out, snap, reference, str(snap.root.resolve()))
    m = read_all(out)[0]
    assert len(m.shards) == 5 and {s.rank for s in m.shards} == {0, 1}
    source = sum(p.stat().st_size for p in snap.root.rglob("*") if p.is_file())
    assert read / source <= 1.05, (read, source)


def test_a_dataset_that_needs_a_loading_script_is_refused_in_one_line(tmp_path):
    (tmp_path / "scripted").mkdir()
    (tmp_path / "scripted" / "scripted.py").write_text("import datasets\n")
    with pytest.raises(LiquidgenError, match=r"loading script \(scripted.py\).*refs/convert/parquet"):
        open_source(f"hf:{tmp_path / 'scripted'}")


def test_keys_name_the_file_within_the_repo_for_the_hub_and_a_snapshot(tmp_path):
    files = ["hf://datasets/huggan/wikiart@5f2e9c1/data/train-00000-of-00072.parquet",
             "hf://datasets/mnist@main/mnist/train-00000-of-00001.parquet"]
    assert [repo_path(f, None) for f in files] == ["data/train-00000-of-00072.parquet", "mnist/train-00000-of-00001.parquet"]
    assert repo_path(str(tmp_path / "data" / "x.parquet"), str(tmp_path)) == "data/x.parquet"


def test_a_killed_spool_is_redone_and_a_finished_one_reused(tmp_path, reference):
    """The spool of a big row group is published piece by piece under a name; a rerun after a
    kill finds what was published and reads the rest once more."""
    snap = hub.image_only(tmp_path / "flowers", "huggan/flowers-102-categories", 20, 1)
    source = open_source(f"hf:{snap.root}")
    pieces = source.pieces(4)
    assert len(pieces) == 5 and all(p.where[5] for p in pieces)
    scratch = tmp_path / "scratch"
    source.prepare(pieces[:2], scratch, rank=0, world=1)
    assert len(list(scratch.glob("*.parquet"))) == 2 and not list(scratch.glob("*.tmp*"))
    source.prepare(pieces, scratch, rank=0, world=1)
    assert len(list(scratch.glob("*.parquet"))) == 5
    keys = [it.key for p in pieces for it in source.read(p)]
    assert sorted(keys) == sorted(snap.truth)


def test_a_plain_folder_with_a_readme_is_not_taken_for_a_snapshot(tmp_path):
    """paintings_mini carries a README.md of credits, without a dataset card's YAML: under a
    preset's name in LIQUIDGEN_DATA_DIR it is still a folder of class subfolders."""
    from liquidgen.embedded import PAINTINGS_MINI
    from liquidgen.pipeline.sources import FolderSource

    assert (PAINTINGS_MINI / "README.md").is_file()
    (tmp_path / "paintings").symlink_to(PAINTINGS_MINI, target_is_directory=True)
    source = open_source("paintings", data_dir=str(tmp_path))
    assert isinstance(source, FolderSource) and source.label_names == ["Baroque", "Rococo"]
