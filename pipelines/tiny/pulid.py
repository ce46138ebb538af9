"""Tiny PuLID packs in the published layouts:

- `pulid-v1.1`: `pulid_v1.1.safetensors` (guozinan/PuLID) with the two published
  prefixes: `id_adapter.*` (IDFormer) and `id_adapter_attn_layers.<i>.id_to_{k,v}.weight`
  for the tiny SDXL UNet's cross-attention processors (their positions in
  `unet.attn_processors`, the odd ones);
- `eva02-clip-l-336`: `EVA02_CLIP_L_336_psz14_s6B.pt` (QuanSun/EVA-CLIP), a torch
  pickle whose `visual.*` keys are EVA-CLIP's names (the store converts it);
- `facexlib-bisenet`: `parsing_bisenet.pth` (facexlib release v0.2.0), a pickle with
  facexlib's BiSeNet key names.

Shapes that keep the structure where a bug could hide: EVA 21 blocks deep (taps
before blocks 4..20), 2 heads of 64, patch 14 on a 4x4 grid while rope keeps its
16x16 reference grid (so rope interpolation runs); IDFormer depth 10 (two layers
per ViT scale), 2 heads of 64, 32 queries, 5 ID tokens; output width = the tiny
SDXL cross-attention width (128), so the UNet's 2-head attn2 layers read it.
"""

from __future__ import annotations

from pathlib import Path

from . import pack

SEED_EVA = 160
SEED_IDFORMER = 161
SEED_ATTN = 162
SEED_BISENET = 163
EVA_WIDTH, EVA_DEPTH, EVA_GRID, EVA_EMBED = 128, 21, 4, 32
IDF_DIM, IDF_MAP = 64, 48
ARCFACE_DIM = 512


def build_eva():
    import torch
    from timm.models.eva import Eva

    from ..pulid.eva import HEAD_DIM, PATCH, REF_GRID

    torch.manual_seed(SEED_EVA)
    return Eva(img_size=EVA_GRID * PATCH, patch_size=PATCH, embed_dim=EVA_WIDTH, depth=EVA_DEPTH,
               num_heads=EVA_WIDTH // HEAD_DIM, mlp_ratio=4 * 2 / 3, qkv_fused=False, swiglu_mlp=True, scale_mlp=True,
               scale_attn_inner=True, use_rot_pos_emb=True, ref_feat_shape=REF_GRID, global_pool="token",
               num_classes=EVA_EMBED).eval()


def build_idformer(output_dim: int):
    import torch

    from ..pulid.encoders import IDFormer

    torch.manual_seed(SEED_IDFORMER)
    return IDFormer(dim=IDF_DIM, depth=10, dim_head=64, heads=2, num_queries=32, output_dim=output_dim,
                    id_dim=ARCFACE_DIM + EVA_EMBED, vit_dim=EVA_WIDTH, map_dim=IDF_MAP).eval()


