"""`liquidgen export`: a trained run as a diffusers pipeline folder.

    out/model_index.json          LiquidGenPipeline: unet, scheduler, vae, and `latents` (the
                                  run's latent statistics, class names and the VAE's description)
    out/unet/                     the run's backbone, any family (config.json: its spec;
                                  safetensors: the EMA weights)
    out/scheduler/                FlowMatchEulerDiscreteScheduler (DDIMScheduler for --objective eps)
    out/vae/                      the run's VAE: its diffusers model, or a TAESD-family pair as
                                  TAESDModel
    out/pipeline.py               for `DiffusionPipeline.from_pretrained(out, custom_pipeline=...)`

Load it with `LiquidGenPipeline.from_pretrained(out)` or
`DiffusionPipeline.from_pretrained(out, custom_pipeline=f"{out}/pipeline.py", trust_remote_code=True)`
(liquidgen installed). The pipeline samples with the same code
as `liquidgen sample`, so the same seed gives the same images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from diffusers import ConfigMixin, DiffusionPipeline, ModelMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from PIL import Image

from liquidgen.backbone.base import Backbone
from liquidgen.backbone.unet import LiquidUNet
from liquidgen.errors import LiquidgenError
from liquidgen.pipeline.checkpoint import load_run
from liquidgen.pipeline.sampler import generate_raw, make_scheduler, pick_labels, resolve_sampler
from liquidgen.pipeline.taesd import build_decoder, build_encoder, pooled_blocks
from liquidgen.pipeline.vae import FrozenVae, load_vae


class LiquidUNet2DModel(ModelMixin, ConfigMixin):
    """Reads pipelines exported by liquidgen 0.1.0, whose `unet` wrapped the liquid U-Net (as
    `net`) and listed its fields flat beside `latents`. New exports save the backbone itself."""

    def __init__(self, spec: dict, latents: dict | None = None):
        super().__init__()
        self.register_to_config(spec=spec, latents=latents)
        self.net = LiquidUNet({"head": "gn", **spec})

    @classmethod
    def extract_init_dict(cls, config_dict: dict, **kwargs):
        fields = {k: v for k, v in config_dict.items() if not k.startswith("_") and k not in ("spec", "latents")}
        config_dict = {**{k: v for k, v in config_dict.items() if k.startswith("_")},
                       "spec": config_dict.get("spec", fields), "latents": config_dict.get("latents")}
        return super().extract_init_dict(config_dict, **kwargs)

    @property
    def null_class(self) -> int:
        return self.net.null_class

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x, t, labels)


class TAESDModel(ModelMixin, ConfigMixin):
    """A TAESD-family encoder/decoder pair (TAEF2's pooled blocks included) as a diffusers model."""

    @register_to_config
    def __init__(self, latent_channels: int = 32, encoder_pooled=(), decoder_pooled=()):
        super().__init__()
        self.encoder = build_encoder(latent_channels, list(encoder_pooled))
        self.decoder = build_decoder(latent_channels, list(decoder_pooled))


class LiquidGenPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "unet->vae"

    def __init__(self, unet: ModelMixin, scheduler: SchedulerMixin, vae: ModelMixin, latents: dict | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)
        self.register_to_config(latents=latents)

    @property
    def latents(self) -> dict:
        """The run's latent statistics, class names and VAE description (`latents` in the run's
        config.json), which sampling needs; pipelines from liquidgen 0.1.0 kept them in the unet."""
        return self.config.latents or self.unet.config.latents

    def _frozen_vae(self) -> FrozenVae:
        info = self.latents["vae"]
        if isinstance(self.vae, TAESDModel):
            return FrozenVae(info, encoder=self.vae.encoder, decoder=self.vae.decoder)
        return FrozenVae(info, model=self.vae)

    @torch.no_grad()
    def __call__(self, num_images: int = 4, num_inference_steps: int = 50, guidance_scale: float = 1.0,
                 class_name: str | None = None, guidance_interval: tuple[float, float] = (0.0, 0.75),
                 seed: int = 0, batch_size: int = 64, output_type: str = "pil") -> ImagePipelineOutput:
        lat = self.latents
        labels = pick_labels(lat["label_names"], num_images, class_name)
        gen = torch.Generator().manual_seed(seed)
        raw, _ = generate_raw(self.unet.eval(), lat, labels, num_images, num_inference_steps, guidance_scale,
                              guidance_interval, self.scheduler, gen, self.device, batch_size)
        vae = self._frozen_vae()
        images = torch.cat([vae.decode(chunk.to(self.device)).cpu() for chunk in raw.split(16)])
        if output_type == "pt":
            return ImagePipelineOutput(images=images)
        arr = (images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
        return ImagePipelineOutput(images=[Image.fromarray(a) for a in arr])


def model_card(run: str, config: dict, checkpoint: str) -> str:
    """README.md of an exported pipeline: what it was trained on, and every score the run holds
    (eval.json, the in-training evaluation settings) beside what it was computed with."""
    lat = config["latents"]
    # named by what the images were (a dataset id, a folder's name), never by this machine's paths
    sources = config["cache"].get("sources") or [Path(str(config["cache"]["path"])).name]
    vae = lat["vae"]["id"]
    vae = Path(vae).name if Path(vae).is_absolute() else vae
    lines = ["---", "tags: [liquidgen, unconditional-image-generation]" if not lat["label_names"] else
             "tags: [liquidgen, class-conditional-image-generation]", "library_name: diffusers", "---",
             f"# {Path(run).name}: a liquidgen `{config['train']['model']}` model", "",
             f"Trained by liquidgen on a cache of `{'`, `'.join(sources)}` ({config['cache']['count']} latents, "
             f"{'x'.join(map(str, lat['shape']))} latents of `{vae}`), {checkpoint}. Classes: {', '.join(lat['label_names']) or 'none'}.", ""]
    scored = Path(run) / "eval.json"
    if scored.exists():
        result = json.loads(scored.read_text())
        lines += [f"## Scores (`liquidgen eval`, {result['checkpoint']})", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in result["metrics"].items()]
        lines += ["", "Computed with:", "", "```json", json.dumps(result.get("settings", {}), indent=1), "```", ""]
    if config.get("eval"):
        lines += ["## Evaluation during training", "", "Settings (from config.json):", "", "```json",
                  json.dumps(config["eval"], indent=1), "```", ""]
    lines += ["Load it:", "", "```python", "from liquidgen.pipeline.export import LiquidGenPipeline",
              "pipe = LiquidGenPipeline.from_pretrained('<this folder>')", "images = pipe(num_images=4).images", "```", ""]
    return "\n".join(lines)


def export(run: str, out: str, checkpoint: str | None = None, onnx: bool = False, progress: bool = True) -> Path:
    """The diffusers pipeline folder of a run's EMA model (any model liquidgen trains); with
    `onnx`, also the backbone and VAE decoder as ONNX files beside it. `progress`: a bar over
    the parts, named as each starts (the ONNX export alone can take minutes)."""
    from tqdm.auto import tqdm

    with tqdm(total=4 if onnx else 3, unit="part", desc="export: loading the run", disable=not progress) as bar:
        model, config, path = load_run(run, checkpoint)
        bar.update()
        if onnx:
            from liquidgen.pipeline.onnx import export_onnx

            bar.set_description("export: ONNX files")
            export_onnx(model, config, Path(out))
            bar.update()
        bar.set_description("export: diffusers pipeline")
        _save_pipeline(model, config, out)
        bar.update()
        bar.set_description("export: model card")
        try:
            (Path(out) / "README.md").write_text(model_card(run, config, path.name))
        except OSError as exc:
            raise LiquidgenError(f"cannot write {out}: {exc.strerror or exc}") from None
        bar.update()
    return Path(out)


def _save_pipeline(model: Backbone, config: dict, out: str) -> None:
    info = config["latents"]["vae"]
    frozen = load_vae(info)
    if frozen.model is not None:
        vae = frozen.model
    else:
        enc, dec = frozen.encoder.state_dict(), frozen.decoder.state_dict()
        vae = TAESDModel(info["latent_channels"], pooled_blocks(enc), pooled_blocks(dec))
        vae.encoder.load_state_dict(enc)
        vae.decoder.load_state_dict(dec)
    # the run's default sampler as the pipeline's scheduler: flow-matching Euler, or DDIM for eps
    scheduler = make_scheduler(resolve_sampler(config["latents"].get("objective"), "auto"))
    pipe = LiquidGenPipeline(unet=model, scheduler=scheduler, vae=vae, latents=config["latents"])
    try:
        pipe.save_pretrained(out)
        (Path(out) / "pipeline.py").write_text(
            '"""Custom pipeline entry for diffusers; needs `pip install liquidgen`."""\n'
            "from liquidgen.pipeline.export import LiquidGenPipeline  # noqa: F401\n")
    except OSError as exc:
        raise LiquidgenError(f"cannot write {out}: {exc.strerror or exc}") from None
