"""Model files the user already has, reused instead of downloaded again: the
Hugging Face cache and the model folders of other apps (AUTOMATIC1111, ComfyUI,
Fooocus).

Rules:
- Found files are only read: never moved, renamed, rewritten or deleted. The
  store gets a hard link to them (same filesystem), else a symbolic link;
  removing the store's link (e.g. after converting a pickle) never touches the
  original.
- Nothing is used unverified. A file is linked only when its sha256 equals every
  hash known for it (the catalog's, the store's pin); with none known, when it
  is its own hub id: an LFS blob in the HF cache is named by its sha256, a small
  git file by its git blob sha1. Other apps' files need a known sha256.
- Where to look: the HF cache where huggingface_hub keeps it (HF_HUB_CACHE, else
  HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else
  ~/.cache/huggingface/hub), at the catalog's pinned revision; other apps'
  folders from a ComfyUI-style `extra_model_paths.yaml` (groups with a
  `base_path` and `category: path` lines, several paths per category as a block
  scalar), named by the setting `extra_model_paths` (LIKENESS_EXTRA_MODEL_PATHS),
  or `<models_dir>/extra_model_paths.yaml` when present.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput
from .hashing import sha256_file

EXTRA_PATHS_FILE = "extra_model_paths.yaml"
# file kinds worth a look in other apps' folders
MODEL_SUFFIXES = {".safetensors", ".bin", ".pth", ".pt", ".onnx", ".ckpt", ".json"}
MAX_DEPTH = 4  # folders below a category path (insightface keeps packs at models/<pack>/)
# categories of ComfyUI / A1111 / Fooocus folders Likeness reads; others are ignored
CATEGORIES = ("checkpoints", "loras", "controlnet", "ipadapter", "clip_vision", "insightface", "upscale_models",
              "facerestore_models", "vae", "annotators", "diffusers")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


# ---- the Hugging Face cache ---------------------------------------------------------------------
def hf_cache_dir() -> Path:
    """The hub cache folder, found the way huggingface_hub finds it."""
    env = os.environ
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = env.get("HF_HOME")
    if not home:
        xdg = env.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
        home = os.path.join(xdg, "huggingface")
    return Path(home).expanduser() / "hub"


def hf_cached_file(repo: str, revision: str, filename: str, cache: Path | None = None) -> Path | None:
    """The snapshot path of `filename` of `repo` at `revision` in the HF cache, if there."""
    folder = (cache or hf_cache_dir()) / f"models--{repo.replace('/', '--')}"
    commit = revision
    if not _HEX40.match(revision):
        try:
            commit = (folder / "refs" / revision).read_text(encoding="utf-8").strip()
        except OSError:
            return None
    path = folder / "snapshots" / commit / filename
    try:
        return path if path.is_file() else None
    except OSError:
        return None


def git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verified_sha256(path: Path, known: dict[str, str], own_id: bool) -> str | None:
    """The file's sha256 when it matches every known hash (or, with none known
    and `own_id`, its own blob name); None otherwise."""
    blob = path.resolve()
    actual = sha256_file(blob)
    if known:
        return actual if all(actual == v for v in known.values()) else None
    if not own_id:
        return None
    if _HEX64.match(blob.name):
        return actual if actual == blob.name else None
    if _HEX40.match(blob.name) and git_blob_sha1(blob) == blob.name:
        return actual
    return None


# ---- other apps' folders -----------------------------------------------------------------------
def extra_paths_file(settings) -> Path | None:
    named = getattr(settings, "extra_model_paths", None)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise BadInput(f"extra_model_paths (LIKENESS_EXTRA_MODEL_PATHS): {path} does not exist.")
        return path
    default = Path(settings.models_dir) / EXTRA_PATHS_FILE
    return default if default.is_file() else None


def parse_extra_paths(path: Path) -> dict[str, list[Path]]:
    """category -> folders, from a ComfyUI-style extra_model_paths.yaml. Paths
    are relative to the group's base_path, which is relative to the file."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise BadInput(f"{path} is not a readable YAML file: {exc}") from exc
    if not isinstance(data, dict):
        raise BadInput(f"{path}: expected groups (e.g. 'comfyui:' with base_path and folders).")
    out: dict[str, list[Path]] = {}
    for group, conf in data.items():
        if conf is None:
            continue
        if not isinstance(conf, dict):
            raise BadInput(f"{path}: group {group!r} must map folder names to paths.")
        base = Path(os.path.expandvars(str(conf.get("base_path", ".")))).expanduser()
        if not base.is_absolute():
            base = path.parent / base
        for key, value in conf.items():
            if key in ("base_path", "is_default") or key not in CATEGORIES:
                continue
            if not isinstance(value, str):
                raise BadInput(f"{path}: {group}.{key} must be a path or a block of paths.")
            for line in value.splitlines():
                line = line.strip()
                if line:
                    p = Path(os.path.expandvars(line)).expanduser()
                    out.setdefault(key, []).append(p if p.is_absolute() else base / p)
    return out


