"""The frozen VAE: named presets, diffusers models (Hub id or local folder) and TAESD-family
`.pth` pairs behind one small interface.

Everything needed to decode later is returned as a plain dict (`FrozenVae.info`) and written to
the cache manifest, so a cache names its VAE completely and `load_vae(manifest.vae)` gets the
same model back.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from liquidgen.embedded import TAEF2
from liquidgen.network import hub_unreachable
from liquidgen.errors import LiquidgenError


@dataclass(frozen=True)
class VaePreset:
    id: str
    subfolder: str | None = None
    note: str = ""
    folder: Path | None = None  # shipped with the package: loaded from here, never downloaded


# What the reference designs use. TAESD-family members whose layout diffusers' AutoencoderTiny
# covers are loaded as diffusers models; taef2 (pooled blocks) is fetched as its .pth pair.
VAE_PRESETS: dict[str, VaePreset] = {
    "flux": VaePreset("black-forest-labs/FLUX.1-schnell", "vae", "FLUX.1 VAE, 16 channels"),
    "flux2": VaePreset("black-forest-labs/FLUX.2-dev", "vae", "FLUX.2 VAE, 32 channels (gated)"),
    "sd": VaePreset("stabilityai/sd-vae-ft-mse", None, "SD 1.x VAE, 4 channels"),
    "sdxl": VaePreset("madebyollin/sdxl-vae-fp16-fix", None, "SDXL VAE (fp16-safe), 4 channels"),
    "taesd": VaePreset("madebyollin/taesd", None, "tiny SD 1.x VAE, 4 channels"),
    "taesdxl": VaePreset("madebyollin/taesdxl", None, "tiny SDXL VAE, 4 channels"),
    "taef1": VaePreset("madebyollin/taef1", None, "tiny FLUX.1 VAE, 16 channels"),
    "taef2": VaePreset("taef2", None, "tiny FLUX.2 VAE, 32 channels: shipped, offline", folder=TAEF2),
}



def _find_pth_pair(folder: Path) -> tuple[Path, Path] | None:
    encoders = sorted(folder.glob("*_encoder.pth"))
    for enc in encoders:
        dec = enc.with_name(enc.name.replace("_encoder.pth", "_decoder.pth"))
        if dec.exists():
            return enc, dec
    return None


def _download_taesd_pair(base_url: str) -> Path:
    """Fetch a TAESD-family .pth pair once into the user cache (users with network only)."""
    import fsspec

    name = base_url.rstrip("/").rsplit("/", 1)[-1]
    folder = Path(os.environ.get("LIQUIDGEN_HOME", Path.home() / ".cache" / "liquidgen")) / name
    folder.mkdir(parents=True, exist_ok=True)
    for half in ("encoder", "decoder"):
        target = folder / f"{name}_{half}.pth"
        if not target.exists():
            try:
                with fsspec.open(f"{base_url}_{half}.pth", "rb") as src:
                    data = src.read()
            except Exception as exc:  # network errors come in many types
                raise LiquidgenError(
                    f"could not download {base_url}_{half}.pth ({exc.__class__.__name__}); "
                    f"offline, pass --vae with a folder holding {name}_encoder.pth and {name}_decoder.pth"
                ) from None
            target.with_suffix(".tmp").write_bytes(data)
            target.with_suffix(".tmp").rename(target)
    return folder


class FrozenVae(nn.Module):
    """A frozen VAE in eval mode: `encode` takes uint8 RGB batches, `decode` returns [0, 1] RGB.

    Latents in and out are *raw* (not multiplied by the scaling factor): the cache stores raw
    latents and normalizes at load time from its own statistics.
    """

    def __init__(self, info: dict, encoder=None, decoder=None, model=None):
        super().__init__()
        self.info = info
        self.model = model  # diffusers model, or None for a .pth pair
        self.encoder, self.decoder = encoder, decoder
        self.requires_grad_(False)
        self.eval()

    @property
    def latent_channels(self) -> int:
        return self.info["latent_channels"]

    @property
    def downscale(self) -> int:
        return self.info["downscale"]

    @property
    def is_kl(self) -> bool:
        return self.info["kind"] == "kl"

    def _to_input(self, images_uint8: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        x = images_uint8.to(dtype) / 255.0
        lo, hi = self.info["input_range"]
        return x * (hi - lo) + lo

    @torch.no_grad()
    def encode(self, images_uint8: torch.Tensor, store: str = "mean", generator=None) -> torch.Tensor:
        """uint8 (N, 3, H, W) on the VAE's device -> float32 raw latents (N, C or 2C, h, w)."""
        dtype = next(self.parameters()).dtype
        x = self._to_input(images_uint8, dtype)
        if self.encoder is not None:
            return self.encoder(x).float()
        if self.is_kl:
            dist = self.model.encode(x).latent_dist
            if store == "mean":
                z = dist.mean
            elif store == "sample":
                z = dist.mean + dist.std * torch.randn(
                    dist.mean.shape, generator=generator, device=x.device, dtype=dist.mean.dtype
                )
            else:  # moments: mean and logvar side by side, sampled at load time
                z = torch.cat([dist.mean, dist.logvar], dim=1)
            return z.float()
        out = self.model.encode(x)  # AutoencoderTiny names it `latents`, AutoencoderDC `latent`
        return (out.latents if hasattr(out, "latents") else out.latent).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw latents (N, C, h, w) -> RGB float in [0, 1]."""
        dtype = next(self.parameters()).dtype
        z = latents.to(self.device_, dtype)
        if self.encoder is not None:
            return self.decoder(z).float().clamp(0, 1)
        x = self.model.decode(z).sample  # diffusers decoders take raw (unscaled) latents
        lo, hi = self.info["input_range"]
        return ((x.float() - lo) / (hi - lo)).clamp(0, 1)

    @property
    def device_(self) -> torch.device:
        return next(self.parameters()).device


def _diffusers_model(path_or_id: str, subfolder: str | None, name: str | None = None):
    import diffusers

    if not Path(path_or_id).expanduser().exists():
        # From the local Hugging Face cache if it is there; if not, ask the Hub once, quickly,
        # instead of letting the loader retry for a minute when there is no network.
        try:
            with warnings.catch_warnings():  # its deprecation notices are not the user's business
                warnings.simplefilter("ignore")
                return diffusers.AutoModel.from_pretrained(path_or_id, subfolder=subfolder, local_files_only=True)
        except (OSError, ValueError, EnvironmentError):
            pass
        why = hub_unreachable(path_or_id)
        if why:
            raise LiquidgenError(
                f"cannot reach the Hugging Face Hub for {name or path_or_id!r} ({path_or_id}; {why}) and it is not "
                "in the local Hugging Face cache; pass a local --vae folder, or --vae taef2 (shipped with liquidgen)"
            )
    try:
        model = diffusers.AutoModel.from_pretrained(path_or_id, subfolder=subfolder)
    except (OSError, ValueError, EnvironmentError) as exc:
        where = f"{path_or_id}" + (f" (subfolder {subfolder})" if subfolder else "")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise LiquidgenError(
            f"could not load the VAE {where}: {first[:300]}. Pass --vae a preset "
            f"({', '.join(VAE_PRESETS)}), a diffusers folder or Hub id, or a folder with a "
            "TAESD-family *_encoder.pth/*_decoder.pth pair"
        ) from None
    return model


def _info_from_diffusers(model, vae_id: str, subfolder: str | None) -> dict:
    cfg = model.config
    cls = model.__class__.__name__
    # Tiny and DC autoencoders are deterministic; the others return a diagonal Gaussian.
    kind = "tiny" if cls in ("AutoencoderTiny", "AutoencoderDC") else "kl"
    latent_channels = int(cfg.get("latent_channels"))
    block_out = cfg.get("block_out_channels") or cfg.get("encoder_block_out_channels") or [0] * 4
    downscale = 2 ** (len(block_out) - 1)
    return {
        "id": vae_id,
        "subfolder": subfolder,
        "class": cls,
        "kind": kind,
        "latent_channels": latent_channels,
        "downscale": downscale,
        "scaling_factor": float(cfg.get("scaling_factor") or 1.0),
        "shift_factor": float(cfg.get("shift_factor") or 0.0),
        "input_range": [-1.0, 1.0],
    }


def load_vae(
    spec: str | dict, subfolder: str | None = None, device: str | torch.device = "cpu", dtype: str = "auto"
) -> FrozenVae:
    """A preset name, a diffusers Hub id or folder, a TAESD .pth folder, or a manifest's `vae` dict."""
    if isinstance(spec, dict):
        subfolder = spec.get("subfolder")
        spec = spec["id"]
    vae_id = spec
    preset = VAE_PRESETS.get(spec)
    if preset is not None:
        spec, subfolder = preset.id, subfolder or preset.subfolder
        vae_id = spec
    local = Path(spec).expanduser()
    if preset is not None and preset.folder is not None:
        local = preset.folder  # shipped: the manifest records the preset's name, not this path
    elif spec.startswith(("http://", "https://")):
        local = _download_taesd_pair(spec)
    if local.is_dir() and (pair := _find_pth_pair(local)) is not None:
        from liquidgen.pipeline.taesd import load_pair

        encoder, decoder = load_pair(str(pair[0]), str(pair[1]))
        named = (preset is not None and preset.folder is not None) or spec.startswith(("http://", "https://"))
        info = {
            "id": vae_id if named else str(local.resolve()),
            "subfolder": None,
            "class": "TAESD:" + pair[0].name.removesuffix("_encoder.pth"),
            "kind": "tiny",
            "latent_channels": int(encoder[-1].out_channels),
            "downscale": 8,
            "scaling_factor": 1.0,
            "shift_factor": 0.0,
            "input_range": [0.0, 1.0],
        }
        vae = FrozenVae(info, encoder=encoder, decoder=decoder)
    else:
        if local.exists() and not (local / (subfolder or "") / "config.json").exists():
            raise LiquidgenError(
                f"{local} is neither a diffusers model folder (no config.json) nor a folder with a "
                "TAESD-family *_encoder.pth/*_decoder.pth pair"
            )
        if local.exists():
            vae_id = str(local.resolve())
        elif not _looks_like_hub_id(spec):
            raise LiquidgenError(
                f"unknown VAE '{spec}': not a preset ({', '.join(VAE_PRESETS)}), not an existing "
                "folder, not a Hub id of the form ORG/NAME"
            )
        model = _diffusers_model(str(local) if local.exists() else spec, subfolder,
                                 name=next((k for k, v in VAE_PRESETS.items() if v is preset), None))
        vae = FrozenVae(_info_from_diffusers(model, vae_id, subfolder), model=model)
    return vae.to(device=device, dtype=_pick_dtype(dtype, device))


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def _pick_dtype(dtype: str, device) -> torch.dtype:
    """fp32 on CPU; bf16 on a GPU that has it (safe for KL VAEs, unlike fp16), else fp16."""
    if dtype != "auto":
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def decode_latents(raw: torch.Tensor, vae_spec, device, batch_size: int = 16, progress: bool = False) -> torch.Tensor:
    """Raw (unnormalized) latents -> RGB in [0, 1], with the VAE loaded now and dropped after;
    `progress`: a bar over the images."""
    from tqdm.auto import tqdm

    if not torch.isfinite(raw).all():
        bad = int((~torch.isfinite(raw)).flatten(1).any(1).sum())
        raise LiquidgenError(f"{bad} of the {len(raw)} latents hold NaN or infinite values: nothing to decode "
                             "(a model that diverged, or a damaged file)")
    vae = load_vae(vae_spec, device=device)
    if raw.shape[1] != vae.latent_channels:
        raise LiquidgenError(f"the latents have {raw.shape[1]} channels but the VAE {vae.info['id']} "
                             f"expects {vae.latent_channels}")
    try:
        with tqdm(total=len(raw), unit="img", desc="decode", disable=not progress) as bar:
            images = []
            for chunk in raw.split(batch_size):
                images.append(vae.decode(chunk.to(device)).cpu())
                bar.update(len(chunk))
        return torch.cat(images)
    finally:
        del vae
