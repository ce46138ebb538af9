"""EVA02-CLIP-L-14-336's visual tower through timm (`timm.models.eva.Eva`, the
architecture of timm's `eva02_large_patch14_clip_336`: patch 14, rope with a
16x16 reference grid, SwiGLU MLP with its LayerNorm, sub-LN in attention), loaded
from the EVA-CLIP checkpoint's `visual.*` keys with timm's own
`checkpoint_filter_fn`.

What PuLID reads (ToTheBeginning/PuLID `eva_clip/eva_vit_model.py`, used by
`pipeline.py`): the token sequences (CLS first) entering blocks 4, 8, 12, 16 and
20, i.e. the outputs of blocks 3, 7, 11, 15, 19, not normed; and
`head(norm(x)[:, 0])`, L2-normalised. Widths, depth and grid are read from the
checkpoint's shapes (heads of 64, as published: 16 x 64), so a tiny pack loads
through the same code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TAPS = (3, 7, 11, 15, 19)
PATCH = 14
HEAD_DIM = 64
REF_GRID = (16, 16)  # EVA02 pre-training at 224/14
# open_clip / EVA-CLIP OPENAI_DATASET_MEAN / STD
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def eva_args_from_state(visual: dict[str, torch.Tensor]) -> dict:
    dim = visual["pos_embed"].shape[-1]
    grid = int(math.isqrt(visual["pos_embed"].shape[1] - 1))
    depth = 1 + max(int(k.split(".")[1]) for k in visual if k.startswith("blocks."))
    hidden = visual["blocks.0.mlp.w1.weight"].shape[0]
    return dict(img_size=grid * PATCH, patch_size=PATCH, embed_dim=dim, depth=depth, num_heads=dim // HEAD_DIM,
                mlp_ratio=hidden / dim, qkv_fused=False, swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True,
                use_rot_pos_emb=True, ref_feat_shape=REF_GRID, global_pool="token",
                num_classes=visual["head.weight"].shape[0])


def load_eva_visual(state: dict[str, torch.Tensor]):
    """timm Eva from an EVA-CLIP state dict (keys `visual.*`; others ignored)."""
    from timm.models.eva import Eva, checkpoint_filter_fn

    visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    if not visual:
        raise KeyError("no visual.* keys: not an EVA-CLIP checkpoint")
    args = eva_args_from_state(visual)
    model = Eva(**args)
    filtered = checkpoint_filter_fn({"visual." + k: v for k, v in visual.items()}, model)
    model.load_state_dict(filtered, strict=True)
    return model.eval()


def eva_features(model, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(id_cond_vit [B, embed] unit norm, 5 x [B, 1 + grid², width]) for `image`
    [B, 3, S, S] already normalised."""
    final, taps = model.forward_intermediates(image, indices=list(TAPS), return_prefix_tokens=True, norm=False,
                                              output_fmt="NLC")
    hidden = [torch.cat([prefix, spatial], dim=1) for spatial, prefix in taps]
    cond = model.forward_head(final)
    return cond / cond.norm(p=2, dim=1, keepdim=True), hidden


def eva_input(face_rgb01: torch.Tensor, size: int) -> torch.Tensor:
    """[B, 3, H, W] in 0..1 -> bicubic resize to `size` without antialias (the
    reference's torchvision 0.15 tensor default), then CLIP mean/std."""
    x = F.interpolate(face_rgb01, size=(size, size), mode="bicubic", align_corners=False, antialias=False)
    mean = torch.tensor(MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def eva_clip_keys(timm_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The EVA-CLIP names of a timm Eva state dict (the inverse of timm's
    `checkpoint_filter_fn` renames), prefixed `visual.`: for writing tiny packs."""
    out = {}
    for k, v in timm_state.items():
        if "rope" in k:
            continue
        for a, b in ((".mlp.fc1_g.", ".mlp.w1."), (".mlp.fc1_x.", ".mlp.w2."), (".mlp.fc2.", ".mlp.w3."),
                     (".mlp.norm.", ".mlp.ffn_ln."), (".attn.norm.", ".attn.inner_attn_ln."),
                     (".attn.q_proj.bias", ".attn.q_bias"), (".attn.v_proj.bias", ".attn.v_bias")):
            k = k.replace(a, b)
        out["visual." + k] = v
    return out
