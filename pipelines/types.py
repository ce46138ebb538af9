"""Plain data and interfaces shared across the engine's parts: what an identity
method, the pose ControlNet and the two-person path hand to one pipeline call
(`Conditioning`, `ControlUnit`), one generated image (`GeneratedImage`), a speed
mode (`SpeedMode`), and what the engine's steps may use of the engine that runs
them (`EngineServices`).

These types sit below every subpackage and step module (they import nothing from
the project), so `pose/` and `multi_person` build `ControlUnit`s without
importing the identity methods, an identity method declares its own speed mode
without importing `speed.py` (which reads the method registry), and the steps
(finishing, face detail, upscale, templates, the image loop, two people) are
handed the engine as `EngineServices` without importing `engine.py`: the engine
sits above its steps.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")


@dataclass
class Conditioning:
    """What a method adds to one pipeline call.

    `call_kwargs` go straight to the pipeline's `__call__` (e.g.
    `ip_adapter_image_embeds`); `controlnets` are (model, control_image, scale,
    start, end) the engine combines with any pose ControlNet; `cross_attention_kwargs`
    are merged into the call's dict; `callbacks` are run per step (e.g. delayed
    conditioning)."""

    call_kwargs: dict[str, Any] = field(default_factory=dict)
    controlnets: list[ControlUnit] = field(default_factory=list)
    cross_attention_kwargs: dict[str, Any] = field(default_factory=dict)
    callbacks: list[Any] = field(default_factory=list)  # callback_on_step_end chain
    prompt_suffix: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)  # what to record in the PNG recipe
    # the text encoder's output for a method that conditions on no free text (Arc2Face):
    # the engine passes it as `prompt_embeds` instead of the request's prompt, and no
    # negative prompt (the pipeline then encodes "" with the resident text encoder)
    prompt_embeds: Any = None


@dataclass
class ControlUnit:
    name: str
    model: Any  # diffusers ControlNetModel
    image: Any  # PIL.Image at the output size
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0


SPEED_ADAPTER_PREFIX = "speed_"  # peft adapter names; user LoRAs are "user_*"


@dataclass(frozen=True)
class SpeedMode:
    """A speed mode (pipelines/speed.py): a distilled LoRA with the sampler, steps and cfg
    its authors require. An identity method that publishes its own few-step mode
    declares one (`speed_modes`), so the type lives here, below both."""

    name: str
    title: str
    help: str
    lora: str | None = None  # catalog entry (SDXL) holding the distilled LoRA
    lora_file: str | None = None  # its file in the entry
    steps: int | None = None
    steps_range: tuple[int, int] = (1, 150)
    sampler: str | None = None
    samplers: tuple[str, ...] = ()  # the samplers the LoRA was distilled for
    cfg: float | None = None
    cfg_range: tuple[float, float] = (0.0, 30.0)
    family: str = "sdxl"  # the base family the LoRA was distilled on
    adapter_id: str | None = None  # peft adapter suffix when `name` is shared with another family's mode

    @property
    def adapter(self) -> str | None:
        return SPEED_ADAPTER_PREFIX + (self.adapter_id or self.name) if self.lora else None


@dataclass
class GeneratedImage:
    path: Path
    seed: int
    image: Any  # PIL.Image
    recipe: dict


@runtime_checkable
class EngineServices(Protocol):
    """What the engine's steps use of the engine that runs them; `Engine` provides
    each member, and a step is given the engine as this and nothing more.

    Resident objects a step builds (an upscaler, the two-person IdentityNet views)
    are kept by the engine through `resident`, so their lifetime is the engine's."""

    settings: Any  # pipelines.settings.Settings
    store: Any  # pipelines.models.store.ModelStore
    device: str
    dtype: Any  # torch.dtype
    batch_images: str  # -n as one batched call: "auto" | "on" | "off"
    placement: Any  # pipelines.vram.Placement of the resident base, None before one is loaded

    def analyzer(self, pack: str) -> Any:
        """The resident FaceAnalyzer of insightface pack `pack`."""

    def identity(self, photos: list[str] | None = None, card: str | None = None, packs: tuple[str, ...] = (),
                 faces: dict[str, int] | None = None) -> Any:
        """An identity from photos or a saved card (cached by content)."""

    def scorer(self) -> Any:
        """The likeness scorer (pipelines/scoring.py `LikenessScorer`)."""

    def view(self, pipe, task: str, units=()) -> Any:
        """A diffusers pipeline for `task` over the resident components of `pipe`."""

    def scheduler(self, sampler: str) -> Any:
        """A new scheduler `sampler` from the resident base's scheduler config."""

    def call_kwargs(self, req, cond: Conditioning, units, width: int, height: int, seed: int, on_step, cancel,
                    index: int) -> dict[str, Any]:
        """The keyword arguments of one pipeline call for `req` with `cond`."""

    def finish_image(self, image, req, recipe: dict) -> Any:
        """Face detail, face restore and upscale of one denoised image (recorded in `recipe`)."""

    def resident(self, kind: str, key: Hashable, build: Callable[[], T],
                 fits: Callable[[T], bool] | None = None) -> T:
        """The engine's resident `kind` object `key`, built with `build()` the first time
        (and again when `fits` says the kept one no longer fits)."""
