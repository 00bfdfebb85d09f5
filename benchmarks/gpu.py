"""`make bench-gpu`: what liquidgen does on the CUDA device present, in one run of at most ~6 min.

    python benchmarks/gpu.py            # on a GPU: benchmarks/results/gpu.json, docs/benchmarks.md
    python benchmarks/gpu.py --smoke    # anywhere, seconds: tiny sizes, the same code paths

1. Training at batch 256 on TAEF2-shaped (32x16x16) and SD-shaped (4x32x32) latents: steps/s,
   latents/s, peak GPU memory, achieved TFLOP/s (FLOPs of one step from
   `torch.utils.flop_counter`), bf16 autocast, eager; compiled too for the headline pair.
   The headline: liquid ÷ DiT at about equal parameters, in latents/s.
2. The loaders on 51,200 real TAEF2 latents: host-resident, device-resident and streaming
   latents/s beside what the fastest training above consumes (goal: 3x).
3. Encode: images/s of TAEF2 and of an AutoencoderKL built from FLUX.1's VAE config (random
   weights: the architecture's cost, not its output), the VAE alone and the whole pipeline.
4. Sampling: images/s at batch 64, 25 Euler steps, with TAEF2 decode.

Everything uses what ships (TAEF2, paintings_mini), so it runs on a bare machine with no ../shared.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, TAEF2, commit, machine  # noqa: E402

from liquidgen.backbone.models import build_model, model_spec  # noqa: E402
from liquidgen.embedded import PAINTINGS_MINI  # noqa: E402
from liquidgen.objective import RectifiedFlow  # noqa: E402

# (row name, --model): liquid sizes, the seeds' smallest, DiT and U-Net near each liquid size
MODELS = [("liquid tiny", "tiny"), ("liquid small", "small"), ("liquiddiffusion-tiny", "liquiddiffusion-tiny"),
          ("liquidflow-tiny", "liquidflow-tiny"), ("liquidgen-s", "liquidgen-s"), ("dit-tiny", "dit-tiny"),
          ("dit-small", "dit-small"), ("unet-tiny", "unet-tiny"), ("unet-small", "unet-small")]
HEADLINE = ("liquid small", "dit-small")  # compiled too; their ratio is the headline
SHAPES = {"TAEF2 32x16x16": (32, 16, 16), "SD 4x32x32": (4, 32, 32)}


def unavailable() -> str | None:
    """run.py skips this section where there is no GPU (the last results stay)."""
    return None if torch.cuda.is_available() else "no CUDA device here: `python benchmarks/gpu.py --smoke` runs it on the CPU"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rate(name: str, shape: tuple[int, int, int], batch: int, steps: int, device: torch.device,
               compiled: bool) -> dict:
    """One model's training step at `batch`, bf16 autocast where the device has it."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = build_model(model_spec(name, shape[0], 0, shape[1])).to(device).train()
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    objective, forward = RectifiedFlow(), torch.compile(model) if compiled else model
    bf16 = device.type == "cpu" or torch.cuda.is_bf16_supported()

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    gen = torch.Generator(device=device).manual_seed(0)
    x0 = torch.randn(batch, *shape, device=device)

    def step(fn) -> None:
        t = objective.draw_t(batch, gen, device)
        loss = objective(fn, x0, torch.randn(x0.shape, generator=gen, device=device), t, None, autocast)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:  # eager: the count of the math, not of a kernel choice
        step(model)
    start = time.perf_counter()
    step(forward)  # warm-up; compiles here
    step(forward)
    _sync(device)
    warm = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(forward)
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    return {"params_m": params / 1e6, "steps_per_s": 1 / seconds, "latents_per_s": batch / seconds,
            "tflops": counter.get_total_flops() / seconds / 1e12, "warmup_s": warm,
            "peak_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def real_cache(tmp: Path, n: int, device: torch.device, images: int | None = None) -> Path:
    """paintings_mini (or `images` of it) through TAEF2 at 128 px, replicated to `n` latents by
    the cache builder."""
    from liquidgen.cache.store import CacheDir
    from liquidgen.pipeline.encode import EncodeConfig, encode
    from loader_speed import replicated_cache

    encode(EncodeConfig(str(PAINTINGS_MINI), str(tmp / "real"), vae=str(TAEF2), resolution=128, dtype="fp32",
                        device=str(device), limit=images, workers=0 if images else 4, progress=False))
    cache = CacheDir(tmp / "real")
    m = cache.manifest()
    import numpy as np

    real = np.concatenate([cache.read(s.name, m.storage.backend).latents for s in m.shards])
    return replicated_cache(tmp / "replicated", real, m, n, "zarr", "fp16")


def loader_rates(root: Path, batch: int, device: torch.device) -> dict:
    from liquidgen.cache.loader import InMemoryLatents, StreamingLatents

    out = {}
    for name, make in (("host-resident", lambda: InMemoryLatents(str(root), batch)),
                       ("device-resident", lambda: InMemoryLatents(str(root), batch, device=device)),
                       ("streaming", lambda: StreamingLatents(str(root), batch))):
        data = make()
        start, n = time.perf_counter(), 0
        for x, _ in data.batches(0):
            x = x.to(device, non_blocking=True)
            n += len(x)
        _sync(device)
        out[name] = n / (time.perf_counter() - start)
        if hasattr(data, "pool"):
            data.pool.shutdown(wait=True, cancel_futures=True)
    return out


def encode_rates(tmp: Path, images: int, resolution: int, device: torch.device, workers: int = 4) -> dict:
    import numpy as np
    from diffusers import AutoencoderKL

    from liquidgen.pipeline.encode import EncodeConfig, encode
    from liquidgen.pipeline.images import Preprocess, load_image
    from liquidgen.pipeline.vae import load_vae

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  layers_per_block=2, norm_num_groups=32, scaling_factor=0.3611, shift_factor=0.1159,
                  use_quant_conv=False, use_post_quant_conv=False).save_pretrained(tmp / "flux-config")
    files = sorted(PAINTINGS_MINI.rglob("*.jpg"))[:images]
    pixels = torch.from_numpy(np.stack([load_image(str(f), Preprocess(resolution)) for f in files]))
    out = {}
    for name, spec in (("TAEF2", str(TAEF2)), ("AutoencoderKL, FLUX.1 config", str(tmp / "flux-config"))):
        vae = load_vae(spec, device=device)
        vae.encode(pixels[:4].to(device))
        _sync(device)
        start = time.perf_counter()
        for chunk in pixels.split(32):
            vae.encode(chunk.to(device))
        _sync(device)
        alone = images / (time.perf_counter() - start)
        del vae
        start = time.perf_counter()
        encode(EncodeConfig(str(PAINTINGS_MINI), str(tmp / f"enc-{len(out)}"), vae=spec, resolution=resolution,
                            limit=images, batch_size=32, workers=workers, device=str(device), progress=False))
        out[name] = {"vae_images_per_s": alone, "pipeline_images_per_s": images / (time.perf_counter() - start)}
    return out


