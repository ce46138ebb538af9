"""Whether a LoRA file fits a pipeline, checked before anything is loaded.

`compatibility_problem(pipe, state)` says why a LoRA state dict cannot be
loaded into `pipe` (None when it can), so an incompatible file (SD1.5 on SDXL,
unknown keys, wrong shapes) is refused while the pipeline is still as it was.

Invariants:
- Every key must map to an existing module of the right shape: the UNet part
  through diffusers' own key converters (what `load_lora_weights` will do), the
  text-encoder part (kohya `lora_te1_`/`lora_te2_` or diffusers
  `text_encoder.`/`text_encoder_2.` keys) to a linear layer of that encoder.
- `split_lora` gives the same split the loader then uses, so what was checked is
  what is loaded.
- A tensor holding NaN or inf is named (`nonfinite_tensor`): such a LoRA turns
  every image black or grey without any error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TEXT_PARTS = {"lora_te_": "text_encoder", "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2"}
_TE_SUFFIX = re.compile(r"^(?P<module>.+?)\.(?:(?P<kind>lora_A|lora_B|lora_down|lora_up|lora\.down|lora\.up|"
                        r"lora_linear_layer\.down|lora_linear_layer\.up)\.weight|(?P<alpha>alpha))$")


@dataclass
class SplitLora:
    """A LoRA state dict split by pipeline part: the UNet keys as in the file
    (diffusers converts them), the text-encoder weights per module."""

    unet: dict = field(default_factory=dict)
    text: dict = field(default_factory=dict)  # component -> module path -> {"A", "B", "alpha"}


def _components(pipe) -> dict[str, object]:
    return {c: getattr(pipe, c) for c in ("unet", "text_encoder", "text_encoder_2") if getattr(pipe, c, None) is not None}


def _text_modules(model) -> dict[str, str]:
    """kohya name (without the lora_teN_ prefix) -> module path, for every linear
    layer of a CLIP text encoder (kohya writes the `text_model.` prefix)."""
    import torch

    table = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or isinstance(getattr(module, "base_layer", None), torch.nn.Linear):
            if ".lora_" in name or name.endswith(("base_layer", "lora_A", "lora_B")):
                continue
            full = name if name.startswith("text_model.") else "text_model." + name
            table[full.replace(".", "_")] = name
    return table


def split_lora(pipe, state: dict) -> SplitLora:
    """Split `state` into UNet and text-encoder parts; raise ValueError on keys
    that belong to no part of an SDXL pipeline or name no text-encoder layer."""
    comps = _components(pipe)
    out = SplitLora()
    tables: dict[str, dict[str, str]] = {}
    for key, tensor in state.items():
        if key.startswith("lora_unet_") or key.startswith("unet."):
            out.unet[key] = tensor
            continue
        comp, rest, kohya_style = None, None, False
        for prefix, part in TEXT_PARTS.items():
            if key.startswith(prefix):
                comp, rest, kohya_style = part, key[len(prefix):], True
                break
        else:
            for part in ("text_encoder_2", "text_encoder"):
                if key.startswith(part + "."):
                    comp, rest = part, key[len(part) + 1:]
                    break
        if comp is None:
            raise ValueError(f"key {key!r} belongs to no part of an SDXL pipeline")
        assert rest is not None  # set together with comp
        if comp not in comps:
            raise ValueError(f"key {key!r} is for {comp}, which this pipeline does not have")
        m = _TE_SUFFIX.match(rest)
        if m is None:
            raise ValueError(f"key {key!r} is not a LoRA weight")
        model = comps[comp]
        if kohya_style:
            table = tables.setdefault(comp, _text_modules(model))
            module = table.get(m["module"])
        else:
            module = m["module"]
            if not hasattr(model, "text_model"):
                module = module.removeprefix("text_model.")
            module = module if _base_layer(model, module) is not None else None
        if module is None:
            raise ValueError(f"key {key!r} names no layer of {comp}")
        slot = "alpha" if m["alpha"] else ("A" if m["kind"] in ("lora_A", "lora_down", "lora.down", "lora_linear_layer.down") else "B")
        out.text.setdefault(comp, {}).setdefault(module, {})[slot] = tensor
    for comp, modules in out.text.items():
        for module, parts in modules.items():
            if "A" not in parts or "B" not in parts:
                raise ValueError(f"{comp}.{module} has only one of its two LoRA matrices")
    return out


def nonfinite_tensor(state: dict) -> str | None:
    """The key of the first floating-point tensor holding NaN or inf, or None.
    (Such a LoRA turns every image black or grey without any error.)"""
    import torch

    for key, tensor in state.items():
        if torch.is_floating_point(tensor) and not bool(torch.isfinite(tensor).all()):
            return key
    return None


def _unet_peft_keys(pipe, unet_state: dict) -> dict:
    """The UNet part in peft key form (`module.lora_A.weight`), through
    diffusers' own converters (what `load_lora_weights` will do)."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    converted, _alphas = pipe.lora_state_dict(dict(unet_state), unet_config=pipe.unet.config)
    sub = {k[len("unet."):]: v for k, v in converted.items() if k.startswith("unet.")}
    stray = [k for k in converted if not k.startswith("unet.")]
    if stray:
        raise ValueError(f"key {stray[0]!r} is not a UNet LoRA weight")
    if sub and "lora_A" not in next(iter(sub)):
        sub = convert_unet_state_dict_to_peft(sub)
    return sub


