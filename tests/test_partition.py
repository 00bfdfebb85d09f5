"""Encode at the shapes users bring: Hugging Face datasets of 1, 2 and 3 parquet files (and one
file of many row groups), tars, folders; DataLoader workers 0-3; one and two processes. Every
image lands exactly once, under a key that names its own source image, and each input byte is
read once in total.

The reference for "its own image" is computed independently of liquidgen's readers: pyarrow reads
the parquet rows, tarfile the tars, and each image is pushed through the VAE alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TAEF2, make_subset
from liquidgen.cache.builder import records
from liquidgen.cache.store import verify_cache
from liquidgen.pipeline.encode import EncodeConfig, encode
from liquidgen.pipeline.images import Preprocess, load_image
from liquidgen.pipeline.vae import load_vae

from test_encode import read_all

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("hf1", "hf2", "hf3", "hf_rowgroups", "tar1", "tar2", "folder")
RES, SHARD = 64, 8


def write_parquet(images: list[Path], styles: list[str], folder: Path, files: int, row_group: int | None = None) -> Path:
    """A local Hugging Face dataset of `files` parquet files, written by `datasets` itself."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "style": datasets.ClassLabel(names=styles)})
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": p.read_bytes(), "path": p.name} for p in images],  # embedded, as on the Hub
         "style": [styles.index(p.parent.name) for p in images]}, features=features)
    folder.mkdir(parents=True)
    for i in range(files):
        part = ds.shard(files, i, contiguous=True)
        part.to_parquet(str(folder / f"train-{i:05d}-of-{files:05d}.parquet"), **({"batch_size": row_group} if row_group else {}))
    return folder


def write_tars(images: list[Path], styles: list[str], folder: Path, files: int) -> str:
    import webdataset as wds

    folder.mkdir(parents=True)
    per = -(-len(images) // files)
    for i in range(files):
        with wds.TarWriter(str(folder / f"images-{i}.tar")) as sink:
            for j, p in enumerate(images[i * per : (i + 1) * per]):
                sink.write({"__key__": f"{p.parent.name}_{j:03d}", "jpg": p.read_bytes(), "cls": str(styles.index(p.parent.name)).encode()})
    return str(folder / f"images-{{0..{files - 1}}}.tar")


def truth(kind: str, spec: str) -> dict[str, tuple[str, int]]:
    """key -> (sha256 of the image bytes, label), read without liquidgen."""
    out = {}
    if kind.startswith("hf"):
        import pyarrow.parquet as pq

        for f in sorted(Path(spec[3:]).glob("*.parquet")):
            table = pq.read_table(f).to_pylist()
            for row, r in enumerate(table):
                out[f"{f.name}/{row}"] = (hashlib.sha256(r["image"]["bytes"]).hexdigest(), r["style"])
    elif kind.startswith("tar"):
        for f in sorted(Path(spec).parent.glob("images-*.tar")):
            with tarfile.open(f) as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
            for name, data in members.items():
                if name.endswith(".jpg"):
                    stem = name[: -len(".jpg")]
                    out[f"{f.name}/{stem}"] = (hashlib.sha256(data).hexdigest(), int(members[stem + ".cls"]))
    else:
        styles = sorted(p.name for p in Path(spec).iterdir())
        for p in sorted(Path(spec).rglob("*.jpg")):
            out[p.relative_to(spec).as_posix()] = (hashlib.sha256(p.resolve().read_bytes()).hexdigest(), styles.index(p.parent.name))
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory, paintings40) -> dict:
    """The same 36 real paintings as every kind of source, with what each key must hold."""
    root = tmp_path_factory.mktemp("sources")
    images = sorted(paintings40.rglob("*.jpg"))[:36]
    styles = sorted({p.parent.name for p in images})
    specs = {
        "hf1": "hf:" + str(write_parquet(images, styles, root / "hf1", 1)),
        "hf2": "hf:" + str(write_parquet(images, styles, root / "hf2", 2)),
        "hf3": "hf:" + str(write_parquet(images, styles, root / "hf3", 3)),
        "hf_rowgroups": "hf:" + str(write_parquet(images, styles, root / "hf_rowgroups", 1, row_group=4)),
        "tar1": write_tars(images, styles, root / "tar1", 1),
        "tar2": write_tars(images, styles, root / "tar2", 2),
        "folder": str(make_subset(root / "folder", per_class=20)),
    }
    # keep the folder to the same 36 images
    for extra in sorted((root / "folder").rglob("*.jpg"))[36:]:
        extra.unlink()
    import pyarrow.parquet as pq

    assert pq.ParquetFile(next((root / "hf_rowgroups").glob("*.parquet"))).metadata.num_row_groups == 9
    expected = {kind: truth(kind, spec) for kind, spec in specs.items()}
    assert all(len(e) == 36 for e in expected.values())
    # Each image alone through the VAE: the latent every key must decode to.
    vae = load_vae(str(TAEF2))
    pre = Preprocess(resolution=RES)
    reference = {}
    for p in images:
        data = p.resolve().read_bytes()
        x = torch.from_numpy(load_image(data, pre))[None]
        reference[hashlib.sha256(data).hexdigest()] = vae.encode(x).numpy()[0]
    return {"specs": specs, "expected": expected, "reference": reference, "root": root}


