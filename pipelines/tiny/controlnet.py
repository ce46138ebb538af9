"""Tiny SDXL ControlNets: the `controlnet-openpose-sdxl` pack (xinsir layout:
config.json + fp16 diffusion_pytorch_model.safetensors) and the IdentityNet builder
used by the `instantid` pack.

Both start as `ControlNetModel.from_unet` of the tiny SDXL UNet. `from_unet` leaves
the layers a trained ControlNet learns last at zero (the conditioning embedding's
`conv_out`, `controlnet_down_blocks`, `controlnet_mid_block`); with them at zero the
ControlNet adds nothing and ignores its image, so here they get seeded random
weights: the residuals are non-zero and depend on the control image.
"""

from __future__ import annotations

from pathlib import Path

from . import pack
from .sdxl import build_unet, to_half

SEED_OPENPOSE = 10
SEED_IDENTITYNET = 11

# residual size relative to a unit-variance init (1 would swamp the UNet's features)
RESIDUAL_GAIN = 0.5


def _randomise_(conv, gen, gain: float) -> None:
    import torch

    fan_in = conv.weight[0].numel()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * gain / fan_in**0.5)
        if conv.bias is not None:
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.01)


def build_controlnet(seed: int):
    """A tiny SDXL ControlNet (float32) whose output layers are seeded random."""
    import torch
    from diffusers import ControlNetModel

    unet = build_unet()
    torch.manual_seed(seed)  # the layers from_unet does not copy from the UNet
    net = ControlNetModel.from_unet(unet)
    gen = torch.Generator().manual_seed(seed)
    # the conditioning embedding must carry the control image with a usable gain, or
    # the residual would be a near-constant and different poses would look the same
    emb = net.controlnet_cond_embedding
    for conv in (emb.conv_in, *emb.blocks):
        _randomise_(conv, gen, gain=2.0)
    _randomise_(emb.conv_out, gen, gain=3.0)
    for conv in net.controlnet_down_blocks:
        _randomise_(conv, gen, RESIDUAL_GAIN)
    _randomise_(net.controlnet_mid_block, gen, RESIDUAL_GAIN)
    return net.eval()


def write_controlnet(dest: Path, seed: int) -> None:
    """config.json + diffusion_pytorch_model.safetensors in float16, as published."""
    to_half(build_controlnet(seed)).save_pretrained(Path(dest), safe_serialization=True)


@pack("controlnet-openpose-sdxl", version=3)
def build_openpose_controlnet(dest: Path) -> None:
    write_controlnet(Path(dest), SEED_OPENPOSE)
