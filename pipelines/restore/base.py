"""The face-restorer interface and the registry of restorers.

A restorer takes one face aligned to the FFHQ 5-point template at 512x512 (RGB
uint8) and returns the restored face in the same frame. Alignment, paste-back and
blending are the caller's job (`pipelines.restore.paste`), so a new restorer is
one small class plus one `RestorerSpec` line here. Building a restorer by name is
restore/factory.py's job: this module imports no implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import BadInput

FACE_SIZE = 512


@runtime_checkable
class FaceRestorer(Protocol):
    name: str

    def restore_face(self, face_rgb_512: np.ndarray, fidelity: float | None) -> np.ndarray:
        """`face_rgb_512`: (512, 512, 3) uint8 RGB, aligned. `fidelity`: 0..1 for
        restorers that trade quality for faithfulness (CodeFormer's w; 1 = closest to
        the input), None for their default; ignored by the others. Returns the
        restored face, same shape and dtype."""
        ...


@dataclass(frozen=True)
class RestorerSpec:
    name: str  # the `--restore` value
    model: str  # catalog entry (assets/models.toml)
    weights: str  # the published file of that entry; the store hands back its .safetensors copy
    architecture: str  # spandrel architecture id the weights must be detected as
    extra_arches: bool = False  # needs spandrel_extra_arches (non-commercial licences)
    uses_fidelity: bool = False
    default_fidelity: float | None = None


RESTORERS: dict[str, RestorerSpec] = {
    s.name: s
    for s in (
        RestorerSpec("gfpgan", "gfpgan-v1.4", "GFPGANv1.4.pth", "GFPGAN"),
        # w = 0.5 is CodeFormer's own default (inference_codeformer.py --fidelity_weight)
        RestorerSpec(
            "codeformer",
            "codeformer",
            "codeformer.pth",
            "CodeFormer",
            extra_arches=True,
            uses_fidelity=True,
            default_fidelity=0.5,
        ),
    )
}

# values of `--restore` / the UI choice; "none" turns restoration off
RESTORE_CHOICES = ("none", *RESTORERS)


def restorer_spec(name: str, field: str = "restore") -> RestorerSpec:
    spec = RESTORERS.get(name)
    if spec is None:
        raise BadInput(f"{field}: unknown face restorer {name!r}; choose one of {', '.join(RESTORE_CHOICES)}.")
    return spec


def check_fidelity(fidelity: float | None, field: str = "fidelity") -> float | None:
    if fidelity is None:
        return None
    try:
        value = float(fidelity)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"{field}: {fidelity!r} is not a number; use a value from 0 to 1.") from exc
    if not 0.0 <= value <= 1.0:
        raise BadInput(f"{field}: {value:g} is out of range; use a value from 0 to 1.")
    return value
