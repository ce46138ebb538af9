"""Tiny super-resolution packs ("realesrgan-x4plus", "4x-ultrasharp").

Both are ESRGAN RRDB networks at scale 4, written as the published pickles are:
- RealESRGAN_x4plus.pth (xinntao/Real-ESRGAN): `{"params_ema": state}` in
  basicsr's RRDBNet key layout (`conv_first`, `body.N.rdbK.convJ`, `conv_body`,
  `conv_up1`, `conv_up2`, `conv_hr`, `conv_last`);
- 4x-UltraSharp.pth (Kim2091): a bare state dict in the original ESRGAN
  layout (`model.0`, `model.1.sub.N.RDBK.convJ.0`, ..., `model.10`).
spandrel detects the architecture, block count, width and scale from the keys,
so the tiny files (2 blocks, 16 filters instead of 23 and 64) load through the
same code as the real ones. Random weights under a fixed seed: they prove the
wiring, not the quality.
"""

from __future__ import annotations

import re
from pathlib import Path

from . import pack

SEED = 4004
TINY = dict(num_filters=16, num_blocks=2, scale=4)
REALESRGAN_FILE = "RealESRGAN_x4plus.pth"
ULTRASHARP_FILE = "4x-UltraSharp.pth"


def esrgan_old_state_dict(seed: int = SEED) -> dict:
    """The original-ESRGAN-layout state dict of a tiny x4 RRDB net (float32)."""
    import torch
    from spandrel.architectures.ESRGAN import ESRGAN

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ESRGAN(in_nc=3, out_nc=3, **TINY)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    # the random net's output sits near 0 (black after clamping); widen and centre the
    # last conv so tiles show structure in [0, 1] and a seam would be visible
    state["model.10.weight"] = state["model.10.weight"] * 8
    state["model.10.bias"] = torch.full_like(state["model.10.bias"], 0.45)
    return state


def to_basicsr_layout(old: dict, num_blocks: int) -> dict:
    """Original ESRGAN keys -> basicsr RRDBNet keys (the Real-ESRGAN release's)."""
    fixed = {"model.0": "conv_first", f"model.1.sub.{num_blocks}": "conv_body", "model.3": "conv_up1",
             "model.6": "conv_up2", "model.8": "conv_hr", "model.10": "conv_last"}
    new = {}
    for key, value in old.items():
        stem, _, kind = key.rpartition(".")
        m = re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0", stem)
        if m:
            new[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{kind}"] = value
        elif stem in fixed:
            new[f"{fixed[stem]}.{kind}"] = value
        else:
            raise KeyError(f"unexpected ESRGAN key {key}")
    return new


@pack("realesrgan-x4plus", version=1)
def build_realesrgan(dest: Path) -> None:
    import torch

    state = to_basicsr_layout(esrgan_old_state_dict(SEED), TINY["num_blocks"])
    torch.save({"params_ema": state}, Path(dest) / REALESRGAN_FILE)


@pack("4x-ultrasharp", version=1)
def build_ultrasharp(dest: Path) -> None:
    import torch

    torch.save(esrgan_old_state_dict(SEED + 1), Path(dest) / ULTRASHARP_FILE)
