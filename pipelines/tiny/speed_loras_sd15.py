"""Tiny pack `speed-lora-lcm-sd15`: latent-consistency/lcm-lora-sdv1-5
`pytorch_lora_weights.safetensors`, in the kohya layout of SD1.5 LoRAs
(`lora_unet_<diffusers module name, dots as underscores>.lora_down.weight` /
`.lora_up.weight` / `.alpha`, which diffusers' `load_lora_weights` converts),
over the UNet's transformer-block linears (rank 4; the published file is
larger and is verified by the store on download, so its exact key set is not
assumed here).

Arc2Face's README loads this LoRA onto Arc2Face's UNet, which has the SD1.5
UNet's shapes. In the tiny packs the Arc2Face UNet's cross-attention is wider
than the tiny SD1.5 UNet's (its encoder must be wider than the 512-d ArcFace
embedding), so the cross-attention key/value projections (`attn2.to_k`,
`attn2.to_v`, the only layers whose shapes differ) are left out: the pack then
loads on both tiny UNets, as the real file does on both real ones."""

from __future__ import annotations

from pathlib import Path

from . import pack
from .speed_loras import RANK

SEED_LCM_SD15 = 42
FILENAME = "pytorch_lora_weights.safetensors"


def tiny_lcm_sd15_lora(rank: int = RANK, gain: float = 0.3) -> dict:
    import torch

    from .arc2face import build_unet

    gen = torch.Generator().manual_seed(SEED_LCM_SD15)
    state: dict = {}
    for name, module in build_unet().named_modules():
        if ".attentions." not in f".{name}" or not isinstance(module, torch.nn.Linear):
            continue
        if name.endswith(("attn2.to_k", "attn2.to_v")):
            continue
        key = "lora_unet_" + name.replace(".", "_")
        state[f"{key}.lora_down.weight"] = (torch.randn(rank, module.in_features, generator=gen) * gain).half()
        state[f"{key}.lora_up.weight"] = (torch.randn(module.out_features, rank, generator=gen) * gain).half()
        state[f"{key}.alpha"] = torch.tensor(float(rank))
    return state


@pack("speed-lora-lcm-sd15", version=1)
def build_lcm_sd15(dest: Path) -> None:
    from safetensors.torch import save_file

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    save_file(tiny_lcm_sd15_lora(), str(dest / FILENAME))
