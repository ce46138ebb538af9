"""Full-size random-weight packs for GPU benchmarks (`bench/generate.py --full-size`).

Same folder layouts, file names and key names as the published weights (and as the
tiny packs in `pipelines/tiny`), but at the published sizes, so a benchmark does the
same compute as the real models:

- `sdxl-full`: SDXL base 1.0 in diffusers layout, fp16 variant files. UNet 320/640/1280,
  transformer layers [1, 2, 10], heads [5, 10, 20], cross-attention 2048, text-time
  addition embeds (256 per time id, 2816 in all); CLIP ViT-L text encoder (768 wide,
  12 layers) and OpenCLIP bigG (1280 wide, 32 layers, projection 1280); 4-level VAE
  128/256/512/512. The tokenizers are the tiny local BPE ones (a tokenizer does no
  tensor compute; prompts are still padded to 77 tokens).
- `sdxl-vae-full`: madebyollin/sdxl-vae-fp16-fix (same VAE config, float32 file).
- `clip-vision-full`: h94/IP-Adapter `models/image_encoder`, OpenCLIP ViT-H/14 (1280
  wide, 32 layers, projection 1024), float32.
- `faceid-plusv2-sdxl-full`: `ip-adapter-faceid-plusv2_sdxl.bin` (float16 pickle): ID
  MLP 512 -> 1024 -> 4 x 2048 tokens, perceiver resampler 2048 wide (32 heads of 64,
  depth 4) over 1280-d CLIP features, to_k_ip / to_v_ip for the 70 cross-attention
  processors, rank-128 attention LoRA on all 140 processors.
- `speed-lora-lightning-4step-full`, `speed-lora-lcm-sdxl-full`: the speed modes'
  LoRAs (`sdxl_lightning_4step_lora.safetensors`, `pytorch_lora_weights.safetensors`)
  at the published rank 64 in the kohya layout, over every linear of the UNet's
  transformer blocks: 170 M parameters, 340 MB in float16 (the published files,
  394 MB, also cover convolutions; the per-step LoRA cost measured here is that
  of the attention/feed-forward part).
- `instantid-full`: `ip-adapter.bin` (float32 pickle; Resampler 1280 wide, 20 heads,
  16 queries, output 2048) and `ControlNetModel/` (IdentityNet: `from_unet` of the
  SDXL UNet, float16).

The packs register with `pipelines.tiny.pack` when this module is imported; they are
not in `pipelines.tiny._MODULES`, so the app never builds them. `fullsize_catalog()`
is the model catalog with these packs as the demo packs of the same entries; a
`ModelStore` in demo mode with that catalog builds them like tiny packs.

Building needs about 16 GB of disk and, on CPU, minutes; it runs on CUDA when
available (weights are created on the GPU, then written from CPU memory).
`parameter_report()` builds every model on the meta device (no memory) and counts
parameters, for a check against the published file sizes.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

from pipelines.memory import free_memory
from pipelines.tiny import adapters as tiny_adapters, pack
from pipelines.tiny.adapters import (
    FACEID_FILE,
    IDENTITYNET_DIR,
    IMAGE_ENCODER_DIR,
    INSTANTID_FILE,
    _Weights,
    attention_processor_layout,
)
from pipelines.tiny.controlnet import RESIDUAL_GAIN, _randomise_
from pipelines.tiny.sdxl import build_scheduler, model_index, to_half
from pipelines.tiny.tokenizer import special_ids, write_clip_tokenizer

MODELS_LABEL = "full-size random weights"

# catalog entry -> full-size pack standing in for it
PACKS: dict[str, str] = {
    "sdxl-base": "sdxl-full",
    "sdxl-vae-fp16-fix": "sdxl-vae-full",
    "clip-vit-h-image-encoder": "clip-vision-full",
    "ip-adapter-faceid-plusv2-sdxl": "faceid-plusv2-sdxl-full",
    "instantid": "instantid-full",
    "sdxl-lightning-4step-lora": "speed-lora-lightning-4step-full",
    "lcm-lora-sdxl": "speed-lora-lcm-sdxl-full",
}

SEED_UNET = 100
SEED_VAE = 101
SEED_TEXT_ENCODER = 102
SEED_TEXT_ENCODER_2 = 103
SEED_VAE_FIX = 104
SEED_CLIP_VISION = 105
SEED_FACEID = 106
SEED_INSTANTID = 107
SEED_IDENTITYNET = 108
SEED_LIGHTNING = 109
SEED_LCM = 110
SPEED_LORA_RANK = 64  # the published SDXL-Lightning and LCM-LoRA rank

CROSS_ATTENTION_DIM = 2048  # CLIP-L 768 + bigG 1280
CLIP_L_WIDTH = 768
BIGG_WIDTH = 1280
TIME_EMBED_DIM = 256
CLIP_VISION_WIDTH = 1280  # ViT-H/14; the FaceID resampler's proj_in input
FACEID_LORA_RANK = 128
INSTANTID_DIM = 1280  # Resampler width (20 heads of 64)
CLIP_VOCAB = 49408  # published embedding table size (the tiny tokenizer's ids fit in it)


# --------------------------------------------------------------------- configs
def unet_config() -> dict:
    """UNet2DConditionModel kwargs of SDXL base 1.0 (its published unet/config.json)."""
    return {
        "sample_size": 128,
        "in_channels": 4,
        "out_channels": 4,
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "only_cross_attention": False,
        "block_out_channels": (320, 640, 1280),
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "cross_attention_dim": CROSS_ATTENTION_DIM,
        "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20),
        "use_linear_projection": True,
        "upcast_attention": None,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": TIME_EMBED_DIM,
        "projection_class_embeddings_input_dim": 6 * TIME_EMBED_DIM + BIGG_WIDTH,  # 2816
    }


def vae_config() -> dict:
    """AutoencoderKL kwargs of the SDXL VAE (also the fp16-fix VAE's)."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 2,
        "act_fn": "silu",
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 1024,
        "scaling_factor": 0.13025,
    }


