"""The `liquidgen` command line: parse, call a stage, report. No logic lives here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from liquidgen.config import DecodeConfig, EncodeConfig, EvalConfig, SampleConfig, TrainConfig, defaults
from liquidgen.errors import LiquidgenError, printable

app = typer.Typer(
    help="Train small attention-free liquid (CfC) image generators on cached VAE latents.\n\n"
    "Stage 1 `encode` turns images into a latent cache once; later stages read only the cache.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help text is plain: `pip install 'liquidgen[onnx]'` keeps its brackets
)
cache_app = typer.Typer(help="Latent caches: inspect, verify, benchmark the loader, upgrade, push and pull.",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(cache_app, name="cache")
# each option's default is its config field's (liquidgen/config.py), written there once
ENCODE, TRAIN, SAMPLE, DECODE, EVAL = map(defaults, (EncodeConfig, TrainConfig, SampleConfig, DecodeConfig, EvalConfig))
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


# options several commands share, written once
PROGRESS = typer.Option(True, "--progress/--no-progress", help="Progress bars with an ETA on stderr.")
THREADS = typer.Option(None, "--threads", help="Torch's threads for CPU work (default: one per core that other "
                       "processes leave free now; torch's own, one per core, is several times slower on a busy machine).")


def _print_version(value: bool) -> None:
    if value:
        from liquidgen import __version__

        console.print(f"liquidgen {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print liquidgen's version and exit.")) -> None:
    """Train small attention-free liquid (CfC) image generators on cached VAE latents.

    Stage 1 `encode` turns images into a latent cache once; later stages read only the cache."""


@app.command()
def encode(
    source: str = typer.Argument(..., help="A preset (paintings, flowers, afhq, ...; see `liquidgen presets`), "
                                 "hf:ORG/NAME[@REVISION][:split] or hf:PATH (a local snapshot of a Hub dataset), "
                                 "a folder of images (subfolders = classes), or image .tar files."),
    out: Path = typer.Option(..., "--out", "-o", help="Cache folder to create, resume or append to."),
    vae: str = typer.Option(ENCODE.vae, help="VAE preset (flux, flux2, sd, sdxl, taesd, taesdxl, taef1, taef2), a diffusers "
                            "Hub id or folder, or a folder with a TAESD-family *_encoder.pth/*_decoder.pth pair."),
    vae_subfolder: Optional[str] = typer.Option(ENCODE.vae_subfolder, help="Subfolder of a diffusers repo holding the VAE (e.g. vae)."),
    resolution: int = typer.Option(ENCODE.resolution, "--resolution", "-r", help="Square size in pixels (a multiple of the VAE downscale)."),
    format: str = typer.Option(ENCODE.format, "--format", "-f", help="zarr (random access, one machine) or wds (WebDataset tars, streaming/sharing)."),
    dtype: str = typer.Option(ENCODE.dtype, help="Stored dtype: fp16, bf16, fp32 or uint8 (per-channel affine, see docs)."),
    store: str = typer.Option(ENCODE.store, help="For KL VAEs: mean, sample, or moments (mean+logvar, sampled at load time)."),
    flip: str = typer.Option(ENCODE.flip, help="none, or both: also encode the horizontally flipped image."),
    limit: Optional[int] = typer.Option(ENCODE.limit, help="Encode N images drawn across the whole source (evenly spaced runs "
                                        "from every file and row group, placed by --seed), not its first files."),
    image_column: Optional[str] = typer.Option(ENCODE.image_column, help="hf: sources: the column of images "
                                               "(default: the first image column; presets set theirs)."),
    label_column: Optional[str] = typer.Option(ENCODE.label_column, help="hf: sources: the ClassLabel column to condition on, "
                                               "or none (default: the first ClassLabel; presets set theirs)."),
    batch_size: int = typer.Option(ENCODE.batch_size, "--batch-size", "-b", help="Images per VAE forward."),
    workers: int = typer.Option(ENCODE.workers, help="DataLoader workers decoding images."),
    shard_size: int = typer.Option(ENCODE.shard_size, help="Latents per shard (the unit of resume and of sharing)."),
    data_dir: Optional[str] = typer.Option(ENCODE.data_dir, envvar="LIQUIDGEN_DATA_DIR", help="Folder with local copies of presets (offline)."),
    device: str = typer.Option(ENCODE.device, help="auto, cpu, cuda, cuda:1, ..."),
    vae_dtype: str = typer.Option(ENCODE.vae_dtype, help="VAE compute dtype: auto (fp32 on CPU, bf16/fp16 on GPU), fp32, fp16, bf16."),
    seed: int = typer.Option(ENCODE.seed, help="Seed for --store sample and for where --limit draws."),
    progress: bool = PROGRESS,
) -> None:
    """Encode images through a frozen VAE into a sharded latent cache (resumable: rerun to finish)."""
    from liquidgen.pipeline.encode import encode as run

    cfg = EncodeConfig(
        source=source, out=str(out), vae=vae, vae_subfolder=vae_subfolder, resolution=resolution,
        format=format, dtype=dtype, store=store, flip=flip, limit=limit, image_column=image_column,
        label_column=label_column, batch_size=batch_size,
        workers=workers, shard_size=shard_size, data_dir=data_dir, device=device,
        vae_dtype=vae_dtype, seed=seed, progress=progress,
    )
    result = run(cfg)
    if result.noop:
        console.print(f"{out}: already complete ({result.total} latents); nothing to do")
    else:
        rate = (result.encoded + result.skipped) / max(result.seconds, 1e-9)
        sources = len(result.manifest.sources)
        holds = f"{result.total} latents" + (f" from {sources} sources" if sources > 1 else "")
        console.print(
            f"{out}: {'appended' if sources > 1 else 'encoded'} {result.encoded}"
            + (f" from {source}" if sources > 1 else "")
            + f", skipped {result.skipped} in {result.seconds:.1f}s ({rate:.1f} img/s); the cache holds {holds}"
        )


def _weights(mix: str | None, caches: int) -> list[float] | None:
    if mix is None:
        return None
    try:
        weights = [float(w) for w in mix.split(",")]
    except ValueError:
        raise LiquidgenError(f"--mix {mix!r} is not a comma-separated list of numbers") from None
    if len(weights) != caches or not all(w > 0 for w in weights):
        raise LiquidgenError(f"--mix needs {caches} positive weights, one per --cache; got {mix!r}")
    return weights


@app.command()
def train(
    cache: list[str] = typer.Option(..., "--cache", "-c", help="Latent cache folder, or a shared cache URL (streamed: shards fetched and sha256-checked as training reaches them). "
                                    "Give it several times to mix caches of one latent space (see --mix)."),
    mix: Optional[str] = typer.Option(TRAIN.mix, help="Weights of several --cache, e.g. 0.7,0.3: each step's batch comes from one cache with these probabilities (default: equal)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoints, metrics, previews."),
    model: str = typer.Option(TRAIN.model, "--model", "-m", help="liquidgen's U-Net: nano, tiny (~8M), small (~30M), base (~69M), large (~154M); "
                              "a seed design by its name: liquiddiffusion-tiny/small/base/large, liquidflow-tiny/small/base (CfC + Mamba-2 SSD scans), "
                              "liquidgen-s/b/l (zigzag scans, ~55M/140M/280M); or a "
                              "diffusers baseline to compare with: dit-tiny, dit-small, unet-tiny, unet-small."),
    batch_size: int = typer.Option(TRAIN.batch_size, "--batch-size", "-b", help="Global batch size of one forward (split across processes); "
                                   "an optimizer step takes --grad-accum of them."),
    steps: int = typer.Option(TRAIN.steps, help="Total optimizer steps."),
    lr: float = typer.Option(TRAIN.lr, help="Peak learning rate (AdamW, linear warmup)."),
    warmup: Optional[int] = typer.Option(TRAIN.warmup, help="Warmup steps (default: min(1000, steps/10))."),
    resume: bool = typer.Option(TRAIN.resume, "--resume", help="Continue from the run's latest checkpoint."),
    cfc: Optional[str] = typer.Option(TRAIN.cfc, help="CfC variant: paper (default), timegate or static."),
    relax: Optional[bool] = typer.Option(TRAIN.relax, "--relax/--no-relax", help="Liquid relaxation residuals (default on)."),
    global_path: Optional[bool] = typer.Option(TRAIN.global_path, "--global-path/--no-global-path", help="Pooled channel gate (default on)."),
    kernels: Optional[str] = typer.Option(TRAIN.kernels, help="Depthwise kernel sizes, e.g. 3,5,7 (default) or 3."),
    grid: Optional[int] = typer.Option(TRAIN.grid, help="Layout path: mix all positions through a pooled GxG grid (e.g. 4; default off)."),
    head: Optional[str] = typer.Option(TRAIN.head, help="Output head: ada (conditioned on t, default) or gn (the classic U-Net head)."),
    ema: float = typer.Option(TRAIN.ema, help="EMA decay (with warm-up)."),
    log_every: int = typer.Option(TRAIN.log_every, help="Steps between metrics records."),
    ckpt_every: Optional[int] = typer.Option(TRAIN.ckpt_every, help="Steps between checkpoints (default: steps/10, at least 100 and at most 2000, never more than --steps); the last step is always saved."),
    preview_every: Optional[int] = typer.Option(TRAIN.preview_every, help="Steps between preview grids (default: steps/4, at least 200 and at most 2000, never more than --steps: a short run gets one, at its end; 0: never)."),
    preview_n: int = typer.Option(TRAIN.preview_n, help="Images in a preview grid."),
    seed: int = typer.Option(TRAIN.seed, help="Seed for weights, data order and noise."),
    memory_limit_gb: float = typer.Option(TRAIN.memory_limit_gb, help="Caches bigger than this (at their stored size) are streamed shard by shard; smaller ones are held whole on the training device."),
    keep_shards: bool = typer.Option(TRAIN.keep_shards, "--keep-shards/--no-keep-shards",
                                     help="A remote cache's shards stay on disk after they are read ($LIQUIDGEN_HOME/caches)."),
    cache_limit_gb: Optional[float] = typer.Option(TRAIN.cache_limit_gb, help="At most this many GB of a remote cache's shards kept on disk; "
                                                   "the least recently used are deleted first (default: no limit)."),
    compile: bool = typer.Option(TRAIN.compile, "--compile", help="torch.compile the model."),
    device: str = typer.Option(TRAIN.device, help="auto or cpu."),
    grad_accum: int = typer.Option(TRAIN.grad_accum, help="Batches of --batch-size summed into each optimizer step, "
                                   "through Accelerate's accumulate(): the effective batch is --batch-size x --grad-accum."),
    report_to: str = typer.Option(TRAIN.report_to, help="Experiment tracker, through Accelerate: none, tensorboard, wandb, or all "
                                  "(every installed one). Writes loss, lr, latents/s and the previews; TensorBoard's files go "
                                  "under RUN/liquidgen (pip install 'liquidgen[tensorboard]')."),
    val_fraction: float = typer.Option(TRAIN.val_fraction, help="Hold this part of the cache out of training (seeded by --seed, "
                                       "recorded in config.json) and score the model on it; e.g. 0.05."),
    eval_every: Optional[int] = typer.Option(TRAIN.eval_every, help="Steps between scores on the held-out part: its flow loss per "
                                             "t-bin, written to metrics.jsonl, the tracker and loss.png (default: every "
                                             "checkpoint when --val-fraction is set; 0: never)."),
    eval_n: int = typer.Option(TRAIN.eval_n, help="Also sample this many images at each score and compare them with as many "
                                "held-out ones (SWD, random-feature FD and KID, as `liquidgen eval`); 0: the loss only."),
    eval_steps: int = typer.Option(TRAIN.eval_steps, help="Sampling steps of the --eval-n samples."),
    reg: Optional[str] = typer.Option(TRAIN.reg, "--reg", help="Regularizers on the clean latent the model predicts "
                                      "(x_t - t*v for flow), added to the loss: name=weight pairs of tv, spectral, gradient, "
                                      "intensity (e.g. tv=0.01,spectral=0.01), or 'liquidflow' for LiquidFlow's weights."),
    objective: str = typer.Option(TRAIN.objective, help="flow: rectified flow, the model predicts the velocity (sampled "
                                  "with Euler/Heun); eps: DDPM noise prediction, as LiquidFlow trains (sampled with DDIM)."),
    threads: Optional[int] = typer.Option(TRAIN.threads, help="Torch's intra-op threads for CPU work (default: one per core "
                                          "that other processes leave free, measured at the start; torch's own one per core "
                                          "is 6x slower on a busy 2-core machine)."),
    mixed_precision: str = typer.Option(TRAIN.mixed_precision, "--mixed-precision", help="auto (bf16 on a GPU that has it, "
                                        "else fp32), no, bf16 (the CPU too), or fp16 (a GPU): the model's forward under "
                                        "autocast, through Accelerate; the loss and the weights stay fp32."),
    progress: bool = PROGRESS,
) -> None:
    """Train a backbone on a latent cache with rectified flow, or noise prediction (--objective eps); no VAE in the loop."""
    from liquidgen.pipeline.train import train as run

    try:
        sizes = tuple(int(k) for k in kernels.split(",")) if kernels else None
    except ValueError:
        raise LiquidgenError(f"--kernels takes odd sizes separated by commas, e.g. 3,5,7 (got {kernels!r})") from None
    cfg = TrainConfig(
        cache=cache[0] if len(cache) == 1 else list(cache), mix=_weights(mix, len(cache)),
        out=str(out), model=model, batch_size=batch_size, steps=steps, lr=lr, warmup=warmup,
        resume=resume, cfc=cfc, relax=relax, global_path=global_path,
        kernels=sizes, grid=grid, head=head, ema=ema,
        log_every=log_every, ckpt_every=ckpt_every, preview_every=preview_every, preview_n=preview_n,
        seed=seed, memory_limit_gb=memory_limit_gb, keep_shards=keep_shards, cache_limit_gb=cache_limit_gb,
        compile=compile, device=device, threads=threads, grad_accum=grad_accum, report_to=report_to,
        val_fraction=val_fraction, eval_every=eval_every, eval_n=eval_n, eval_steps=eval_steps, reg=reg,
        objective=objective, mixed_precision=mixed_precision, progress=progress,
    )
    result = run(cfg)
    if result.stopped_by:  # Ctrl-C or SIGTERM: the step reached is saved; exit as the signal would
        err.print(f"{result.stopped_by}: stopped at step {result.step}, checkpoint saved in {out}/checkpoints; "
                  "rerun the same command with --resume to continue (`make resume` after `make train`)")
        import signal

        raise typer.Exit(128 + signal.Signals[result.stopped_by].value)
    console.print(f"{out}: step {result.step} in {result.seconds:.0f}s; checkpoints in {out}/checkpoints, "
                  f"metrics in {out}/metrics.jsonl" + (f", previews in {out}/previews" if result.previews else ""))


@app.command()
def sample(
    run: Optional[Path] = typer.Option(None, "--run", help="Run folder (from `liquidgen train`)."),
    onnx_dir: Optional[Path] = typer.Option(None, "--onnx", help="Instead of --run: a folder from `export --onnx`; the whole "
                                        "sampling loop and the decoder run on onnxruntime, no PyTorch model."),
    out: Path = typer.Option(Path("samples"), "--out", "-o", help="Folder for PNGs (or a .safetensors file with --latents-only)."),
    n: int = typer.Option(SAMPLE.n, "--n", "-n", help="How many images."),
    steps: int = typer.Option(SAMPLE.steps, help="Sampler steps (Euler: one model call each; Heun: about two)."),
    cfg: float = typer.Option(SAMPLE.cfg_scale, "--cfg", help="Classifier-free guidance scale (1 = off)."),
    guidance_interval: str = typer.Option(",".join(map(str, SAMPLE.guidance_interval)), help="Apply guidance only for t in LO,HI (t=1 is pure noise)."),
    class_name: Optional[str] = typer.Option(SAMPLE.class_name, "--class", help="Class name (default: cycle through all)."),
    sampler: str = typer.Option(SAMPLE.sampler, help="auto: the run's own (euler for --objective flow, ddim for eps); euler or heun (diffusers' "
                                 "flow-matching schedulers) for a flow run, ddim for an eps run."),
    seed: int = typer.Option(SAMPLE.seed, help="Same seed, same images."),
    batch_size: int = typer.Option(SAMPLE.batch_size, "--batch-size", "-b", help="Images per model batch."),
    latents_only: bool = typer.Option(SAMPLE.latents_only, "--latents-only", help="Write raw latents (safetensors), no VAE."),
    checkpoint: Optional[str] = typer.Option(SAMPLE.checkpoint, help="A checkpoint folder name (step-XXXXXXX); default the latest."),
    device: str = typer.Option(SAMPLE.device, help="auto, cpu, cuda."),
    threads: Optional[int] = THREADS,
    progress: bool = PROGRESS,
) -> None:
    """Generate images from a trained run's EMA weights: PNGs, a grid and the settings used."""
    from liquidgen.pipeline.sample import sample as run_sample

    try:
        lo, hi = (float(v) for v in guidance_interval.split(","))
    except ValueError:
        raise LiquidgenError(f"--guidance-interval takes two numbers LO,HI, e.g. 0,0.75 (got {guidance_interval!r})") from None
    if (run is None) == (onnx_dir is None):
        raise LiquidgenError("sample needs --run RUN or --onnx DIR (one of them)")
    result = run_sample(SampleConfig(
        run=str(run or onnx_dir), onnx=onnx_dir is not None, out=str(out), n=n, steps=steps, cfg_scale=cfg, guidance_interval=(lo, hi),
        class_name=class_name, sampler=sampler, seed=seed, batch_size=batch_size, latents_only=latents_only,
        checkpoint=checkpoint, device=device, threads=threads, progress=progress))
    what = f"{n} latents to {result.out}" if latents_only else f"{n} images and {result.grid} to {result.out}"
    console.print(f"wrote {what} ({result.model_calls} model calls per image, {result.seconds:.1f}s)")


