"""Every stage's configuration, in one torch-free module: each dataclass's fields are its stage's
options, their defaults are the CLI's defaults (cli.py reads them from here, so each is written
once), and `__post_init__` checks every value, raising one `LiquidgenError` naming the flag
before anything is read or written. The stages (`liquidgen.pipeline.*`) take these.

The vocabularies a cache is described in (stored dtypes, what is stored) live here too, so the
command line, the manifest and the shard files agree on one list."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import ClassVar

from liquidgen.checks import finite, one_of, whole
from liquidgen.errors import LiquidgenError

DTYPES = ("fp16", "bf16", "fp32", "uint8")  # how latents are stored
STORE_CHOICES = ("mean", "sample", "moments")  # what of a KL VAE's posterior is stored
FORMATS = ("zarr", "wds")  # Zarr v3 groups or WebDataset tars, one per shard
FLIPS = ("none", "both")  # both: the mirrored image is encoded too
DEVICES = ("auto", "cpu", "cuda")
REPORT_TO = ("none", "tensorboard", "wandb", "all")  # experiment trackers, through Accelerate
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")  # Accelerate's names; auto: bf16 where the GPU has it, else no
OBJECTIVES = ("flow", "eps")  # rectified flow (velocity) or DDPM noise prediction: liquidgen/objective.py
SAMPLERS = {"flow": ("euler", "heun"), "eps": ("ddim",)}  # what integrates each objective; the first is the default


def defaults(cls) -> SimpleNamespace:
    """A config's defaults by field name (`defaults(TrainConfig).lr`), for the CLI to show and
    pass on: the dataclass is where each default is written."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return SimpleNamespace(**out)


MAX_RESOLUTION = 8192  # a latent of 1024x1024x32: past this one image fills a batch's memory


@dataclass
class EncodeConfig:
    source: str
    out: str
    vae: str = "flux"
    vae_subfolder: str | None = None
    resolution: int = 256
    format: str = "zarr"  # zarr | wds
    dtype: str = "fp16"  # fp16 | bf16 | fp32 | uint8
    store: str = "mean"  # mean | sample | moments (KL VAEs)
    flip: str = "none"  # none | both
    limit: int | None = None  # drawn across the whole source, seeded by `seed` (sources.spread)
    image_column: str | None = None  # hf: sources; None: the first image column
    label_column: str | None = None  # hf: sources; None: the first ClassLabel, "none": unconditional
    batch_size: int = 32
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    shard_size: int = 1024
    data_dir: str | None = None
    device: str = "auto"
    vae_dtype: str = "auto"
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        one_of(self, format=FORMATS, dtype=DTYPES, store=STORE_CHOICES, flip=FLIPS)
        whole(self, batch_size=1, shard_size=1, resolution=1, workers=0, limit=1, seed=0)  # workers 0: in-process
        if self.resolution > MAX_RESOLUTION:
            raise LiquidgenError(f"--resolution {self.resolution} is above {MAX_RESOLUTION}: one image's latent would not "
                                 "fit a batch in memory")


