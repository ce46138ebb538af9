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
"""

from __future__ import annotations

from collections.abc import Iterable


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
            base = module.lora_alpha[adapter] / module.r[adapter]
            return float(module.scaling[adapter] / base) if base else 1.0
    return 1.0


def deactivate_all(models: Iterable) -> None:
    """Leave every adapter loaded but inactive (peft layers with no active adapter
    compute the base layer only); the next `set_adapter_weights` activates again.
    Unlike diffusers' `disable_lora()`, this sets no "disabled" flag that
    `set_adapters` would not clear."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for model in models:
        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.set_adapter([])


def set_adapter_weights(pipe, weights: dict[str, float]) -> None:
    """Activate exactly the adapters in `weights`, each at its weight."""
    pipe.set_adapters(list(weights), adapter_weights=list(weights.values()))
