"""The objectives the training loop calls (rectified flow, noise prediction with DDIM), and
LiquidFlow's regularizers on the predicted clean latent (`--reg`)."""

from __future__ import annotations

import pytest
import torch

from liquidgen.errors import LiquidgenError
from liquidgen.objective import REGULARIZERS, EpsilonPrediction, RectifiedFlow, parse_reg
from liquidgen.pipeline.sampler import sample_latents
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
    xt = RectifiedFlow().noisy(x0, noise, t)
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


def _oracle(objective, c: float):
    """The exact prediction for data that is the constant latent `c`: what a perfectly trained
    model outputs, so a sampler that reads t and the schedule as training wrote them lands on c."""
    def predict(xt, t, labels):
        if isinstance(objective, RectifiedFlow):  # x_t = (1 - t)c + tε, v = ε - c
            return (xt - c) / t[:, None, None, None]
        a, s = objective._alpha_sigma(t)  # x_t = a·c + s·ε
        return (xt - a * c) / s
    return predict


@pytest.mark.parametrize("objective,sampler", [(RectifiedFlow(), "euler"), (RectifiedFlow(), "heun"),
                                               (EpsilonPrediction(), "ddim")])
def test_each_sampler_integrates_an_exact_model_of_its_objective_to_the_data(objective, sampler):
    gen = torch.Generator().manual_seed(0)
    z, calls = sample_latents(_oracle(objective, 0.5), 4, (4, 8, 8), steps=10, sampler=sampler, generator=gen)
    torch.testing.assert_close(z, torch.full_like(z, 0.5), atol=1e-4, rtol=0)
    assert calls == (19 if sampler == "heun" else 10)


def test_a_sampler_of_the_other_objective_misses_the_data():
    """The check above can fail: DDIM driven by a velocity oracle does not land on the data."""
    z, _ = sample_latents(_oracle(RectifiedFlow(), 0.5), 4, (4, 8, 8), steps=10, sampler="ddim",
                          generator=torch.Generator().manual_seed(0))
    assert (z - 0.5).abs().max() > 0.1


def test_noise_prediction_uses_the_schedule_ddim_samples_with():
    eps = EpsilonPrediction()
    torch.testing.assert_close(eps.alphas_cumprod, EpsilonPrediction.scheduler().alphas_cumprod.float())
    gen = torch.Generator().manual_seed(0)
    t = eps.draw_t(10_000, gen, "cpu")
    k = (t * 1000).round()
    torch.testing.assert_close(t * 1000, k)  # whole timesteps ...
    assert k.unique().tolist() == list(range(1000))  # ... every one of them
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([0.0, 0.999])
    xt = eps.noisy(x0, noise, t)
    a = eps.alphas_cumprod[[0, 999]][:, None, None, None]
    torch.testing.assert_close(xt, a.sqrt() * x0 + (1 - a).sqrt() * noise)
    torch.testing.assert_close(eps.clean(xt, noise, t)[0], x0[0])  # the exact prediction gives x0 back


def test_an_eps_run_trains_samples_with_ddim_and_refuses_a_flow_sampler(cache40, tmp_path):
    import json

    from liquidgen.pipeline.sample import SampleConfig, sample

    run = tmp_path / "eps"
    result = train(TrainConfig(cache=str(cache40), out=str(run), model="nano", batch_size=8, steps=30, lr=2e-3,
                               warmup=3, ckpt_every=30, preview_every=0, log_every=1, progress=False,
                               objective="eps", reg="liquidflow"))
    assert sum(result.losses[-5:]) < sum(result.losses[:5])  # it learns
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["objective"] == config["latents"]["objective"] == "eps"
    out = sample(SampleConfig(run=str(run), out=str(tmp_path / "s"), n=4, steps=5, device="cpu"))
    assert len(out.images) == 4
    assert json.loads((out.out / "settings.json").read_text())["sampler"] == "auto"
    with pytest.raises(LiquidgenError, match="trained with --objective eps, which samples with ddim"):
        sample(SampleConfig(run=str(run), out=str(tmp_path / "e"), n=2, steps=2, sampler="euler", device="cpu"))
    with pytest.raises(LiquidgenError, match="--objective eps"):
        train(TrainConfig(cache=str(cache40), out=str(run), model="nano", batch_size=8, steps=40, resume=True,
                          progress=False, preview_every=0))
