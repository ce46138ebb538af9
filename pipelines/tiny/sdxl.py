"""Tiny SDXL packs: `sdxl` (stabilityai/stable-diffusion-xl-base-1.0 in diffusers
layout, fp16 variant files) and `sdxl-vae` (madebyollin/sdxl-vae-fp16-fix).

The shapes follow diffusers' own SDXL test components (two-level UNet 32/64 with
text-time conditioning, two CLIP text encoders of widths 48 and 80 (as 768 and 1280)
whose penultimate states concatenate to the UNet's cross-attention width 128, the
second with a 32-d pooled projection). The cross-attention width is 128 on purpose:
the FaceID Plus perceiver resampler works at the cross-attention width, and diffusers
infers its head count as rows(to_q)/64, so 128 is the smallest width that gives it
two heads (the published one has 32), which a head-order bug needs to show. The VAE has four levels so that, as in real SDXL, an
image is 8x the latent size (a 64x64 image is an 8x8 latent, and a ControlNet with
the stock conditioning embedding fits it unchanged).

Every module is built under its own fixed seed, so a pack is byte-identical across
builds in one environment.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import pack
from .tokenizer import special_ids, vocab_size, write_clip_tokenizer

# one seed per module: changing one module never changes another
SEED_UNET = 0
SEED_VAE = 1
SEED_TEXT_ENCODER = 2
SEED_TEXT_ENCODER_2 = 3
SEED_VAE_FIX = 4

CROSS_ATTENTION_DIM = 128  # = text_encoder width + text_encoder_2 width
# CLIP-L and OpenCLIP-bigG stand-ins: different widths in the published ratio (768 : 1280),
# summing to the cross-attention width; diffusers' single-file loader tells the two
# encoders apart by width
TEXT_WIDTH, TEXT_WIDTH_2 = 48, 80
POOLED_DIM = 32  # text_encoder_2 projection_dim
TIME_EMBED_DIM = 8  # addition_time_embed_dim; 6 time ids each get one embedding


def tiny_unet_config() -> dict:
    """UNet2DConditionModel kwargs of the tiny SDXL UNet."""
    return {
        "sample_size": 8,  # 8x8 latents -> 64x64 images by default
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": (2, 4),
        "transformer_layers_per_block": (1, 2),
        "use_linear_projection": True,
        "cross_attention_dim": CROSS_ATTENTION_DIM,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": TIME_EMBED_DIM,
        "projection_class_embeddings_input_dim": 6 * TIME_EMBED_DIM + POOLED_DIM,
    }


def tiny_vae_config() -> dict:
    """AutoencoderKL kwargs shared by the tiny SDXL VAE and the tiny fp16-fix VAE."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (16, 32, 32, 32),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
        "sample_size": 64,
        "scaling_factor": 0.13025,  # SDXL's
    }


def tiny_text_encoder_config(with_projection: bool = False) -> dict:
    """CLIPTextConfig kwargs; ids match the tiny tokenizer's vocabulary."""
    ids = special_ids()
    return {
        "vocab_size": vocab_size(),
        "hidden_size": TEXT_WIDTH_2 if with_projection else TEXT_WIDTH,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 5,
        "max_position_embeddings": 77,
        "hidden_act": "gelu" if with_projection else "quick_gelu",  # bigG / ViT-L, as published
        "layer_norm_eps": 1e-5,
        "projection_dim": POOLED_DIM,
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["eos"],
    }


def scheduler_config() -> dict:
    """SDXL base's EulerDiscreteScheduler settings."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
        "timestep_spacing": "leading",
        "steps_offset": 1,
    }


def to_half(model):
    """Cast every weight to float16, as in the published fp16 files (plain
    `nn.Module.to`: diffusers' override only adds a warning about modules it would
    keep in float32 when loading, and these tiny models have none)."""
    import torch

    return torch.nn.Module.to(model, dtype=torch.float16)


def build_unet():
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(SEED_UNET)
    return UNet2DConditionModel(**tiny_unet_config()).eval()


def build_vae(seed: int = SEED_VAE, force_upcast: bool = True):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    # a torch Module; mypy does not resolve the bases of diffusers' autoencoder classes
    return AutoencoderKL(**tiny_vae_config(), force_upcast=force_upcast).eval()  # type: ignore[attr-defined]


def build_text_encoders():
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(SEED_TEXT_ENCODER)
    te = CLIPTextModel(CLIPTextConfig(**tiny_text_encoder_config())).eval()
    torch.manual_seed(SEED_TEXT_ENCODER_2)
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**tiny_text_encoder_config(with_projection=True))).eval()
    return te, te2


def build_scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(**scheduler_config())


def model_index() -> dict:
    """SDXL base's model_index.json (the published one names no image encoder)."""
    import diffusers

    return {
        "_class_name": "StableDiffusionXLPipeline",
        "_diffusers_version": diffusers.__version__,
        "force_zeros_for_empty_prompt": True,
        "add_watermarker": None,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


@pack("sdxl", version=3)
def build_sdxl(dest: Path) -> None:
    """SDXL base layout with fp16 variant weights (`*.fp16.safetensors`), stored in
    float16 like the published files."""
    dest = Path(dest)
    half = dict(variant="fp16", safe_serialization=True)
    to_half(build_unet()).save_pretrained(dest / "unet", **half)
    to_half(build_vae()).save_pretrained(dest / "vae", **half)
    te, te2 = build_text_encoders()
    to_half(te).save_pretrained(dest / "text_encoder", **half)
    to_half(te2).save_pretrained(dest / "text_encoder_2", **half)
    write_clip_tokenizer(dest / "tokenizer")
    write_clip_tokenizer(dest / "tokenizer_2", pad_token="!")  # OpenCLIP bigG pads with "!"
    build_scheduler().save_pretrained(dest / "scheduler")
    (dest / "model_index.json").write_text(json.dumps(model_index(), indent=2) + "\n")


def build_vae_fix():
    """The tiny SDXL VAE nudged by 1% noise: like the real fp16-fix, a fine-tune of
    the base VAE with the same config, so swapping it in changes images a little."""
    import torch

    vae = build_vae(force_upcast=False)
    gen = torch.Generator().manual_seed(SEED_VAE_FIX)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.01 * (p.std() if p.numel() > 1 else 1.0))
    return vae


@pack("sdxl-vae", version=1)
def build_sdxl_vae(dest: Path) -> None:
    """madebyollin/sdxl-vae-fp16-fix layout: config.json + float32 safetensors."""
    build_vae_fix().save_pretrained(Path(dest), safe_serialization=True)


@pack("sdxl-config", version=3)
def build_sdxl_config(dest: Path) -> None:
    """The SDXL base repo without its weights: model_index, configs, scheduler and
    tokenizers, which `from_single_file` needs beside a user's own checkpoint."""
    build_sdxl(dest)
    for weights in sorted(Path(dest).rglob("*.safetensors")):
        weights.unlink()
