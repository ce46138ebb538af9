"""Personal LoRAs: train one from a few photos, use any kohya-format LoRA.

- `dataset`: photos -> single-face, upright, bucketed crops with captions.
- `train`: `LoraTrainer` / `train_lora` (peft UNet LoRA on SDXL, accelerate): the
  order of a run. Its parts: `plan` (options and defaults), `accelerator` (one or
  N processes, mixed precision), `cache` (latents and text embeddings computed
  once), `loop` (`fit_lora`, deterministic steps), `checkpoints` (resume),
  `saving` (the LoRA folder's checks, the kohya-layout export).
- `kohya`: the kohya sd-scripts file format (keys and `ss_*` metadata).
- `manager`: `LoraManager`, which the engine uses to load and activate LoRAs
  from the loras folder (.safetensors only). Its parts: `files` (names, which
  file a name means), `compatibility` (does a file fit the pipeline),
  `adapters` (the peft/diffusers adapter internals).

Nothing is imported here: `from pipelines.lora.train import train_lora`."""
