"""`make bench`: run the benchmarks, keep their results as JSON, rewrite docs/benchmarks.md.

    python benchmarks/run.py                 # all, small enough for 2 CPU cores
    python benchmarks/run.py --only encode   # one section; the others are re-rendered from JSON
    python benchmarks/run.py --full          # the GPU-sized settings
    python benchmarks/run.py --only shootout --budget 300   # a longer shoot-out (~70 min on 2 cores)
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import PAINTINGS, ROOT, commit, machine  # noqa: E402

SECTIONS = {  # name -> (module, title)
    "encode": ("encode_throughput", "Encode throughput and storage"),
    "sources": ("encode_sources", "Encode from every kind of source: bytes read once, throughput"),
    "hub": ("hub_layouts", "The Hub's datasets as they are: --limit on big row groups, one row group for every worker"),
    "layout": ("shard_layout", "Shard layouts: decode rate beside a plain read of the same files"),
    "loader": ("loader_speed", "Training loaders on 204,800 latents: rate, memory, start-up, bytes per rank"),
    "train": ("train_throughput", "Training throughput: loader overhead and what caching saves"),
    "backbone": ("backbone_cost", "Backbone cost per step against diffusers baselines"),
    "scans": ("scan_cost", "The seeds' scans (SSD, zigzag) beside depthwise convolutions, per layer"),
    "shootout": ("shootout", "Shoot-out at equal training time: liquid vs DiT vs U-Net, and ablations"),
    "sample": ("sample_speed", "Sampling speed"),
    "onnx": ("onnx_speed", "ONNX: onnxruntime against PyTorch on the CPU"),
    "libraries": ("loader_libraries", "Streaming loaders: liquidgen beside litdata on the same latents"),
    "remote": ("remote_cache", "Training from a cache served over HTTP"),
    "eval": ("eval_quality", "Image quality without downloads: the metrics and their noise"),
    "threads": ("threads", "Torch threads on a 2-core machine, idle and busy"),
    "gpu": ("gpu", "On a GPU: training, loaders, encode and sampling (`make bench-gpu`)"),
}
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=list(SECTIONS))
    parser.add_argument("--full", action="store_true", help="GPU-sized settings")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--budget", type=float, help="shootout: training seconds per model (default 20 on a CPU: a smoke run; 1800 with --full)")
    parser.add_argument("--configs", help="shootout: only these configs (comma-separated), merged into the last results")
    args = parser.parse_args()
    if not PAINTINGS.is_dir():
        sys.exit(f"make bench measures on the 2,000 shared paintings and cannot find them at {PAINTINGS}; "
                 "set LIQUIDGEN_SHARED to the folder holding data/paintings (make demo and make test need nothing)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.only or list(SECTIONS):
        module = importlib.import_module(SECTIONS[name][0])
        print(f"== {name}", flush=True)
        missing = getattr(module, "unavailable", lambda: None)()
        if missing:  # an optional library is not installed: the last results stay as they were
            print(f"skipped: {missing}", flush=True)
            continue
        t0, at = time.time(), commit()  # the code that runs is the code at the start
        extra = {k: v for k, v in (("budget", args.budget), ("configs", args.configs)) if v and name == "shootout"}
        result = module.run(full=args.full, device=args.device, **extra)
        meta = {"command": " ".join(["python benchmarks/run.py", *sys.argv[1:]]), "commit": at,
                "machine": machine(), "date": time.strftime("%Y-%m-%d"), "seconds": round(time.time() - t0)}
        stem = module.results_name(args.full, args.budget) if name == "shootout" else name
        (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "result": result}, indent=1))
        print(module.markdown(result))
    render()


def _merged(result: dict) -> str:
    """Rows rerun with `--configs` are merged into an earlier run: name the run they started from too."""
    base = result.get("base")
    if not base:
        return ""
    return (f" Rows merged with `--configs` into the run `{base['command']}` at `{base['commit']}` "
            f"({base['date']}, {base['seconds']} s); each row keeps the commit it was measured at.")


def render() -> None:
    parts = ["# Benchmarks\n\nEvery figure below comes from `make bench` (or the command shown), on the machine, "
             "commit and date shown. Rerunning updates this file. Tests never time anything.\n"]
    for name, (mod, title) in SECTIONS.items():
        # a section's results, then (shoot-out) longer runs kept beside them: shootout-300s.json, ...
        for path in sorted(RESULTS.glob(f"{name}.json")) + sorted(RESULTS.glob(f"{name}-*.json")):
            data = json.loads(path.read_text())
            meta, suffix = data["meta"], f" ({path.stem[len(name) + 1:]})" if path.stem != name else ""
            parts.append(f"## {title}{suffix}\n\n`{meta['command']}` at commit `{meta['commit']}` on {meta['machine']}, "
                         f"{meta['date']} ({meta['seconds']} s).{_merged(data['result'])}\n\n"
                         + importlib.import_module(mod).markdown(data["result"]))
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(parts))


if __name__ == "__main__":
    main()
