"""What an evaluation runs on: identity folders (one sub-folder of photos per
person), a prompts file (one prompt per line) and the method list, each checked
up front with an error naming the folder, file or method."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput
from ..requests import MAX_PHOTOS as REQUEST_MAX_PHOTOS

PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
MAX_IDENTITIES = 500
MAX_PROMPTS = 500
MAX_PHOTOS = REQUEST_MAX_PHOTOS  # the same cap as a generate request


@dataclass(frozen=True)
class EvalIdentity:
    name: str
    photos: tuple[str, ...]


def read_identities(folder: Path | str) -> list[EvalIdentity]:
    """Every sub-folder of `folder` that holds photos, sorted by name."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise BadInput(f"--identities {root} is not a folder; give a folder with one sub-folder of photos per person.")
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        photos = sorted(str(p) for p in sub.iterdir()
                        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in PHOTO_SUFFIXES)
        if not photos:
            raise BadInput(f"identity folder {sub} has no photos (.jpg, .png, .webp, .bmp, .tif); "
                           "add some or remove the folder.")
        if len(photos) > MAX_PHOTOS:
            raise BadInput(f"identity folder {sub} has {len(photos)} photos; use at most {MAX_PHOTOS}.")
        found.append(EvalIdentity(sub.name, tuple(photos)))
    if not found:
        raise BadInput(f"--identities {root} has no sub-folders; put each person's photos in a folder of their own.")
    if len(found) > MAX_IDENTITIES:
        raise BadInput(f"--identities {root} has {len(found)} identities; use at most {MAX_IDENTITIES}.")
    return found


def read_prompts(path: Path | str) -> list[str]:
    """One prompt per line; blank lines and lines starting with # are skipped."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise BadInput(f"--prompts {p} does not exist; give a text file with one prompt per line.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"--prompts {p} cannot be read as UTF-8 text ({exc}).") from exc
    prompts = [ln.strip() for ln in text.splitlines()]
    prompts = [ln for ln in prompts if ln and not ln.startswith("#")]
    if not prompts:
        raise BadInput(f"--prompts {p} has no prompts; write one prompt per line.")
    if len(prompts) > MAX_PROMPTS:
        raise BadInput(f"--prompts {p} has {len(prompts)} prompts; use at most {MAX_PROMPTS}.")
    return prompts


def parse_methods(text: str | list[str]) -> list[str]:
    """`faceid,instantid[,wplus]` -> checked, de-duplicated method names."""
    from ..identity import method_names

    items = text.split(",") if isinstance(text, str) else list(text)
    names = []
    for raw in items:
        name = raw.strip().lower()
        if not name or name in names:
            continue
        known = method_names()
        if name not in known:
            raise BadInput(f"--methods: {name!r} is not an identity method; choose from {', '.join(known)}.")
        names.append(name)
    if not names:
        raise BadInput("--methods is empty; give e.g. faceid,instantid.")
    return names
