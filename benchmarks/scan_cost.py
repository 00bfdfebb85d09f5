"""The seeds' sequence scans beside the depthwise convolutions they stand next to: one layer's
forward + backward at the grid and width each model runs them at, on the shoot-out's latents
(TAEF2 at 128 px: a 16x16 grid, batch 32).

- LiquidFlow's SSD mixer (`SSDMixer`: in-projection, causal conv, the chunked Mamba-2 scan in
  four directions, out-projection), and its scan alone (`ssd`), against the plain sequential
  recurrence it must equal (`sequential_scan`, a Python loop over the 256 positions): why the
  chunked form is the one used.
- LiquidGen's zigzag scan (`ZigzagScan1D`: a 1-D depthwise conv along the zigzag order, then a
  pointwise mix) on its 8x8 patch grid.
- A depthwise 7x7 and 3x3 convolution of the same width on the same grid: liquidgen's U-Net
  spends its spatial mixing there.

The layers are timed in alternating rounds in one process (median of each), so the machine's
load falls on all alike; GFLOPs are `torch.utils.flop_counter`'s forward count, which counts
matmuls, einsums and convolutions but no elementwise op: the sequential loop's multiply-adds and
the gathers show as none.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

BATCH, GRID, ROUNDS, REPEATS = 32, 16, 5, 3


def _layers(width: int) -> dict[str, tuple[nn.Module | None, callable]]:
    """name → (module or None, a function running one forward on fresh inputs that need grad)."""
    from liquidgen.backbone.liquidflow import SSDMixer, grid_orders
    from liquidgen.backbone.liquidgen_seed import ZigzagScan1D
    from liquidgen.backbone.ssd import sequential_scan, ssd

    torch.manual_seed(0)
    mixer = SSDMixer(width, state=32, head_dim=32, chunk=64)
    orders = grid_orders(GRID, GRID)
    zigzag = ZigzagScan1D(width, 9)
    dw7 = nn.Conv2d(width, width, 7, padding=3, groups=width)
    dw3 = nn.Conv2d(width, width, 3, padding=1, groups=width)
    heads, length = width // 32, GRID * GRID
    # the scan's own inputs, as SSDMixer makes them: four directions are four batch rows each
    scan_shapes = {"x": (BATCH * 4, length, heads, 32), "a": (BATCH * 4, length, heads),
                   "B": (BATCH * 4, length, heads, 32), "C": (BATCH * 4, length, heads, 32)}

    def scan_inputs():
        x, B, C = (torch.randn(scan_shapes[k], requires_grad=True) for k in ("x", "B", "C"))
        a = (-torch.rand(scan_shapes["a"]) * 0.1).requires_grad_()
        return x, a, B, C

    def grid(side: int = GRID):
        return torch.randn(BATCH, width, side, side, requires_grad=True)

    return {
        "SSD mixer, 4 directions (LiquidFlow)": (mixer, lambda: mixer(torch.randn(BATCH, length, width, requires_grad=True), orders)),
        "SSD scan alone, chunked (ssd)": (None, lambda: ssd(*scan_inputs(), chunk=64)),
        "SSD scan alone, sequential loop": (None, lambda: sequential_scan(*scan_inputs())),
        "zigzag scan, 8x8 patches (LiquidGen)": (zigzag, lambda: zigzag(grid(GRID // 2))),
        "depthwise 7x7": (dw7, lambda: dw7(grid())),
        "depthwise 3x3": (dw3, lambda: dw3(grid())),
    }


def _step(forward) -> None:
    forward().square().mean().backward()


def _gflops(forward) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        forward()
    return counter.get_total_flops() / 1e9


def run(full: bool = False, device: str = "auto") -> dict:
    width = 256 if full else 128  # LiquidFlow-tiny's hidden size is 128
    layers = _layers(width)
    times: dict[str, list[float]] = {name: [] for name in layers}
    for _, forward in layers.values():  # warm-up: oneDNN picks its kernels on the first call
        _step(forward)
    for _ in range(ROUNDS):
        for name, (_, forward) in layers.items():
            t0 = time.perf_counter()
            for _ in range(REPEATS):
                _step(forward)
            times[name].append((time.perf_counter() - t0) / REPEATS)
    rows = [{"name": name, "params": sum(p.numel() for p in module.parameters()) if module else 0,
             "gflops_forward": _gflops(forward), "seconds": statistics.median(times[name]), "rounds": times[name]}
            for name, (module, forward) in layers.items()]
    return {"device": "cpu", "batch_size": BATCH, "grid": GRID, "width": width, "threads": torch.get_num_threads(),
            "rows": rows}


def markdown(r: dict) -> str:
    conv = next(row["seconds"] for row in r["rows"] if row["name"] == "depthwise 7x7")
    lines = [f"One layer's forward + backward at batch {r['batch_size']}, width {r['width']}, on the "
             f"{r['grid']}x{r['grid']} grid of the shoot-out's latents (LiquidGen's zigzag on its 8x8 patch grid), "
             f"{r['device']}, {r['threads']} threads; the median of {len(r['rows'][0]['rounds'])} alternating rounds.\n",
             "| layer | params | forward GFLOPs | s per forward + backward | × depthwise 7x7 |", "|---|---|---|---|---|"]
    for row in r["rows"]:
        params, flops = f"{row['params'] / 1e3:.0f}k" if row["params"] else "–", row["gflops_forward"]
        lines.append(f"| {row['name']} | {params} | {f'{flops:.2f}' if flops else '–'} | "
                     f"{row['seconds'] * 1e3:.1f} ms | {row['seconds'] / conv:.1f} |")
    return "\n".join(lines) + "\n"
