"""Pose templates: data files validated by a schema.

A template is an OpenPose body-18 skeleton (COCO-18 order, as OpenPose and
controlnet-aux use it) plus the 5 face points InstantID's IdentityNet is
conditioned on (insightface order), all in normalised coordinates (0..1) of a
canvas whose width/height ratio is `aspect`. Missing keypoints are `null`.

The face points follow insightface's order and names: `left_eye` is the eye on
the left of the picture when the face looks at the camera, i.e. the subject's
*right* eye (OpenPose's `r_eye`); the same holds for the mouth corners.

Shipped templates live in `assets/poses/<name>.json`; users keep their own in a
poses folder (`save_template`). An unknown key, an out-of-range value or a
malformed file is a `BadInput` naming the file and the key; nothing is silently
defaulted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import ErrorDetails

from ..errors import BadInput, UnsafePath
from ..paths import atomic_write_text, check_name, confine

ASSETS_POSES = Path(__file__).resolve().parents[2] / "assets" / "poses"
TEMPLATE_SUFFIX = ".json"
# a template is a few hundred bytes; anything much larger is not one
MAX_TEMPLATE_BYTES = 256 * 1024

BODY_KEYPOINTS: tuple[str, ...] = (
    "nose", "neck",
    "r_shoulder", "r_elbow", "r_wrist",
    "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle",
    "l_hip", "l_knee", "l_ankle",
    "r_eye", "l_eye", "r_ear", "l_ear",
)  # fmt: skip
FACE_KEYPOINTS: tuple[str, ...] = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
MIN_BODY_POINTS = 3

Coord = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Point = tuple[Coord, Coord]


class BodyKeypoints(BaseModel):
    """OpenPose body-18 in COCO-18 order; `r_`/`l_` are the subject's right/left."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nose: Point | None = None
    neck: Point | None = None
    r_shoulder: Point | None = None
    r_elbow: Point | None = None
    r_wrist: Point | None = None
    l_shoulder: Point | None = None
    l_elbow: Point | None = None
    l_wrist: Point | None = None
    r_hip: Point | None = None
    r_knee: Point | None = None
    r_ankle: Point | None = None
    l_hip: Point | None = None
    l_knee: Point | None = None
    l_ankle: Point | None = None
    r_eye: Point | None = None
    l_eye: Point | None = None
    r_ear: Point | None = None
    l_ear: Point | None = None

    def points(self) -> list[tuple[float, float] | None]:
        return [getattr(self, k) for k in BODY_KEYPOINTS]


