"""The kohya sd-scripts LoRA format: what A1111, ComfyUI, Fooocus and diffusers'
`load_lora_weights` all read.

Keys are `lora_unet_<module>` / `lora_te1_<module>` / `lora_te2_<module>` (dots of
the module path written as `_`) + `.lora_down.weight` (peft's `lora_A`),
`.lora_up.weight` (`lora_B`) and `.alpha` (a scalar). For SDXL kohya names UNet
modules by the original (sgm) UNet: `input_blocks.N`, `middle_block.N`,
`output_blocks.N`; diffusers maps those back with the UNet's `layers_per_block`
(`_maybe_map_sgm_blocks_to_diffusers`), so we write the sgm names too.
Text-encoder modules are named as in the CLIP checkpoints
(`text_model.encoder.layers.N...`) whatever the installed transformers calls them.

Training metadata goes into the safetensors header as strings, with kohya's
`ss_*` names plus `likeness_*` extras (trigger word, photo count).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from ..errors import BadInput
from ..paths import atomic_path

TRIGGER_KEYS = ("likeness_trigger_word", "ss_trigger_word", "modelspec.trigger_phrase")
# A LoRA's header comes from whoever made the file; its trigger words go into the
# prompt and the PNG's metadata, so they are held to what a trigger word is.
MAX_TRIGGER_CHARS = 100
MAX_TRIGGERS = 16
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
BASE_MODEL_VERSION = "sdxl_base_v1-0"

_DOWN = re.compile(r"^down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$")
_UP = re.compile(r"^up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$")
_MID = re.compile(r"^mid_block\.attentions\.0\.(.+)$")


def sgm_module_name(path: str, layers_per_block: int) -> str:
    """The sgm (original SDXL UNet) name of a diffusers transformer module path.

    Only modules inside `attentions.N` (the transformer blocks: attention
    projections, proj_in/out, feed-forward) are covered: that is all a kohya
    `networks.lora` (and our trainer) touches."""
    per = layers_per_block + 1  # resnets per level, plus the down/upsampler slot
    m = _DOWN.match(path)
    if m:
        return f"input_blocks.{1 + int(m[1]) * per + int(m[2])}.1.{m[3]}"
    m = _UP.match(path)
    if m:
        return f"output_blocks.{int(m[1]) * per + int(m[2])}.1.{m[3]}"
    m = _MID.match(path)
    if m:
        return f"middle_block.1.{m[1]}"
    raise ValueError(f"UNet module {path!r} is outside the transformer blocks; it has no kohya LoRA name here")


def _split_peft_key(key: str) -> tuple[str, str]:
    """('module.path', 'A'|'B') for a peft state-dict key `module.path.lora_A.weight`."""
    for part, kind in ((".lora_A.weight", "A"), (".lora_B.weight", "B")):
        if key.endswith(part):
            return key[: -len(part)], kind
    raise ValueError(f"{key!r} is not a peft LoRA weight (…lora_A.weight / …lora_B.weight)")


def peft_to_kohya(
    unet_state: Mapping,
    *,
    layers_per_block: int,
    alpha: float,
    te1_state: Mapping | None = None,
    te2_state: Mapping | None = None,
    te_alpha: float | None = None,
) -> dict:
    """Convert peft state dicts (`get_peft_model_state_dict`, adapter name removed)
    of the SDXL UNet and optionally both text encoders into one kohya state dict."""
    import torch

    if not isinstance(layers_per_block, int):
        raise ValueError("kohya naming needs one layers_per_block for every UNet level")
    out: dict = {}

    def put(prefix: str, module: str, kind: str, tensor, a: float) -> None:
        name = prefix + module.replace(".", "_")
        out[f"{name}.lora_{'down' if kind == 'A' else 'up'}.weight"] = tensor.detach().contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(a), dtype=torch.float32)

    for key, value in unet_state.items():
        module, kind = _split_peft_key(key)
        put("lora_unet_", sgm_module_name(module, layers_per_block), kind, value, alpha)
    for prefix, state in (("lora_te1_", te1_state), ("lora_te2_", te2_state)):
        for key, value in (state or {}).items():
            module, kind = _split_peft_key(key)
            if not module.startswith("text_model."):
                module = "text_model." + module  # CLIP checkpoint naming
            put(prefix, module, kind, value, te_alpha if te_alpha is not None else alpha)
    return out


def training_metadata(
    *,
    name: str,
    rank: int,
    alpha: float,
    learning_rate: float,
    max_steps: int,
    photos: int,
    images: int,
    trigger: str,
    caption: str,
    class_word: str,
    base_model: str,
    base_hash: str | None,
    resolution: tuple[int, int],
    seed: int,
    text_encoder: bool,
    extra: Mapping[str, object] | None = None,
) -> dict[str, str]:
    """kohya `ss_*` metadata (strings) for a LoRA we trained."""
    tags = [t.strip() for t in caption.split(",") if t.strip()]
    meta: dict[str, object] = {
        "ss_output_name": name,
        "ss_network_module": "networks.lora",
        "ss_network_dim": rank,
        "ss_network_alpha": alpha,
        "ss_network_args": json.dumps({}),
        "ss_base_model_version": BASE_MODEL_VERSION,
        "ss_sd_model_name": base_model,
        # A1111 matches checkpoints by the first 10 hex digits of their sha256
        "ss_sd_model_hash": (base_hash or "")[:10],
        "ss_new_sd_model_hash": base_hash or "",
        "ss_num_train_images": photos,
        "ss_num_reg_images": 0,
        "ss_num_epochs": 1,
        "ss_max_train_steps": max_steps,
        "ss_learning_rate": learning_rate,
        "ss_unet_lr": learning_rate,
        "ss_text_encoder_lr": learning_rate if text_encoder else 0,
        "ss_lr_scheduler": "cosine",
        "ss_optimizer": "AdamW",
        "ss_resolution": f"({resolution[0]}, {resolution[1]})",
        "ss_seed": seed,
        "ss_network_train_unet_only": not text_encoder,
        "ss_cache_latents": True,
        "ss_tag_frequency": json.dumps({"likeness": {t: images for t in tags}}),
        "ss_trigger_word": trigger,
        "likeness_trigger_word": trigger,
        "likeness_class_word": class_word,
        "likeness_caption": caption,
        "likeness_num_photos": photos,
        "likeness_num_crops": images,
    }
    meta.update(extra or {})
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def write_lora(path: Path | str, tensors: Mapping, metadata: Mapping[str, str]) -> Path:
    """Write a .safetensors LoRA atomically (temp file in the same folder, rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=dict(metadata))
    return path


