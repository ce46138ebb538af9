"""Tiny pack `sdxl-inpainting`: diffusers/stable-diffusion-xl-1.0-inpainting-0.1 in
its published diffusers layout (fp16 variant files, model_index naming
StableDiffusionXLInpaintPipeline).

The published UNet is SDXL's with `in_channels` 9: the noisy latent (4), the
masked image's latent (4) and the mask (1), concatenated in that order by
diffusers' inpaint pipeline. The tiny UNet is the tiny SDXL UNet with the same
change (its own seed); the VAE, text encoders, tokenizers and scheduler are the
tiny SDXL ones."""

from __future__ import annotations

import json
from pathlib import Path

from . import pack
from .sdxl import build_scheduler, build_text_encoders, build_vae, model_index, tiny_unet_config, to_half
from .tokenizer import write_clip_tokenizer

SEED_INPAINT_UNET = 11
IN_CHANNELS = 9  # 4 noisy latent + 4 masked-image latent + 1 mask


def build_inpaint_unet():
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(SEED_INPAINT_UNET)
    return UNet2DConditionModel(**{**tiny_unet_config(), "in_channels": IN_CHANNELS}).eval()


@pack("sdxl-inpainting", version=1)
def build_sdxl_inpainting(dest: Path) -> None:
    dest = Path(dest)
    half = dict(variant="fp16", safe_serialization=True)
    to_half(build_inpaint_unet()).save_pretrained(dest / "unet", **half)
    to_half(build_vae()).save_pretrained(dest / "vae", **half)
    te, te2 = build_text_encoders()
    to_half(te).save_pretrained(dest / "text_encoder", **half)
    to_half(te2).save_pretrained(dest / "text_encoder_2", **half)
    write_clip_tokenizer(dest / "tokenizer")
    write_clip_tokenizer(dest / "tokenizer_2", pad_token="!")
    build_scheduler().save_pretrained(dest / "scheduler")
    index = {**model_index(), "_class_name": "StableDiffusionXLInpaintPipeline", "requires_aesthetics_score": False}
    (dest / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
