"""Experiment trackers (`train --report-to`), through Accelerate's own (`log_with`,
`init_trackers`, `accelerator.log`): the resolved config as hyperparameters, the logged metrics,
and preview grids as images. `metrics.jsonl` stays the record that needs no tracker.

TensorBoard and Weights & Biases are optional extras; asking for one that is not installed is
one line naming the extra to install, before anything is written."""

from __future__ import annotations

import importlib
import json

import numpy as np

from liquidgen.errors import LiquidgenError

TRACKERS = {"tensorboard": ("tensorboard", "liquidgen[tensorboard]"), "wandb": ("wandb", "liquidgen[wandb]")}


def _installed(name: str) -> bool:
    """Importable, not only present: a broken install is as good as none."""
    try:
        importlib.import_module(TRACKERS[name][0])
    except ImportError:
        return False
    return True


def log_with(report_to: str) -> list[str]:
    """Accelerate's `log_with` for --report-to (none, tensorboard, wandb, all: every installed one)."""
    if report_to == "none":
        return []
    if report_to == "all":
        names = [n for n in TRACKERS if _installed(n)]
        if not names:
            raise LiquidgenError("--report-to all found no tracker installed: pip install 'liquidgen[tensorboard]'")
        return names
    if not _installed(report_to):
        module, extra = TRACKERS[report_to]
        raise LiquidgenError(f"--report-to {report_to} needs {module}, which is not installed: pip install '{extra}'")
    return [report_to]


def hyperparameters(config: dict, prefix: str = "") -> dict:
    """The run's config flattened to the scalars trackers take (`train/lr`, `model/width`, ...);
    lists and other values become their JSON text."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(hyperparameters(value, f"{name}/"))
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[name] = value if value is not None else "none"
        else:
            out[name] = json.dumps(value)
    return out


def log_image(accelerator, tag: str, image, step: int) -> None:
    """One image (a PIL grid) to every tracker, in the form each takes."""
    array = np.asarray(image.convert("RGB"))
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({tag: array[None]}, step=step, dataformats="NHWC")
        else:
            tracker.log_images({tag: [array]}, step=step)
