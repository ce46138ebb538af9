"""Write a diffusers-layout SDXL (the tiny `sdxl` pack) as ONE safetensors file in
the original Stability (SGM/LDM) key layout, as a user's own single-file SDXL
checkpoint looks:

- `model.diffusion_model.*`: the UNet (input_blocks / middle_block / output_blocks,
  time_embed, label_emb, out);
- `first_stage_model.*`: the VAE (encoder/decoder down/up/mid, attention as 1x1
  conv q/k/v/proj_out, quant_conv, post_quant_conv);
- `conditioner.embedders.0.transformer.text_model.*`: CLIP ViT-L in the HF layout;
- `conditioner.embedders.1.model.*`: OpenCLIP bigG (token_embedding,
  positional_embedding, transformer.resblocks.N with fused in_proj qkv, ln_final,
  text_projection stored as x @ P, i.e. transposed from a Linear weight).

Used by tests to prove `from_single_file` loading of registered checkpoints. The
mapping is the inverse of the LDM -> diffusers rules diffusers applies when it
loads such a file (written from those rules, verified by round trip in tests).
"""

from __future__ import annotations

import json
from pathlib import Path

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP_L = "conditioner.embedders.0.transformer."
CLIP_G = "conditioner.embedders.1.model."

_RESNET = (  # diffusers -> LDM names inside a UNet ResBlock
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _load(folder: Path):
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.fp16.safetensors")) or sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise FileNotFoundError(f"{folder}: expected one (fp16 variant) safetensors file, found {len(files)}")
    return load_file(str(files[0])), json.loads((folder / "config.json").read_text())


def _resnet(rest: str) -> str:
    head, _, leaf = rest.partition(".")
    for d, ldm in _RESNET:
        if head == d:
            return f"{ldm}.{leaf}"
    raise KeyError(rest)


def convert_unet(sd: dict, config: dict) -> dict:
    """diffusers UNet2DConditionModel state dict -> LDM keys (without prefix)."""
    lpb = config["layers_per_block"]
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        top = ".".join(parts[:-1])
        if top in _UNET_TOP:
            out[f"{_UNET_TOP[top]}.{parts[-1]}"] = value
            continue
        if parts[0] == "down_blocks":
            b, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "resnets":
                new = f"input_blocks.{1 + b * (lpb + 1) + j}.0.{_resnet(rest)}"
            elif kind == "attentions":
                new = f"input_blocks.{1 + b * (lpb + 1) + j}.1.{rest}"
            elif kind == "downsamplers":  # j == 0; rest = conv.weight
                new = f"input_blocks.{1 + b * (lpb + 1) + lpb}.0.op.{rest.split('.', 1)[1]}"
            else:
                raise KeyError(key)
        elif parts[0] == "mid_block":
            kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            if kind == "resnets":
                new = f"middle_block.{2 * j}.{_resnet(rest)}"
            elif kind == "attentions":
                new = f"middle_block.1.{rest}"
            else:
                raise KeyError(key)
        elif parts[0] == "up_blocks":
            b, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            base = b * (lpb + 1)
            if kind == "resnets":
                new = f"output_blocks.{base + j}.0.{_resnet(rest)}"
            elif kind == "attentions":
                new = f"output_blocks.{base + j}.1.{rest}"
            elif kind == "upsamplers":  # after the block's last layer: .2 if it has attention, else .1
                has_attn = any(k.startswith(f"up_blocks.{b}.attentions.") for k in sd)
                new = f"output_blocks.{base + lpb}.{2 if has_attn else 1}.conv.{rest.split('.', 1)[1]}"
            else:
                raise KeyError(key)
        else:
            raise KeyError(f"unexpected UNet key {key}")
        out[new] = value
    return out


_VAE_TOP = {
    "conv_norm_out": "norm_out",
    "conv_in": "conv_in",
    "conv_out": "conv_out",
}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def convert_vae(sd: dict, config: dict) -> dict:
    """diffusers AutoencoderKL state dict -> LDM keys (without prefix)."""
    n_up = len(config["up_block_types"])
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] in ("quant_conv", "post_quant_conv"):
            out[key] = value
            continue
        side, rest = parts[0], parts[1:]  # encoder / decoder
        if rest[0] in _VAE_TOP:
            new = f"{_VAE_TOP[rest[0]]}.{rest[1]}"
        elif rest[0] == "down_blocks":
            i, kind = int(rest[1]), rest[2]
            if kind == "resnets":
                new = f"down.{i}.block.{rest[3]}." + ".".join(rest[4:]).replace("conv_shortcut", "nin_shortcut")
            else:  # downsamplers.0.conv.weight
                new = f"down.{i}.downsample.conv.{rest[-1]}"
        elif rest[0] == "up_blocks":
            i, kind = int(rest[1]), rest[2]
            level = n_up - 1 - i  # LDM numbers decoder levels from the lowest resolution's end
            if kind == "resnets":
                new = f"up.{level}.block.{rest[3]}." + ".".join(rest[4:]).replace("conv_shortcut", "nin_shortcut")
            else:
                new = f"up.{level}.upsample.conv.{rest[-1]}"
        elif rest[0] == "mid_block":
            kind = rest[1]
            if kind == "resnets":
                new = f"mid.block_{int(rest[2]) + 1}." + ".".join(rest[3:]).replace("conv_shortcut", "nin_shortcut")
            else:  # attentions.0.<name>.<leaf>
                name = ".".join(rest[3:-1])
                new = f"mid.attn_1.{_VAE_ATTN[name]}.{rest[-1]}"
                if rest[-1] == "weight" and value.ndim == 2:  # LDM attention projections are 1x1 convs
                    value = value[:, :, None, None]
        else:
            raise KeyError(f"unexpected VAE key {key}")
        out[f"{side}.{new}"] = value
    return out


