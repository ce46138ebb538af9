"""Plain data shared across the engine's parts: what an identity method, the pose
ControlNet and the two-person path hand to one pipeline call.

These types sit below every subpackage (they import nothing from the project), so
`pose/` and `multi_person` can build `ControlUnit`s without importing the identity
methods, and the identity interface (`identity/base.py`) names them without owning
them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
