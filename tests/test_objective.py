"""The objective the training loop calls, and LiquidFlow's regularizers on the predicted clean
latent (`--reg`)."""

from __future__ import annotations

import pytest
import torch

from liquidgen.errors import LiquidgenError
from liquidgen.objective import REGULARIZERS, RectifiedFlow, parse_reg
from liquidgen.pipeline.train import TrainConfig, train


@pytest.mark.parametrize("name", REGULARIZERS)
def test_each_regularizer_is_zero_on_a_flat_latent_and_grows_with_noise(name):
    reg = REGULARIZERS[name]
    gen = torch.Generator().manual_seed(0)
    flat = torch.full((4, 32, 8, 8), 0.7)
    assert reg(flat, flat).item() == pytest.approx(0, abs=1e-10)
    noise = torch.randn(flat.shape, generator=gen)
    values = [reg(flat + s * noise, flat).item() for s in (0.1, 0.3, 1.0)]
    assert 0 < values[0] < values[1] < values[2]


def test_reg_takes_pairs_or_the_liquidflow_preset_and_refuses_the_rest():
    assert parse_reg("tv=0.01, spectral=0.5") == {"tv": 0.01, "spectral": 0.5}
    assert parse_reg("liquidflow") == {"tv": 0.01, "intensity": 0.001, "spectral": 0.01, "gradient": 0.001}
    for bad, says in [("tvv=1", "expected name=weight"), ("tv", "expected name=weight"), ("tv=x", "not a number"),
                      ("tv=-1", "finite and >= 0"), ("tv=inf", "finite and >= 0")]:
        with pytest.raises(LiquidgenError, match=says):
            parse_reg(bad)
    with pytest.raises(LiquidgenError, match="--reg"):
        TrainConfig(cache="c", out="o", reg="bogus=1")


def test_the_regularized_loss_is_the_flow_loss_plus_the_weighted_terms():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(4, 4, 3, padding=1)
    x0, noise, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.rand(3)
    call = lambda xt, t, y: model(xt)  # noqa: E731 - the interface every backbone has
    plain = RectifiedFlow()(call, x0, noise, t, None)
    weights = {"tv": 0.5, "spectral": 2.0}
    xt = RectifiedFlow.noisy(x0, noise, t)
    x0_hat = xt - t[:, None, None, None] * model(xt)
    expected = plain + sum(w * REGULARIZERS[k](x0_hat, x0) for k, w in weights.items())
    torch.testing.assert_close(RectifiedFlow(weights)(call, x0, noise, t, None), expected)


def test_training_with_the_liquidflow_preset_adds_to_the_loss_and_is_recorded(cache40, tmp_path):
    import json

    def run(out, reg):
        return train(TrainConfig(cache=str(cache40), out=str(out), model="nano", batch_size=8, steps=2,
                                 ckpt_every=2, preview_every=0, log_every=1, progress=False, reg=reg))

    plain, regularized = run(tmp_path / "plain", None), run(tmp_path / "reg", "liquidflow")
    assert regularized.losses[0] > plain.losses[0]  # the same first batch and weights, plus terms ≥ 0
    assert json.loads((tmp_path / "reg" / "config.json").read_text())["train"]["reg"] == "liquidflow"
