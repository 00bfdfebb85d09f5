"""Run folders and checkpoints, without pickle.

    runs/NAME/config.json                     resolved train config, model config, cache identity
    runs/NAME/metrics.jsonl                   one record per logged step
    runs/NAME/checkpoints/step-000500/        model.safetensors, ema.safetensors, state.pt, meta.json
    runs/NAME/checkpoints/latest              the name of the newest complete checkpoint
    runs/NAME/previews/step-000500.png        EMA samples decoded by the VAE
    runs/NAME/loss.png                        the loss curve

A checkpoint directory is written under a temporary name and renamed, and `latest` is updated
last, so a run killed mid-save resumes from the previous checkpoint. `state.pt` (optimizer,
scheduler, RNG and data position) holds only tensors and plain containers and is read with
`torch.load(weights_only=True)`; weights are safetensors.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from liquidgen.cache.manifest import write_json_atomic
from liquidgen.errors import LiquidgenError


def checkpoint_dir(run: Path) -> Path:
    return Path(run) / "checkpoints"


def latest_checkpoint(run: Path) -> Path | None:
    pointer = checkpoint_dir(run) / "latest"
    if not pointer.exists():
        return None
    path = checkpoint_dir(run) / pointer.read_text().strip()
    return path if (path / "meta.json").exists() else None


def remove_unfinished(run: Path) -> None:
    """Checkpoints a killed run was writing (`.tmp-step-*`): called by the one process that
    holds the run folder's lock, so nobody is writing them now."""
    for tmp in checkpoint_dir(run).glob(".tmp-step-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def save_checkpoint(run: Path, step: int, model: torch.nn.Module, ema: torch.nn.Module,
                    state: dict, keep: int = 2) -> Path:
    root = checkpoint_dir(run)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        # serialized in memory, written by Python: a full disk is then an OSError naming itself
        # (safetensors and torch.save each word it their own way, torch.save not at all)
        for name, module in (("model", model), ("ema", ema)):
            (tmp / f"{name}.safetensors").write_bytes(
                save({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}))
        buffer = io.BytesIO()
        torch.save(state, buffer)
        (tmp / "state.pt").write_bytes(buffer.getbuffer())
        (tmp / "meta.json").write_text(json.dumps({"step": step}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        (root / ".latest.tmp").write_text(final.name)
        os.replace(root / ".latest.tmp", root / "latest")
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = latest_checkpoint(run)
        raise LiquidgenError(f"cannot write checkpoint {final}: {exc.strerror or exc}; "
                             + (f"the last good one, {kept.name}, is kept: free space and rerun with --resume"
                                if kept else "no checkpoint was saved before it")) from None
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_weights(path: Path, name: str = "ema") -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / f"{name}.safetensors"))


def load_state(path: Path) -> dict:
    return torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=True)


def write_run_config(run: Path, config: dict) -> None:
    Path(run).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(run) / "config.json", config)


def read_run_config(run: Path) -> dict:
    path = Path(run) / "config.json"
    if not path.exists():
        raise LiquidgenError(f"{run} is not a liquidgen run (no config.json)")
    return json.loads(path.read_text())


def load_run(run: str | Path, checkpoint: str | None = None, device="cpu"):
    """The EMA model of a run and the run's config (normalization, classes, VAE)."""
    from liquidgen.backbone.models import build_model

    run = Path(run)
    config = read_run_config(run)
    path = checkpoint_dir(run) / checkpoint if checkpoint else latest_checkpoint(run)
    if path is None or not (path / "ema.safetensors").exists():
        raise LiquidgenError(f"{run} has no checkpoint{' ' + checkpoint if checkpoint else ''} to sample from")
    model = build_model(config["model"])
    model.load_state_dict(load_weights(path, "ema"))
    return model.to(device).eval(), config, path
