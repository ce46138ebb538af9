"""Application settings (pydantic-settings). Every field can be overridden by an
environment variable `LIKENESS_<FIELD>` (e.g. `LIKENESS_DEVICE=cpu`); invalid
values raise `BadInput` naming the variable."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import BadInput
from .profile import DEMO_NOTICE, RunProfile, profile_for

DEMO_BANNER = DEMO_NOTICE  # what the UI and the CLI show in demo mode (the profile's notice)


def _default_home() -> Path:
    return Path.cwd()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LIKENESS_", extra="forbid", validate_default=True)

    models_dir: Path = Field(default_factory=lambda: _default_home() / "models")
    loras_dir: Path = Field(default_factory=lambda: _default_home() / "loras")
    outputs_dir: Path = Field(default_factory=lambda: _default_home() / "outputs")
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    # auto: chosen from the free VRAM when the base loads (pipelines/vram.py); vae_tiling
    # True forces tiling on, False leaves it to that choice
    offload: Literal["auto", "none", "model", "sequential"] = "auto"
    vae_tiling: bool = False
    attention: Literal["sdpa", "xformers"] = "sdpa"
    compile: bool = False
    demo: bool = False
    accept_research_licenses: bool = False
    # a ComfyUI-style extra_model_paths.yaml naming other apps' model folders (A1111,
    # ComfyUI, Fooocus) whose verified files are reused; default <models_dir>/extra_model_paths.yaml
    extra_model_paths: Path | None = None
    max_image_pixels: int = Field(default=64_000_000, ge=1_000_000, le=400_000_000)
    max_photo_side: int = Field(default=2048, ge=256, le=8192)

    @field_validator("models_dir", "loras_dir", "outputs_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        p = Path(v).expanduser()
        if "\x00" in str(p):
            raise ValueError("the path contains a NUL byte")
        # a folder, or something that can become one: /dev/null or a file is refused here,
        # not when the first image is about to be written
        probe = p
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            raise ValueError(f"{probe} is a file, not a folder" if probe == p
                             else f"{p} cannot be a folder: {probe} is a file")
        return p

    @property
    def profile(self) -> RunProfile:
        """The run profile of these settings: every rule demo mode changes
        (pipelines/profile.py). Front doors pass this object on, not `demo`."""
        return profile_for(self.demo)

    @property
    def demo_models_dir(self) -> Path:
        return self.models_dir / "demo"

    def resolve_device(self) -> str:
        """The torch device string for `device=auto` (probed lazily, never at import)."""
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            raise BadInput("--device cuda (LIKENESS_DEVICE): no CUDA GPU is available to torch here; "
                           "use --device auto or cpu.")
        if self.device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise BadInput("--device mps (LIKENESS_DEVICE): Apple's MPS is not available here; "
                           "use --device auto or cpu.")
        if self.device != "auto":
            return self.device

        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"

    def resolve_dtype(self, device: str | None = None):
        import torch

        device = device or self.resolve_device()
        if self.dtype == "auto":
            return torch.float16 if device in ("cuda", "mps") else torch.float32
        return getattr(torch, self.dtype)


def load_settings(**overrides) -> Settings:
    """Build settings from the environment plus explicit overrides; turn
    validation errors into one clear `BadInput` naming the field/variable."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err.get("loc", ())) or "settings"
        raise BadInput(
            f"setting {field} (env LIKENESS_{field.upper()}) is invalid: "
            f"{str(err.get('msg', '')).removeprefix('Value error, ')}"
            f" (got {err.get('input')!r})."
        ) from exc
