"""The model catalog: a data file (`assets/models.toml`) validated by a schema.

Unknown keys and out-of-range values are errors naming the entry and key; there
is no silent default for a misspelt field."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from ..errors import BadInput

ASSETS = Path(__file__).resolve().parents[2] / "assets"
CATALOG_FILE = ASSETS / "models.toml"

Kind = Literal[
    "sdxl",
    "sdxl-inpaint",  # an SDXL inpainting model (9-channel UNet); never a base for text-to-image
    "sd15",
    "vae",
    "ip-adapter",
    "image-encoder",
    "controlnet",
    "insightface",
    "annotator",
    "restore",
    "wplus",
    "e4e",
    "clip",
    "lora",  # a published LoRA the app itself applies (the speed modes' distilled LoRAs)
    "identity",  # an identity method's own networks (Arc2Face UNet + encoder, PuLID)
]


def is_allowed_url(url: str) -> bool:
    """https anywhere; plain http only to a loopback host (the tests' local server)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


class ModelFile(BaseModel):
    """One file of a model, at `path` relative to the model's folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1)
    # where it comes from: the file's path in the HF repo (default: `path`) or a URL
    source: str | None = None
    size: int | None = Field(default=None, ge=0)
    # a published rounded size (e.g. a hub listing's "1.24 kB") or an estimate from the
    # published tensor shapes, where the exact byte count is not public: shown and used
    # to plan disk space, never to verify a download
    approx_size: int | None = Field(default=None, ge=0)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    # a published pickle (.bin/.pth/.pt): loaded once with weights_only=True,
    # converted to this safetensors path, and only that copy is used afterwards
    convert_to: str | None = None

    @model_validator(mode="after")
    def _safe_paths(self):
        for p in (self.path, self.convert_to):
            if p is not None and (p.startswith("/") or ".." in Path(p).parts):
                raise ValueError(f"file path {p!r} must be relative, without '..'")
        if self.convert_to and not self.convert_to.endswith(".safetensors"):
            raise ValueError("convert_to must name a .safetensors file")
        if self.size is not None and self.approx_size is not None:
            raise ValueError("give either size (exact) or approx_size, not both")
        return self

    @property
    def planned_size(self) -> int | None:
        """Bytes to plan for: the exact size, else the approximate one."""
        return self.size if self.size is not None else self.approx_size


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{1,63}$")
    kind: Kind
    description: str = ""
    source: Literal["hf", "url"]
    repo: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
    revision: str = "main"
    # diffusers weight variant of the files listed (e.g. "fp16" for *.fp16.safetensors)
    variant: str | None = None
    files: list[ModelFile] = Field(min_length=1)
    # folder under the models dir (default: the entry name); insightface packs
    # must live at insightface/models/<name> for FaceAnalysis(root=...)
    folder: str | None = None
    license: str = Field(min_length=1)
    license_url: str | None = None
    research_only: bool = False
    # the tiny offline pack that stands in for this model in demo mode
    demo_pack: str | None = None

    @model_validator(mode="after")
    def _check_source(self):
        if self.source == "hf" and not self.repo:
            raise ValueError("source 'hf' needs 'repo'")
        if self.source == "url":
            for f in self.files:
                if not is_allowed_url(f.source or ""):
                    raise ValueError(f"source 'url' needs an https:// 'source' for file {f.path!r}")
        if self.folder and (self.folder.startswith("/") or ".." in Path(self.folder).parts):
            raise ValueError("folder must be relative, without '..'")
        return self

    @property
    def dirname(self) -> str:
        return self.folder or self.name

    @property
    def size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(sizes)  # type: ignore[arg-type]

    @property
    def planned_size(self) -> tuple[int | None, bool]:
        """(bytes, exact): the exact total, else the total with approximate sizes
        filled in (exact False); bytes None when some file has neither."""
        sizes = [f.planned_size for f in self.files]
        if any(s is None for s in sizes):
            return None, False
        return sum(sizes), all(f.size is not None for f in self.files)  # type: ignore[arg-type]


def human_size(n: int | None, exact: bool = True) -> str:
    """1.5 GB style (powers of 1000, as the hub lists sizes); '~' marks an estimate."""
    if n is None:
        return "?"
    mark = "" if exact else "~"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{mark}{value:.0f} {unit}" if unit == "B" else f"{mark}{value:.1f} {unit}"
        value /= 1000
    return f"{mark}{n} B"


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: list[ModelEntry]

    @model_validator(mode="after")
    def _unique(self):
        seen: set[str] = set()
        for m in self.model:
            if m.name in seen:
                raise ValueError(f"duplicate model name {m.name!r}")
            seen.add(m.name)
        return self

    def get(self, name: str) -> ModelEntry:
        for m in self.model:
            if m.name == name:
                return m
        known = ", ".join(m.name for m in self.model)
        raise BadInput(f"unknown model {name!r}; known models: {known}.")

    def __iter__(self):  # type: ignore[override]
        return iter(self.model)


def _describe(err: ErrorDetails, data: dict) -> str:
    loc = list(err.get("loc", ()))
    where = ""
    if len(loc) >= 2 and loc[0] == "model" and isinstance(loc[1], int):
        try:
            where = f"model {data['model'][loc[1]].get('name', loc[1])!r}: "
        except Exception:
            where = f"model #{loc[1]}: "
        loc = loc[2:]
    key = ".".join(str(p) for p in loc) or "(entry)"
    return f"{where}key {key}: {err.get('msg')}"


def parse_catalog(text: str, source: str = "models.toml") -> Catalog:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{source} is not valid TOML: {exc}.") from exc
    try:
        return Catalog.model_validate(data)
    except ValidationError as exc:
        raise BadInput(f"{source}: {_describe(exc.errors()[0], data)}.") from exc


def load_catalog(path: Path | str | None = None) -> Catalog:
    path = Path(path) if path else CATALOG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"cannot read model catalog {path}: {exc.strerror}.") from exc
    return parse_catalog(text, str(path))
