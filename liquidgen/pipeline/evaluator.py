"""The evaluator that `liquidgen eval` and `train --eval-every` share: the training loss of a
model (its objective's: flow or eps) at fixed t-bin centres on fixed noise, and the weight-free sample metrics of
`liquidgen.eval.metrics` on n samples against n real latents decoded by the same VAE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from liquidgen.cache.latents import LatentSpace
from liquidgen.eval.metrics import compare
from liquidgen.eval.standard import METRICS, features, frechet
from liquidgen.objective import objective_for
from liquidgen.pipeline.sampler import generate_raw, resolve_sampler
from liquidgen.pipeline.vae import decode_latents

BINS = 5
GUIDANCE_INTERVAL = (0.0, 0.75)


def quantized(images: torch.Tensor) -> torch.Tensor:
    """Images as PNGs would hold them: both sides are scored at 8 bits."""
    return (images * 255 + 0.5).to(torch.uint8).float() / 255


@torch.no_grad()
def loss_per_bin(model, x0: torch.Tensor, labels, bins: int = BINS, seed: int = 0, device="cpu",
                 objective: str | None = None) -> dict[str, float]:
    """The objective's loss (flow unless named; no regularizers) at fixed t-bin centres with
    fixed noise (seeded), so two evaluations of one model agree exactly and of two models differ
    only by the models; `labels` None for an unconditional run."""
    loss = objective_for(objective)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=gen)
    out = {}
    for b in range(bins):
        t_val = (b + 0.5) / bins
        losses = []
        for i in range(0, len(x0), 64):
            xs, ns = x0[i : i + 64], noise[i : i + 64]
            t = torch.full((len(xs),), t_val)
            xt = loss.noisy(xs, ns, t)
            v = model(xt.to(device), t.to(device), None if labels is None else labels[i : i + 64].to(device))
            losses.append(F.mse_loss(v.float().cpu(), loss.target(xs, ns, t), reduction="sum") / xs[0].numel())
        out[f"t={t_val:.1f}"] = float(sum(losses) / len(x0))
    return out


class Evaluator:
    """Scores a model against fixed real latents `x0` (normalized) and their `labels` (None:
    unconditional). The real images are decoded once, on the first sample evaluation, or given."""

    def __init__(self, x0: torch.Tensor, labels: torch.Tensor | None, lat: dict, n: int = 0, steps: int = 25,
                 cfg_scale: float = 1.0, seed: int = 0, batch_size: int = 64, real_images: torch.Tensor | None = None,
                 standard: dict[str, torch.nn.Module] | None = None, progress: bool = False):
        self.x0, self.labels, self.lat, self.n = x0, labels, lat, min(n, len(x0))
        self.progress = progress  # bars for sampling and decoding (`liquidgen eval`; not inside training's)
        self.steps, self.cfg_scale, self.seed, self.batch_size = steps, cfg_scale, seed, batch_size
        self.real = real_images
        self.standard = standard or {}  # {"fid": network, "fd_dinov2": network} from liquidgen.eval.standard
        self._real_features: dict[str, torch.Tensor] = {}

    def settings(self) -> dict:
        """What the numbers were computed with, for config.json and eval.json."""
        objective = self.lat.get("objective") or "flow"
        return {"flow_loss": f"{objective} MSE at t = {', '.join(f'{(b + 0.5) / BINS:.1f}' for b in range(BINS))}, "
                             "fixed seeded noise",
                "latents": len(self.x0), "n": self.n,
                "metrics": "swd (Laplacian-pyramid patches), fd_random and kid_random (RandomFeatures, a seeded "
                           "random CNN: no downloaded weights), precision, recall" if self.n else None,
                **({"standard": {m: METRICS[m] for m in self.standard}} if self.standard else {}),
                "sampler": resolve_sampler(objective, "auto"), "steps": self.steps, "cfg_scale": self.cfg_scale,
                "guidance_interval": list(GUIDANCE_INTERVAL), "seed": self.seed}

    def flow_loss(self, model, device) -> dict[str, float]:
        return loss_per_bin(model, self.x0, self.labels, seed=self.seed, device=device, objective=self.lat.get("objective"))

    def sample_metrics(self, model, device) -> tuple[dict[str, float], int]:
        """(metrics, model calls per image) for `n` samples, with the real side's class mix."""
        from liquidgen.pipeline.sampler import pick_labels

        labels = self.labels[: self.n] if self.labels is not None else pick_labels([], self.n, None)
        if self.real is None:
            raw = LatentSpace.from_run(self.lat).to_vae(self.x0[: self.n])
            self.real = quantized(decode_latents(raw, self.lat["vae"], device, progress=self.progress))
        gen = torch.Generator().manual_seed(self.seed + 1)
        raw, calls = generate_raw(model, self.lat, labels, self.n, self.steps, self.cfg_scale, GUIDANCE_INTERVAL,
                                  "auto", gen, device, self.batch_size, progress=self.progress)
        fake = quantized(decode_latents(raw, self.lat["vae"], device, progress=self.progress))
        self.fake = fake  # the images just scored, for a caller to look at
        metrics = compare(self.real[: self.n], fake, self.seed)
        for name, net in self.standard.items():
            if name not in self._real_features:  # the real side is scored once per evaluator
                self._real_features[name] = features(net, self.real[: self.n], device)
            metrics[name] = frechet(self._real_features[name], features(net, fake, device))
        return metrics, calls

    def __call__(self, model, device) -> dict[str, float]:
        """Every number, flat, as training logs them: val_loss (the mean over bins), val_loss/t=..,
        and with n the sample metrics."""
        bins = self.flow_loss(model, device)
        out = {"val_loss": sum(bins.values()) / len(bins), **{f"val_loss/{k}": v for k, v in bins.items()}}
        if self.n:
            out.update(self.sample_metrics(model, device)[0])
        return out
