"""The seed designs of ../shared/reference as models of their own: `--model liquidflow-*`."""

from __future__ import annotations

import json

import pytest
import torch

from liquidgen.backbone.liquidflow import LIQUIDFLOW_SIZES, grid_orders
from liquidgen.backbone.models import build_model, model_spec
from liquidgen.backbone.ssd import ssd, sequential_scan
from liquidgen.backbone.unet import count_parameters
from liquidgen.pipeline.train import TrainConfig, train


@pytest.mark.parametrize("length,chunk", [(1, 4), (64, 64), (70, 16), (70, 128), (33, 1)])
def test_the_chunked_ssd_scan_equals_the_sequential_recurrence(length, chunk):
    gen = torch.Generator().manual_seed(length)
    b, h, p, n = 2, 3, 4, 5
    x, B, C = (torch.randn(b, length, h, d, generator=gen, dtype=torch.float64) for d in (p, n, n))
    a = -torch.rand(b, length, h, generator=gen, dtype=torch.float64) * 2  # decays exp(a) in (0.13, 1]
    for v in (x, a, B, C):
        v.requires_grad_(True)
    fast, slow = ssd(x, a, B, C, chunk), sequential_scan(x, a, B, C)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)
    grads = [torch.autograd.grad(out.square().sum(), (x, a, B, C)) for out in (fast, slow)]
    for g_fast, g_slow in zip(*grads):
        torch.testing.assert_close(g_fast, g_slow, rtol=1e-9, atol=1e-9)


def test_the_four_scan_orders_visit_every_cell_once_with_grid_neighbours_adjacent():
    orders = grid_orders(3, 5)
    assert orders.shape == (4, 15)
    for order in orders:
        assert sorted(order.tolist()) == list(range(15))
    rows, cols = orders[0].view(3, 5), orders[1]
    assert torch.equal(rows[0, 1] - rows[0, 0], torch.tensor(1))  # along a row: the next column
    assert cols[1] - cols[0] == 5  # along a column: the next row
    assert torch.equal(orders[2], orders[0].flip(0)) and torch.equal(orders[3], orders[1].flip(0))


def test_every_position_sees_every_other_through_the_reversed_scans():
    torch.manual_seed(0)
    model = build_model(model_spec("liquidflow-tiny", 4, 0, 6))
    torch.nn.init.normal_(model.out.weight)  # the zero-initialized head would hide every path
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    model(x, torch.tensor([0.5]))[0, :, 0, 0].sum().backward()  # the first cell in row order
    assert (x.grad[0].abs().sum(0) > 0).all()  # depends on every cell, the last ones included


# The card's table says ~2M / ~8M / ~30M; its widths, stages and blocks give these (4-ch latents).
COUNTS = {"liquidflow-tiny": 0.71e6, "liquidflow-small": 10.2e6, "liquidflow-base": 50.4e6}


@pytest.mark.parametrize("name", LIQUIDFLOW_SIZES)
def test_each_liquidflow_size_builds_on_the_meta_device_at_its_documented_count(name):
    with torch.device("meta"):
        model = build_model(model_spec(name, 4, 0, 16))
    assert count_parameters(model) == pytest.approx(COUNTS[name], rel=0.01)
    assert model.config.hidden == LIQUIDFLOW_SIZES[name]["hidden"]
    assert len(model.stages) == LIQUIDFLOW_SIZES[name]["stages"]
    assert all(len(s) == LIQUIDFLOW_SIZES[name]["blocks"] for s in model.stages)


def test_liquidflow_trains_resumes_bit_exactly_and_samples(cache40, tmp_path):
    from liquidgen.pipeline.sample import SampleConfig, sample

    def cfg(out, steps, **kw):
        return TrainConfig(cache=str(cache40), out=str(out), model="liquidflow-tiny", batch_size=8, steps=steps,
                           lr=1e-3, warmup=2, ckpt_every=4, log_every=1, preview_every=0, progress=False, **kw)

    whole = train(cfg(tmp_path / "whole", 8))
    train(cfg(tmp_path / "run", 4))
    resumed = train(cfg(tmp_path / "run", 8, resume=True))
    assert resumed.losses == whole.losses[4:]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["arch"] == "liquidflow"
    result = sample(SampleConfig(run=str(tmp_path / "run"), out=str(tmp_path / "s"), n=2, steps=2, cfg_scale=2.0))
    assert len(result.images) == 2
