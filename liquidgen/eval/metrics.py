"""Weight-free image-set metrics: nothing is downloaded, everything is seeded.

* `swd`: sliced Wasserstein distance between Laplacian-pyramid patch sets (the ProGAN recipe of
  Karras et al. 2018, reimplemented): per level, 7x7 patches normalized per channel, distances
  along random unit directions; reported ×1e3 per level and averaged.
* `frechet_distance` and `kid` (kernel distance) on features of `RandomFeatures`, a fixed, seeded random CNN
  (a stand-in for Inception that measures the same kind of statistics without its weights).
* `precision_recall`: k-NN manifold estimates (Kynkäänniemi et al. 2019) in the same features.

Images are float tensors (N, 3, H, W) in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16


def _blur(x: torch.Tensor) -> torch.Tensor:
    k = (_BINOMIAL[:, None] * _BINOMIAL[None, :]).to(x)[None, None].repeat(x.shape[1], 1, 1, 1)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k, groups=x.shape[1])


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass levels from fine to coarse, the last one the low-pass residual."""
    out = []
    for _ in range(levels - 1):
        low = _blur(x)[:, :, ::2, ::2]
        up = F.interpolate(low, scale_factor=2, mode="nearest")
        out.append(x - _blur(up))
        x = low
    out.append(x)
    return out


def _patches(level: torch.Tensor, per_image: int, gen: torch.Generator, size: int = 7) -> torch.Tensor:
    n, c, h, w = level.shape
    ys = torch.randint(0, h - size + 1, (n, per_image), generator=gen)
    xs = torch.randint(0, w - size + 1, (n, per_image), generator=gen)
    unfolded = level.unfold(2, size, 1).unfold(3, size, 1)  # n, c, h', w', size, size
    picked = unfolded[torch.arange(n)[:, None], :, ys, xs]  # n, per_image, c, size, size
    return picked.reshape(n * per_image, c * size * size)


def swd(real: torch.Tensor, fake: torch.Tensor, seed: int = 0, patches_per_image: int = 64,
        directions: int = 512, repeats: int = 4) -> dict[str, float]:
    """SWD ×1e3 per pyramid level (16 px and up) and their mean."""
    gen = torch.Generator().manual_seed(seed)
    levels = max(1, int(torch.log2(torch.tensor(real.shape[-1] / 16)).item()) + 1)
    result = {}
    for i, (a, b) in enumerate(zip(laplacian_pyramid(real.float(), levels), laplacian_pyramid(fake.float(), levels))):
        # the same patch positions for both sets (same seed): identical sets give exactly 0
        pa = _patches(a, patches_per_image, torch.Generator().manual_seed(seed + i))
        pb = _patches(b, patches_per_image, torch.Generator().manual_seed(seed + i))
        n = min(len(pa), len(pb))
        pa, pb = pa[:n], pb[:n]
        c = a.shape[1]
        # normalize per colour channel with the statistics of both sets together
        both = torch.cat([pa, pb]).view(2 * n, c, -1)
        mean, std = both.mean(dim=(0, 2), keepdim=True), both.std(dim=(0, 2), keepdim=True) + 1e-8
        pa = ((pa.view(n, c, -1) - mean) / std).view(n, -1)
        pb = ((pb.view(n, c, -1) - mean) / std).view(n, -1)
        dists = []
        for _ in range(repeats):
            d = torch.randn(pa.shape[1], directions, generator=gen)
            d = d / d.norm(dim=0, keepdim=True)
            pra, prb = (pa @ d).sort(dim=0).values, (pb @ d).sort(dim=0).values
            dists.append((pra - prb).abs().mean())
        result[f"swd_{real.shape[-1] >> i}px"] = float(torch.stack(dists).mean() * 1e3)
    result["swd_mean"] = sum(result.values()) / len(result)
    return result


class RandomFeatures(nn.Module):
    """A fixed, seeded random CNN: 4 strided conv+ReLU stages, global average and std pooling.
    Random conv features are a known weight-free proxy for perceptual statistics."""

    def __init__(self, seed: int = 0, width: int = 64):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(chans, chans[1:]))
        for conv in self.convs:
            fan_in = conv.in_channels * 9
            conv.weight.data = torch.randn(conv.weight.shape, generator=gen) * (2 / fan_in) ** 0.5
            conv.bias.data.zero_()
        self.requires_grad_(False).eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - 0.5) / 0.25
        feats = []
        for conv in self.convs:
            x = F.relu(conv(x))
            feats += [x.mean(dim=(2, 3)), x.std(dim=(2, 3))]
        return torch.cat(feats[-4:], dim=1)  # the two deepest stages: 1024 dims at width 64


def _sqrtm_trace(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """tr(sqrt(A·B)) for symmetric PSD A, B, via the eigenvalues of sqrt(A)·B·sqrt(A)."""
    w, v = torch.linalg.eigh(a)
    sa = (v * w.clamp(min=0).sqrt()) @ v.T
    return torch.linalg.eigvalsh(sa @ b @ sa).clamp(min=0).sqrt().sum()


def frechet_distance(fa: torch.Tensor, fb: torch.Tensor) -> float:
    fa, fb = fa.double(), fb.double()
    ma, mb = fa.mean(0), fb.mean(0)
    ca, cb = torch.cov(fa.T), torch.cov(fb.T)
    return float((ma - mb).square().sum() + ca.trace() + cb.trace() - 2 * _sqrtm_trace(ca, cb))


def kid(fa: torch.Tensor, fb: torch.Tensor, subsets: int = 50, subset_size: int = 100, seed: int = 0) -> float:
    """Kernel distance: the U-statistic MMD² (Gretton et al. 2012, pairs i ≠ j only) with the cubic
    polynomial kernel of KID, averaged over subsets, ×1e3. Subsets of both sets are drawn with the
    same seed, so identical sets score exactly 0."""
    gen_a, gen_b = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    fa, fb = fa.double(), fb.double()
    d, m = fa.shape[1], min(subset_size, len(fa), len(fb))
    off = 1 - torch.eye(m, dtype=torch.float64)
    vals = []
    for _ in range(subsets):
        x = fa[torch.randperm(len(fa), generator=gen_a)[:m]]
        y = fb[torch.randperm(len(fb), generator=gen_b)[:m]]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        vals.append(((kxx + kyy - kxy - kxy.T) * off).sum() / (m * (m - 1)))
    return float(torch.stack(vals).mean() * 1e3)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Share of fakes inside the real k-NN manifold (precision) and of reals inside the fake one."""
    def radii(x):
        d = torch.cdist(x, x)
        return d.kthvalue(k + 1, dim=1).values  # the 0th neighbour is the point itself

    real, fake = real.double(), fake.double()
    rr, rf = radii(real), radii(fake)
    precision = (torch.cdist(fake, real) <= rr[None, :]).any(dim=1).double().mean()
    recall = (torch.cdist(real, fake) <= rf[None, :]).any(dim=1).double().mean()
    return float(precision), float(recall)


def compare(real: torch.Tensor, fake: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """Every image metric for two image sets, with the same seeds each time."""
    net = RandomFeatures(seed)
    fr = torch.cat([net(c) for c in real.split(64)])
    ff = torch.cat([net(c) for c in fake.split(64)])
    precision, recall = precision_recall(fr, ff)
    return {**swd(real, fake, seed), "fd_random": frechet_distance(fr, ff), "kid_random": kid(fr, ff, seed=seed),
            "precision": precision, "recall": recall}
