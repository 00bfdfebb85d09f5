"""`liquidgen eval --fid / --fd-dinov2`: the published networks, loaded the way a user's weights
are, here built from a local state dict (no Hub access) and checked against an independent
Fréchet computation from the same features; missing weights and extras are one line."""

from __future__ import annotations

import importlib.util
import json
import pickle
import sys
from unittest import mock

import pytest
import torch
from safetensors.torch import save_file

from conftest import run_cli
from liquidgen.errors import LiquidgenError
from liquidgen.eval import standard
from liquidgen.eval.metrics import frechet_distance
from liquidgen.pipeline.evaluate import EvalConfig
from liquidgen.pipeline.train import TrainConfig, train


def needs_torch_fidelity() -> None:
    # find_spec, not importorskip: importing its package may fail on torchvision, which liquidgen avoids
    if importlib.util.find_spec("torch_fidelity") is None:
        pytest.skip("torch-fidelity is not installed (make install adds it)")


@pytest.fixture(scope="module")
def run(cache40, tmp_path_factory):
    out = tmp_path_factory.mktemp("std") / "run"
    train(TrainConfig(cache=str(cache40), out=str(out), model="nano", batch_size=8, steps=4, ckpt_every=4,
                      preview_every=0, progress=False))
    return out


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """torch-fidelity's FID Inception at random init (its real weights need a download), saved as
    a user's safetensors file: the same architecture, keys and loading path as the real ones."""
    needs_torch_fidelity()
    module = standard._torch_fidelity_module("feature_extractor_inceptionv3")
    torch.manual_seed(0)
    with mock.patch.object(module, "load_state_dict_from_url", return_value={}), \
            mock.patch.object(module.FeatureExtractorInceptionV3, "load_state_dict"):
        net = module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("inception") / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def dinov2_folder(tmp_path_factory):
    """A two-layer DINOv2 saved with save_pretrained: loaded exactly as a Hub id is."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, image_size=224, patch_size=14)
    folder = tmp_path_factory.mktemp("dinov2") / "dinov2-small-random"
    transformers.Dinov2Model(config).save_pretrained(folder)
    return folder


def test_eval_fid_equals_an_independent_frechet_distance_of_the_same_features(run, cache40, inception_file, dinov2_folder, tmp_path):
    from liquidgen.pipeline.checkpoint import load_run
    from liquidgen.pipeline.evaluate import _real_images
    from liquidgen.pipeline.evaluator import Evaluator

    model, config, _ = load_run(str(run))
    x0, labels, real = _real_images(str(cache40), 16, 0, "cpu")
    nets = {"fid": standard.load_network("fid", str(inception_file), "cpu"),
            "fd_dinov2": standard.load_network("fd_dinov2", str(dinov2_folder), "cpu")}
    ev = Evaluator(x0, labels, config["latents"], n=16, steps=2, real_images=real, standard=nets)
    metrics, _ = ev.sample_metrics(model, "cpu")
    for name, net in nets.items():
        u8 = lambda x: (x * 255 + 0.5).to(torch.uint8)  # noqa: E731 - the 8 bits a PNG holds
        fr, ff = net(u8(ev.real)).double(), net(u8(ev.fake)).double()
        assert fr.shape[1] == (2048 if name == "fid" else 32)
        assert metrics[name] > 0
        # TTUR's eigvals(Σ₁Σ₂) against liquidgen's own eigh of √Σ₁ Σ₂ √Σ₁
        assert metrics[name] == pytest.approx(frechet_distance(fr, ff), rel=1e-6, abs=1e-9)
    # through the command: the figure and what it was computed with land in eval.json
    proc = run_cli("eval", "--run", str(run), "--cache", str(cache40), "--n", "16", "--steps", "2", "--fid",
                   "--feature-weights", str(inception_file))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((run / "eval.json").read_text())
    assert result["metrics"]["fid"] == pytest.approx(metrics["fid"], rel=1e-6)
    assert "Inception" in result["settings"]["standard"]["fid"] and result["config"]["fid"] is True
    # and the exported model's card shows the score with what it was computed with
    from liquidgen.pipeline.export import export

    card = (export(str(run), str(tmp_path / "exported")) / "README.md").read_text()
    assert f"| fid | {result['metrics']['fid']:.4f} |" in card and '"steps": 2' in card and "Inception" in card


@pytest.mark.reliability("eval --fid offline, with no Inception weights on disk",
                         "refused in one line naming the download URL and --feature-weights; no other network stands in")
def test_fid_without_weights_offline_is_one_line_saying_how_to_get_them(run, cache40, tmp_path):
    needs_torch_fidelity()
    proc = run_cli("eval", "--run", str(run), "--cache", str(cache40), "--n", "8", "--fid",
                   "--out", str(tmp_path / "e.json"), env={"TORCH_HOME": str(tmp_path / "empty-hub")})
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--feature-weights" in lines[0] and standard.INCEPTION_URL in lines[0]
    assert not (tmp_path / "e.json").exists()  # refused before any sampling


@pytest.mark.reliability("eval --fd-dinov2 with no Hub access and no local folder",
                         "refused in one line saying how to save the weights for --feature-weights")
def test_fd_dinov2_without_the_hub_is_one_line(run, cache40):
    pytest.importorskip("transformers")
    proc = run_cli("eval", "--run", str(run), "--cache", str(cache40), "--n", "8", "--fd-dinov2",
                   env={"HF_HUB_OFFLINE": "1"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "save_pretrained" in lines[0]


@pytest.mark.parametrize("module,metric", [("torch_fidelity", "fid"), ("transformers", "fd_dinov2")])
@pytest.mark.reliability("eval --fid or --fd-dinov2 without the metrics extra", "one line naming liquidgen[metrics]")
def test_a_missing_extra_is_named(monkeypatch, module, metric, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(LiquidgenError, match=r"liquidgen\[metrics\]"):
        standard.load_network(metric, str(tmp_path / "w.safetensors") if metric == "fid" else None, "cpu")


@pytest.mark.reliability("--feature-weights naming a pickle that runs code, or another network's weights",
                         "refused in one line; the pickle is never run")
def test_feature_weights_are_never_unpickled(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('ran')" % str(tmp_path / "ran"),))

    bad = tmp_path / "evil.pth"
    bad.write_bytes(pickle.dumps({"w": Boom()}))
    with pytest.raises(LiquidgenError, match="not a state dict of tensors"):
        standard.inception_weights(str(bad))
    assert not (tmp_path / "ran").exists()
    wrong = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(wrong))
    needs_torch_fidelity()
    with pytest.raises(LiquidgenError, match="not torch-fidelity's Inception weights"):
        standard.load_network("fid", str(wrong), "cpu")


def test_feature_weights_need_exactly_one_metric(tmp_path):
    with pytest.raises(LiquidgenError, match="not alone"):
        EvalConfig(run="r", cache="c", feature_weights=str(tmp_path))
    with pytest.raises(LiquidgenError, match="not both"):
        EvalConfig(run="r", cache="c", fid=True, fd_dinov2=True, feature_weights=str(tmp_path))