def id_attention_state(unet, seed: int = SEED_ATTN) -> dict:
    """`id_adapter_attn_layers.<i>.id_to_{k,v}.weight` for every cross-attention
    processor of `unet`, `<i>` its position in `unet.attn_processors`."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    out = {}
    for i, name in enumerate(unet.attn_processors):
        if name.endswith("attn1.processor"):
            continue
        hidden = unet.get_submodule(name.removesuffix(".processor")).to_q.out_features
        for part in ("id_to_k", "id_to_v"):
            out[f"id_adapter_attn_layers.{i}.{part}.weight"] = torch.randn(hidden, cross, generator=gen) * cross ** -0.5
    return out


@pack("pulid-v1.1", version=1)
def build_pulid_v11(dest: Path) -> None:
    from safetensors.torch import save_file

    from .sdxl import build_unet

    unet = build_unet()
    state = {"id_adapter." + k: v.detach().contiguous()
             for k, v in build_idformer(unet.config.cross_attention_dim).state_dict().items()}
    state.update(id_attention_state(unet))
    Path(dest).mkdir(parents=True, exist_ok=True)
    save_file(state, str(Path(dest) / "pulid_v1.1.safetensors"))


@pack("eva02-clip-l-336", version=1)
def build_eva_clip(dest: Path) -> None:
    import torch

    from ..pulid.eva import eva_clip_keys

    Path(dest).mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in eva_clip_keys(build_eva().state_dict()).items()}
    torch.save(state, Path(dest) / "EVA02_CLIP_L_336_psz14_s6B.pt")


def build_bisenet():
    import torch

    from ..pulid.parsing import BiSeNet

    torch.manual_seed(SEED_BISENET)
    net = BiSeNet(19, w=8, ctx=16, fuse=32, mid16=8)
    gen = torch.Generator().manual_seed(SEED_BISENET)
    with torch.no_grad():  # running statistics that are not the identity, as a trained net's
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return net.eval()


@pack("facexlib-bisenet", version=1)
def build_facexlib_bisenet(dest: Path) -> None:
    import torch

    Path(dest).mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in build_bisenet().state_dict().items()}
    torch.save(state, Path(dest) / "parsing_bisenet.pth")


SEED_IDENCODER = 164
SEED_LIGHTNING = 165


def build_idencoder(context_dim: int):
    import torch

    from ..pulid.encoders import IDEncoder

    torch.manual_seed(SEED_IDENCODER)
    return IDEncoder(id_dim=ARCFACE_DIM + EVA_EMBED, context_dim=context_dim, num_token=5, vit_dim=EVA_WIDTH,
                     map_dim=IDF_MAP).eval()


def build_lightning_unet():
    """A tiny SDXL UNet of the base's config with weights of its own, as
    SDXL-Lightning's 4-step UNet is a distilled copy of the base's."""
    import torch
    from diffusers import UNet2DConditionModel

    from .sdxl import tiny_unet_config

    torch.manual_seed(SEED_LIGHTNING)
    return UNet2DConditionModel(**tiny_unet_config()).eval()


@pack("pulid-v1", version=1)
def build_pulid_v1(dest: Path) -> None:
    """`pulid_v1.bin`: a torch pickle of {id_adapter.* (IDEncoder),
    id_adapter_attn_layers.<i>.id_to_{k,v}.weight} (the store converts it)."""
    import torch

    unet = build_lightning_unet()
    state = {"id_adapter." + k: v.detach().clone().contiguous()
             for k, v in build_idencoder(unet.config.cross_attention_dim).state_dict().items()}
    state.update(id_attention_state(unet, seed=SEED_ATTN + 10))
    Path(dest).mkdir(parents=True, exist_ok=True)
    torch.save(state, Path(dest) / "pulid_v1.bin")


@pack("sdxl-lightning-4step-unet", version=1)
def build_lightning(dest: Path) -> None:
    """`sdxl_lightning_4step_unet.safetensors`: a diffusers-format UNet state dict."""
    from safetensors.torch import save_file

    Path(dest).mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in build_lightning_unet().state_dict().items()}
    save_file(state, str(Path(dest) / "sdxl_lightning_4step_unet.safetensors"))


SEED_RETINAFACE = 166


@pack("facexlib-retinaface", version=1)
def build_facexlib_retinaface(dest: Path) -> None:
    """`detection_Resnet50_Final.pth`: facexlib's RetinaFace keys with the published
    `module.` prefix, trunk 8 wide (published 64), FPN/SSH 16 (published 256)."""
    import torch

    from ..pulid.retinaface import RetinaFace

    torch.manual_seed(SEED_RETINAFACE)
    net = RetinaFace(w=8, out=16).eval()
    Path(dest).mkdir(parents=True, exist_ok=True)
    state = {"module." + k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    torch.save(state, Path(dest) / "detection_Resnet50_Final.pth")