def check_exactly_once(out: Path, expected: dict, reference: dict) -> None:
    m, latents, keys, labels = read_all(out)
    assert m.complete and verify_cache(out)[1] == []
    assert m.count == len(keys) == len(expected) == 36, (m.count, len(keys))
    assert sorted(keys) == sorted(expected), set(keys) ^ set(expected)
    assert m.sources[0].expected == 36 and m.sources[0].count == 36
    for latent, key, label in zip(latents, keys, labels):
        sha, style = expected[key]
        assert np.abs(latent - reference[sha]).max() < 0.02, key  # fp16 storage; other images differ by ~1
        assert m.label_names[label] == m.label_names[style] if m.label_names else label == style


@pytest.mark.parametrize("workers", [0, 1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_one_process_encodes_every_image_once(sources, tmp_path, kind, workers):
    out = tmp_path / "c"
    result = encode(EncodeConfig(sources["specs"][kind], str(out), vae=str(TAEF2), resolution=RES, shard_size=SHARD,
                                 batch_size=4, workers=workers, progress=False))
    assert result.encoded == 36 and result.skipped == 0
    check_exactly_once(out, sources["expected"][kind], sources["reference"])


TWO_RANKS = """
import json, sys
from liquidgen.pipeline.encode import EncodeConfig, encode
cells = json.load(open(sys.argv[1]))
for cell in cells:
    encode(EncodeConfig(cell["spec"], cell["out"], vae=cell["vae"], resolution=cell["res"], shard_size=cell["shard"],
                        batch_size=4, workers=cell["workers"], progress=False))
"""


def torchrun(*args: str, timeout: float = 900, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_two_processes_encode_every_image_once(sources, tmp_path):
    """The whole matrix at two ranks (torchrun, gloo), in one launch to keep CI affordable."""
    cells = [{"kind": k, "workers": w, "spec": sources["specs"][k], "out": str(tmp_path / f"{k}-w{w}"),
              "vae": str(TAEF2), "res": RES, "shard": SHARD} for k in KINDS for w in (0, 1, 2, 3)]
    (tmp_path / "cells.json").write_text(json.dumps(cells))
    (tmp_path / "run.py").write_text(TWO_RANKS)
    done = torchrun(str(tmp_path / "run.py"), str(tmp_path / "cells.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    for cell in cells:
        check_exactly_once(Path(cell["out"]), sources["expected"][cell["kind"]], sources["reference"])
        ranks = {s.rank for s in read_all(cell["out"])[0].shards}
        assert ranks == {0, 1}, (cell, ranks)  # hf1 is one row group, cut into pieces through the spool


def encode_args(spec: str, out: Path, workers: int, *extra: str) -> list[str]:
    return ["encode", spec, "--out", str(out), "--vae", str(TAEF2), "--resolution", str(RES),
            "--shard-size", str(SHARD), "--batch-size", "4", "--workers", str(workers), *extra]


@pytest.mark.parametrize("kind", ["hf2", "tar2"])
def test_two_ranks_two_workers_read_each_input_byte_once(sources, tmp_path, kind):
    """Counted: every byte of every file under the source folder that any rank or worker reads."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from count_reads import source_bytes, total

    spec = sources["specs"][kind]
    folder = Path(spec[3:] if kind.startswith("hf") else Path(spec).parent)
    log = tmp_path / "reads.log"
    done = torchrun(str(ROOT / "benchmarks" / "count_reads.py"), *encode_args(spec, tmp_path / "c", 2),
                    env_extra={"COUNT_READS_ROOT": str(folder), "COUNT_READS_LOG": str(log)})
    assert done.returncode == 0, done.stderr[-3000:]
    check_exactly_once(tmp_path / "c", sources["expected"][kind], sources["reference"])
    ratio = total(log) / source_bytes(folder)
    assert 0.5 < ratio <= 1.05, ratio


@pytest.mark.reliability('kill -9 of a two-process, two-worker encode', 'the rerun encodes every image exactly once')
def test_a_killed_two_rank_two_worker_encode_resumes_exactly_once(sources, tmp_path):
    spec, out = sources["specs"]["hf_rowgroups"], tmp_path / "c"
    args = encode_args(spec, out, 2, "--shard-size", "4", "--resolution", "128")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "liquidgen", *args],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and len(records(out)) < 2 and job.poll() is None:
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)  # launcher, both ranks and their workers at once
    job.wait()
    published = len(records(out))
    assert 2 <= published < 9, f"the kill should land mid-run ({published} of 9 shards)"
    done = torchrun("-m", "liquidgen", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    m, latents, keys, _ = read_all(out)
    assert m.count == 36 and sorted(keys) == sorted(sources["expected"]["hf_rowgroups"])
    for latent, key in zip(latents, keys):
        assert np.isfinite(latent).all()