def text_encoder_config(with_projection: bool = False) -> dict:
    """CLIPTextConfig kwargs: CLIP ViT-L/14 text tower, or OpenCLIP bigG with its
    1280 projection; special ids are the local tokenizer's."""
    ids = special_ids()
    common = {
        "vocab_size": CLIP_VOCAB,
        "max_position_embeddings": 77,
        "layer_norm_eps": 1e-5,
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["eos"],
    }
    if with_projection:
        return {**common, "hidden_size": BIGG_WIDTH, "intermediate_size": 5120, "num_attention_heads": 20,
                "num_hidden_layers": 32, "hidden_act": "gelu", "projection_dim": BIGG_WIDTH}
    return {**common, "hidden_size": CLIP_L_WIDTH, "intermediate_size": 3072, "num_attention_heads": 12,
            "num_hidden_layers": 12, "hidden_act": "quick_gelu", "projection_dim": CLIP_L_WIDTH}


def clip_vision_config() -> dict:
    """CLIPVisionConfig kwargs of the IP-Adapter image encoder (OpenCLIP ViT-H/14)."""
    return {
        "hidden_size": CLIP_VISION_WIDTH,
        "intermediate_size": 5120,
        "num_attention_heads": 16,
        "num_hidden_layers": 32,
        "image_size": 224,
        "patch_size": 14,
        "projection_dim": 1024,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
    }


# ---------------------------------------------------------------- builders
def build_device() -> str:
    """Where weights are created: $LIKENESS_BENCH_BUILD_DEVICE, else CUDA when present."""
    forced = os.environ.get("LIKENESS_BENCH_BUILD_DEVICE")
    if forced:
        return forced
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class _DeviceWeights(_Weights):
    """`_Weights` drawing on `device` (a CUDA generator is much faster for ~1 B
    values); tensors come back on the CPU, ready for `torch.save`. On the meta
    device nothing is allocated (parameter counting)."""

    def __init__(self, seed: int, dtype, device: str = "cpu"):
        import torch

        self.torch = torch
        self.dtype = dtype
        self.device = device
        self.gen = None if device == "meta" else torch.Generator(device=device).manual_seed(seed)

    def randn(self, *shape, std: float = 1.0):
        torch = self.torch
        if self.device == "meta":
            return torch.empty(shape, dtype=self.dtype, device="meta")
        t = torch.randn(shape, generator=self.gen, device=self.device) * std
        return t.to(dtype=self.dtype).cpu()

    def layer_norm(self, sd: dict, key: str, dim: int) -> None:
        torch = self.torch
        dev = "meta" if self.device == "meta" else "cpu"
        sd[f"{key}.weight"] = torch.ones(dim, dtype=self.dtype, device=dev)
        sd[f"{key}.bias"] = torch.zeros(dim, dtype=self.dtype, device=dev)


def _new(cls, kwargs: dict, seed: int, device: str):
    import torch

    torch.manual_seed(seed)
    with torch.device(device):
        return cls(**kwargs).eval()


def build_unet(device: str = "cpu"):
    from diffusers import UNet2DConditionModel

    return _new(UNet2DConditionModel, unet_config(), SEED_UNET, device)


def build_vae(device: str = "cpu", seed: int = SEED_VAE, force_upcast: bool = True):
    from diffusers import AutoencoderKL

    return _new(AutoencoderKL, {**vae_config(), "force_upcast": force_upcast}, seed, device)


