"""Job files sent through the web UI or the API: they may name only what came
with them.

Such a job file's identities name the photos uploaded beside it (by file name)
or identity cards of this app (by name); poses, templates and layouts are
names, never files. The server's other files stay out of reach even though the
paths sit inside the job file, where gradio's own upload check does not look.
The command line passes no `Uploads`: its user names local paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadInput
from .jobread import JobErrors
from .jobspec import POSE_PHOTO_SUFFIXES, JobSpec, PhotoSpec, photo_file


@dataclass(frozen=True)
class Uploads:
    """What a job file that came through the web UI or the API may name: photos
    uploaded with it, by file name, and identity cards in `cards_dir`, by name
    (presets, poses and LoRAs are names anyway; a pose file is refused). The
    server's other files stay out of reach even though the paths sit inside the
    job file, where gradio's own upload check does not look. The command line
    passes no `Uploads`: its user names local paths."""

    photos: dict[str, Path] = field(default_factory=dict)  # file name -> the uploaded file
    cards_dir: Path | None = None

    @classmethod
    def from_files(cls, files, cards_dir: Path | None = None) -> Uploads:
        photos: dict[str, Path] = {}
        for f in files or ():
            p = Path(f)
            if p.name in photos and photos[p.name] != p:
                raise BadInput(f"two uploaded photos are named {p.name!r}; rename one of them.")
            photos[p.name] = p
        return cls(photos=photos, cards_dir=cards_dir)


def _bare_name(value, loc: tuple, errors: JobErrors, what: str) -> str:
    if not isinstance(value, str) or not value or "/" in value or "\\" in value or "\x00" in value \
            or value.startswith((".", "~")):
        raise errors.at(loc, f"a job run from the web UI names {what} by name, not by path ({value!r})")
    return value


def confine_to_uploads(spec: JobSpec, uploads: Uploads, errors: JobErrors) -> None:
    """Replace uploaded photo names and card names by their files; refuse
    anything else that would name a file on the server."""
    listed = ", ".join(sorted(uploads.photos)) or "none were uploaded"
    for name, ident in spec.identities.items():
        loc = ("identities", name)
        if ident.photos is not None:
            files = []
            for k, entry in enumerate(ident.photos):
                photo = photo_file(entry)
                key = _bare_name(photo, loc + ("photos", k), errors, "photos")
                if key not in uploads.photos:
                    raise errors.at(loc + ("photos", k), f"{photo!r} is not one of the photos uploaded with the "
                                    f"job ({listed}); upload it with the job file")
                file = str(uploads.photos[key])
                files.append(PhotoSpec(photo=file, face=entry.face) if isinstance(entry, PhotoSpec) else file)
            ident.photos = files
        if ident.card is not None:
            key = _bare_name(ident.card, loc + ("card",), errors, "identity cards")
            folder = uploads.cards_dir
            found = None
            if folder is not None:
                found = next((folder / c for c in (key, f"{key}.safetensors", f"{key}.identity.safetensors")
                              if (folder / c).is_file()), None)
            if found is None:
                raise errors.at(loc + ("card",), f"no identity card named {key!r} in {folder or 'the app'}")
            ident.card = str(found)
    pose_keys = ("pose", "poses")
    for key in pose_keys:
        if key in spec.defaults:
            for v in _as_list(spec.defaults[key]):
                _bare_name(v, ("defaults", key), errors, "poses")
                _no_file_suffix(v, ("defaults", key), errors)
    for i, it in enumerate(spec.items):
        for v in it.poses or ():
            _bare_name(v, ("items", i, "poses"), errors, "poses")
            _no_file_suffix(v, ("items", i, "poses"), errors)
        for key in pose_keys:
            if key in it.overrides:
                for v in _as_list(it.overrides[key]):
                    _bare_name(v, ("items", i, "overrides", key), errors, "poses")
                    _no_file_suffix(v, ("items", i, "overrides", key), errors)
    # a template photo or a layout file would be read from the server: names only
    places: list[tuple[tuple, dict]] = [(("defaults",), spec.defaults)]
    places += [(("items", i, "overrides"), it.overrides) for i, it in enumerate(spec.items)]
    for loc, options in places:
        for key in ("template", "layout"):
            v = options.get(key)
            if v is not None and (_bare_name(v, loc + (key,), errors, f"{key}s") != v
                                  or v.lower().endswith((".json", ".png", ".jpg", ".jpeg", ".webp"))):
                raise errors.at(loc + (key,), f"a job run from the web UI names {key}s by name, not by file "
                                f"({v!r})")


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _no_file_suffix(value: str, loc: tuple, errors: JobErrors) -> None:
    if value.lower().endswith((".json", *POSE_PHOTO_SUFFIXES)):
        raise errors.at(loc, f"a job run from the web UI names poses by template name, not by file ({value!r})")
