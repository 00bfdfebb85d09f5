"""Helpers shared by the benchmarks: where the shared data is, a machine description, timing.

The benchmarks measure on the 2,000 shared paintings (more than the 200 that ship with
liquidgen), so they need ../shared; the VAE is the shipped TAEF2 (the same files)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import torch

from liquidgen.embedded import TAEF2

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIQUIDGEN_SHARED", ROOT.parent / "shared"))
PAINTINGS = SHARED / "data" / "paintings"


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} ({os.cpu_count()} CPU cores), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU cores ({cpu}), no GPU, torch {torch.__version__}"


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        # the benchmarks' own outputs (results, the doc, plots) do not make the code dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!benchmarks/results", ":!docs"], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def subset(folder: Path, per_class: int) -> Path:
    """`per_class` paintings of each style, symlinked into `folder`."""
    for style in sorted(p.name for p in PAINTINGS.iterdir() if p.is_dir()):
        (folder / style).mkdir(parents=True, exist_ok=True)
        for f in sorted((PAINTINGS / style).iterdir())[:per_class]:
            if not (folder / style / f.name).exists():
                (folder / style / f.name).symlink_to(f)
    return folder


def peak_rss() -> int:
    """This process's peak resident memory (VmHWM), in bytes; 0 where /proc is missing."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def median_seconds(fn, repeats: int, device) -> float:
    """The median wall time of `repeats` calls of `fn` (synchronized on a GPU), after the peak-memory
    counter is reset: robust to a stray slow call on a shared machine."""
    sync(device)
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Timer:
    def __init__(self, device="cpu"):
        self.device = device

    def __enter__(self):
        sync(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.seconds = time.perf_counter() - self.t0


def paintings_cache(resolution: int = 128) -> Path:
    """The shared paintings encoded by TAEF2 at `resolution` (`cache/paintings128` at 128 px), made
    on first use the way `make cache` makes it (about 4 minutes on 2 CPU cores at 128 px)."""
    from liquidgen.pipeline.encode import EncodeConfig, encode

    out = ROOT / "cache" / ("paintings" if resolution == 256 else f"paintings{resolution}")
    if not (out / "manifest.json").exists():
        print(f"building {out.relative_to(ROOT)} once (about 4 minutes on 2 CPU cores; later runs reuse it)", flush=True)
        encode(EncodeConfig(str(PAINTINGS), str(out), vae=str(TAEF2), resolution=resolution, progress=False))
    return out
