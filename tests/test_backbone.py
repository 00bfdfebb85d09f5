"""The liquid backbone: shapes, conditioning, the CfC variants and the relaxation guard."""

from __future__ import annotations

import pytest
import torch

from liquidgen.backbone.blocks import Relaxation
from liquidgen.backbone.unet import SIZES, LiquidUNet, LiquidUNetConfig, count_parameters, model_config


@pytest.mark.parametrize("channels, size", [(4, 32), (16, 12), (32, 16), (32, 7)])
def test_any_channel_count_and_size(channels, size):
    model = LiquidUNet(model_config("nano", in_channels=channels, num_classes=3))
    x = torch.randn(2, channels, size, size)
    out = model(x, torch.rand(2), torch.tensor([0, 2]))
    assert out.shape == x.shape


def test_a_new_network_predicts_zero_and_every_variant_gets_gradients():
    for cfc in ("paper", "timegate", "static"):
        model = LiquidUNet(model_config("nano", cfc=cfc, num_classes=2))
        x = torch.randn(3, 32, 8, 8)
        out = model(x, torch.rand(3), torch.tensor([0, 1, 2]))  # 2 = the null class
        assert torch.count_nonzero(out) == 0  # zero-initialised head: training starts stable
        torch.nn.functional.mse_loss(out, x).backward()
        assert model.out.weight.grad.abs().sum() > 0


def test_relaxation_never_collapses_to_the_identity_at_the_clean_end():
    relax = Relaxation(8)
    x, out = torch.zeros(2, 8, 4, 4), torch.ones(2, 8, 4, 4)
    with torch.no_grad():
        relax.rho.fill_(10.0)  # the seeds' α = exp(-λt) → 1 as t → 0
    y = relax(x, out, torch.zeros(2))
    assert y.min() >= 0.49  # at least 1 − σ(cap) = 0.5 of the update gets through


def test_named_sizes_span_the_reference_designs():
    with torch.device("meta"):
        params = {name: count_parameters(LiquidUNet(cfg)) for name, cfg in SIZES.items()}
    assert params["nano"] < 1e6 < params["tiny"] < 12e6 < params["small"] < 40e6 < params["base"] < 100e6
    assert 120e6 < params["large"] < 180e6


def test_class_conditioning_changes_the_output():
    torch.manual_seed(0)
    model = LiquidUNet(LiquidUNetConfig(channels=(16, 32), blocks=(1, 1), mid_blocks=1, num_classes=4, in_channels=4))
    for p in model.parameters():  # move off the zero init so conditioning is visible
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(1, 4, 8, 8), torch.full((1,), 0.5)
    assert not torch.allclose(model(x, t, torch.tensor([0])), model(x, t, torch.tensor([1])))


@pytest.mark.parametrize("size", [16, 12, 7])
def test_the_layout_path_mixes_every_position_at_any_size(size):
    from liquidgen.backbone.blocks import SpatialMix

    mix = SpatialMix(8, kernels=(3,), global_path=False, grid=4)
    plain = SpatialMix(8, kernels=(3,), global_path=False)
    plain.load_state_dict(mix.state_dict(), strict=False)
    x = torch.randn(1, 8, size, size, requires_grad=True)
    assert torch.allclose(mix(x), plain(x))  # zero-initialised: a new layout path changes nothing
    with torch.no_grad():
        mix.cells.weight.normal_()  # as if trained: a corner now feeds the far corner
    mix(x)[0, :, -1, -1].sum().backward()
    assert x.grad[0, :, 0, 0].abs().sum() > 0  # a 3x3 kernel alone could not reach it
    model = LiquidUNet(model_config("nano", grid=4, num_classes=2))
    assert model(torch.randn(2, 32, size, size), torch.rand(2), torch.tensor([0, 1])).shape == (2, 32, size, size)


def test_runs_saved_before_the_conditioned_head_load_with_the_old_head():
    from liquidgen.backbone.models import build_model

    old = LiquidUNet(model_config("nano", head="gn", num_classes=2))
    spec = old.cfg.to_dict()
    del spec["head"]  # what a run's config.json held before the head was an option
    model = build_model(spec)
    assert model.cfg.head == "gn"
    model.load_state_dict(old.state_dict())  # strict: the same weights fit
    assert model_config("nano").head == "ada"  # new runs get the conditioned head


def test_the_conditioned_head_lets_the_output_depend_on_t_directly():
    model = LiquidUNet(model_config("nano"))
    torch.nn.init.normal_(model.out.weight, std=0.1)
    torch.nn.init.normal_(model.out_mod.weight, std=0.1)
    x = torch.randn(1, 32, 8, 8)
    with torch.no_grad():
        near_data, near_noise = model(x, torch.tensor([0.1])), model(x, torch.tensor([0.9]))
    assert not torch.allclose(near_data, near_noise)


def test_the_conditioned_skip_passes_x_t_straight_to_the_output():
    model = LiquidUNet(model_config("nano", num_classes=2))
    dim = model.cfg.channels[0]
    with torch.no_grad():
        model.out_mod.bias[2 * dim :] = 0.5  # the skip's share; every other weight of a new model is zero
        x = torch.randn(2, 32, 8, 8)
        assert torch.allclose(model(x, torch.rand(2), torch.tensor([0, 1])), 0.5 * x)


def test_an_unknown_head_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown head 'foo': ada or gn"):
        model_config("nano", head="foo")
