"""Personal LoRAs: train one from a few photos, use any kohya-format LoRA.

- `dataset`: photos -> single-face, upright, bucketed crops with captions.
- `train`: `LoraTrainer` / `train_lora` (peft UNet LoRA on SDXL, accelerate).
- `kohya`: the kohya sd-scripts file format (keys and `ss_*` metadata).
- `manager`: `LoraManager`, which the engine uses to load and activate LoRAs
  from the loras folder (.safetensors only).

Nothing is imported here: `from pipelines.lora.train import train_lora`."""
