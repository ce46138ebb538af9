"""What a LoRA training run is asked to do: `TrainConfig` (the options a user
gives) and `Plan` (the same options with every default resolved).

Defaults follow FaceChain v3's face LoRA (modelscope/facechain training
defaults): rank 4, alpha 32, lr 1.5e-4, steps = min(200 × photos, 800). Demo
mode (tiny random models) uses min(10 × photos, 40) steps; that rule lives in
the run profile (`RunProfile.train_steps`), not here.

Invariants:
- A plan is a pure function of (config, photo count, run profile): the same
  inputs always give the same steps, warm-up and checkpoint interval.
- `Plan.key()` lists every field that changes what step k computes; a checkpoint
  is resumed only when its key equals the new run's key (the trainer adds the
  data fingerprint and the process count).
- The name is normalised here (`normalize_name`), so a bad name fails before
  any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..profile import REAL, RunProfile
from .files import normalize_name

DEFAULT_RANK = 4
DEFAULT_ALPHA = 32.0
DEFAULT_LR = 1.5e-4


def default_steps(photos: int, profile: RunProfile = REAL) -> int:
    """FaceChain: 200 steps per photo, at most 800 (demo: 10 per photo, at most 40):
    the run profile's `train_steps`."""
    return profile.train_steps(photos)


class TrainConfig(BaseModel):
    """Training options; None means "the default for this photo count"."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=300)
    steps: int | None = Field(default=None, ge=1, le=100_000)
    rank: int = Field(default=DEFAULT_RANK, ge=1, le=256)
    alpha: float | None = Field(default=None, gt=0, le=4096)
    lr: float | None = Field(default=None, gt=0, le=1.0)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    warmup_steps: int | None = Field(default=None, ge=0, le=10_000)
    checkpoint_every: int | None = Field(default=None, ge=1, le=100_000)
    resume: bool = False
    overwrite: bool = False  # replace an existing <name>.safetensors
    text_encoder: bool = False  # also train a LoRA on both text encoders (no text-embedding cache then)
    gradient_checkpointing: bool | None = None  # None: off until the GPU runs out of memory
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    optimizer: Literal["auto", "adamw", "adamw8bit"] = "auto"
    base_model: str = "sdxl-base"


@dataclass
class Plan:
    """A `TrainConfig` with every default resolved for a training set."""

    name: str
    steps: int
    rank: int
    alpha: float
    lr: float
    seed: int
    warmup_steps: int
    checkpoint_every: int
    text_encoder: bool
    gradient_checkpointing: bool | None
    base_model: str

    def key(self) -> dict:
        """What must match for a checkpoint to be resumed."""
        return {k: getattr(self, k) for k in ("steps", "rank", "alpha", "lr", "seed", "warmup_steps",
                                                 "text_encoder", "base_model")}


def make_plan(config: TrainConfig, photos: int, profile: RunProfile = REAL) -> Plan:
    """`config` with every default resolved for `photos` photos under the run
    `profile`."""
    steps = config.steps or profile.train_steps(photos)
    every = config.checkpoint_every or min(100, max(1, steps // 4))
    warmup = config.warmup_steps if config.warmup_steps is not None else min(50, steps // 20)
    return Plan(
        name=normalize_name(config.name),
        steps=steps,
        rank=config.rank,
        alpha=float(config.alpha if config.alpha is not None else DEFAULT_ALPHA),
        lr=float(config.lr if config.lr is not None else DEFAULT_LR),
        seed=config.seed,
        warmup_steps=min(warmup, steps - 1) if steps > 1 else 0,
        checkpoint_every=every,
        text_encoder=config.text_encoder,
        gradient_checkpointing=config.gradient_checkpointing,
        base_model=config.base_model,
    )
