"""Stage 2: train the backbone on a latent cache with rectified flow (or, `--objective eps`,
noise prediction).

Only tensors are loaded: the latents, normalized by the manifest's statistics. The VAE is
loaded when a preview is decoded and released right after. The loop is deliberately one
function you can read top to bottom.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from liquidgen.backbone.models import MODELS, build_model, model_spec
from liquidgen.backbone.unet import count_parameters
from liquidgen.cache.loader import open_latents
from liquidgen.cache.lock import CacheLock
from liquidgen.config import SAMPLERS, TrainConfig
from liquidgen.devices import free_cores
from liquidgen.errors import LiquidgenError
from liquidgen.objective import ema_update, objective_for, parse_reg
from liquidgen.pipeline import checkpoint as ckpt
from liquidgen.pipeline.evaluator import Evaluator
from liquidgen.pipeline.images import image_grid
from liquidgen.pipeline.sampler import sample_latents
from liquidgen.pipeline.tracking import hyperparameters, log_image, log_with


@dataclass
class TrainResult:
    run: Path
    step: int
    losses: list[float] = field(default_factory=list)  # every step's loss, this process
    parameters: int = 0
    seconds: float = 0.0
    previews: list[Path] = field(default_factory=list)
    stopped_by: str | None = None  # "SIGINT"/"SIGTERM" when a signal ended the run early, checkpoint saved


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption) ask the loop to stop after the
    step in progress: it saves a checkpoint there and returns, so nothing trained is lost. A
    second signal acts at once, as the default handlers do. Outside the main thread (where
    Python cannot take signals) this does nothing."""

    def __init__(self) -> None:
        self.caught: int | None = None
        self.previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._catch) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _catch(self, signum, frame) -> None:
        self.caught = signum
        self.__exit__()  # the next one is not caught

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def requested(self, accelerator, step: int, every: int) -> bool:
        """Whether any process was signalled. One process asks every step; several agree every
        `every` steps (the log steps), where one small all-reduce costs no extra device sync."""
        if accelerator.num_processes == 1:
            return self.caught is not None
        if step % every:
            return False
        flag = torch.tensor(float(self.caught is not None), device=accelerator.device)
        return bool(accelerator.reduce(flag, "sum").item())


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms, biases, gates and other 1-D parameters."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _check_memory(spec: dict, device: torch.device) -> int:
    """Weights, gradients, Adam moments and EMA take ~20 bytes a parameter: refuse what cannot fit."""
    with torch.device("meta"):
        params = count_parameters(build_model(spec))
    need = params * 20
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        try:
            meminfo = dict(line.split(":", 1) for line in open("/proc/meminfo"))
            free = int(meminfo["MemAvailable"].split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            return params
    if need > free:
        raise LiquidgenError(
            f"the model has {params / 1e6:.0f}M parameters and needs ~{need / 2**30:.1f} GB for weights and "
            f"optimizer state alone; {device} has {free / 2**30:.1f} GB free: pick a smaller --model"
        )
    return params


def _cache_identity(data) -> dict:
    m = data.manifest
    stats = json.dumps(m.stats["mean"] + m.stats["std"]).encode()
    return {"path": data.location, "count": m.count, "vae": m.vae["id"],
            "sources": [src.id for src in m.published().sources],  # what to call it where this machine's paths mean nothing
            "latent_shape": m.storage.latent_shape, "label_names": m.label_names,
            "stats_sha256": hashlib.sha256(stats).hexdigest()[:16]}


def _check_resume(run: Path, config: dict) -> None:
    old = ckpt.read_run_config(run)
    if old["model"] != config["model"]:
        diff = [k for k in config["model"] if old["model"].get(k) != config["model"][k]]
        raise LiquidgenError(f"{run} was trained with another model ({', '.join(diff)} differ); "
                             f"resume with --model {old['train']['model']} or use a new --out")
    # fields a run made by an earlier liquidgen did not record (its sources' names) are not compared
    diff = [k for k in config["cache"] if k in old["cache"] and old["cache"][k] != config["cache"][k]]
    if diff:
        raise LiquidgenError(f"{run} was trained on another cache ({', '.join(diff)} differ: "
                             f"{old['cache']['path']}); resume with that --cache or use a new --out")
    trained = old.get("train", {}).get("objective") or "flow"
    if trained != config["train"]["objective"]:
        raise LiquidgenError(f"{run} was trained with --objective {trained}; resume with it or use a new --out")
    before = old.get("train", {}).get("val_fraction", 0.0)
    if before != config["train"]["val_fraction"]:
        raise LiquidgenError(f"{run} held out --val-fraction {before} of its cache; resume with the same, "
                             "or training would see latents it was scored on")


def _resumed_threads(cfg: TrainConfig) -> int | None:
    """The threads a resumed run used before: float sums depend on how ops are split across
    threads, so a resume keeps them to stay bit-exact whatever the machine's load is now."""
    path = Path(cfg.out) / "config.json"
    if not cfg.resume or not path.is_file():
        return None
    try:
        threads = json.loads(path.read_text()).get("train", {}).get("threads")
    except (OSError, ValueError, AttributeError):
        return None
    return threads if isinstance(threads, int) and threads >= 1 else None


def train(cfg: TrainConfig) -> TrainResult:
    """Train into the run folder `cfg.out`, which one process tree writes at a time: a second
    `train` into it is refused while the first lives (a killed one's lock is taken over)."""
    from accelerate import PartialState

    trackers = log_with(cfg.report_to)  # a tracker that is not installed: one line, nothing written
    if cfg.model not in MODELS:
        raise LiquidgenError(f"unknown --model {cfg.model!r}; choose one of {', '.join(MODELS)}")
    torch.set_num_threads(cfg.threads or _resumed_threads(cfg) or free_cores())
    state = PartialState(cpu=not (torch.cuda.is_available() and cfg.device != "cpu"))
    run, lock = Path(cfg.out), None
    created = run  # the outermost folder this call creates (runs/ of runs/new), if any
    while not created.parent.exists():
        created = created.parent
    created = created if state.is_main_process and not run.exists() else None
    if state.is_main_process:
        if run.exists() and not run.is_dir():
            raise LiquidgenError(f"--out {run} is a file, not a run folder")
        try:
            run.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LiquidgenError(f"cannot create {run}: {exc.strerror or exc}") from None
        lock = CacheLock(run).acquire()
        ckpt.remove_unfinished(run)
    try:
        return _train(cfg, trackers)
    finally:
        if lock is not None:
            lock.release()
        # A refused run (a missing cache, an unreachable URL, a model too big) wrote nothing:
        # the folders it made for the lock go with it, as if it had been refused before.
        empty = run
        while created is not None and empty.is_dir() and not any(empty.iterdir()):
            empty.rmdir()
            if empty == created:
                break
            empty = empty.parent


def _stream(data, epoch: int, skip: int):
    """The loader's batches epoch after epoch, each with where it stands (epoch, batch number)."""
    while True:
        for batch, (x0, labels) in enumerate(data.batches(epoch, skip=skip), start=skip + 1):
            yield epoch, batch, x0, labels
        epoch, skip = epoch + 1, 0


def _train(cfg: TrainConfig, trackers: list[str]) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    precision = cfg.mixed_precision
    if precision == "auto":  # bf16 where the GPU computes it natively; on the CPU fp32, the exact reference
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if precision == "fp16" and not cuda:
        raise LiquidgenError("--mixed-precision fp16 needs a GPU (its loss scaling is CUDA's); use bf16 on the CPU")
    accelerator = Accelerator(cpu=not cuda, mixed_precision=precision,
                              gradient_accumulation_steps=cfg.grad_accum, log_with=trackers or None,
                              project_dir=cfg.out if trackers else None)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    run = Path(cfg.out)

    data = open_latents(cfg.cache, cfg.batch_size, cfg.memory_limit_gb, keep_shards=cfg.keep_shards,
                        cache_limit_gb=cfg.cache_limit_gb, mix=cfg.mix, seed=cfg.seed,
                        rank=rank, world=world, device=device if cuda else "cpu", val_fraction=cfg.val_fraction)
    try:
        spec = model_spec(cfg.model, data.shape[0], data.num_classes, data.shape[-1], cfc=cfg.cfc,
                          relax=cfg.relax, global_path=cfg.global_path, kernels=cfg.kernels, grid=cfg.grid,
                          head=cfg.head)
    except ValueError as exc:
        raise LiquidgenError(str(exc)) from None
    params = _check_memory(spec, device)
    config = {"train": {**asdict(cfg), "threads": torch.get_num_threads()},  # the threads chosen, not None
              "model": spec, "cache": _cache_identity(data),
              # what sampling needs without the cache: undo normalization, name classes, decode,
              # and what the model predicts (the sampler follows from it)
              "latents": {"shape": list(data.shape), "mean": data.manifest.stats["mean"][: data.shape[0]],
                          "std": data.manifest.stats["std"][: data.shape[0]],
                          "label_names": data.manifest.label_names, "vae": data.manifest.vae,
                          "objective": cfg.objective}}
    evaluator = None
    if cfg.val_fraction:  # the held-out latents (at most EVAL_LATENTS of them) scored every --eval-every steps
        x0, labels = data.held_out(EVAL_LATENTS)
        evaluator = Evaluator(data.space.normalize(x0), labels if data.num_classes else None, config["latents"],
                              cfg.eval_n, cfg.eval_steps, cfg.cfg_scale, cfg.seed)
        config["eval"] = {"val_fraction": cfg.val_fraction, "held_out": data.count - data.train_count,
                          "every": cfg.eval_every, **evaluator.settings()}

    start_step, state = 0, None
    latest = ckpt.latest_checkpoint(run)
    if cfg.resume:
        if latest is None:
            raise LiquidgenError(f"nothing to resume in {run}: no checkpoint there")
        _check_resume(run, config)
        state = ckpt.load_state(latest)
        start_step = int(state["step"])
    elif latest is not None:
        raise LiquidgenError(f"{run} already holds a run (checkpoint {latest.name}); pass --resume or another --out")
    if start_step >= cfg.steps:
        raise LiquidgenError(f"{run} is already at step {start_step}; raise --steps to train further")

    torch.manual_seed(cfg.seed)
    model = build_model(spec)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.99))
    def warmup(s: int) -> float:
        return min(1.0, (s + 1) / max(cfg.warmup, 1))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup)
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + rank)
    if state is not None:
        model.load_state_dict(ckpt.load_weights(latest, "model"))
        ema.load_state_dict(ckpt.load_weights(latest, "ema"))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)  # --lr may change on resume
        for group in optimizer.param_groups:
            group["initial_lr"] = cfg.lr
            group["lr"] = cfg.lr * warmup(start_step)
        if rank < len(state["rng"]):
            gen.set_state(state["rng"][rank])
        else:  # resumed on more processes than saved: fresh, distinct streams for the new ranks
            gen.manual_seed(cfg.seed * 1000 + rank + 7919 * start_step)
    ema.to(device)
    if cfg.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model, keep_torch_compile=False)  # the module itself: checkpoints keyed as eager ones, resumable either way

    if trackers:  # TensorBoard writes under RUN/liquidgen/
        accelerator.init_trackers("liquidgen", config=hyperparameters(config))
    if accelerator.is_main_process:
        ckpt.write_run_config(run, config)
        accelerator.print(f"{cfg.model}: {params / 1e6:.2f}M parameters, {data.count} latents "
                          f"{'x'.join(map(str, data.shape))}, {data.num_classes or 'no'} classes, "
                          f"{world} process(es), {type(data).__name__}")
        usable = getattr(data, "train_count", data.count)
        if usable < cfg.batch_size:  # the loader's batch is the whole cache then: say so, and count what is used
            accelerator.print(f"the cache holds {usable} training latents, fewer than --batch-size {cfg.batch_size}: "
                              f"each batch is all {usable} of them")
    preview_every = cfg.preview_every
    result = TrainResult(run, start_step, parameters=params)
    step, t0, log_t0, log_loss, log_n = start_step, time.time(), time.time(), torch.zeros((), device=device), 0
    log_latents = 0  # what the steps since the last log really used (a cache smaller than a batch gives less)
    bar = tqdm(total=cfg.steps, initial=start_step, unit="step", disable=not (cfg.progress and accelerator.is_local_main_process))
    metrics = (run / "metrics.jsonl").open("a") if accelerator.is_main_process else None
    # where the data stands: saved in each checkpoint, so a resume on any number of processes
    # continues the epoch (a streamed cache without repeating a shard)
    epoch, skip = data.start(state.get("position") if state else None, step * cfg.grad_accum)
    micro = _stream(data, epoch, skip)
    objective = objective_for(cfg.objective, parse_reg(cfg.reg))  # the loss the loop calls, plus any --reg terms
    stops = StopSignals().__enter__()
    try:
        while step < cfg.steps and result.stopped_by is None:
            # one optimizer step: --grad-accum batches of --batch-size, their gradients summed by
            # Accelerate's accumulate(); the step's randomness is drawn for all of them at once,
            # so N batches of B/N make the same update as one batch of B
            parts = [next(micro) for _ in range(cfg.grad_accum)]
            epoch, batch = parts[-1][0], parts[-1][1]
            n = sum(len(p[2]) for p in parts)
            t_all = objective.draw_t(n, gen, device)  # flow: logit-normal(0, 1); eps: uniform timesteps
            noise_all = torch.randn((n, *parts[0][2].shape[1:]), generator=gen, device=device)
            drop_all = torch.rand(n, generator=gen, device=device) < cfg.class_dropout
            at, step_loss = 0, torch.zeros((), device=device)
            for _, _, x0, labels in parts:
                x0 = x0.to(device, non_blocking=True)
                t, noise, drop = (a[at : at + len(x0)] for a in (t_all, noise_all, drop_all))
                at += len(x0)
                y = torch.where(drop, raw.null_class, labels.to(device)) if data.num_classes else None
                with accelerator.accumulate(model):
                    loss = objective(model, x0, noise, t, y, accelerator.autocast)
                    accelerator.backward(loss)  # scaled by 1/grad_accum inside
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    optimizer.step()  # a no-op until the last batch of the step
                    optimizer.zero_grad(set_to_none=True)
                step_loss += loss.detach() / cfg.grad_accum
            scheduler.step()
            ema_update(ema, raw, step, cfg.ema)
            step += 1
            log_loss += step_loss
            log_n += 1
            log_latents += n * world
            if not cuda:  # free on CPU; on a GPU checked at log and checkpoint steps
                result.losses.append(step_loss.item())
            if stops.requested(accelerator, step, cfg.log_every):  # Ctrl-C or SIGTERM: this step is the last, and saved
                result.stopped_by = signal.Signals(stops.caught or signal.SIGTERM).name
            last = step == cfg.steps or result.stopped_by is not None
            evaluating = evaluator is not None and cfg.eval_every and (step % cfg.eval_every == 0 or last)
            if step % cfg.log_every == 0 or last or step % cfg.ckpt_every == 0 or evaluating:
                mean_loss = accelerator.reduce(log_loss, "mean").item() / log_n
                if not math.isfinite(mean_loss):
                    good = ckpt.latest_checkpoint(run)
                    raise LiquidgenError(
                        f"the loss became {mean_loss} by step {step}; training stopped. Last good "
                        f"checkpoint: {good if good else 'none (nothing was saved)'}; "
                        "resume from it with --resume, perhaps with a lower --lr")
                now = time.time()
                record = {"step": step, "loss": mean_loss, "lr": scheduler.get_last_lr()[0],
                          "steps_per_s": log_n / (now - log_t0),
                          "latents_per_s": log_latents / (now - log_t0), "epoch": epoch}
                if evaluating and accelerator.is_main_process:  # the EMA weights, as previews and samples use
                    record.update(evaluator(ema, device))
                if metrics:
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                if trackers:
                    accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
                bar.set_postfix(loss=f"{mean_loss:.4f}", lat_s=f"{record['latents_per_s']:.0f}", refresh=False)
                log_loss, log_n, log_latents, log_t0 = torch.zeros((), device=device), 0, 0, time.time()  # not counting the evaluation
            if step % cfg.ckpt_every == 0 or last:
                rng_states = gather_object([gen.get_state()])  # every rank's noise stream
                if accelerator.is_main_process:
                    ckpt.save_checkpoint(run, step, raw, ema, {
                        "step": step, "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "rng": rng_states,
                        "position": data.position(epoch, batch)})
                    _plot(run)
                accelerator.wait_for_everyone()
            if preview_every and (step % preview_every == 0 or last) and not result.stopped_by \
                    and accelerator.is_main_process:
                result.previews.append(preview(ema, data, run, step, cfg, device))
                if trackers:
                    from PIL import Image

                    with Image.open(result.previews[-1]) as grid:
                        log_image(accelerator, "preview", grid, step)
            bar.update(1)
    finally:
        micro.close()
        stops.__exit__()
        bar.close()
        if metrics:
            metrics.close()
        if trackers:
            accelerator.end_training()
    result.step, result.seconds = step, time.time() - t0
    return result


EVAL_LATENTS = 1024  # held-out latents the flow loss is measured on: its noise is ~1/sqrt of this


def preview(ema, data, run: Path, step: int, cfg: TrainConfig, device) -> Path:
    """Sample with the EMA weights and decode with the cache's VAE, loaded now and freed after."""
    from liquidgen.pipeline.vae import load_vae

    n = cfg.preview_n
    labels = torch.arange(n, device=device) % data.num_classes if data.num_classes else None
    gen = torch.Generator().manual_seed(cfg.seed)
    z, _ = sample_latents(ema, n, data.shape, labels, cfg.preview_steps, cfg.cfg_scale,
                          sampler=SAMPLERS[cfg.objective][0], generator=gen, device=device)
    vae = load_vae(data.manifest.vae, device=device)
    try:
        images = torch.cat([vae.decode(data.denormalize(chunk)) for chunk in z.split(16)])
    finally:
        del vae
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    path = run / "previews" / f"step-{step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, cols=int(math.ceil(math.sqrt(n)))).save(path)
    return path


def _plot(run: Path) -> None:
    from liquidgen.pipeline.plot import plot_run

    try:
        plot_run(run)
    except Exception as exc:  # a plot must never stop training
        print(f"(loss plot skipped: {exc})")
