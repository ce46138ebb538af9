"""The peft and diffusers internals that switch and remove LoRA adapters: one
home for what the next diffusers or peft release may change.

The user-LoRA manager and FaceID (whose attention LoRA diffusers loads as the
peft adapter `faceid_0`) both go through these functions; tests/test_adapters.py
pins their behaviour to the installed versions, which pyproject.toml bounds.

What is relied on:
- a model with adapters has a `peft_config` dict (adapter name -> config);
  diffusers models also keep `_hf_peft_config_loaded`, which must be False again
  once the last adapter is gone, or the model is not as it was before loading;
- diffusers models delete adapters with `delete_adapters`; transformers text
  encoders injected with peft directly do not have it, so their peft layers
  (`BaseTunerLayer`) are asked one by one;
- a LoRA layer's `scaling[name]` is `weight * lora_alpha[name] / r[name]`;
- `pipe.set_adapters(names, adapter_weights)` activates exactly `names`, and a
  peft layer's `set_adapter([])` leaves it with none active.

`set_adapters` walks every module of the UNet and text encoders (on full-size
SDXL with a speed LoRA and FaceID's LoRA, thousands of peft layers) and costs a
measurable part of a 4-step image. The LoRA manager and FaceID each re-assert
their weights on every request, so `set_adapter_weights` remembers, per UNet, the
adapters it last activated together with the adapters loaded at that moment (each
name with the identity of its peft config object, so a delete and reload under
the same name also counts as a change), and skips a call that would change
nothing. Loading an adapter (peft activates it at weight 1) or deleting one
changes that set, so the next call applies again; `deactivate_all` and
`delete_adapter` also forget the record.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

# UNet -> (loaded adapters per component, (adapter, weight) pairs, the config
# objects) as last applied by `set_adapter_weights`; the configs are held so their
# ids stay unique while recorded; weak, so a released pipeline leaves nothing behind
_APPLIED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


def peft_adapters(model) -> set[str]:
    """The adapter names loaded into `model` (none: empty)."""
    return set(getattr(model, "peft_config", {}) or {})


def drop_empty_peft_config(model) -> None:
    """After the last adapter is deleted peft leaves an empty `peft_config`;
    remove it, so the model is exactly as it was before any adapter."""
    cfg = getattr(model, "peft_config", None)
    if cfg is not None and len(cfg) == 0:
        try:
            del model.peft_config
        except AttributeError:
            pass
        model._hf_peft_config_loaded = False


def delete_adapter(models: Iterable, adapter: str) -> None:
    """Remove a (possibly partly) loaded adapter from every model in `models`."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for model in models:
        _APPLIED.pop(model, None)
        present = adapter in peft_adapters(model)
        if hasattr(model, "delete_adapters") and present:  # a diffusers model
            model.delete_adapters([adapter])
        else:  # text encoders: their peft layers directly
            for module in model.modules():
                if isinstance(module, BaseTunerLayer) and adapter in getattr(module, "lora_A", {}):
                    module.delete_adapter(adapter)
            if present:
                model.peft_config.pop(adapter, None)
        drop_empty_peft_config(model)


def adapter_weight(model, adapter: str) -> float:
    """The weight peft is applying for `adapter` (scaling = weight * alpha / r);
    1.0 when no layer of `model` has it."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer) and adapter in getattr(module, "scaling", {}):
            lora: Any = module  # a LoRA layer: peft's LoraLayer keeps lora_alpha, r and scaling per adapter
            base = lora.lora_alpha[adapter] / lora.r[adapter]
            return float(lora.scaling[adapter] / base) if base else 1.0
    return 1.0


def deactivate_all(models: Iterable) -> None:
    """Leave every adapter loaded but inactive (peft layers with no active adapter
    compute the base layer only); the next `set_adapter_weights` activates again.
    Unlike diffusers' `disable_lora()`, this sets no "disabled" flag that
    `set_adapters` would not clear."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for model in models:
        _APPLIED.pop(model, None)
        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.set_adapter([])


def _loaded(pipe) -> tuple[tuple, list]:
    """The adapters loaded into each component, as (component, ((adapter, id of its
    config), ...)), and the config objects themselves."""
    keys: list[tuple] = []
    configs: list = []
    for name in _COMPONENTS:
        cfg = getattr(getattr(pipe, name, None), "peft_config", None) or {}
        keys.append((name, tuple(sorted((a, id(c)) for a, c in cfg.items()))))
        configs.extend(cfg.values())
    return tuple(keys), configs


def set_adapter_weights(pipe, weights: dict[str, float]) -> None:
    """Activate exactly the adapters in `weights`, each at its weight. A call
    that repeats the last one on the same, unchanged set of loaded adapters is
    skipped (it would change nothing and walks every module)."""
    wanted = tuple((a, float(w)) for a, w in weights.items())
    last = _APPLIED.get(pipe.unet)
    if last is not None and last[:2] == (_loaded(pipe)[0], wanted):
        return
    pipe.set_adapters(list(weights), adapter_weights=list(weights.values()))
    loaded, configs = _loaded(pipe)
    _APPLIED[pipe.unet] = (loaded, wanted, configs)
