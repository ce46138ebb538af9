"""LoRA names and files: what a LoRA name may be, and which file it means.

Invariants:
- Only `<loras_dir>/<name>.safetensors` (or `<loras_dir>/<folder>/<name>.safetensors`,
  at most `MAX_LORA_DEPTH` folders deep, resolved inside loras/) is ever named;
  a pickle of that name (.ckpt/.pt/.bin/.pth) is refused with a message that
  says to convert it; every part of a name is a single safe path component
  (`check_name`).
- Listing and finding agree: `lora_path` finds exactly what `list_loras` lists
  (no hidden files such as a training's temp files, nothing reached through a
  symlinked folder pointing outside loras/).
- LoRAs in other apps' folders (A1111, ComfyUI, Fooocus) are read in place and
  never modified; a name also in loras/ is the local one, and the error for a
  name found nowhere is loras/'s, naming what exists there.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BadInput
from ..paths import check_name, confine

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def normalize_name(name: str, field: str = "LoRA name") -> str:
    """`name` as a LoRA name: a safe single path component, without `.safetensors`.
    Pickle suffixes are refused here already."""
    if isinstance(name, str):
        for suffix in PICKLE_SUFFIXES:
            if name.lower().endswith(suffix):
                raise BadInput(
                    f"{field} {name!r} is an unsafe pickle (it can run code when loaded); "
                    "only .safetensors LoRAs are accepted: convert it to .safetensors first."
                )
        if name.lower().endswith(".safetensors"):
            name = name[: -len(".safetensors")]
    return check_name(name, field)


MAX_LORA_DEPTH = 4  # folders below loras/ searched for LoRAs


def normalize_ref(name: str, field: str = "LoRA name") -> str:
    """A reference to a LoRA: `NAME` or `FOLDER/NAME` (a file in a subfolder of
    loras/, as A1111 and ComfyUI keep them), each part a safe path component."""
    if isinstance(name, str) and "/" in name.strip("/"):
        parts = name.strip("/").split("/")
        if len(parts) > MAX_LORA_DEPTH + 1:
            raise BadInput(f"{field} {name!r} is nested more than {MAX_LORA_DEPTH} folders deep.")
        return "/".join([check_name(x, field) for x in parts[:-1]] + [normalize_name(parts[-1], field)])
    return normalize_name(name, field)


def _in_subfolders(root: Path, name: str) -> list[Path]:
    """`<root>/**/<name>.safetensors` (not hidden, at most MAX_LORA_DEPTH deep),
    each confined to `root` (a symlinked folder pointing elsewhere is skipped)."""
    found = []
    for rel in list_loras(root):
        if "/" in rel and rel.rsplit("/", 1)[1] == name:
            found.append(confine(root, f"{rel}.safetensors", "LoRA name"))
    return found


def lora_path(loras_dir: Path | str, name: str) -> Path:
    """The file of LoRA `name`: `<loras_dir>/<name>.safetensors`, or a subfolder's
    `<name>.safetensors` when exactly one holds it (`<lora:name:w>` names only the
    file, as in A1111), confined to `loras_dir`. Raises `BadInput` when it is
    missing, ambiguous or only a pickle exists."""
    name = normalize_ref(name)
    root = Path(loras_dir)
    path = confine(root, f"{name}.safetensors", "LoRA name")
    if path.is_file():
        return path
    if "/" not in name:
        found = _in_subfolders(root, name)
        if len(found) == 1:
            return found[0]
        if found:
            rels = ", ".join(sorted(p.relative_to(root.resolve()).with_suffix("").as_posix() for p in found))
            raise BadInput(f"LoRA {name!r} is in several folders ({rels}); name one with FOLDER/NAME.")
    for suffix in PICKLE_SUFFIXES:
        other = confine(root, f"{name}{suffix}", "LoRA name")
        if other.exists():
            raise BadInput(
                f"LoRA {other} is an unsafe pickle ({suffix}); only .safetensors LoRAs are loaded: "
                "convert it to .safetensors."
            )
    have = list_loras(root)
    hint = f"available: {', '.join(have)}" if have else "the folder has no .safetensors LoRAs"
    raise BadInput(f"LoRA {name!r} not found: expected {path} ({hint}).")


def list_loras(loras_dir: Path | str) -> list[str]:
    """The LoRAs a user can pick: names of the `<loras_dir>/*.safetensors` files
    (pickles are never listed, nor hidden files such as a training's temp files)."""
    root = Path(loras_dir)
    if not root.is_dir():
        return []
    resolved = root.resolve()
    names = []
    for p in root.rglob("*.safetensors"):
        rel = p.relative_to(root)
        if len(rel.parts) > MAX_LORA_DEPTH + 1 or any(x.startswith(".") for x in rel.parts):
            continue
        try:  # subfolders are searched only where they stay inside loras/
            inside = resolved in p.resolve().parents
        except OSError:
            continue
        if inside and p.is_file():
            names.append(rel.with_suffix("").as_posix())
    return sorted(names, key=lambda n: (n.count("/"), n))


def external_loras(settings) -> dict[str, Path]:
    """LoRAs in other apps' folders (A1111, ComfyUI, Fooocus, named in
    extra_model_paths.yaml): name (file stem) -> file, .safetensors only. They are
    read in place and never modified; a name also in loras/ is the local one."""
    from ..models.external import found_files

    out: dict[str, Path] = {}
    for path in found_files(settings, "loras"):
        out.setdefault(path.stem, path)
    return out


def user_lora_names(settings) -> list[str]:
    """Every LoRA a user can pick: loras/ first, then other apps' folders."""
    local = list_loras(settings.loras_dir)
    return local + sorted(n for n in external_loras(settings) if n not in local)


def find_lora(settings, name: str) -> Path:
    """The file of LoRA `name` in loras/ (see `lora_path`), else in other apps'
    folders; the error is loras/'s when neither has it."""
    try:
        return lora_path(settings.loras_dir, name)
    except BadInput:
        other = external_loras(settings).get(normalize_ref(name))
        if other is None or not other.is_file():
            raise  # the loras/ message names what exists there
        return other
