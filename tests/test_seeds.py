"""The seed designs of ../shared/reference as models of their own: `--model liquidflow-*` and
`--model liquidgen-*`, each trained, resumed, sampled and exported through the same code as the others."""

from __future__ import annotations

import json

import pytest
import torch

from liquidgen.backbone.liquiddiffusion import LIQUIDDIFFUSION_SIZES, LiquidDiffusionBlock
from liquidgen.backbone.liquidflow import LIQUIDFLOW_SIZES, grid_orders
from liquidgen.backbone.liquidgen_seed import LIQUIDGEN_SIZES, ZigzagScan1D, zigzag_order
from liquidgen.backbone.models import build_model, model_spec
from liquidgen.backbone.ssd import ssd, sequential_scan
from liquidgen.backbone.unet import count_parameters
from liquidgen.pipeline.train import TrainConfig, train


# Every named size: (latent channels, latent side, parameters it builds, allowed deviation, what its
# card says). The cards' counts were never measured: LiquidGen gives no widths, so its widths were
# chosen for them; LiquidFlow's and LiquidDiffusion's widths and depths are the cards' own, and
# build other counts than the cards print (LiquidDiffusion's about twice theirs).
SIZES = {
    "liquiddiffusion-tiny": (4, 32, 17.05e6, 0.001, "~8M"), "liquiddiffusion-small": (4, 32, 51.96e6, 0.001, "~25M"),
    "liquiddiffusion-base": (4, 32, 116.67e6, 0.001, "~65M"), "liquiddiffusion-large": (4, 32, 221.77e6, 0.001, "~120M"),
    "liquidflow-tiny": (4, 16, 0.71e6, 0.01, "~2M"), "liquidflow-small": (4, 16, 10.2e6, 0.01, "~8M"),
    "liquidflow-base": (4, 16, 50.4e6, 0.01, "~30M"),
    "liquidgen-s": (16, 32, 55e6, 0.08, "~55M"), "liquidgen-b": (16, 32, 140e6, 0.08, "~140M"),
    "liquidgen-l": (16, 32, 280e6, 0.08, "~280M"),
}


@pytest.mark.parametrize("name", SIZES)
def test_each_seed_size_builds_on_the_meta_device_at_its_documented_count(name):
    channels, side, count, rel, _ = SIZES[name]
    with torch.device("meta"):
        model = build_model(model_spec(name, channels, 0, side))
    assert count_parameters(model) == pytest.approx(count, rel=rel)
    layout = {**LIQUIDDIFFUSION_SIZES, **LIQUIDFLOW_SIZES, **LIQUIDGEN_SIZES}[name]
    assert {k: getattr(model.cfg, k) for k in layout} == {k: tuple(v) if isinstance(v, list) else v
                                                             for k, v in layout.items()}


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


def test_the_uncapped_relaxation_drops_the_cfc_update_at_the_clean_end():
    """As published, α = exp(−softplus(ρ)·|t|) is 1 at t = 0: the CfC path contributes nothing
    there, which is what liquidgen's capped relaxation exists to avoid."""
    torch.manual_seed(0)
    blk = LiquidDiffusionBlock(8, 16)
    x, cond = torch.randn(2, 8, 4, 4), torch.randn(2, 16)
    with torch.no_grad():
        base = blk(x, torch.zeros(2), cond)
        blk.cfc.g[-1].weight.add_(1.0)  # change the CfC's output
        assert torch.equal(blk(x, torch.zeros(2), cond), base)  # no effect at t = 0
        assert not torch.equal(blk(x, torch.full((2,), 0.5), cond), base)


def test_the_zigzag_order_visits_every_cell_once_and_steps_only_to_neighbours():
    for h, w in [(1, 1), (3, 5), (4, 4), (5, 2)]:
        order = zigzag_order(h, w)
        assert sorted(order.tolist()) == list(range(h * w))
        rows, cols = order // w, order % w
        steps = (rows.diff().abs() + cols.diff().abs()).tolist()
        assert all(s == 1 for s in steps)  # each next cell shares an edge with the last


def test_the_zigzag_scan_is_a_convolution_along_that_order():
    torch.manual_seed(0)
    scan = ZigzagScan1D(3, kernel=3)
    torch.nn.init.eye_(scan.mix.weight.view(3, 3))  # pointwise mix: identity
    torch.nn.init.zeros_(scan.mix.bias)
    x = torch.randn(1, 3, 3, 4)
    out = scan(x)
    order, seq = zigzag_order(3, 4), x.flatten(2)[0]
    for pos in range(1, 11):  # an interior position along the order, by hand
        cell = order[pos]
        window = seq[:, order[pos - 1 : pos + 2]]
        expected = (scan.conv.weight[:, 0] * window).sum(1) + scan.conv.bias
        torch.testing.assert_close(out.flatten(2)[0, :, cell], expected)


@pytest.mark.parametrize("name", ["liquiddiffusion-tiny", "liquidflow-tiny", "liquidgen-s"])
def test_a_seed_family_trains_resumes_bit_exactly_and_samples(cache40, tmp_path, name):
    from liquidgen.pipeline.export import LiquidGenPipeline, export
    from liquidgen.pipeline.sample import SampleConfig, generate, sample

    def cfg(out, steps, **kw):
        return TrainConfig(cache=str(cache40), out=str(out), model=name, batch_size=8, steps=steps,
                           lr=3e-4, warmup=2, ckpt_every=4, log_every=1, preview_every=0, progress=False, **kw)

    whole = train(cfg(tmp_path / "whole", 8))
    assert sum(whole.losses[-3:]) < sum(whole.losses[:3])  # it learns
    train(cfg(tmp_path / "run", 4))
    resumed = train(cfg(tmp_path / "run", 8, resume=True))
    assert resumed.losses == whole.losses[4:]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["arch"] == name.split("-")[0]
    result = sample(SampleConfig(run=str(tmp_path / "run"), out=str(tmp_path / "s"), n=2, steps=2, cfg_scale=2.0))
    assert len(result.images) == 2
    # exported as a diffusers pipeline holding the model itself, it samples what `generate` does
    pipe = LiquidGenPipeline.from_pretrained(str(export(str(tmp_path / "run"), str(tmp_path / "pipe"))))
    assert type(pipe.unet).__name__ == {"liquiddiffusion": "LiquidDiffusion", "liquidflow": "LiquidFlow",
                                        "liquidgen": "LiquidGen"}[name.split("-")[0]]
    images = pipe(num_images=2, num_inference_steps=2, guidance_scale=2.0, seed=1, output_type="pt").images
    torch.testing.assert_close(images, generate(tmp_path / "run", n=2, steps=2, cfg_scale=2.0, seed=1), rtol=0, atol=1e-5)