def extra_folders(settings) -> dict[str, list[Path]]:
    path = extra_paths_file(settings)
    return parse_extra_paths(path) if path else {}


def _walk(folder: Path, depth: int = 0):
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return
    for p in entries:
        if p.name.startswith("."):
            continue
        if p.is_dir() and depth < MAX_DEPTH:
            yield from _walk(p, depth + 1)
        elif p.suffix.lower() in MODEL_SUFFIXES and p.is_file():
            yield p


def files_by_size(settings) -> dict[int, list[Path]]:
    """Every model-like file in the other apps' folders, by byte size (cheap:
    no file is opened)."""
    index: dict[int, list[Path]] = {}
    for folders in extra_folders(settings).values():
        for folder in folders:
            for p in _walk(folder):
                try:
                    index.setdefault(p.stat().st_size, []).append(p)
                except OSError:
                    continue
    return index


def found_files(settings, category: str, suffixes=(".safetensors",)) -> list[Path]:
    """Files of one category (e.g. checkpoints, loras) in the other apps' folders."""
    return [p for folder in extra_folders(settings).get(category, []) for p in _walk(folder)
            if p.suffix.lower() in suffixes]


# ---- reuse for the store ---------------------------------------------------------------------------
@dataclass
class Reused:
    source: Path
    sha256: str
    where: str  # "the Hugging Face cache" or "<category folder>"


def find_reusable(store, entry, f, size_index: dict[int, list[Path]] | None = None) -> Reused | None:
    """A verified copy of catalog file `f` of `entry` already on this machine."""
    known = store._expected(entry, f)
    if entry.source == "hf" and entry.repo:
        cached = hf_cached_file(entry.repo, entry.revision, f.source or f.path)
        if cached is not None:
            if f.size is not None and cached.stat().st_size != f.size:
                return None
            sha = verified_sha256(cached, known, own_id=True)
            if sha:
                return Reused(cached, sha, "the Hugging Face cache")
    if not known:
        return None  # other apps' files: only against a known sha256
    size = f.size if f.size is not None else store.pins(entry.name).get(f.path, {}).get("size")
    if size is None:
        return None
    index = size_index if size_index is not None else files_by_size(store.settings)
    for candidate in index.get(size, []):
        sha = verified_sha256(candidate, known, own_id=False)
        if sha:
            return Reused(candidate, sha, str(candidate.parent))
    return None


def link_into(source: Path, dest: Path) -> None:
    """Place `dest` as a hard link to `source` (else a symbolic link), atomically."""
    target = source.resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(target, tmp)
    except OSError:
        os.symlink(target, tmp)
    os.replace(tmp, dest)


def reuse_file(store, entry, f, dest: Path, size_index=None) -> Reused | None:
    """Link a verified local copy of `f` to `dest` and pin it; None when there is none."""
    if store.demo:
        return None
    found = find_reusable(store, entry, f, size_index)
    if found is None:
        return None
    link_into(found.source, dest)
    store._write_pins(entry.name, {f.path: store._record(dest, found.sha256, reused_from=str(found.source))})
    return found


def is_sdxl_checkpoint(path: Path) -> bool:
    """A single-file SDXL checkpoint (.safetensors with the UNet and both text
    encoders), judged from the header only."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
    except Exception:  # safetensors raises its own error types for bad headers: not a checkpoint
        return False
    return any(k.startswith("model.diffusion_model.") for k in keys) and \
        any(k.startswith("conditioner.embedders.1.") for k in keys)


def found_checkpoints(settings) -> list[Path]:
    """SDXL single-file checkpoints in the other apps' checkpoint folders."""
    return [p for p in found_files(settings, "checkpoints") if is_sdxl_checkpoint(p)]