def convert_clip_l(sd: dict) -> dict:
    """CLIPTextModel state dict -> `text_model.*` keys (HF layout)."""
    return {(k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in sd.items()}


def convert_open_clip(sd: dict) -> dict:
    """CLIPTextModelWithProjection state dict -> OpenCLIP keys (without prefix)."""
    import torch

    out = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        k = key.removeprefix("text_model.")
        if k == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif k == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif k.startswith("final_layer_norm."):
            out["ln_final." + k.split(".")[-1]] = value
        elif k == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif k.startswith("encoder.layers."):
            parts = k.split(".")
            n, rest = parts[2], ".".join(parts[3:])
            pre = f"transformer.resblocks.{n}."
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                proj, leaf = rest.split(".")[1], rest.split(".")[2]
                qkv.setdefault(f"{pre}attn.in_proj_{leaf}", {})[proj] = value
                continue
            rest = (
                rest.replace("self_attn.out_proj", "attn.out_proj")
                .replace("layer_norm1", "ln_1")
                .replace("layer_norm2", "ln_2")
                .replace("mlp.fc1", "mlp.c_fc")
                .replace("mlp.fc2", "mlp.c_proj")
            )
            out[pre + rest] = value
        elif k == "embeddings.position_ids":
            continue
        else:
            raise KeyError(f"unexpected text encoder key {key}")
    for name, parts in qkv.items():
        out[name] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], dim=0).contiguous()
    return out


def sdxl_single_file_state_dict(diffusers_dir: Path) -> dict:
    """All four models of a diffusers-layout SDXL folder in one LDM-keyed dict."""
    d = Path(diffusers_dir)
    unet, unet_cfg = _load(d / "unet")
    vae, vae_cfg = _load(d / "vae")
    te, _ = _load(d / "text_encoder")
    te2, _ = _load(d / "text_encoder_2")
    state = {}
    state.update({UNET + k: v for k, v in convert_unet(unet, unet_cfg).items()})
    state.update({VAE + k: v for k, v in convert_vae(vae, vae_cfg).items()})
    state.update({CLIP_L + k: v for k, v in convert_clip_l(te).items()})
    state.update({CLIP_G + k: v for k, v in convert_open_clip(te2).items()})
    return state


def write_sdxl_single_file(diffusers_dir: Path, dest: Path) -> Path:
    """Write the SDXL at `diffusers_dir` (diffusers layout, fp16 variant files) as one
    LDM-layout `.safetensors` checkpoint at `dest`; returns `dest`."""
    from safetensors.torch import save_file

    from ..paths import atomic_path

    dest = Path(dest)
    state = {k: v.contiguous() for k, v in sdxl_single_file_state_dict(diffusers_dir).items()}
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    return dest


__all__ = ["sdxl_single_file_state_dict", "write_sdxl_single_file"]
