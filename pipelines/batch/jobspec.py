"""Batch job files: the schema of a job file, and the resolved job it becomes.

`JobSpec` is the file as written (pydantic, every unknown key an error);
`Job`, `IdentitySource` and `BatchItem` are what loading makes of it (paths
resolved, items expanded and validated). The format itself is described in
`pipelines/batch/jobfile.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..paths import sanitize_name
from ..requests import MAX_PHOTOS

MAX_ITEMS = 100_000  # a typo like seeds: range(10**9) must not eat memory
MAX_JOB_BYTES = 5_000_000
MAX_DEPTH = 32  # nesting levels of mappings/lists; a real job file needs 6
MAX_CARD_BYTES = 64 * 1024 * 1024
POSE_PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


# --------------------------------------------------------------------- schema
_PLURAL = {"identity": "identities", "preset": "presets", "prompt": "prompts", "method": "methods", "seed": "seeds"}

class PhotoSpec(BaseModel):
    """A photo with the face to use in it: face numbers count from 1, the
    largest face, by decreasing box area (pipelines/faces/analysis.py)."""

    model_config = ConfigDict(extra="forbid")

    photo: str
    face: int = Field(default=1, ge=1, le=100)


class IdentitySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    photos: list[str | PhotoSpec] | None = Field(default=None, min_length=1, max_length=MAX_PHOTOS)
    card: str | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.photos is None) == (self.card is None):
            raise ValueError("give either photos: [...] or card: FILE")
        return self


class ItemSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    identity: str | None = None
    identities: list[str] | None = Field(default=None, min_length=1)
    second: str | None = None  # a second identity in the same picture (two people)
    preset: str | None = None
    presets: list[str] | None = Field(default=None, min_length=1)
    prompt: str | None = None
    prompts: list[str] | None = Field(default=None, min_length=1)
    method: str | None = None
    methods: list[str] | None = Field(default=None, min_length=1)
    seed: int | None = None
    seeds: list[int] | None = Field(default=None, min_length=1)
    poses: list[Any] | None = Field(default=None, min_length=1)
    loras: list[Any] | None = Field(default=None, min_length=1)
    overrides: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _singular_or_plural(self):
        for one, many in _PLURAL.items():
            if getattr(self, one) is not None and getattr(self, many) is not None:
                raise ValueError(f"give {one}: or {many}:, not both")
        return self

    def axis(self, one: str) -> list | None:
        single = getattr(self, one)
        return [single] if single is not None else getattr(self, _PLURAL.get(one, one + "s"))


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=100)
    defaults: dict[str, Any] = Field(default_factory=dict)
    identities: dict[str, IdentitySpec] = Field(default_factory=dict)
    items: list[ItemSpec] = Field(min_length=1)


def photo_file(entry) -> str:
    """The file of an entry of `photos:` (a path, or {photo: FILE, face: N})."""
    return entry.photo if isinstance(entry, PhotoSpec) else entry


# ------------------------------------------------------------ resolved items
@dataclass(frozen=True)
class IdentitySource:
    """One identity of the job, paths resolved against the job file."""

    name: str
    photos: tuple[Path, ...] = ()
    card: Path | None = None
    content_hash: str = ""  # sha256 over the photo (or card) bytes, and the chosen faces
    faces: tuple[int | None, ...] = ()  # per photo: the face number chosen, None = the largest

    def face_index(self) -> dict[str, int]:
        """The request's `face_index`: photo -> chosen face number."""
        return {str(p): k for p, k in zip(self.photos, self.faces) if k is not None}


@dataclass(frozen=True)
class BatchItem:
    id: str
    identity: str | None  # identity name in the job, None for method "none"
    request: Any  # GenerateRequest, with the job's photos/card
    spec_index: int  # which entry of `items` it came from

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def seed(self) -> int:
        return self.request.seed

    @property
    def short_id(self) -> str:
        return self.id[:12]

    def sort_key(self) -> tuple:
        """Items run grouped by base model, then identity method, then LoRA set, so
        the resident pipeline swaps adapters and LoRAs as rarely as possible."""
        loras = getattr(self.request, "loras", None)
        if isinstance(loras, list):
            loras = [x.model_dump() if hasattr(x, "model_dump") else x for x in loras]
        loras = json.dumps(loras, sort_keys=True, default=str)
        return (self.request.base_model or "", self.method, loras, self.identity or "", self.request.prompt,
                self.seed, self.id)

    def output_stem(self) -> str:
        who = sanitize_name(self.identity or "none", "none")[:40]
        return f"{who}-{self.method}-{self.seed}-{self.short_id}"


@dataclass
class Job:
    path: Path
    name: str
    identities: dict[str, IdentitySource]
    items: list[BatchItem] = field(default_factory=list)
    duplicates: int = 0  # expanded items whose recipe equals an earlier one
    lines: Any = field(default=None, repr=False, compare=False)  # jobread.JobLines, for errors after loading

    @property
    def folder_name(self) -> str:
        return f"batch-{sanitize_name(self.name, 'job')}"