class FaceKeypoints(BaseModel):
    """The 5 insightface face points; all five are required when a face is given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    left_eye: Point
    right_eye: Point
    nose: Point
    left_mouth: Point
    right_mouth: Point

    def points(self) -> list[tuple[float, float]]:
        return [getattr(self, k) for k in FACE_KEYPOINTS]


class PoseTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    name: str
    title: str = Field(min_length=1, max_length=80)
    description: str = Field(default="", max_length=500)
    # width / height of the canvas the coordinates are normalised to
    aspect: float = Field(ge=0.25, le=4.0, allow_inf_nan=False)
    body: BodyKeypoints
    face: FaceKeypoints | None = None

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        try:
            return check_name(v, "name")
        except UnsafePath as exc:
            raise ValueError(str(exc)) from exc

    @model_validator(mode="after")
    def _enough_points(self):
        n = sum(p is not None for p in self.body.points())
        if n < MIN_BODY_POINTS:
            raise ValueError(f"a pose needs at least {MIN_BODY_POINTS} body keypoints, this one has {n}")
        return self

    def body_points(self) -> list[tuple[float, float] | None]:
        """The 18 body points in COCO-18 order (None where missing)."""
        return self.body.points()

    def face_points(self) -> list[tuple[float, float]] | None:
        """The 5 face points in insightface order, or None."""
        return self.face.points() if self.face else None

    def to_json(self) -> str:
        """The assets-style file text: one keypoint per line, every body key
        written (missing ones as null), so files diff and edit well."""

        def pt(p) -> str:
            return "null" if p is None else f"[{_num(p[0])}, {_num(p[1])}]"

        lines = [
            "{",
            f'  "version": {self.version},',
            f'  "name": {json.dumps(self.name)},',
            f'  "title": {json.dumps(self.title, ensure_ascii=False)},',
            f'  "description": {json.dumps(self.description, ensure_ascii=False)},',
            f'  "aspect": {_num(self.aspect)},',
            '  "body": {',
            ",\n".join(f'    "{k}": {pt(p)}' for k, p in zip(BODY_KEYPOINTS, self.body_points())),
            "  },",
        ]
        if self.face is None:
            lines.append('  "face": null')
        else:
            lines += [
                '  "face": {',
                ",\n".join(f'    "{k}": {pt(p)}' for k, p in zip(FACE_KEYPOINTS, self.face_points() or [])),
                "  }",
            ]
        lines.append("}")
        return "\n".join(lines) + "\n"


def _num(x: float) -> str:
    return repr(round(float(x), 4))


# ---- parsing -----------------------------------------------------------------------------
def _describe(err: ErrorDetails) -> str:
    parts = list(err.get("loc", ()))
    if len(parts) == 3 and parts[0] in ("body", "face") and parts[2] in (0, 1):
        parts[2] = "xy"[parts[2]]  # a point's coordinate: body.nose.x
    loc = ".".join(str(p) for p in parts)
    if err.get("type") == "extra_forbidden":
        parent = loc.rsplit(".", 1)[0] if "." in loc else ""
        allowed = {
            "": "version, name, title, description, aspect, body, face",
            "body": ", ".join(BODY_KEYPOINTS),
            "face": ", ".join(FACE_KEYPOINTS),
        }.get(parent)
        hint = f" (allowed: {allowed})" if allowed else ""
        return f"unknown key {loc!r}{hint}"
    if not loc:
        return str(err.get("msg", "invalid template")).removeprefix("Value error, ")
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    return f"key {loc}: {msg}{shown}"


def parse_template(text: str | bytes, source: str = "pose template") -> PoseTemplate:
    """Validate template JSON text; errors name `source` and the offending key."""
    from ..datafile import parse_json_model

    return parse_json_model(text, PoseTemplate, source, "a pose template",
                            "with the keys name, title, aspect, body, face", _describe)


def read_template_file(path: Path | str) -> PoseTemplate:
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BadInput(f"pose file {path} cannot be read: {exc.strerror}.") from exc
    if not path.is_file():
        raise BadInput(f"pose file {path} is not a file.")
    if size > MAX_TEMPLATE_BYTES:
        raise BadInput(
            f"pose file {path} is {size} bytes; a pose template is at most {MAX_TEMPLATE_BYTES} bytes."
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"pose file {path} cannot be read: {exc.strerror}.") from exc
    return parse_template(raw, f"pose file {path}")


# ---- lookup ------------------------------------------------------------------------------
def _folder_templates(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix == TEMPLATE_SUFFIX and p.is_file())


def _read_named(path: Path) -> PoseTemplate:
    """A template kept in a poses folder: its `name` must match its file name."""
    t = read_template_file(path)
    if t.name != path.stem:
        raise BadInput(
            f"pose file {path}: key name is {t.name!r} but the file is named {path.name}; "
            "make them the same."
        )
    return t


def builtin_names() -> list[str]:
    return [p.stem for p in _folder_templates(ASSETS_POSES)]


def list_templates(user_dir: Path | str | None = None) -> list[PoseTemplate]:
    """Shipped templates (sorted by name), then the user's from `user_dir`.
    A malformed file is an error naming it, not a silent omission."""
    out = [_read_named(p) for p in _folder_templates(ASSETS_POSES)]
    if user_dir is not None:
        shipped = {t.name for t in out}
        out += [_read_named(p) for p in _folder_templates(Path(user_dir)) if p.stem not in shipped]
    return out


def _looks_like_path(s: str) -> bool:
    return s.lower().endswith(TEMPLATE_SUFFIX) or "/" in s or os.sep in s


def load_template(name_or_path: str | os.PathLike, user_dir: Path | str | None = None) -> PoseTemplate:
    """A template by name (shipped, then `user_dir`) or from a user's .json file."""
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(str(name_or_path)):
        path = Path(name_or_path).expanduser()
        if path.suffix.lower() != TEMPLATE_SUFFIX:
            raise BadInput(f"pose file {path} is not a .json file; give a template name or a .json file.")
        if not path.exists():
            raise BadInput(f"pose file {path} does not exist.")
        return read_template_file(path)
    name = check_name(str(name_or_path), "pose name")
    folders = [ASSETS_POSES] + ([Path(user_dir)] if user_dir is not None else [])
    for folder in folders:
        path = folder / f"{name}{TEMPLATE_SUFFIX}"
        if path.is_file():
            return _read_named(path)
    known = ", ".join(t for t in builtin_names())
    raise BadInput(f"unknown pose {name!r}; use one of {known}, or give a .json template file.")


# ---- user templates ----------------------------------------------------------------------
def user_poses_dir(settings) -> Path:
    """Where the user's own templates live: `settings.poses_dir` if the settings
    have one, else a `poses` folder beside the LoRA folder."""
    explicit = getattr(settings, "poses_dir", None)
    return Path(explicit) if explicit else Path(settings.loras_dir).parent / "poses"


def save_template(
    template: PoseTemplate,
    name: str,
    folder: Path | str | None = None,
    *,
    settings=None,
    overwrite: bool = False,
) -> Path:
    """Write `template` under `name` as `<folder>/<name>.json` (atomic). `folder`
    defaults to the user poses folder of `settings` (or of the environment's
    settings). Shipped names are reserved."""
    name = check_name(name, "pose name")
    if name in builtin_names():
        raise BadInput(f"pose name {name!r} is a shipped template; choose another name.")
    if folder is None:
        if settings is None:
            from ..settings import load_settings

            settings = load_settings()
        folder = user_poses_dir(settings)
    dest = confine(Path(folder), f"{name}{TEMPLATE_SUFFIX}", "pose name")
    if dest.exists() and not overwrite:
        raise BadInput(f"pose {name!r} already exists at {dest}; choose another name or overwrite it.")
    data = template.model_dump()
    data["name"] = name
    renamed = PoseTemplate.model_validate(data)
    atomic_write_text(dest, renamed.to_json())
    return dest
