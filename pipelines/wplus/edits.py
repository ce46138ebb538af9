"""Attribute edits in W+: move a latent along direction vectors loaded as data.

Two published sets (w-plus-adapter `w_direction/`):
- `interfacegan_directions/<name>.pt`: a (1, 512) unit vector, added to all 18
  rows: w' = w + strength * d;
- `latent_directions/<name>.npy`: an (18, 512) direction, added to rows 0-7 only
  (the coarse and middle styles: shape, pose, expression), rows 8-17 untouched.

A name that exists in both sets means the InterFaceGAN one; the latent-direction
version stays reachable as `latent.<name>`. Strengths are limited to -4..4, the
range the published demos use.

Edits are typed `name=strength` on the command line (`--edit age=+2`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch

from ..errors import BadInput, ModelError

W_ROWS, W_DIM = 18, 512
MAX_STRENGTH = 4.0
LATENT_ROWS = (0, 8)  # rows a latent_directions vector moves
FIELD = "--edit"

_EDIT = re.compile(r"^\s*(?P<name>[A-Za-z][A-Za-z0-9_.]*)\s*=\s*(?P<value>[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|nan|infinity))\s*$", re.I)


@dataclass(frozen=True)
class Direction:
    """A unit of edit: `delta` (18, 512) is added `strength` times."""

    name: str
    delta: torch.Tensor
    source: str  # "interfacegan" or "latent"


def _read_vector(path: Path) -> torch.Tensor:
    """A direction file as a float32 tensor: .npy (no pickles), a converted
    .safetensors (its only tensor) or a published .pt (weights_only)."""
    try:
        if path.suffix == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False).astype(np.float32))
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            if len(tensors) != 1:
                raise ModelError(f"direction file {path} holds {len(tensors)} tensors; expected one.")
            return next(iter(tensors.values())).float()
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot read direction file {path}: {exc}.") from None
    if isinstance(obj, dict) and len(obj) == 1:
        obj = next(iter(obj.values()))
    if not isinstance(obj, torch.Tensor):
        raise ModelError(f"direction file {path} holds a {type(obj).__name__}, not a tensor.")
    return obj.float()


def _interfacegan(name: str, v: torch.Tensor, path: Path) -> Direction:
    if v.numel() != W_DIM:
        raise ModelError(f"direction file {path} has shape {tuple(v.shape)}; expected (1, 512).")
    return Direction(name, v.reshape(1, W_DIM).expand(W_ROWS, W_DIM).clone(), "interfacegan")


def _latent(name: str, v: torch.Tensor, path: Path) -> Direction:
    if tuple(v.shape[-2:]) != (W_ROWS, W_DIM) or v.numel() != W_ROWS * W_DIM:
        raise ModelError(f"direction file {path} has shape {tuple(v.shape)}; expected (18, 512).")
    delta = torch.zeros(W_ROWS, W_DIM)
    a, b = LATENT_ROWS
    delta[a:b] = v.reshape(W_ROWS, W_DIM)[a:b]
    return Direction(name, delta, "latent")


def load_directions(folder: Path | str) -> dict[str, Direction]:
    """All directions under `folder` (a `wplus-directions` model folder)."""
    folder = Path(folder)
    found: dict[str, Direction] = {}
    ig = folder / "interfacegan_directions"
    ld = folder / "latent_directions"
    if not ig.is_dir() and not ld.is_dir():
        raise ModelError(
            f"{folder} has neither interfacegan_directions/ nor latent_directions/; "
            "it is not a W+ directions folder."
        )
    if ld.is_dir():
        for path in sorted(ld.glob("*.npy")):
            d = _latent(path.stem, _read_vector(path), path)
            found[f"latent.{path.stem}"] = Direction(f"latent.{path.stem}", d.delta, d.source)
            found[path.stem] = d
    if ig.is_dir():
        files: dict[str, Path] = {}
        for path in sorted(ig.iterdir()):
            if path.suffix in (".pt", ".safetensors"):
                # prefer the converted copy when both exist
                if path.stem not in files or path.suffix == ".safetensors":
                    files[path.stem] = path
        for stem, path in files.items():
            found[stem] = _interfacegan(stem, _read_vector(path), path)
    return found


def parse_edit(text: str, known: Iterable[str] | None = None, field: str = FIELD) -> tuple[str, float]:
    """`"age=+2"` -> `("age", 2.0)`. Raises `BadInput` naming `field` for bad
    syntax, an unknown direction (when `known` is given) or a strength outside
    -4..4."""
    if not isinstance(text, str):
        raise BadInput(f"{field} {text!r} is not text; write name=strength, e.g. {field} age=+2.")
    m = _EDIT.match(text)
    if not m:
        raise BadInput(f"{field} {text!r} is not of the form name=strength, e.g. {field} age=+2 or {field} smile=-1.5.")
    name, value = m.group("name"), float(m.group("value"))
    if known is not None:
        names = sorted(known)
        if name not in names:
            raise BadInput(f"{field} {text!r}: no direction named {name!r}; available: {', '.join(names)}.")
    if not math.isfinite(value) or abs(value) > MAX_STRENGTH:
        raise BadInput(
            f"{field} {text!r}: strength {value:g} is out of range; use -{MAX_STRENGTH:g} to {MAX_STRENGTH:g}."
        )
    return name, value


def parse_edits(texts: Iterable[str], known: Iterable[str] | None = None,
                field: str = FIELD) -> list[tuple[str, float]]:
    """Several `--edit` values; a direction named twice is an error."""
    out: list[tuple[str, float]] = []
    known = None if known is None else list(known)
    for text in texts:
        name, value = parse_edit(text, known, field)
        if any(n == name for n, _ in out):
            raise BadInput(f"{field} names {name!r} twice; give each direction once.")
        out.append((name, value))
    return out


def apply_edits(wplus: torch.Tensor, edits: Iterable[tuple[str, float]] | Mapping[str, float],
                directions: Mapping[str, Direction], field: str = FIELD) -> torch.Tensor:
    """w' = w + sum(strength * delta) over the edits; `wplus` (18, 512) or
    (B, 18, 512). Returns a new tensor; the input is not modified."""
    if tuple(wplus.shape[-2:]) != (W_ROWS, W_DIM):
        raise ValueError(f"W+ latent must end in (18, 512), got {tuple(wplus.shape)}")
    items = list(edits.items()) if isinstance(edits, Mapping) else list(edits)
    out = wplus.clone()
    for name, strength in items:
        if name not in directions:
            raise BadInput(f"{field} {name}: no direction named {name!r}; available: {', '.join(sorted(directions))}.")
        if not math.isfinite(float(strength)) or abs(float(strength)) > MAX_STRENGTH:
            raise BadInput(f"{field} {name}={strength}: strength is out of range; use -4 to 4.")
        out = out + float(strength) * directions[name].delta.to(out.device, out.dtype)
    return out