def read_metadata(path: Path | str) -> dict[str, str]:
    """The safetensors header metadata (reads only the header)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:
        raise BadInput(f"LoRA {path} cannot be read as safetensors ({exc}).") from exc


def trigger_words(metadata: Mapping[str, str], source: object = "the LoRA") -> list[str]:
    """Trigger words a LoRA declares in its header (ours, kohya-style, ModelSpec).
    `BadInput` naming `source` when one is over `MAX_TRIGGER_CHARS`, holds a line
    break or another control character, or there are more than `MAX_TRIGGERS`."""
    words: list[str] = []
    for key in TRIGGER_KEYS:
        raw = metadata.get(key) or ""
        if not isinstance(raw, str):
            raise BadInput(f"LoRA {source}: header field {key} is not text; the file is damaged.")
        for word in raw.strip().split(","):
            word = word.strip()
            if len(word) > MAX_TRIGGER_CHARS:
                raise BadInput(f"LoRA {source}: header field {key} declares a trigger word of {len(word):,} "
                               f"characters (at most {MAX_TRIGGER_CHARS}); the file was not loaded.")
            if _CONTROL.search(word):
                raise BadInput(f"LoRA {source}: header field {key} declares a trigger word with a line break "
                               "or control character; the file was not loaded.")
            if word and word not in words:
                words.append(word)
    if len(words) > MAX_TRIGGERS:
        raise BadInput(f"LoRA {source} declares {len(words)} trigger words (at most {MAX_TRIGGERS}); "
                       "the file was not loaded.")
    return words
