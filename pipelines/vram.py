"""VRAM policy: where the base pipeline lives, chosen from the free GPU memory
when it is loaded, and one retry with model offload after an out-of-memory error.

Thresholds (SDXL in float16: UNet 5.1 GB, text encoders 1.6 GB, VAE 0.2 GB, plus
activations of a 1024² image with CFG and an identity adapter / ControlNet):
- >= 16 GB free: everything on the GPU (an H100 or a 24 GB card);
- >= 10 GB free: on the GPU, VAE decoded in tiles (the 1024² decode alone peaks
  near 3 GB in float16);
- >= 6 GB free: model offload (each model moves to the GPU while it runs, as
  Fooocus does on 8-12 GB cards) and VAE tiling;
- less: sequential offload (layer by layer: slow, but it runs).
SD1.5 needs about half: the thresholds are halved. These are starting points
from the published model sizes, not measurements on every card; `--offload` and
`LIKENESS_VAE_TILING` override them.

Tiled VAE decoding blends tiles, so its pixels differ slightly from a whole
decode: a recipe replayed on a card that chose otherwise can differ by a few
levels. `LIKENESS_OFFLOAD=none` with `LIKENESS_VAE_TILING=0` on a big card gives
the untiled reference.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1024**3
# (free GB needed, offload, vae tiling), SDXL float16; first match wins
SDXL_TIERS = ((16.0, "none", False), (10.0, "none", True), (6.0, "model", True), (0.0, "sequential", True))
OOM_SETTING = "LIKENESS_OFFLOAD=model (--offload model), or a smaller size / fewer images (-n)"


@dataclass(frozen=True)
class Placement:
    offload: str  # none | model | sequential
    vae_tiling: bool
    free_gb: float | None  # None: not a CUDA device
    reason: str


def free_vram_gb(device: str) -> float | None:
    """Free memory of the current CUDA device in GiB, or None off CUDA."""
    if device != "cuda":
        return None
    import torch

    free, _total = torch.cuda.mem_get_info()
    return free / GB


def choose_placement(settings, device: str, family: str = "sdxl", free_gb: float | None = None) -> Placement:
    """The offload mode and VAE tiling for a pipeline about to load. `settings.offload`
    other than "auto" is the user's choice and wins; `settings.vae_tiling` True forces
    tiling on."""
    if free_gb is None:
        free_gb = free_vram_gb(device)
    forced_tiling = bool(getattr(settings, "vae_tiling", False))
    chosen = getattr(settings, "offload", "auto")
    if chosen != "auto":
        return Placement(chosen, forced_tiling, free_gb, f"offload {chosen} (setting)")
    if free_gb is None:  # CPU or MPS: unified memory, nothing to offload to
        return Placement("none", forced_tiling, None, "no CUDA device")
    scale = 0.5 if family == "sd15" else 1.0
    for need, offload, tiling in SDXL_TIERS:
        if free_gb >= need * scale:
            return Placement(offload, tiling or forced_tiling, free_gb,
                             f"{free_gb:.1f} GB free: offload {offload}, VAE tiling {'on' if tiling else 'off'}")
    raise AssertionError("the last tier needs 0 GB")  # pragma: no cover


def oom_message(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or ["out of memory"])[0][:160]
    return f"out of GPU memory even with model offload ({first}); try {OOM_SETTING}."
