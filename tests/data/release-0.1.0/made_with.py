"""How this folder was made: with liquidgen 0.1.0 as released (commit 931dc32), so that
tests/test_compat.py can check that runs and exports written by that release still load and
give the same images. Rerun it only to rebuild the fixture from that commit:

    git worktree add /tmp/rel 931dc32
    PYTHONPATH=/tmp/rel .venv/bin/python tests/data/release-0.1.0/made_with.py

run/      `liquidgen train --model nano` for 4 steps on 12 of the shipped paintings (TAEF2, 64 px),
          only its config.json and last EMA weights and meta.json (all that sampling reads)
export/   `liquidgen export run/` without vae/ (TAEF2 ships with liquidgen)
reference.safetensors  `generate(run/)` and the export's pipeline images for one seed
"""

import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

import liquidgen
from liquidgen.embedded import PAINTINGS_MINI
from liquidgen.pipeline.encode import EncodeConfig, encode
from liquidgen.pipeline.export import LiquidGenPipeline, export
from liquidgen.pipeline.sample import generate
from liquidgen.pipeline.train import TrainConfig, train

HERE = Path(__file__).resolve().parent
assert "/tmp/rel" in liquidgen.__file__, f"run with the release's code on PYTHONPATH, not {liquidgen.__file__}"

with tempfile.TemporaryDirectory() as tmp:
    images = Path(tmp) / "images"
    for style in ("Baroque", "Rococo"):
        (images / style).mkdir(parents=True)
        for f in sorted((PAINTINGS_MINI / style).iterdir())[:6]:
            (images / style / f.name).symlink_to(f)
    cache, run = Path(tmp) / "cache", Path(tmp) / "run"
    encode(EncodeConfig(str(images), str(cache), vae="taef2", resolution=64, shard_size=16, batch_size=8,
                        workers=1, progress=False))
    train(TrainConfig(cache=str(cache), out=str(run), model="nano", steps=4, batch_size=4, warmup=1, lr=1e-2,
                      ckpt_every=4, log_every=1, preview_every=0, progress=False))
    for name in ("run", "export"):
        shutil.rmtree(HERE / name, ignore_errors=True)
    last = (run / "checkpoints" / "latest").read_text().strip()
    (HERE / "run" / "checkpoints" / last).mkdir(parents=True)
    shutil.copy(run / "config.json", HERE / "run" / "config.json")
    for f in ("ema.safetensors", "meta.json"):
        shutil.copy(run / "checkpoints" / last / f, HERE / "run" / "checkpoints" / last)
    (HERE / "run" / "checkpoints" / "latest").write_text(last)
    export(str(run), str(HERE / "export"))

reference = {"generate": generate(HERE / "run", n=3, steps=3, seed=5, cfg_scale=2.0, class_name="Baroque")}
pipe = LiquidGenPipeline.from_pretrained(str(HERE / "export"))
reference["pipeline"] = pipe(num_images=3, num_inference_steps=3, seed=5, guidance_scale=2.0, class_name="Baroque",
                             output_type="pt").images
shutil.rmtree(HERE / "export" / "vae")
save_file({k: v.contiguous() for k, v in reference.items()}, str(HERE / "reference.safetensors"))
print({k: tuple(v.shape) for k, v in reference.items()}, torch.equal(reference["generate"], reference["pipeline"]))