def _base_layer(model, path: str):
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return None
    return getattr(module, "base_layer", module)  # peft wraps a layer once an adapter is on it


def _shape_problem(comp: str, module_path: str, layer, kind: str, tensor) -> str | None:
    import torch

    if layer is None:
        return f"it targets {comp}.{module_path}, which this SDXL pipeline does not have (an SD1.5 LoRA?)"
    if isinstance(layer, torch.nn.Linear):
        want_in, want_out = layer.in_features, layer.out_features
    elif isinstance(layer, torch.nn.Conv2d):
        want_in, want_out = layer.in_channels, layer.out_channels
    else:
        return f"it targets {comp}.{module_path}, a {type(layer).__name__} and not a linear or conv layer"
    shape = tuple(tensor.shape)
    if kind == "A" and (len(shape) < 2 or shape[1] != want_in):
        return f"its {comp}.{module_path} down weight is {shape}, the layer takes {want_in} inputs"
    if kind == "B" and (len(shape) < 2 or shape[0] != want_out):
        return f"its {comp}.{module_path} up weight is {shape}, the layer has {want_out} outputs"
    return None


def compatibility_problem(pipe, state: dict) -> str | None:
    """Why `state` (a LoRA state dict) cannot be loaded into `pipe`, or None.
    Checks that every LoRA module exists in the pipeline with matching shapes."""
    if not state:
        return "it holds no tensors"
    try:
        parts = split_lora(pipe, state)
        unet = _unet_peft_keys(pipe, parts.unet) if parts.unet else {}
    except Exception as exc:  # diffusers' converters raise ValueError/KeyError on foreign layouts
        return f"its keys are not a LoRA layout for SDXL ({' '.join(str(exc).split())[:200]})"
    if not unet and not parts.text:
        return "it has no LoRA weights for the UNet or the text encoders"
    for key, tensor in unet.items():
        if ".lora_A." not in key and ".lora_B." not in key:
            if key.endswith((".alpha", "lora_magnitude_vector")):
                continue
            return f"it has a key {key!r} that is not a LoRA weight"
        module_path, kind = key.split(".lora_", 1)
        problem = _shape_problem("unet", module_path, _base_layer(pipe.unet, module_path), kind[0], tensor)
        if problem:
            return problem
    for comp, modules in parts.text.items():
        model = getattr(pipe, comp)
        for module_path, tensors in modules.items():
            layer = _base_layer(model, module_path)
            for kind in ("A", "B"):
                problem = _shape_problem(comp, module_path, layer, kind, tensors[kind])
                if problem:
                    return problem
    return None
