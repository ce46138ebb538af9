"""Tiny Arc2Face packs, in the layout of FoivosPar/Arc2Face on the hub:

- `arc2face`: `arc2face/{config.json, diffusion_pytorch_model.safetensors}` (the
  fine-tuned SD1.5 UNet, float32) and `encoder/{config.json, pytorch_model.bin}`
  (the fine-tuned CLIP ViT-L text encoder, a torch pickle with transformers-4 key
  names `text_model.*` and `architectures: ["CLIPTextModelWrapper"]`, as the
  published file; the store converts it to safetensors once).
- `insightface-arc2face`: `scrfd_10g_bnkps.onnx` (antelopev2's detector) and
  `arcface.onnx`, Arc2Face's own recogniser, a different network from
  antelopev2's glintr100 (another seed here, as the WebFace42M model differs from
  the Glint360K one).

Shapes that keep the published structure where a bug could hide: the encoder is
576 wide (> 512, so the face embedding is zero-padded into the "id" row, never
cropped; exactly 512 would hide a padding bug), 4 heads, 2 layers; the UNet is
the tiny SD1.5 one (2 heads everywhere) with `cross_attention_dim` equal to the
encoder width, as Arc2Face's 768 equals CLIP ViT-L's. The vocabulary is the tiny
SD1.5 tokenizer's, in which "id" is one token, as in the real one.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import pack
from .insightface_pack import build_arcface, build_scrfd
from .sd15 import tiny_text_encoder_config, tiny_unet_config

SEED_UNET = 150
SEED_ENCODER = 151
SEED_ARCFACE = 42  # a recogniser of its own, not antelopev2's (seed 100)
ENCODER_WIDTH = 576


def encoder_config() -> dict:
    cfg = dict(tiny_text_encoder_config())
    cfg.update(hidden_size=ENCODER_WIDTH, projection_dim=ENCODER_WIDTH, num_attention_heads=4,
               intermediate_size=64)
    return cfg


def unet_config() -> dict:
    cfg = dict(tiny_unet_config())
    cfg["cross_attention_dim"] = ENCODER_WIDTH
    return cfg


def build_encoder():
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(SEED_ENCODER)
    return CLIPTextModel(CLIPTextConfig(**encoder_config())).eval()


def build_unet():
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(SEED_UNET)
    return UNet2DConditionModel(**unet_config()).eval()


def write_encoder(model, dest: Path) -> None:
    """`config.json` + `pytorch_model.bin` as the published encoder: transformers-4
    key names (`text_model.` before every key; transformers 5 maps them back on
    load) and the wrapper class's name in `architectures`."""
    import torch

    dest.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()
    cfg["architectures"] = ["CLIPTextModelWrapper"]
    (dest / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    state = {}
    for k, v in model.state_dict().items():
        key = k if k.startswith("text_model.") else "text_model." + k
        state[key] = v.detach().clone().contiguous()
    torch.save(state, dest / "pytorch_model.bin")


@pack("arc2face", version=1)
def build_arc2face(dest: Path) -> None:
    dest = Path(dest)
    build_unet().save_pretrained(dest / "arc2face", safe_serialization=True)
    write_encoder(build_encoder(), dest / "encoder")


@pack("insightface-arc2face", version=1)
def build_arc2face_recogniser(dest: Path) -> None:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    build_scrfd(dest / "scrfd_10g_bnkps.onnx")
    build_arcface(dest / "arcface.onnx", seed=SEED_ARCFACE)
