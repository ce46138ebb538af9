"""Tiny few-step LoRA packs for the speed modes, with the published file names:

- `speed-lora-lightning-4step`: ByteDance/SDXL-Lightning
  `sdxl_lightning_4step_lora.safetensors`;
- `speed-lora-lcm-sdxl`: latent-consistency/lcm-lora-sdxl
  `pytorch_lora_weights.safetensors`.

Both are written in the kohya layout that A1111, ComfyUI and diffusers'
`load_lora_weights` read (`lora_unet_<sgm module>.lora_down.weight` /
`.lora_up.weight` / `.alpha`, pipelines/lora/kohya.py), over every linear layer
of the tiny SDXL UNet's transformer blocks (attention q/k/v/out, proj_in/out,
feed-forward), so the loader's key conversion and the adapter bookkeeping run
as on the real files. The published files also hold conv and resnet layers; a
real download is loaded by the same diffusers converter, and the store verifies
it by sha256, so its exact key set is not assumed here.

The up matrices are clearly non-zero (unlike a fresh LoRA) so that a test sees
the adapter act, and each pack has its own seed, so the two modes differ.
"""

from __future__ import annotations

from pathlib import Path

from . import pack

RANK = 4  # 64 in the published files
SEED_LIGHTNING = 40
SEED_LCM = 41


def speed_lora_state(unet, seed: int, rank: int, gain: float = 0.3) -> dict:
    """A float16 kohya state dict over `unet`'s transformer-block linears (the
    UNet may live on the meta device: only its shapes are read)."""
    import torch

    from ..lora.kohya import peft_to_kohya

    gen = torch.Generator().manual_seed(seed)
    peft: dict = {}
    for name, module in unet.named_modules():
        if ".attentions." not in f".{name}" or not isinstance(module, torch.nn.Linear):
            continue
        peft[f"{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=gen) * gain
        peft[f"{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=gen) * gain
    state = peft_to_kohya(peft, layers_per_block=unet.config.layers_per_block, alpha=float(rank))
    return {k: v.to(torch.float16) if v.ndim else v for k, v in state.items()}


def tiny_speed_lora(seed: int, rank: int = RANK) -> dict:
    """A kohya state dict over the tiny SDXL UNet's transformer-block linears."""
    from .sdxl import build_unet

    return speed_lora_state(build_unet(), seed, rank)


def _write(dest: Path, filename: str, seed: int) -> None:
    from safetensors.torch import save_file

    dest.mkdir(parents=True, exist_ok=True)
    save_file(tiny_speed_lora(seed), str(dest / filename))


@pack("speed-lora-lightning-4step", version=1)
def build_lightning(dest: Path) -> None:
    _write(Path(dest), "sdxl_lightning_4step_lora.safetensors", SEED_LIGHTNING)


@pack("speed-lora-lcm-sdxl", version=1)
def build_lcm(dest: Path) -> None:
    _write(Path(dest), "pytorch_lora_weights.safetensors", SEED_LCM)
