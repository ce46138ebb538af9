"""Tiny SD1.5 packs: `sd15` (stable-diffusion-v1-5 in diffusers layout, fp16
variant files, no safety checker) and `sd15-vae` (stabilityai/sd-vae-ft-mse
layout: config.json + float32 safetensors).

The UNet keeps SD1.5's block structure (three cross-attention down blocks and a
plain one, the mirror on the way up, a cross-attention mid block, two layers per
block, one transformer per attention), so `unet.attn_processors` has the same 32
entries in the same order and the W+ adapter's cross-attention indices are the
published odd 1..31. Only the widths shrink: channels 8/16/32/32, 2 heads,
cross-attention width 32 (= the text encoder width). The VAE has four levels, so
an image is 8x its latent, as in SD1.5.

Every module is built under its own fixed seed.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import pack
from .tokenizer import special_ids, vocab_size, write_clip_tokenizer

SEED_UNET = 30
SEED_VAE = 31
SEED_TEXT_ENCODER = 32
SEED_VAE_FT = 33

CROSS_ATTENTION_DIM = 32  # = text encoder width (CLIP ViT-L/14's 768 in SD1.5)


def tiny_unet_config() -> dict:
    return {
        "sample_size": 8,  # 8x8 latents -> 64x64 images by default
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (8, 16, 32, 32),
        "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "attention_head_dim": 2,  # diffusers' legacy name: 2 heads, as SD1.5's 8
        "norm_num_groups": 8,
        "cross_attention_dim": CROSS_ATTENTION_DIM,
    }


def tiny_vae_config() -> dict:
    return {
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (8, 16, 16, 16),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
        "sample_size": 64,
        "scaling_factor": 0.18215,  # SD1.5's
    }


def tiny_text_encoder_config() -> dict:
    ids = special_ids()
    return {
        "vocab_size": vocab_size(),
        "hidden_size": CROSS_ATTENTION_DIM,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",  # CLIP ViT-L/14, as published
        "layer_norm_eps": 1e-5,
        "projection_dim": CROSS_ATTENTION_DIM,
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["eos"],
    }


def scheduler_config() -> dict:
    """SD1.5's PNDMScheduler settings."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "prediction_type": "epsilon",
    }


def build_unet():
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(SEED_UNET)
    return UNet2DConditionModel(**tiny_unet_config()).eval()


def build_vae(seed: int = SEED_VAE):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    # a torch Module; mypy does not resolve the bases of diffusers' autoencoder classes
    return AutoencoderKL(**tiny_vae_config()).eval()  # type: ignore[attr-defined]


def build_text_encoder():
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(SEED_TEXT_ENCODER)
    return CLIPTextModel(CLIPTextConfig(**tiny_text_encoder_config())).eval()


def build_scheduler():
    from diffusers import PNDMScheduler

    return PNDMScheduler.from_config(scheduler_config())


def model_index() -> dict:
    """stable-diffusion-v1-5's model_index.json without the safety checker files
    (the catalog entry does not download them)."""
    import diffusers

    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def _to_half(model):
    import torch

    return torch.nn.Module.to(model, dtype=torch.float16)


@pack("sd15", version=2)  # 2: "id" is one token (tokenizer EXTRA_MERGES)
def build_sd15(dest: Path) -> None:
    """SD1.5 layout with fp16 variant weights (`*.fp16.safetensors`) in float16."""
    dest = Path(dest)
    half = dict(variant="fp16", safe_serialization=True)
    _to_half(build_unet()).save_pretrained(dest / "unet", **half)
    _to_half(build_vae()).save_pretrained(dest / "vae", **half)
    _to_half(build_text_encoder()).save_pretrained(dest / "text_encoder", **half)
    write_clip_tokenizer(dest / "tokenizer")
    build_scheduler().save_pretrained(dest / "scheduler")
    (dest / "model_index.json").write_text(json.dumps(model_index(), indent=2) + "\n")


def build_vae_ft():
    """The tiny SD1.5 VAE nudged by 1% noise: like sd-vae-ft-mse, a fine-tune of
    the base VAE with the same config."""
    import torch

    vae = build_vae()
    gen = torch.Generator().manual_seed(SEED_VAE_FT)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.01 * (p.std() if p.numel() > 1 else 1.0))
    return vae


@pack("sd15-vae", version=1)
def build_sd15_vae(dest: Path) -> None:
    """stabilityai/sd-vae-ft-mse layout: config.json + float32 safetensors."""
    build_vae_ft().save_pretrained(Path(dest), safe_serialization=True)