def build_text_encoders(device: str = "cpu"):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def make(cls, with_projection):
        return lambda: cls(CLIPTextConfig(**text_encoder_config(with_projection)))

    te = _new(make(CLIPTextModel, False), {}, SEED_TEXT_ENCODER, device)
    te2 = _new(make(CLIPTextModelWithProjection, True), {}, SEED_TEXT_ENCODER_2, device)
    return te, te2


def build_clip_vision(device: str = "cpu"):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return _new(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_vision_config())), {},
                SEED_CLIP_VISION, device)


def build_identitynet(device: str = "cpu"):
    """IdentityNet: `ControlNetModel.from_unet` of the SDXL UNet (config only: random
    weights), with the layers from_unet zeroes drawn at random as in the tiny pack."""
    import torch
    from diffusers import ControlNetModel

    unet = build_unet("meta")  # only its config is read
    torch.manual_seed(SEED_IDENTITYNET)
    with torch.device(device):
        net = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
    if device != "meta":
        gen = torch.Generator().manual_seed(SEED_IDENTITYNET)
        _randomise_(net.controlnet_cond_embedding.conv_out, gen, gain=1.0)
        for conv in net.controlnet_down_blocks:
            _randomise_(conv, gen, RESIDUAL_GAIN)
        _randomise_(net.controlnet_mid_block, gen, RESIDUAL_GAIN)
    return net.eval()


@lru_cache(maxsize=1)
def _layout() -> tuple:
    return tuple(attention_processor_layout(build_unet("meta")))


def processor_layout() -> list[dict]:
    """`attention_processor_layout` of the full-size SDXL UNet (140 processors)."""
    return list(_layout())


def faceid_plusv2_state_dict(device: str = "cpu") -> dict:
    """`{"image_proj", "ip_adapter"}` of ip-adapter-faceid-plusv2_sdxl.bin at the
    published sizes, float16 (the tiny pack's writer with full-size dimensions)."""
    import torch

    return tiny_adapters.faceid_plusv2_state_dict(
        weights=_DeviceWeights(SEED_FACEID, torch.float16, device), layout=processor_layout(),
        cad=CROSS_ATTENTION_DIM, clip_width=CLIP_VISION_WIDTH, lora_rank=FACEID_LORA_RANK)


def instantid_state_dict(device: str = "cpu") -> dict:
    """`{"image_proj", "ip_adapter"}` of InstantID's ip-adapter.bin at the published
    sizes, float32."""
    import torch

    return tiny_adapters.instantid_state_dict(
        weights=_DeviceWeights(SEED_INSTANTID, torch.float32, device), layout=processor_layout(),
        cad=CROSS_ATTENTION_DIM, dim=INSTANTID_DIM)


def _save_half(model, dest: Path, variant: str | None = None) -> None:
    import torch

    model = torch.nn.Module.to(to_half(model), device="cpu")
    kwargs = {"safe_serialization": True}
    if variant:
        kwargs["variant"] = variant
    model.save_pretrained(dest, **kwargs)


def _save_float(model, dest: Path) -> None:
    import torch

    torch.nn.Module.to(model, device="cpu").save_pretrained(dest, safe_serialization=True)




# ------------------------------------------------------------------- packs
@pack("sdxl-full", version=1)
def build_sdxl_full(dest: Path) -> None:
    dest, dev = Path(dest), build_device()
    _save_half(build_unet(dev), dest / "unet", variant="fp16")
    free_memory()
    _save_half(build_vae(dev), dest / "vae", variant="fp16")
    te, te2 = build_text_encoders(dev)
    _save_half(te, dest / "text_encoder", variant="fp16")
    _save_half(te2, dest / "text_encoder_2", variant="fp16")
    del te, te2
    free_memory()
    write_clip_tokenizer(dest / "tokenizer")
    write_clip_tokenizer(dest / "tokenizer_2", pad_token="!")
    build_scheduler().save_pretrained(dest / "scheduler")
    (dest / "model_index.json").write_text(json.dumps(model_index(), indent=2) + "\n")


@pack("sdxl-vae-full", version=1)
def build_sdxl_vae_full(dest: Path) -> None:
    _save_float(build_vae(build_device(), seed=SEED_VAE_FIX, force_upcast=False), Path(dest))


@pack("clip-vision-full", version=1)
def build_clip_vision_full(dest: Path) -> None:
    _save_float(build_clip_vision(build_device()), Path(dest) / IMAGE_ENCODER_DIR)
    free_memory()


