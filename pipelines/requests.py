"""Typed, validated requests: the one place where ranges are checked. Messages name
the field and the allowed range (InvokeAI `InputField(ge=, le=)` style)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import BadInput
from .samplers import SAMPLERS

MethodName = Literal["faceid", "instantid", "wplus", "none"]


class GenerateRequest(BaseModel):
    """One generation job: an identity (photos or a card), a prompt, settings."""

    model_config = ConfigDict(extra="forbid")

    photos: list[str] = Field(default_factory=list, max_length=50)
    identity_card: str | None = None
    prompt: str = Field(min_length=1, max_length=4000)
    negative: str = Field(default="", max_length=4000)
    method: MethodName = "faceid"
    count: int = Field(default=1, ge=1, le=64)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    steps: int = Field(default=30, ge=1, le=150)
    cfg: float = Field(default=5.0, ge=0.0, le=30.0)
    width: int | None = Field(default=None, ge=64, le=2048)
    height: int | None = Field(default=None, ge=64, le=2048)
    sampler: str = "dpmpp_2m_karras"
    scale: float | None = Field(default=None, ge=0.0, le=2.0)  # identity adapter scale
    s_scale: float = Field(default=1.0, ge=0.0, le=3.0)  # FaceID Plus v2 face-structure weight
    shortcut: bool = True  # FaceID Plus v2
    identitynet_scale: float = Field(default=0.8, ge=0.0, le=2.0)  # InstantID ControlNet
    base_model: str = "sdxl-base"
    vae: Literal["auto", "base", "fp16-fix"] = "auto"
    out_dir: str | None = None
    name_prefix: str = Field(default="likeness", max_length=60)

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: str) -> str:
        key = v.strip().lower().replace(" ", "_").replace("+", "p").replace("++", "pp")
        aliases = {"euler_ancestral": "euler_a", "dpm++_2m_karras": "dpmpp_2m_karras", "dpmpp_2m_karras": "dpmpp_2m_karras"}
        key = aliases.get(key, key).replace("dpmpp", "dpmpp")
        if key not in SAMPLERS:
            raise ValueError(f"unknown sampler {v!r}; choose one of: {', '.join(SAMPLERS)}")
        return key

    @model_validator(mode="after")
    def _check(self):
        for f in ("width", "height"):
            v = getattr(self, f)
            if v is not None and v % 8:
                raise ValueError(f"{f} {v} must be a multiple of 8")
        if self.method != "none" and not self.photos and not self.identity_card:
            raise ValueError(f"method {self.method!r} needs photos or an identity card")
        if self.photos and self.identity_card:
            raise ValueError("give photos or an identity card, not both")
        return self


def _field_message(err: dict) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
    msg = err.get("msg", "invalid").removeprefix("Value error, ")
    if loc:
        return f"field {loc}: {msg}"
    return msg


def validate_request(model: type[BaseModel], data: dict, source: str = "request"):
    """Validate `data`; raise one `BadInput` naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadInput(f"{source}: {_field_message(exc.errors()[0])}.") from None
