"""Where to compute, and with how many threads: one rule for every stage."""

from __future__ import annotations

import os
import time

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" is the GPU when there is one, else the CPU; anything else is taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def free_cores(window: float = 0.3) -> int:
    """Torch's intra-op threads when --threads is not given: one per core that other processes
    leave free, measured now over `window` seconds from /proc/stat (a load average would lag
    behind a command that just finished). Torch's own default, one per core, makes each op wait
    for its slowest thread when another process holds a core: measured on 2 cores, steps 6x
    slower than with one thread (docs/benchmarks.md, "Torch threads")."""
    try:
        cores = len(os.sched_getaffinity(0))
        first = _cpu_times()
        time.sleep(window)
        second = _cpu_times()
    except (AttributeError, OSError, ValueError):  # not Linux: torch's choice
        return torch.get_num_threads()
    total, idle = (b - a for a, b in zip(first, second))
    busy = (total - idle) / max(total, 1) * (os.cpu_count() or cores)
    return max(1, cores - round(busy))  # not capped by torch.get_num_threads(): an earlier run may have lowered it


def _cpu_times() -> tuple[int, int]:
    """(all, idle) jiffies of every CPU since boot, from /proc/stat's first line."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    return sum(fields[:8]), fields[3] + fields[4]  # idle + iowait; guest time is inside user