@pack("faceid-plusv2-sdxl-full", version=1)
def build_faceid_full(dest: Path) -> None:
    import torch

    torch.save(faceid_plusv2_state_dict(build_device()), Path(dest) / FACEID_FILE)
    free_memory()


@pack("instantid-full", version=1)
def build_instantid_full(dest: Path) -> None:
    import torch

    dest, dev = Path(dest), build_device()
    torch.save(instantid_state_dict(dev), dest / INSTANTID_FILE)
    _save_half(build_identitynet(dev), dest / IDENTITYNET_DIR)
    free_memory()


def _speed_lora(dest: Path, filename: str, seed: int) -> None:
    from safetensors.torch import save_file

    from pipelines.tiny.speed_loras import speed_lora_state

    dest.mkdir(parents=True, exist_ok=True)
    state = speed_lora_state(build_unet("meta"), seed, SPEED_LORA_RANK, gain=0.02)
    save_file(state, str(dest / filename))


@pack("speed-lora-lightning-4step-full", version=1)
def build_lightning_full(dest: Path) -> None:
    _speed_lora(Path(dest), "sdxl_lightning_4step_lora.safetensors", SEED_LIGHTNING)


@pack("speed-lora-lcm-sdxl-full", version=1)
def build_lcm_full(dest: Path) -> None:
    _speed_lora(Path(dest), "pytorch_lora_weights.safetensors", SEED_LCM)


# ----------------------------------------------------------------- catalog
def fullsize_catalog(catalog=None):
    """The model catalog with the full-size packs as demo packs of the same entries
    (everything else, e.g. the insightface packs, keeps its tiny demo pack)."""
    from pipelines.models.catalog import load_catalog

    catalog = catalog if catalog is not None else load_catalog()
    models = [m.model_copy(update={"demo_pack": PACKS[m.name]}) if m.name in PACKS else m for m in catalog.model]
    return catalog.model_copy(update={"model": models})


# ------------------------------------------------------------------ dry run
# name -> (catalog entry, published file, bytes per weight in that file)
PUBLISHED = {
    "unet": ("sdxl-base", "unet/diffusion_pytorch_model.fp16.safetensors", 2),
    "text_encoder": ("sdxl-base", "text_encoder/model.fp16.safetensors", 2),
    "text_encoder_2": ("sdxl-base", "text_encoder_2/model.fp16.safetensors", 2),
    "vae": ("sdxl-base", "vae/diffusion_pytorch_model.fp16.safetensors", 2),
    "vae_fp16_fix": ("sdxl-vae-fp16-fix", "diffusion_pytorch_model.safetensors", 4),
    "image_encoder": ("clip-vit-h-image-encoder", "models/image_encoder/model.safetensors", 4),
    "faceid_adapter": ("ip-adapter-faceid-plusv2-sdxl", FACEID_FILE, 2),
    "instantid_adapter": ("instantid", INSTANTID_FILE, 4),
    "identitynet": ("instantid", f"{IDENTITYNET_DIR}/diffusion_pytorch_model.safetensors", 2),
}


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _count_sd(sd: dict) -> int:
    return sum(t.numel() for part in sd.values() for t in part.values())


def parameter_counts() -> dict[str, int]:
    """Parameters of every full-size model, built on the meta device (no weights)."""
    te, te2 = build_text_encoders("meta")
    return {
        "unet": _count(build_unet("meta")),
        "text_encoder": _count(te),
        "text_encoder_2": _count(te2),
        "vae": _count(build_vae("meta")),
        "vae_fp16_fix": _count(build_vae("meta", force_upcast=False)),
        "image_encoder": _count(build_clip_vision("meta")),
        "faceid_adapter": _count_sd(faceid_plusv2_state_dict("meta")),
        "instantid_adapter": _count_sd(instantid_state_dict("meta")),
        "identitynet": _count(build_identitynet("meta")),
    }


def parameter_report(catalog=None) -> dict:
    """Parameter counts, the bytes they take at the published dtype, and the size of
    the published file (from the catalog) they stand in for."""
    from pipelines.models.catalog import load_catalog

    catalog = catalog if catalog is not None else load_catalog()
    counts = parameter_counts()
    report: dict = {}
    for name, n in counts.items():
        entry, path, width = PUBLISHED[name]
        published = next((f.size for f in catalog.get(entry).files if f.path == path), None)
        row = {"parameters": n, "bytes": n * width, "published_file": f"{entry}/{path}", "published_bytes": published}
        if published:
            row["bytes_vs_published"] = round(n * width / published, 4)
        report[name] = row
    return report


__all__ = [
    "MODELS_LABEL", "PACKS", "fullsize_catalog", "parameter_counts", "parameter_report",
    "unet_config", "vae_config", "text_encoder_config", "clip_vision_config",
]