@dataclass
class TrainConfig:
    cache: str | list[str]  # a cache folder or URL; several are mixed by `mix`
    out: str
    model: str = "small"  # a liquid size, or a diffusers baseline (dit-tiny, unet-small, ...)
    cfc: str | None = None  # override the size's CfC variant: paper | timegate | static
    relax: bool | None = None
    global_path: bool | None = None
    kernels: tuple[int, ...] | None = None
    grid: int | None = None  # the layout path's grid (cells per side); 0 or None: off
    head: str | None = None  # the output head: ada (default) | gn
    batch_size: int = 256
    steps: int = 100_000
    lr: float = 2e-4
    warmup: int | None = None  # None: min(1000, steps // 10), so a short run leaves warmup
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema: float = 0.999
    class_dropout: float = 0.1
    log_every: int = 50
    # None: about ten checkpoints and four preview grids a run, but none more often than every 100
    # (checkpoints) or 200 (previews) steps, so a short run does not spend its time on them
    ckpt_every: int | None = None  # None: max(min(2000, steps // 10), min(steps, 100))
    preview_every: int | None = None  # None: max(min(2000, steps // 4), min(steps, 200)); 0: never
    preview_n: int = 16
    preview_steps: int = 25
    cfg_scale: float = 2.0
    seed: int = 0
    resume: bool = False
    memory_limit_gb: float = 4.0  # caches larger than this (at their stored size) are streamed
    keep_shards: bool = True  # a remote cache's fetched shards stay under $LIQUIDGEN_HOME/caches
    cache_limit_gb: float | None = None  # ... at most this many GB of them (least recently used evicted)
    mix: list[float] | None = None  # weights of several caches (default: equal)
    compile: bool = False
    device: str = "auto"
    grad_accum: int = 1  # batches of --batch-size per optimizer step: the effective batch is their product
    report_to: str = "none"  # none | tensorboard | wandb | all (every installed one)
    val_fraction: float = 0.0  # a seeded part of the cache held out of training (cache/split.py)
    eval_every: int | None = None  # steps between held-out evaluations; None: every checkpoint when --val-fraction, 0: never
    eval_n: int = 0  # samples scored by the weight-free metrics at each evaluation; 0: the held-out loss only
    eval_steps: int = 25  # sampling steps of those samples
    threads: int | None = None  # torch's intra-op threads on the CPU; None: one per core not busy now (devices.free_cores)
    reg: str | None = None  # regularizers on the predicted clean latent: "tv=0.01,spectral=0.01" or a preset
    objective: str = "flow"  # flow (rectified flow, velocity) | eps (noise prediction, sampled with DDIM)
    mixed_precision: str = "auto"  # auto | no | bf16 (the CPU too) | fp16 (a GPU): the model's forward under autocast
    progress: bool = True

    def __post_init__(self) -> None:
        """Defaults that follow --steps, then every value checked, before anything is written."""
        if isinstance(self.steps, int) and self.steps >= 1:
            self.warmup = min(1000, self.steps // 10) if self.warmup is None else self.warmup
            if self.ckpt_every is None:
                self.ckpt_every = max(min(2000, self.steps // 10), min(self.steps, 100))
            if self.preview_every is None:
                self.preview_every = max(min(2000, self.steps // 4), min(self.steps, 200))
            if self.eval_every is None:
                self.eval_every = self.ckpt_every if self.val_fraction else 0
        whole(self, batch_size=1, steps=1, warmup=0, log_every=1, ckpt_every=1, preview_every=0, preview_n=1,
              preview_steps=1, seed=0, grid=0, threads=1, grad_accum=1, eval_every=0,
              eval_n=0, eval_steps=1)
        finite(self, lr=((">", 0), None), weight_decay=(0, None), grad_clip=((">", 0), None), ema=(0, 1),
               class_dropout=(0, 1), cfg_scale=(0, None), val_fraction=(0, 0.5), memory_limit_gb=(0, None), cache_limit_gb=((">", 0), None))
        one_of(self, cfc=("paper", "timegate", "static"), head=("ada", "gn"), device=DEVICES,
               report_to=REPORT_TO, objective=OBJECTIVES, mixed_precision=MIXED_PRECISION)
        if self.mixed_precision == "fp16" and self.device == "cpu":
            raise LiquidgenError("--mixed-precision fp16 needs a GPU (its loss scaling is CUDA's); use bf16 on the CPU")
        parse_reg(self.reg)  # refused here, before anything is written
        if (self.eval_every or self.eval_n) and not self.val_fraction:
            raise LiquidgenError("--eval-every and --eval-n score the held-out part of the cache: add --val-fraction, e.g. 0.05")
        if self.kernels is not None and (not self.kernels or any(k < 1 or k % 2 == 0 for k in self.kernels)):
            raise LiquidgenError(f"--kernels must be odd sizes of at least 1, e.g. 3,5,7 (got {self.kernels})")


# The regularizers `--reg` names (liquidgen/objective.py computes them); LiquidFlow's card sets
# TV 0.01, conservation of intensity 0.001, spectral 0.01, gradient 0.001.
REG_NAMES = ("tv", "spectral", "gradient", "intensity")
REG_PRESETS = {"liquidflow": {"tv": 0.01, "intensity": 0.001, "spectral": 0.01, "gradient": 0.001}}


def parse_reg(text: str | None) -> dict[str, float]:
    """`tv=0.01,spectral=0.01` or a preset name (`liquidflow`) → {name: weight}."""
    if not text:
        return {}
    if text in REG_PRESETS:
        return dict(REG_PRESETS[text])
    out = {}
    for part in text.split(","):
        name, eq, weight = (p.strip() for p in part.partition("="))
        if name not in REG_NAMES or not eq:
            raise LiquidgenError(f"--reg {text!r}: expected name=weight pairs of {', '.join(REG_NAMES)}, "
                                 f"or a preset ({', '.join(REG_PRESETS)})")
        try:
            value = float(weight)
        except ValueError:
            raise LiquidgenError(f"--reg {name}={weight!r}: the weight is not a number") from None
        if not 0 <= value < float("inf"):
            raise LiquidgenError(f"--reg {name}={weight}: the weight must be finite and >= 0")
        out[name] = value
    return out


@dataclass
class SampleConfig:
    run: str
    out: str
    n: int = 16
    steps: int = 50
    cfg_scale: float = 1.0
    guidance_interval: tuple[float, float] = (0.0, 0.75)
    class_name: str | None = None  # None: cycle through all classes
    sampler: str = "auto"  # auto (the run's objective's: euler for flow, ddim for eps) | euler | heun | ddim
    seed: int = 0
    batch_size: int = 64
    latents_only: bool = False
    checkpoint: str | None = None  # a step-XXXXXXX folder name; default the latest
    device: str = "auto"
    onnx: bool = False  # run names a folder from `export --onnx`: sample with onnxruntime
    threads: int | None = None  # torch's threads on the CPU; None: one per core not busy now (devices.free_cores)
    progress: bool = True
    FLAGS: ClassVar[dict] = {"cfg_scale": "--cfg", "class_name": "--class"}

    def __post_init__(self) -> None:
        whole(self, n=1, steps=1, seed=0, batch_size=1, threads=1)
        finite(self, cfg_scale=(0, None))
        one_of(self, sampler=("auto", *(s for names in SAMPLERS.values() for s in names)))
        lo, hi = self.guidance_interval
        if not (0 <= lo <= hi <= 1):
            raise LiquidgenError(f"--guidance-interval must be LO,HI with 0 <= LO <= HI <= 1 (got {lo},{hi})")


@dataclass
class DecodeConfig:
    source: str
    out: str
    limit: int | None = 16
    keys: list[str] | None = None
    vae: str | None = None  # needed for a bare .npy; overrides what the latents name
    batch_size: int = 16
    device: str = "auto"
    threads: int | None = None  # as SampleConfig's
    progress: bool = True

    def __post_init__(self) -> None:
        whole(self, limit=1, batch_size=1, threads=1)



@dataclass
class EvalConfig:
    run: str
    cache: str
    n: int = 2000
    steps: int = 50
    cfg_scale: float = 1.0
    seed: int = 0
    batch_size: int = 64
    out: str | None = None  # default: <run>/eval.json
    device: str = "auto"
    fid: bool = False  # Inception FID (torch-fidelity's network; its weights downloaded or --feature-weights)
    fd_dinov2: bool = False  # Fréchet distance in DINOv2 features (transformers; Hub id or a local folder)
    feature_weights: str | None = None  # the network's weights: an Inception state dict file or a DINOv2 folder
    threads: int | None = None  # as SampleConfig's
    progress: bool = True
    FLAGS: ClassVar[dict] = {"cfg_scale": "--cfg"}

    def __post_init__(self) -> None:
        whole(self, n=2, steps=1, seed=0, batch_size=1, threads=1)
        finite(self, cfg_scale=(0, None))
        if self.feature_weights and self.fid == self.fd_dinov2:
            raise LiquidgenError("--feature-weights names one network: use it with --fid or with --fd-dinov2, not "
                                 + ("both" if self.fid else "alone"))
        if self.feature_weights and not Path(self.feature_weights).exists() and self.fid:
            raise LiquidgenError(f"--feature-weights {self.feature_weights}: no such file")

