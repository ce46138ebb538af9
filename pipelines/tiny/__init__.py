"""Tiny offline model packs: random-weight models built deterministically in code,
written in the exact folder layouts, file names and key names of the published
weights, so the real loaders (diffusers `from_pretrained`, `load_ip_adapter`,
insightface `FaceAnalysis`, spandrel) run on them offline.

A tiny model proves the wiring, not image quality.

Adding a pack is a few lines: a function that writes the published files into a
folder, decorated with `@pack("name", version=N)` in a module listed in
`_MODULES`. `build_pack` builds into a temp folder and renames it into place, so a
half-built pack is never seen; a `.tiny-pack.json` marker records the version.
"""

from __future__ import annotations

import importlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MARKER = ".tiny-pack.json"

# modules that register packs (imported lazily on first use)
_MODULES = (
    "pipelines.tiny.sdxl",
    "pipelines.tiny.inpaint",
    "pipelines.tiny.speed_loras",
    "pipelines.tiny.speed_loras_sd15",
    "pipelines.tiny.taesd",
    "pipelines.tiny.adapters",
    "pipelines.tiny.insightface_pack",
    "pipelines.tiny.controlnet",
    "pipelines.tiny.restore",
    "pipelines.tiny.upscaler",
    "pipelines.tiny.annotator",
    "pipelines.tiny.sd15",
    "pipelines.tiny.wplus",
    "pipelines.tiny.parsenet",
    "pipelines.tiny.openclip",
    "pipelines.tiny.arc2face",
    "pipelines.tiny.pulid",
)


@dataclass(frozen=True)
class PackSpec:
    name: str
    version: int
    build: Callable[[Path], None]


_PACKS: dict[str, PackSpec] = {}


def pack(name: str, version: int = 1):
    """Register a builder `fn(dest: Path) -> None` that writes the pack into `dest`."""

    def deco(fn: Callable[[Path], None]):
        _PACKS[name] = PackSpec(name, version, fn)
        return fn

    return deco


def _load_all() -> None:
    for mod in _MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:  # a real missing dependency, not a not-yet-written module
                raise


def available() -> dict[str, PackSpec]:
    _load_all()
    return dict(_PACKS)


def get(name: str) -> PackSpec:
    packs = available()
    if name not in packs:
        raise KeyError(f"no tiny pack named {name!r}; known: {', '.join(sorted(packs))}")
    return packs[name]


def is_built(name: str, dest: Path) -> bool:
    spec = get(name)
    marker = Path(dest) / MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return info.get("name") == name and info.get("version") == spec.version


def build_pack(name: str, dest: Path | str, force: bool = False) -> Path:
    """Build pack `name` into folder `dest` (idempotent, atomic)."""
    dest = Path(dest)
    spec = get(name)
    if not force and is_built(name, dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".building", dir=dest.parent))
    try:
        spec.build(tmp)
        (tmp / MARKER).write_text(json.dumps({"name": name, "version": spec.version}))
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