@app.command()
def decode(
    source: str = typer.Argument(..., help="A latents .safetensors file (from sample --latents-only), a cache folder, or a .npy file."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the PNGs and grid.png."),
    limit: Optional[int] = typer.Option(DECODE.limit, help="Decode at most this many (from the start)."),
    keys: Optional[str] = typer.Option(DECODE.keys, help="Comma-separated cache keys to decode instead of the first ones."),
    vae: Optional[str] = typer.Option(DECODE.vae, help="VAE to use (required for a bare .npy; default: the one the latents name)."),
    device: str = typer.Option(DECODE.device, help="auto, cpu, cuda."),
    threads: Optional[int] = THREADS,
    progress: bool = PROGRESS,
) -> None:
    """Decode latents to PNGs with the VAE they were made with (loaded only now)."""
    from liquidgen.pipeline.decode import decode as run_decode

    paths = run_decode(DecodeConfig(source=source, out=str(out), limit=limit, keys=keys.split(",") if keys else None,
                                    vae=vae, device=device, threads=threads, progress=progress))
    console.print(f"wrote {len(paths)} images and {out}/grid.png")


@app.command()
def export(
    run: Path = typer.Option(..., "--run", help="Run folder (from `liquidgen train`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the diffusers pipeline."),
    checkpoint: Optional[str] = typer.Option(None, help="A checkpoint folder name (step-XXXXXXX); default the latest."),
    onnx: bool = typer.Option(False, "--onnx", help="Also write backbone.onnx (inputs x_t, t, class; dynamic batch) and "
                              "vae_decoder.onnx, for `sample --onnx`; works for every --model (pip install 'liquidgen[onnx]')."),
    progress: bool = PROGRESS,
) -> None:
    """Export a run (EMA weights, scheduler, VAE) as a diffusers pipeline folder, and with --onnx as ONNX files."""
    from liquidgen.pipeline.export import export as run_export

    folder = run_export(str(run), str(out), checkpoint, onnx=onnx, progress=progress)
    console.print(f"wrote {folder}; load it with liquidgen.pipeline.export.LiquidGenPipeline.from_pretrained('{folder}')")


@app.command("eval")
def eval_(
    run: Path = typer.Option(..., "--run", help="Run folder."),
    cache: str = typer.Option(..., "--cache", "-c", help="The cache the run was trained on (its decoded latents are the real side)."),
    n: int = typer.Option(EVAL.n, "--n", "-n", help="Images on each side."),
    steps: int = typer.Option(EVAL.steps, help="Euler steps for the samples."),
    cfg: float = typer.Option(EVAL.cfg_scale, "--cfg", help="Guidance scale for the samples."),
    seed: int = typer.Option(EVAL.seed, help="Seed for the real subset, the samples and the metrics."),
    out: Optional[Path] = typer.Option(EVAL.out, "--out", "-o", help="JSON file (default RUN/eval.json)."),
    device: str = typer.Option(EVAL.device, help="auto, cpu, cuda."),
    fid: bool = typer.Option(EVAL.fid, "--fid", help="Also FID with the published Inception network (torch-fidelity; "
                             "downloads its 91 MB weights once, or give --feature-weights). pip install 'liquidgen[metrics]'."),
    fd_dinov2: bool = typer.Option(EVAL.fd_dinov2, "--fd-dinov2", help="Also the Fréchet distance in DINOv2 ViT-L/14 "
                                   "features (transformers; facebook/dinov2-large from the Hub, or --feature-weights DIR)."),
    feature_weights: Optional[str] = typer.Option(EVAL.feature_weights, "--feature-weights", help="Local weights for "
                                                  "the one metric asked: the Inception .pth/.safetensors state dict, or a "
                                                  "DINOv2 folder (save_pretrained) or Hub id."),
    threads: Optional[int] = THREADS,
    progress: bool = PROGRESS,
) -> None:
    """Score a run: SWD, random-feature FD/KID, precision/recall, flow loss per t (no downloads);
    with --fid / --fd-dinov2 also the metrics papers report."""
    from liquidgen.pipeline.evaluate import evaluate

    r = evaluate(EvalConfig(run=str(run), cache=cache, n=n, steps=steps, cfg_scale=cfg, seed=seed,
                            out=str(out) if out else None, device=device, fid=fid, fd_dinov2=fd_dinov2,
                            feature_weights=feature_weights, threads=threads, progress=progress))
    table = Table("metric", "value", title=f"{run} ({r['checkpoint']}, n={n}, {r['model_calls_per_image']} calls/image)")
    for k, v in {**r["metrics"], **{f"flow loss {k}": v for k, v in r["flow_loss_per_t"].items()}}.items():
        table.add_row(k, f"{v:.4f}")
    console.print(table)
    console.print(f"wrote {r['out']}")


@app.command()
def plot(run: Path = typer.Argument(..., help="Run folder.")) -> None:
    """Draw a run's loss curve to RUN/loss.png."""
    from liquidgen.pipeline.plot import plot_run

    console.print(f"wrote {plot_run(run)}")


@app.command()
def presets() -> None:
    """List the dataset and VAE presets."""
    from liquidgen.pipeline.sources import PRESETS
    from liquidgen.pipeline.vae import VAE_PRESETS

    table = Table("dataset preset", "Hugging Face id", "labels", "limit", "about")
    for name, p in PRESETS.items():
        table.add_row(name, p.hf_id, p.label_column if p.label_column != "none" else "-", str(p.limit or "-"), p.note)
    console.print(table)
    table = Table("VAE preset", "id", "subfolder", "about")
    for name, v in VAE_PRESETS.items():
        table.add_row(name, v.id, v.subfolder or "-", v.note)
    console.print(table)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


@cache_app.command("info")
def cache_info(cache: Path = typer.Argument(..., help="Cache folder.")) -> None:
    """Describe a cache: source, VAE, latent shape, dtype, count, skipped, size, statistics."""
    from liquidgen.cache.store import CacheDir

    m = CacheDir(cache).manifest()
    st, vae = m.storage, m.vae
    size = sum(s.bytes for s in m.shards)
    table = Table(show_header=False, title=f"{cache}" + ("" if m.complete else "  [red](incomplete: rerun encode)[/red]"))
    table.add_column(style="bold")
    table.add_column()
    for src in m.sources:
        table.add_row("source", f"{src.id} ({src.kind}{', split ' + src.split if src.split else ''}"
                      f"{', limit ' + str(src.limit) if src.limit else ''})")
        expected = src.expected
        table.add_row("", f"{'?' if expected is None else expected} in the source, {src.count} encoded, {src.skipped} skipped")
    table.add_row("classes", ", ".join(m.label_names) if m.label_names else "none (unconditional)")
    table.add_row("resolution", f"{m.preprocess['resolution']} px, {m.preprocess['resize']}, flip: {st.flip}")
    table.add_row("VAE", f"{vae['id']}{' / ' + vae['subfolder'] if vae.get('subfolder') else ''} ({vae['class']}, "
                  f"{vae['latent_channels']} ch, /{vae['downscale']}, scale {vae['scaling_factor']:g}, shift {vae['shift_factor']:g})")
    table.add_row("latents", f"{m.count} x {'x'.join(map(str, st.latent_shape))} {st.dtype} ({st.stored})")
    table.add_row("storage", f"{st.backend}, {len(m.shards)} shards of up to {st.shard_size}, {_human(size)}"
                  + (f", {size / max(m.count, 1) / (2 if st.flip == 'both' else 1):,.0f} bytes per latent" if m.count else ""))
    table.add_row("skipped", str(len(m.skipped)) + (f" (see {cache}/skipped.log)" if m.skipped else ""))
    if m.stats:
        mean, std = m.stats["mean"], m.stats["std"]
        table.add_row("channel mean", f"{min(mean):+.3f} .. {max(mean):+.3f} (avg {sum(mean) / len(mean):+.3f})")
        table.add_row("channel std", f"{min(std):.3f} .. {max(std):.3f} (avg {sum(std) / len(std):.3f})")
    table.add_row("format", f"{m.format_version}" + ("" if m.format_version >= 2 else f" (reads slowly: `liquidgen cache upgrade {cache}`)"))
    table.add_row("created", f"{m.created} by liquidgen {m.liquidgen_version}")
    console.print(table)


@cache_app.command("bench")
def cache_bench(
    cache: Path = typer.Argument(..., help="Cache folder."),
    batch_size: int = typer.Option(256, "--batch-size", "-b", help="Batch size to load at."),
    device: str = typer.Option("cpu", help="Where batches go: cpu, cuda, ... (the resident cache is held there)."),
    rounds: int = typer.Option(1, help="Rounds of (sequential read, resident, streaming) taken in turn; medians reported."),
    steps_per_s: float = typer.Option(10.0, "--steps-per-s", help="The training rate to judge against: steps/s at --batch-size."),
) -> None:
    """Will this cache keep a GPU fed? Loader latents/s beside what training at --batch-size and
    --steps-per-s consumes (goal: 3x), this machine's sequential read of the same files, seconds
    to the first batch and peak memory, resident and streaming."""
    from liquidgen.cache.bench import bench_cache
    from liquidgen.cache.store import require_complete

    if batch_size < 1 or rounds < 1:
        raise LiquidgenError("--batch-size and --rounds must be positive")
    if not 0 < steps_per_s < float("inf"):  # nan too
        raise LiquidgenError(f"--steps-per-s must be a positive number (got {steps_per_s})")
    count = require_complete(str(cache)).count
    if batch_size > count:
        console.print(f"{cache} holds {count} latents, fewer than --batch-size {batch_size}: benching at batch {count}")
        batch_size = count
    r = bench_cache(str(cache), batch_size, device, rounds)
    seq, need = r["sequential"], batch_size * steps_per_s

    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    console.print(f"{cache}: {r['latents']:,} latents, {_human(r['stored_bytes'])} stored, batch {batch_size}; "
                  f"training at {steps_per_s:g} steps/s consumes {need:,.0f} latents/s")
    console.print(f"  sequential read of the files: {seq['latents_per_s']:,.0f} latents/s, "
                  f"{seq['bytes'] / seq['seconds'] / 1e6:,.0f} MB/s")
    for name in ("resident", "streaming"):
        x = r[name]
        verdict = "keeps up" if x["latents_per_s"] >= 3 * need else ("barely keeps up" if x["latents_per_s"] >= need else "too slow")
        console.print(f"  {name}: {x['latents_per_s']:,.0f} latents/s ({x['latents_per_s'] / need:.1f}x what training needs: "
                      f"{verdict}), {x['mb_per_s']:,.0f} MB/s, first batch {num(x['first_batch_s'], '.2f')} s, "
                      f"peak RSS {num(x['peak_rss_over_stored'], '.2f')}x stored, normalized here "
                      f"{num(x['normalized_latents_per_s'], ',.0f')} latents/s")
    console.print("latents/s: batches gathered at their stored size, what the training device waits for; the device then "
                  f"widens and normalizes them (\"normalized here\" does that on {device}). Goal: 3x what training needs.")


@cache_app.command("upgrade")
def cache_upgrade(cache: Path = typer.Argument(..., help="Cache folder.")) -> None:
    """Rewrite a cache of an older format in this one, in place, keeping every latent bit for bit
    (format 1 -> 2: shards read ~30-100x faster). Safe to interrupt: rerun to finish."""
    from liquidgen.cache.builder import upgrade

    n = upgrade(str(cache))
    console.print(f"{cache}: {n} shards rewritten in format 2" if n else f"{cache}: already in the current format")


@cache_app.command("verify")
def cache_verify(cache: Path = typer.Argument(..., help="Cache folder.")) -> None:
    """Check every shard against the manifest (size, sha256, shapes, dtype, labels, finite values); exit 1 naming the bad shards."""
    from liquidgen.cache.store import verify_cache

    manifest, problems = verify_cache(cache)
    if problems:
        for p in problems[:20]:  # a manifest of a million bad shards is not a million lines
            err.print(f"[red]bad[/red] {cache}: {escape(printable(p))}")
        if len(problems) > 20:
            err.print(f"[red]bad[/red] {cache}: ... and {len(problems) - 20} more shards")
        raise typer.Exit(1)
    console.print(f"{cache}: {len(manifest.shards)} shards, {manifest.count} latents, all checksums match")


@cache_app.command("push")
def cache_push(
    cache: Path = typer.Argument(..., help="Local cache folder."),
    url: str = typer.Argument(..., help="Where to: hf://datasets/ORG/NAME, s3://..., gs://..., file://..., memory://..."),
    source_name: Optional[str] = typer.Option(None, help="How the dataset card names the images (e.g. 'WikiArt, huggan/wikiart'); "
                                              "by default the source's id, of which a local path keeps only its last part."),
) -> None:
    """Upload a verified cache (shards first, manifest last); rerun to resume, unchanged shards are skipped."""
    from liquidgen.cache.remote import push

    t = push(str(cache), url, source_name=source_name)
    console.print(f"{url}: {t.sent} shards sent, {t.skipped} already there")


@cache_app.command("pull")
def cache_pull(
    url: str = typer.Argument(..., help="A shared cache: hf://..., https://..., s3://..., file://..."),
    cache: Path = typer.Argument(..., help="Local folder to download into."),
    workers: int = typer.Option(8, help="Parallel downloads."),
) -> None:
    """Download a shared cache, checking every shard's sha256; rerun to resume."""
    from liquidgen.cache.remote import pull

    t = pull(url, str(cache), workers=workers)
    console.print(f"{cache}: {t.sent} shards fetched, {t.skipped} already here and verified")


def main() -> None:
    """Entry point: user errors print one line and exit 1, usage errors exit 2; Ctrl-C exits 130 keeping what
    is finished (training saves a checkpoint first)."""
    try:  # recent typer carries its own copy of click
        from typer._click.exceptions import UsageError
    except ImportError:
        from click.exceptions import UsageError
    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except UsageError as exc:  # a wrong type, a missing or unknown option: one line too
        names, ctx = [], exc.ctx
        while ctx is not None and ctx.parent is not None:  # the subcommands, whatever the program was called
            names, ctx = [ctx.info_name, *names], ctx.parent
        where = " ".join(["liquidgen", *names, "--help"])
        err.print(f"[red]error:[/red] {escape(printable(exc.format_message()))} (see {where})", highlight=False,
                  soft_wrap=True)
        sys.exit(2)
    except typer.Abort:  # Ctrl-C while click itself reads input
        sys.exit(130)
    except LiquidgenError as exc:
        err.print(f"[red]error:[/red] {escape(printable(str(exc)))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted: finished shards are kept; rerun the same command to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
