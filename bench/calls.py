"""The one call both sides of bench/generate.py make: prompt, seed, sampler,
scales, size, steps and guidance, as diffusers keyword arguments for a
hand-built baseline (`Ctx.call_kwargs`) and as a `GenerateRequest` for the
engine (`engine_request`).

Invariants:

- both sides read these constants and `Ctx`, so a change of prompt, seed, size
  or scale reaches both alike; a baseline never sets its own;
- the seed goes to a CPU `torch.Generator` on both sides (the engine's rule), so
  the starting noise is the same on every device;
- `speed_ctx` is the only place a speed mode changes the call (its steps and
  cfg); quality keeps the command line's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

PROMPT = "a portrait photo of a person, studio lighting, sharp focus"
SEED = 1234
SAMPLER = "euler"  # the base scheduler of SDXL (EulerDiscreteScheduler), for both sides
SCALE = 0.8  # identity adapter scale (the methods' default)
IDENTITYNET_SCALE = 0.8


@dataclass
class Ctx:
    """What both sides share: device, dtype, folders, call settings, inputs."""

    device: str
    dtype: object
    steps: int
    width: int
    height: int
    cfg: float
    sdxl_folder: Path
    variant: str | None
    vae_folder: Path | None  # the fp16-fix VAE when the engine uses it
    photo: Path
    folders: dict[str, Path] = field(default_factory=dict)
    sd15_variant: str | None = None  # the SD1.5 base's weight variant (Arc2Face's baseline)

    def call_kwargs(self) -> dict:
        import torch

        return dict(prompt=PROMPT, negative_prompt=None, num_inference_steps=self.steps, guidance_scale=self.cfg,
                    width=self.width, height=self.height, output_type="pil",
                    generator=torch.Generator("cpu").manual_seed(SEED))


def speed_ctx(ctx: Ctx, mode) -> Ctx:
    """The call settings of a speed mode (quality: the command line's)."""
    return ctx if mode.lora is None else dataclasses.replace(ctx, steps=mode.steps, cfg=mode.cfg)


def engine_request(ctx: Ctx, method: str, speed: str = "quality", count: int = 1):
    """The engine's side of the call: a `GenerateRequest` for `method` in `speed`.
    Quality pins steps, cfg and sampler to the baselines'; a speed mode brings its
    own (the engine's speed defaults, as `speed_ctx` gives the baseline)."""
    from pipelines.requests import GenerateRequest

    tuned = dict(steps=ctx.steps, cfg=ctx.cfg, sampler=SAMPLER) if speed == "quality" else {}
    scale = 1.0 if method == "arc2face" else SCALE  # Arc2Face has no strength: 1 = Arc2Face
    return GenerateRequest(photos=[str(ctx.photo)] if method != "none" else [], prompt=PROMPT, method=method,
                           width=ctx.width, height=ctx.height, speed=speed, seed=SEED, count=count,
                           scale=scale, identitynet_scale=IDENTITYNET_SCALE, **tuned)
