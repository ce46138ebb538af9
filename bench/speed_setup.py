"""Speed modes on the baseline side of bench/generate.py: plain diffusers running
quality, fast or turbo by hand, as each distilled LoRA's model card shows.

Rules:

- a mode with a LoRA: `load_lora_weights` of the same file the engine loads, as
  adapter "speed" beside any adapter already there (FaceID's), all active at
  weight 1.0 and unfused (as the engine), and the mode's scheduler class and
  config from `pipelines/samplers.py` (the table the engine uses);
- quality loads no LoRA and keeps the pipeline's scheduler;
- a method may publish its own few-step mode (`pipelines.speed.mode_for`: e.g.
  Arc2Face turbo = LCM-LoRA SD1.5); a mode whose LoRA belongs to another base
  family than the method's is skipped, as the engine refuses it.
"""

from __future__ import annotations

from pathlib import Path


def lora_path(store, mode) -> Path | None:
    """The speed LoRA file of `mode` in the store (None: quality)."""
    return store.file_path(mode.lora, mode.lora_file) if mode.lora else None


def method_mode(speed: str, method: str):
    """(the speed mode `method` runs in `speed`, None) or (None, why it is skipped)."""
    from pipelines.identity import get_method_class
    from pipelines.speed import mode_for

    mode = mode_for(speed, method)
    family = get_method_class(method).base if method != "none" else "sdxl"
    if mode.lora is not None and mode.family != family:
        return None, f"{speed}/{method}: no {speed} mode for this method (the engine refuses it)"
    return mode, None


def apply_speed(pipe, mode, lora_path) -> None:
    """Plain diffusers running a speed mode as the LoRA's model card shows:
    `load_lora_weights` (beside an adapter already there, e.g. FaceID's
    `faceid_0`), and the mode's scheduler class and config."""

    from pipelines.samplers import SAMPLERS, scheduler_class

    if mode.lora is None:
        return
    pipe.load_lora_weights(str(lora_path), adapter_name="speed")
    names = list(dict.fromkeys([*pipe.get_active_adapters(), "speed"]))
    pipe.set_adapters(names, adapter_weights=[1.0] * len(names))
    cls_name, extra = SAMPLERS[mode.sampler]
    pipe.scheduler = scheduler_class(cls_name).from_config(pipe.scheduler.config, **extra)
