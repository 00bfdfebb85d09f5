"""Every kind of source through the same encode: presets read offline, Hugging Face `datasets`
(streamed), WebDataset tars of images."""

from __future__ import annotations


import numpy as np

from conftest import SHARED_PAINTINGS, needs_shared
from liquidgen.pipeline.encode import encode
from liquidgen.pipeline.hub import HFSource
from liquidgen.pipeline.sources import FolderSource, TarSource, open_source

from test_encode import config, read_all


def test_a_preset_reads_its_local_copy_offline(paintings40, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "paintings").symlink_to(paintings40, target_is_directory=True)
    source = open_source("paintings", data_dir=str(tmp_path / "data"))
    assert isinstance(source, FolderSource) and source.describe(1024).expected == 40
    assert source.label_names == ["Baroque", "Rococo"]
    keys = [item.key for piece in source.pieces(1024) for item in source.read(piece)]
    assert len(set(keys)) == 40 and keys == sorted(keys)


@needs_shared
def test_the_paintings_preset_reads_the_readme_s_offline_copy_in_shared():
    source = open_source("paintings", data_dir=str(SHARED_PAINTINGS.parent))  # LIQUIDGEN_DATA_DIR=../shared/data
    assert isinstance(source, FolderSource) and source.describe(1024).expected == 2000
    assert source.label_names == ["Baroque", "Impressionism", "Pointillism", "Rococo", "Ukiyo_e"]


def test_paintings_mini_ships_with_the_package(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LIQUIDGEN_DATA_DIR", raising=False)
    source = open_source("paintings_mini")
    described = source.describe(1024)
    # named by the preset, not by where the package happens to be installed
    assert isinstance(source, FolderSource) and described.id == "paintings_mini"
    assert described.expected == 200 and source.label_names == ["Baroque", "Rococo"]
    assert not any("baumeister" in f for f in source.files)  # the one work not in the public domain


def test_an_image_folder_dataset_is_cut_by_file_like_a_folder(paintings12, tmp_path):
    """`hf:` on an imagefolder dataset (loose files, as huggan/anime-faces on the Hub) reads the
    files themselves, by name: the same keys, labels and latents as the folder source."""
    source = open_source(f"hf:{paintings12}")
    assert isinstance(source, HFSource) and source.layout == "files"
    assert source.label_names == ["Baroque", "Rococo"] and source.describe(4).expected == 12
    result = encode(config(f"hf:{paintings12}", tmp_path / "c"))
    m, latents, keys, labels = read_all(tmp_path / "c")
    assert result.total == 12 and m.sources[0].kind == "hf"
    encode(config(paintings12, tmp_path / "f"))
    _, folder_latents, folder_keys, folder_labels = read_all(tmp_path / "f")
    assert keys == folder_keys and labels.tolist() == folder_labels.tolist()
    assert np.array_equal(latents, folder_latents)


def test_webdataset_tars_of_images(paintings12, tmp_path):
    import webdataset as wds

    files = sorted(paintings12.rglob("*.jpg"))
    for part in (0, 1):
        with wds.TarWriter(str(tmp_path / f"images-{part}.tar")) as sink:
            for i, f in enumerate(files[part * 6 : part * 6 + 6]):
                sink.write({"__key__": f"img{i:03d}", "jpg": f.read_bytes(), "cls": str(part).encode()})
    pattern = str(tmp_path / "images-{0..1}.tar")
    assert isinstance(open_source(pattern), TarSource)
    result = encode(config(pattern, tmp_path / "c", limit=10))
    _, latents, keys, labels = read_all(tmp_path / "c")
    assert result.total == 10 and latents.shape[0] == 10
    # --limit draws from both tars, a prefix of each (seeded: which one gives all six)
    per_tar = {t: sorted(k.split("/")[1] for k in keys if k.startswith(t)) for t in ("images-0.tar", "images-1.tar")}
    assert sorted(map(len, per_tar.values())) == [4, 6]
    assert all(names == [f"img{i:03d}" for i in range(len(names))] for names in per_tar.values())
    assert sorted(set(labels.tolist())) == [0, 1]
