"""Typed, validated requests: the one place where ranges are checked. Messages name
the field and the allowed range (InvokeAI `InputField(ge=, le=)` style)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from .errors import BadInput
from .identity import DEFAULT_METHOD, method_names
from .samplers import SAMPLER_TITLES, SAMPLERS

MethodName = str  # a method of the registry (pipelines.identity) or "none"; checked below
MAX_PHOTOS = 10  # photos of one person in a request (and an upload in the UI)
LORA_WEIGHT_MAX = 5.0


_SAMPLER_BY_TITLE = {title.lower(): name for name, title in SAMPLER_TITLES.items()}

class LoraSpec(BaseModel):
    """A LoRA from the loras folder by name (file stem), with its weight."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    # Negative weights push away from what the LoRA learned (A1111 and ComfyUI
    # accept them); beyond +-5 images break down, so that is the range.
    weight: float = Field(default=1.0, ge=-LORA_WEIGHT_MAX, le=LORA_WEIGHT_MAX, allow_inf_nan=False)

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """`NAME` or `NAME:WEIGHT` (the command line and job files): one parser.
        Raises ValueError (a bad weight) or pydantic's ValidationError (range)."""
        name, sep, weight = text.rpartition(":") if ":" in text else (text, "", "")
        if not sep:
            return cls(name=text)
        try:
            value = float(weight)
        except ValueError as exc:
            raise ValueError(f"LoRA weight in {text!r} is not a number; use NAME or NAME:WEIGHT, "
                             f"WEIGHT from -{LORA_WEIGHT_MAX:g} to {LORA_WEIGHT_MAX:g}") from exc
        return cls(name=name, weight=value)


