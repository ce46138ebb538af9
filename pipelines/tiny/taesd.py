"""Tiny preview-VAE packs: `taesdxl` (madebyollin/taesdxl) and `taesd`
(madebyollin/taesd), diffusers `AutoencoderTiny` layout: `config.json` +
`diffusion_pytorch_model.safetensors`.

The published models have four levels of 64 channels (encoder blocks 1/3/3/3,
decoder 3/3/3/1), so a latent pixel is 8x8 image pixels; the tiny ones keep the
four levels and the 8x factor with 8 channels and one block per level, and the
published latent_magnitude/latent_shift (3, 0.5) and scaling_factor 1.0.
"""

from __future__ import annotations

from pathlib import Path

from . import pack

SEED_TAESDXL = 50
SEED_TAESD = 51


def tiny_taesd_config() -> dict:
    return {
        "in_channels": 3,
        "out_channels": 3,
        "encoder_block_out_channels": (8, 8, 8, 8),
        "decoder_block_out_channels": (8, 8, 8, 8),
        "num_encoder_blocks": (1, 1, 1, 1),
        "num_decoder_blocks": (1, 1, 1, 1),
        "act_fn": "relu",
        "latent_channels": 4,
        "upsampling_scaling_factor": 2,
        "latent_magnitude": 3,
        "latent_shift": 0.5,
        "scaling_factor": 1.0,
    }


def build_taesd(seed: int):
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    # a torch Module; mypy does not resolve the bases of diffusers' autoencoder classes
    return AutoencoderTiny(**tiny_taesd_config()).eval()  # type: ignore[attr-defined]


@pack("taesdxl", version=1)
def build_taesdxl_pack(dest: Path) -> None:
    build_taesd(SEED_TAESDXL).save_pretrained(Path(dest), safe_serialization=True)


@pack("taesd", version=1)
def build_taesd_pack(dest: Path) -> None:
    build_taesd(SEED_TAESD).save_pretrained(Path(dest), safe_serialization=True)
