"""The identity-method interface.

A method injects a person's identity into a resident diffusers pipeline. Its life
is symmetric (diffusers `loaders/ip_adapter.py`): `load` attaches its modules to
the pipeline, `conditioning` turns an `Identity` into pipeline-call kwargs for one
request, and `unload` leaves the pipeline exactly as it was before `load` (same
output as a fresh pipeline for the same seed). The engine keeps one method loaded
at a time and swaps methods without reloading the base.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar


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


class IdentityMethod(ABC):
    #: registry name, used on the command line (`--method`)
    name: ClassVar[str]
    #: short name for choices (UI, CLI help), full name for reports, one line of help
    label: ClassVar[str] = ""
    title: ClassVar[str] = ""
    help: ClassVar[str] = ""
    #: base model family it runs on: "sdxl" or "sd15"
    base: ClassVar[str] = "sdxl"
    #: catalog names of the models it needs (downloaded/built by the store)
    required_models: ClassVar[tuple[str, ...]] = ()
    #: the insightface pack whose embedding it conditions on ("buffalo_l", "antelopev2")
    recognizer: ClassVar[str | None] = None
    #: default adapter scale
    default_scale: ClassVar[float] = 0.8
    #: the reference demo's recipe (request field -> value); the engine applies each
    #: only to fields the request did not set, and the recipe records the result
    recipe_defaults: ClassVar[dict[str, Any]] = {}
    #: True when the method's conditioning replaces the text prompt (the request's
    #: prompt is then ignored; the front doors say so)
    replaces_prompt: ClassVar[bool] = False

    def __init__(self, store, device: str, dtype):
        self.store = store
        self.device = device
        self.dtype = dtype
        self.loaded = False

    def scale_for(self, request) -> float:
        return request.scale if request.scale is not None else self.default_scale

    def embedding_for(self, identity, raw: bool = False):
        """The identity's embedding from this method's recogniser (normed, or raw);
        a clear error when the identity was built without it."""
        from ..errors import BadInput

        table = None if identity is None else (identity.raw_embeddings if raw else identity.embeddings)
        emb = None if table is None else table.get(self.recognizer)
        if emb is None:
            raise BadInput(f"the identity has no {self.recognizer} embedding (needed by {self.name}); "
                           "re-create it from photos.")
        return emb

    def refresh_adapters(self, pipe, user_lora_weights: dict[str, float]) -> None:  # noqa: B027 (optional hook)
        """Called whenever the user LoRAs on `pipe` change, with the active ones
        (peft adapter -> weight): a method with a peft adapter of its own keeps it
        and them active together. Default: nothing to do."""

    @abstractmethod
    def load(self, pipe) -> None:
        """Attach adapters/processors to `pipe` (idempotent)."""

    @abstractmethod
    def unload(self, pipe) -> None:
        """Remove everything `load` added; `pipe` must behave exactly as before."""

    @abstractmethod
    def conditioning(self, pipe, identity, request, width: int, height: int) -> Conditioning:
        """Per-request conditioning for `identity` (see `pipelines.faces.Identity`)."""
