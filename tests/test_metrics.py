"""The weight-free metrics behave like metrics: ~0 for identical sets, growing as real
paintings are progressively blurred or noised, and deterministic for a seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import PAINTINGS
from liquidgen.eval.metrics import compare, laplacian_pyramid
from liquidgen.pipeline.images import Preprocess, load_image


@pytest.fixture(scope="module")
def paintings() -> torch.Tensor:
    files = sorted(PAINTINGS.rglob("*.jpg"))[::4][:48]  # spread over both styles
    pre = Preprocess(resolution=64)
    return torch.from_numpy(np.stack([load_image(str(f), pre) for f in files])).float() / 255


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(3 * sigma) + 1
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = k / k.sum()
    k2 = (k[:, None] * k[None, :])[None, None].repeat(3, 1, 1, 1)
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (radius,) * 4, mode="reflect"), k2, groups=3)


def test_the_pyramid_reconstructs_its_image(paintings):
    levels = laplacian_pyramid(paintings[:2], 3)
    assert [l.shape[-1] for l in levels] == [64, 32, 16]


def test_identical_sets_score_about_zero(paintings):
    m = compare(paintings, paintings)
    assert m["swd_mean"] < 1e-6 and abs(m["fd_random"]) < 1e-4
    assert m["precision"] == 1.0 and m["recall"] == 1.0
    assert m["kid_random"] == 0.0


@pytest.mark.parametrize("degrade", ["blur", "noise"])
def test_metrics_grow_as_images_degrade(paintings, degrade):
    gen = torch.Generator().manual_seed(1)
    steps = [0.5, 1.0, 2.0] if degrade == "blur" else [0.03, 0.08, 0.2]
    scores = []
    for s in steps:
        if degrade == "blur":
            worse = blur(paintings, s)
        else:
            worse = (paintings + s * torch.randn(paintings.shape, generator=gen)).clamp(0, 1)
        scores.append(compare(paintings, worse))
    for name in ("swd_mean", "fd_random", "kid_random"):
        values = [m[name] for m in scores]
        assert values == sorted(values) and values[0] > 0, (name, values)


def test_metrics_are_deterministic_for_a_seed(paintings):
    a, b = paintings[:24], paintings[24:]
    assert compare(a, b, seed=3) == compare(a, b, seed=3)
    assert compare(a, b, seed=3)["swd_mean"] != compare(a, b, seed=4)["swd_mean"]
