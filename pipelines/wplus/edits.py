"""Attribute edits in W+: move a latent along direction vectors loaded as data.

Three published sets (w-plus-adapter `w_direction/`, read the way its
`script/utils_direction.py` and `test_demo.ipynb` use them):
- `interfacegan_directions/<name>.pt`: a (1, 512) unit vector, added to all 18
  rows: w' = w + strength * d (2 edits: age, smile);
- `latent_directions/<name>.npy`: an (18, 512) direction, added to rows 0-7 only
  (the coarse and middle styles: shape, pose, expression), rows 8-17 untouched
  (21 edits);
- `gan_space/ffhq_pca.pt` + `ganspace_configs.csv`: 42 named GANSpace edits
  (lipstick, face_roundness, big_smile, ...), each a PCA component and a row
  range. The reference's `get_delta` *sets* the latent's coordinate along the
  component to the strength: c = <w[0] - mean, comp> / std, then
  w'[start:end] = w[start:end] + (strength - c) * comp * std. So strength 0
  moves to the mean along that component; it is not "no edit". The CSV's
  fifth column (a suggested strength) is not used by the reference either.

A plain name means, in this order, the InterFaceGAN, the latent-direction or the
GANSpace edit of that name; every edit is also reachable by its qualified name
`interfacegan.<name>`, `latent.<name>`, `ganspace.<name>` (e.g. `smile` is the
InterFaceGAN smile, `ganspace.smile` the GANSpace one). Several edits are
computed from the unedited latent and added. Strengths are limited to -4..4,
the range the published demos use.

Edits are typed `name=strength` on the command line (`--edit age=+2`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import BadInput, ModelError

W_ROWS, W_DIM = 18, 512
MAX_STRENGTH = 4.0
LATENT_ROWS = (0, 8)  # rows a latent_directions vector moves
FIELD = "--edit"
DIRECTIONS_MODEL = "wplus-directions"

_EDIT = re.compile(r"^\s*(?P<name>[A-Za-z][A-Za-z0-9_.]*)\s*=\s*(?P<value>[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|nan|infinity))\s*$", re.I)


SOURCES = ("interfacegan", "latent", "ganspace")  # precedence for a plain name


@dataclass(frozen=True)
class Direction:
    """A unit of edit: `delta` (18, 512) is added `strength` times."""

    name: str
    delta: torch.Tensor
    source: str  # "interfacegan" or "latent"

    def offset(self, wplus: torch.Tensor, strength: float) -> torch.Tensor:
        return float(strength) * self.delta.to(wplus.device, wplus.dtype)

    @property
    def rows(self) -> tuple[int, int]:
        return LATENT_ROWS if self.source == "latent" else (0, W_ROWS)


@dataclass(frozen=True)
class GanSpaceDirection:
    """A GANSpace edit: PCA component `comp` (512,) with its `std`, the PCA
    `mean` (512,), applied to rows [start, end)."""

    name: str
    comp: torch.Tensor
    std: float
    mean: torch.Tensor
    pca_index: int
    start: int
    end: int
    source: str = "ganspace"

    @property
    def rows(self) -> tuple[int, int]:
        return self.start, self.end

    def offset(self, wplus: torch.Tensor, strength: float) -> torch.Tensor:
        comp = self.comp.to(wplus.device, wplus.dtype)
        mean = self.mean.to(wplus.device, wplus.dtype)
        coord = ((wplus[..., 0, :] - mean) * comp).sum(-1) / self.std  # (...) per latent
        step = (float(strength) - coord)[..., None] * comp * self.std  # (..., 512)
        out = torch.zeros_like(wplus)
        out[..., self.start:self.end, :] = step[..., None, :]
        return out


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
        raise ModelError(f"cannot read direction file {path}: {exc}.") from exc
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


def _read_ganspace(folder: Path) -> dict[str, GanSpaceDirection]:
    """`gan_space/ffhq_pca.{safetensors,pt}` + `ganspace_configs.csv` -> edits."""
    gs = folder / "gan_space"
    csv_path = gs / "ganspace_configs.csv"
    pca_path = next((p for p in (gs / "ffhq_pca.safetensors", gs / "ffhq_pca.pt") if p.is_file()), None)
    if pca_path is None or not csv_path.is_file():
        return {}
    try:
        if pca_path.suffix == ".safetensors":
            from safetensors.torch import load_file

            pca = load_file(str(pca_path))
        else:
            pca = torch.load(pca_path, map_location="cpu", weights_only=True)
        comp, std, mean = pca["comp"].float(), pca["std"].float(), pca["mean"].float()
    except Exception as exc:
        raise ModelError(f"cannot read GANSpace components {pca_path}: {exc}.") from exc
    comp = comp.reshape(comp.shape[0], -1)
    if comp.shape[1] != W_DIM or std.shape != (comp.shape[0],) or mean.numel() != W_DIM:
        raise ModelError(f"{pca_path} has comp {tuple(comp.shape)}, std {tuple(std.shape)}, mean "
                         f"{tuple(mean.shape)}; expected (n, 1, 512), (n,), (1, 512).")
    out: dict[str, GanSpaceDirection] = {}
    text = csv_path.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        cells = line.split("\t")
        try:
            name = cells[0].strip()
            idx, start, end = (int(c) for c in cells[1:4])
        except (IndexError, ValueError) as exc:
            raise ModelError(f"{csv_path} line {number} is not 'name, pca index, start, end, strength'.") from exc
        if not (0 <= idx < comp.shape[0] and 0 <= start < end <= W_ROWS):
            raise ModelError(f"{csv_path} line {number}: component {idx} or rows {start}-{end} out of range.")
        out[name] = GanSpaceDirection(name, comp[idx].clone(), float(std[idx]), mean.reshape(W_DIM).clone(),
                                      idx, start, end)
    return out


def load_directions(folder: Path | str) -> dict[str, Direction | GanSpaceDirection]:
    """All edits under `folder` (a `wplus-directions` model folder), by plain and
    by qualified name (see the module docstring for the precedence)."""
    folder = Path(folder)
    by_source: dict[str, dict] = {src: {} for src in SOURCES}
    ig = folder / "interfacegan_directions"
    ld = folder / "latent_directions"
    if not ig.is_dir() and not ld.is_dir() and not (folder / "gan_space").is_dir():
        raise ModelError(
            f"{folder} has none of interfacegan_directions/, latent_directions/, gan_space/; "
            "it is not a W+ directions folder."
        )
    if ld.is_dir():
        for path in sorted(ld.glob("*.npy")):
            by_source["latent"][path.stem] = _latent(path.stem, _read_vector(path), path)
    if ig.is_dir():
        files: dict[str, Path] = {}
        for path in sorted(ig.iterdir()):
            if path.suffix in (".pt", ".safetensors"):
                # prefer the converted copy when both exist
                if path.stem not in files or path.suffix == ".safetensors":
                    files[path.stem] = path
        for stem, path in files.items():
            by_source["interfacegan"][stem] = _interfacegan(stem, _read_vector(path), path)
    by_source["ganspace"] = _read_ganspace(folder)
    found: dict = {}
    for src in SOURCES:
        for stem, d in by_source[src].items():
            found[f"{src}.{stem}"] = d
            found.setdefault(stem, d)
    return found


def edit_catalog(directions: Mapping) -> list[dict]:
    """Every distinct edit once, in published order per set: its shortest
    usable name, the set, the qualified name and the W+ rows it moves."""
    rows = []
    for key, d in directions.items():
        src, _, stem = key.partition(".")
        if src not in SOURCES or not stem:
            continue
        name = stem if directions.get(stem) is d else key
        a, b = d.rows
        rows.append({"name": name, "set": src, "qualified": key, "rows": f"{a}-{b - 1}"})
    return rows


def available_edit_names(store) -> list[str]:
    """The names `edit_catalog` offers for the `wplus-directions` model, or []
    when it is not downloaded (demo mode builds its tiny pack)."""
    from ..errors import ModelMissing

    try:
        if not store.demo and not store.status(DIRECTIONS_MODEL).present:
            return []
        return [r["name"] for r in edit_catalog(load_directions(store.ensure(DIRECTIONS_MODEL)))]
    except (ModelMissing, ModelError):
        return []


def _available(names: list[str], wanted: str) -> str:
    """The names to offer in an error: all of a short list, else close matches
    and where to see the rest."""
    if len(names) <= 12:
        return "available: " + ", ".join(names)
    import difflib

    close = difflib.get_close_matches(wanted, names, n=4, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"{hint}{len(names)} names are available; list them with `launch.py wplus edits`"


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
            raise BadInput(f"{field} {text!r}: no direction named {name!r}; {_available(names, name)}.")
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
                directions: Mapping, field: str = FIELD) -> torch.Tensor:
    """w' = w + the sum of each edit's offset from w (strength * delta for
    InterFaceGAN / latent directions, the GANSpace move otherwise); `wplus`
    (18, 512) or (B, 18, 512). Returns a new tensor; the input is not modified."""
    if tuple(wplus.shape[-2:]) != (W_ROWS, W_DIM):
        raise ValueError(f"W+ latent must end in (18, 512), got {tuple(wplus.shape)}")
    items = list(edits.items()) if isinstance(edits, Mapping) else list(edits)
    out = wplus.clone()
    for name, strength in items:
        if name not in directions:
            raise BadInput(f"{field} {name}: no direction named {name!r}; {_available(sorted(directions), name)}.")
        if not math.isfinite(float(strength)) or abs(float(strength)) > MAX_STRENGTH:
            raise BadInput(f"{field} {name}={strength}: strength is out of range; use -4 to 4.")
        # each edit is computed from the unedited latent (GANSpace depends on it)
        out = out + directions[name].offset(wplus, float(strength))
    return out