class GenerateRequest(BaseModel):
    """One generation job: an identity (photos or a card), a prompt, settings."""

    model_config = ConfigDict(extra="forbid")

    photos: list[str] = Field(default_factory=list, max_length=MAX_PHOTOS)
    # which face to use in a photo that shows several: photo (as in `photos`) -> face
    # number, 1 = the largest, then by decreasing box area (pipelines/faces/analysis.py)
    face_index: dict[str, int] = Field(default_factory=dict, max_length=MAX_PHOTOS)
    identity_card: str | None = None
    prompt: str = Field(min_length=1, max_length=4000)
    negative: str = Field(default="", max_length=4000)
    method: MethodName = DEFAULT_METHOD
    count: int = Field(default=1, ge=1, le=64)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    steps: int = Field(default=30, ge=1, le=150)
    cfg: float = Field(default=5.0, ge=0.0, le=30.0)
    width: int | None = Field(default=None, ge=64, le=2048)
    height: int | None = Field(default=None, ge=64, le=2048)
    sampler: str = "dpmpp_2m_karras"
    # quality | fast | turbo (pipelines/speed.py): fast/turbo add a distilled LoRA and fill
    # steps/sampler/cfg the request leaves unset with the values its authors require
    speed: Literal["quality", "fast", "turbo"] = "quality"
    scale: float | None = Field(default=None, ge=0.0, le=2.0)  # identity adapter scale
    s_scale: float = Field(default=1.0, ge=0.0, le=3.0)  # FaceID Plus v2 face-structure weight
    shortcut: bool = True  # FaceID Plus v2
    identitynet_scale: float = Field(default=0.8, ge=0.0, le=2.0)  # InstantID ControlNet
    # InstantID: mask IdentityNet and the face attention to the face box (the official demo's default)
    enhance_face_region: bool = True
    # FaceID Plus v2 attention-LoRA weight; None = fades with the scale below 0.8, 1.0 = the reference
    faceid_lora_weight: float | None = Field(default=None, ge=0.0, le=2.0)
    faceid_crop_channels: Literal["rgb", "bgr"] = "rgb"  # "bgr" = what IP-Adapter's model card feeds CLIP
    # PuLID: zero tokens appended to the ID tokens, and the orthogonal mixing mode (the v1.1 demo's
    # 20 / "v2"; its v1 demo's "fidelity" is 8 / "v2", "extremely style" 16 / "v1")
    pulid_num_zero: int = Field(default=20, ge=0, le=80)
    pulid_ortho: Literal["off", "v1", "v2"] = "v2"
    # LoRAs (issue: LoRA training), pose ControlNet, face restore, best-of-N, W+ edits
    loras: list[LoraSpec] = Field(default_factory=list, max_length=8)
    pose: str | None = None  # a template name from assets/poses, or a .json / .png file
    pose_scale: float = Field(default=0.8, ge=0.0, le=2.0)
    pose_start: float = Field(default=0.0, ge=0.0, le=1.0)
    pose_end: float = Field(default=1.0, ge=0.0, le=1.0)
    restore: Literal["none", "gfpgan", "codeformer"] = "none"
    restore_strength: float = Field(default=0.7, ge=0.0, le=1.0)
    codeformer_fidelity: float = Field(default=0.5, ge=0.0, le=1.0)
    # finishing steps, in this order (pipelines/finishing.py): face-detail pass, restore,
    # upscale (+ hires pass); all recorded in the recipe's request, so a replay repeats them
    face_detail: bool = False
    face_detail_strength: float = Field(default=0.4, ge=0.05, le=1.0)  # ADetailer's default denoise
    face_detail_keep_better: bool = False  # keep the pre-pass image when its likeness is higher
    upscale: float = 1.0  # 1 (off), 1.5, 2 or 4 (pipelines/upscale.py UPSCALE_FACTORS)
    upscaler: Literal["realesrgan-x4plus", "4x-ultrasharp"] = "realesrgan-x4plus"
    hires: bool = False  # img2img over the upscaled image, same conditioning and seed
    hires_strength: float = Field(default=0.3, ge=0.05, le=0.8)
    # "put me in this photo" (pipelines/templates.py): a template name or photo file whose
    # face (template_face, 1 = the largest) is inpainted with the identity
    template: str | None = Field(default=None, max_length=1000)
    template_face: int = Field(default=1, ge=1, le=100)
    template_strength: float = Field(default=0.85, ge=0.05, le=1.0)
    # a second person (pipelines/multi_person.py): their photos or card, placed in box 2 of
    # `layout` (assets/poses/layouts; default two-side-by-side), person 1 in box 1
    photos_2: list[str] = Field(default_factory=list, max_length=MAX_PHOTOS)
    face_index_2: dict[str, int] = Field(default_factory=dict, max_length=MAX_PHOTOS)
    identity_card_2: str | None = None
    layout: str | None = Field(default=None, max_length=1000)
    keep: int | None = Field(default=None, ge=1, le=64)  # best-of-N: keep the most alike
    rejects: bool = False  # best-of-N: move the others into rejects/ instead of deleting them
    edits: list[str] = Field(default_factory=list, max_length=16)  # W+ attribute edits, "age=+2"
    base_model: str | None = None  # default: sdxl-base, or sd15-base for SD1.5 methods (wplus)
    # "ft-mse": stabilityai/sd-vae-ft-mse on an SD1.5 base (the W+ adapter's demo VAE)
    vae: Literal["auto", "base", "fp16-fix", "ft-mse"] = "auto"
    # FreeU on the UNet (SD1.5 only: the W+ demo's s1 0.6, s2 0.4, b1 1.1, b2 1.2)
    freeu: bool = False
    out_dir: str | None = None
    name_prefix: str = Field(default="likeness", max_length=60)

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        names = method_names(include_none=True)
        if v not in names:
            raise ValueError("Input should be " + ", ".join(repr(n) for n in names[:-1]) + f" or {names[-1]!r}")
        return v

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: str) -> str:
        # accept A1111 titles too: "DPM++ 2M Karras" -> dpmpp_2m_karras, "Euler a" -> euler_a
        key = v.strip().lower().replace("++", "pp").replace(" ", "_")
        key = {"euler_ancestral": "euler_a"}.get(key, key)
        key = _SAMPLER_BY_TITLE.get(v.strip().lower(), key)  # our own titles, as recorded in infotext
        if key not in SAMPLERS:
            raise ValueError(f"unknown sampler {v!r}; choose one of: {', '.join(SAMPLERS)}")
        return key

    @field_validator("upscale")
    @classmethod
    def _upscale(cls, v: float) -> float:
        if v not in (1.0, 1.5, 2.0, 4.0):
            raise ValueError(f"upscale {v:g} is not offered; choose 1 (off), 1.5, 2 or 4")
        return float(v)

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
        for photo, k in self.face_index.items():
            if photo not in self.photos:
                raise ValueError(f"face_index names {photo!r}, which is not one of the photos")
            if not 1 <= k <= 100:
                raise ValueError(f"face_index {k} for {photo!r} must be between 1 (the largest face) and 100")
        if self.pose_end < self.pose_start:
            raise ValueError(f"pose_end {self.pose_end} is before pose_start {self.pose_start}")
        if self.keep is not None and self.keep > self.count:
            raise ValueError(f"keep {self.keep} is more than count {self.count}")
        if self.edits and self.method != "wplus":
            raise ValueError("edits need method 'wplus'")
        second = bool(self.photos_2 or self.identity_card_2)
        if self.photos_2 and self.identity_card_2:
            raise ValueError("give photos_2 or identity_card_2 for the second person, not both")
        if second and self.method == "none":
            raise ValueError("a second person (photos_2) needs an identity method")
        if self.layout and not second:
            raise ValueError("layout places two people: give the second person's photos_2 or identity_card_2")
        for photo in self.face_index_2:
            if photo not in self.photos_2:
                raise ValueError(f"face_index_2 names {photo!r}, which is not one of photos_2")
        if second and self.template:
            raise ValueError("template portraits take one person; leave photos_2 out")
        if second and self.pose:
            raise ValueError("two people take their places from the layout; leave pose out")
        if self.template and self.pose:
            raise ValueError("template and pose: the template's own face gives the pose; give one of them")
        if self.hires and self.upscale == 1:
            raise ValueError("hires needs upscale 1.5, 2 or 4")
        return self


def _field_message(err: ErrorDetails) -> str:
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
        raise BadInput(f"{source}: {_field_message(exc.errors()[0])}.") from exc