def sample_rate(batch: int, steps: int, device: torch.device) -> dict:
    from liquidgen.pipeline.sampler import sample_latents
    from liquidgen.pipeline.vae import load_vae

    model = build_model(model_spec("small", 32, 0, 16)).to(device).eval()
    vae = load_vae(str(TAEF2), device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        sample_latents(model, 2, (32, 16, 16), steps=2, device=device)  # warm-up
        _sync(device)
        start = time.perf_counter()
        z, _ = sample_latents(model, batch, (32, 16, 16), steps=steps, device=device)
        vae.decode(z.float())
        _sync(device)
    return {"images_per_s": batch / (time.perf_counter() - start), "batch": batch, "steps": steps}


def run(full: bool = False, device: str = "auto", smoke: bool = False) -> dict:
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    tmp = Path(tempfile.mkdtemp(prefix="lg-bench-gpu-"))
    if smoke:  # the same paths at sizes a CPU does in seconds
        models, shapes, batch, steps = [("liquid nano", "nano"), ("dit-tiny", "dit-tiny")], {"TAEF2 32x8x8": (32, 8, 8)}, 4, 1
        headline, cache_n, enc_images, enc_res, sample_batch, sample_steps = ("liquid nano", "dit-tiny"), 512, 4, 64, 2, 2
    else:
        models, shapes, batch, steps = MODELS, SHAPES, 256, 20
        headline, cache_n, enc_images, enc_res, sample_batch, sample_steps = HEADLINE, 51_200, 128, 256, 64, 25
    rows = []
    for shape_name, shape in shapes.items():
        for row, name in models:
            for compiled in ((False, True) if row in headline and shape_name == next(iter(shapes)) and not smoke else (False,)):
                r = train_rate(name, shape, batch, steps, dev, compiled)
                rows.append({"name": f"{row}{' compiled' if compiled else ''}, {shape_name}", "model": row,
                             "shape": shape_name, "compiled": compiled, **r})
                print(json.dumps(rows[-1]), flush=True)
    first = next(iter(shapes))
    rate = {r["model"]: r["latents_per_s"] for r in rows if r["shape"] == first and not r["compiled"]}
    consumed = max(r["latents_per_s"] for r in rows)
    loaders = loader_rates(real_cache(tmp, cache_n, dev, 8 if smoke else None), batch, dev)
    return {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "smoke": smoke,
            "batch_size": batch, "rows": rows, "liquid_over_dit": rate[headline[0]] / rate[headline[1]],
            "headline": list(headline), "loaders": loaders, "consumed": consumed, "cache_latents": cache_n,
            "encode": encode_rates(tmp, enc_images, enc_res, dev, 0 if smoke else 4), "encode_resolution": enc_res,
            "sample": sample_rate(sample_batch, sample_steps, dev)}


def markdown(r: dict) -> str:
    def num(v, fmt):
        return "–" if v is None else format(v, fmt)

    rows = "\n".join(f"| {x['name']} | {x['params_m']:.1f}M | {x['steps_per_s']:.2f} | {x['latents_per_s']:,.0f} | "
                     f"{num(x['peak_gb'], '.1f')} | {x['tflops']:.1f} | {x['warmup_s']:.0f} s |" for x in r["rows"])
    loaders = "\n".join(f"| {k} | {v:,.0f} | {v / r['consumed']:.1f}x |" for k, v in r["loaders"].items())
    enc = "\n".join(f"| {k} | {v['vae_images_per_s']:.1f} | {v['pipeline_images_per_s']:.1f} | "
                    f"{v['pipeline_images_per_s'] / v['vae_images_per_s']:.2f} |" for k, v in r["encode"].items())
    s = r["sample"]
    return f"""\
On **{r['device']}**{' (smoke run: tiny sizes, not a measurement)' if r['smoke'] else ''}. Training at batch {r['batch_size']},
bf16 autocast, AdamW, rectified flow; FLOPs of one step counted by `torch.utils.flop_counter` (eager).
Headline: **{r['headline'][0]} ÷ {r['headline'][1]} = {r['liquid_over_dit']:.2f}x** in latents/s at about equal
parameters ({next(iter(x['shape'] for x in r['rows']))}, eager).

| model, latents | params | steps/s | latents/s | peak GB | TFLOP/s | warm-up |
|---|---|---|---|---|---|---|
{rows}

Loaders on {r['cache_latents']:,} real TAEF2 latents (fp16 Zarr), batches moved to the device, beside the
fastest training above ({r['consumed']:,.0f} latents/s; goal 3x):

| loader | latents/s | ÷ training |
|---|---|---|
{loaders}

Encode at {r['encode_resolution']} px (the FLUX.1-config VAE has random weights: its cost, not its output):

| VAE | VAE alone, images/s | whole encode, images/s | pipeline ÷ VAE |
|---|---|---|---|
{enc}

Sampling: {s['images_per_s']:.1f} images/s at batch {s['batch']}, {s['steps']} Euler steps of liquid small, TAEF2 decode.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, any device, seconds: checks the paths")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/gpu.json, and docs/benchmarks.md re-rendered; "
                                      "a --smoke run writes only where --out says)")
    args = parser.parse_args()
    if not args.smoke and unavailable():
        sys.exit(unavailable())
    t0, at = time.time(), commit()
    result = run(device=args.device, smoke=args.smoke)
    meta = {"command": " ".join(["python benchmarks/gpu.py", *sys.argv[1:]]), "commit": at, "machine": machine(),
            "date": time.strftime("%Y-%m-%d"), "seconds": round(time.time() - t0)}
    text = json.dumps({"meta": meta, "result": result}, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    elif not args.smoke:
        (ROOT / "benchmarks" / "results" / "gpu.json").write_text(text)
        from run import render

        render()
    print(markdown(result))


if __name__ == "__main__":
    main()
