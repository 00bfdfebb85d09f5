"""onnxruntime against PyTorch on the CPU: the same sampling loop (`sample_latents`, guided Euler)
around the PyTorch backbone and around its `export --onnx` graph, images/s taken in alternating
rounds in one process so the machine's load hits both alike; then the VAE decoder both ways.
Weights are random, every matrix drawn N(0, 0.02²) so no layer is zero (speed does not depend on training); TAEF2 latents of 128 px (32x16x16)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from common import TAEF2

LATENT = (32, 16, 16)
BATCH, STEPS, ROUNDS = 16, 25, 3


def unavailable() -> str | None:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return "onnxruntime and onnxscript are not installed (pip install 'liquidgen[onnx]')"
    return None


def _config(spec: dict) -> dict:
    return {"model": spec, "latents": {"shape": list(LATENT), "mean": [0.0] * LATENT[0], "std": [1.0] * LATENT[0],
                                       "label_names": [f"c{i}" for i in range(5)],
                                       "vae": {"id": str(TAEF2), "class": "taesd", "latent_channels": LATENT[0]}}}


def run(full: bool = False, device: str = "auto") -> dict:
    from liquidgen.backbone.models import build_model, model_spec
    from liquidgen.pipeline.onnx import OnnxBackbone, decode_onnx, export_onnx, read_meta
    from liquidgen.pipeline.sampler import sample_latents
    from liquidgen.pipeline.vae import load_vae

    rows, threads = [], torch.get_num_threads()
    labels = torch.arange(BATCH) % 5
    for name in ["nano", "tiny", "liquidflow-tiny", "liquiddiffusion-tiny"]:
        torch.manual_seed(0)
        spec = model_spec(name, LATENT[0], 5, LATENT[1])
        model = build_model(spec).eval()
        with torch.no_grad():  # the zero-initialized output layers would make every velocity 0 and the comparison empty
            for p in model.parameters():
                if p.dim() > 1:
                    torch.nn.init.normal_(p, std=0.02)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            export_onnx(model, _config(spec), Path(tmp))
            export_s = time.perf_counter() - t0
            onnx = OnnxBackbone(Path(tmp), read_meta(Path(tmp)))
            times = {"torch": [], "onnx": []}
            with torch.no_grad():
                for _ in range(ROUNDS):  # alternating: a burst of load slows both
                    for kind, net in (("torch", model), ("onnx", onnx)):
                        t0 = time.perf_counter()
                        z, _ = sample_latents(net, BATCH, LATENT, labels, STEPS, 2.0,
                                              generator=torch.Generator().manual_seed(0))
                        times[kind].append(time.perf_counter() - t0)
                        if kind == "torch":
                            ref = z
                        else:
                            diff = float((z - ref).abs().max())
            med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
            row = {"model": name, "torch_images_per_s": BATCH / med["torch"], "onnx_images_per_s": BATCH / med["onnx"],
                   "onnx_over_torch": med["torch"] / med["onnx"], "max_abs_diff": diff, "export_seconds": export_s}
            if name == "nano":  # the decoder is the same for every model: time it once
                vae = load_vae(str(TAEF2))
                dec = {"torch": [], "onnx": []}
                with torch.no_grad():
                    for _ in range(ROUNDS):
                        for kind in dec:
                            t0 = time.perf_counter()
                            vae.decode(ref) if kind == "torch" else decode_onnx(Path(tmp), ref)
                            dec[kind].append(time.perf_counter() - t0)
                decode = {k: BATCH / sorted(v)[len(v) // 2] for k, v in dec.items()}
        rows.append(row)
        print(row, flush=True)
    return {"latent": list(LATENT), "batch": BATCH, "steps": STEPS, "rounds": ROUNDS, "threads": threads,
            "rows": rows, "decode_images_per_s": decode}


def markdown(r: dict) -> str:
    lines = [f"Guided Euler sampling (cfg 2.0, {r['steps']} steps, batch {r['batch']}, {'x'.join(map(str, r['latent']))} "
             f"latents) of each backbone in PyTorch and as its `export --onnx` graph on onnxruntime's CPU provider, "
             f"{r['threads']} threads; the median of {r['rounds']} rounds taken alternately in one process. "
             "\"max |diff|\" compares the final latents of the two.\n",
             "| model | PyTorch images/s | onnxruntime images/s | onnxruntime ÷ PyTorch | max \\|diff\\| | export s |",
             "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['model']} | {row['torch_images_per_s']:.2f} | {row['onnx_images_per_s']:.2f} | "
                     f"{row['onnx_over_torch']:.2f} | {row['max_abs_diff']:.1e} | {row['export_seconds']:.0f} |")
    d = r["decode_images_per_s"]
    lines.append(f"\nThe TAEF2 decoder (128 px): PyTorch {d['torch']:.1f} images/s, onnxruntime {d['onnx']:.1f} images/s "
                 f"({d['onnx'] / d['torch']:.2f}x).")
    return "\n".join(lines) + "\n"
