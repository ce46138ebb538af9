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
from typing import Any, ClassVar

# the data a method returns; defined below every subpackage and named here for the methods
from ..types import Conditioning, ControlUnit  # noqa: F401  (re-exported)


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
