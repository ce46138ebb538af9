"""One-click portrait presets: data files validated by a schema.

A preset is `assets/presets/<name>.json`: a prompt template, a negative prompt,
the identity method and its scales, an optional pose template, a size bucket
(by name, never pixels, so the run profile can shrink it), sampler, steps, CFG, face
restore and optional style LoRAs, plus a title and two card colours for its
preview card (`assets/presets/previews/<name>.png`).

The prompt template holds `{subject}` once, where the user's description of the
person goes ("a woman with red hair"); without the placeholder the subject is
put in front of the template. An unknown key, an out-of-range value or a bad
file is a `BadInput` naming the file and the key; nothing is silently defaulted
(Fooocus' silent fallback is what not to copy).

Merging a preset with what the user gives has one home, `apply_preset`, used
by every front door (the command line, the web UI's API, job files); its
docstring names how they differ.

    python -m pipelines.presets --previews    # redraw the preview cards
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import ErrorDetails

from .errors import BadInput, UnsafePath
from .identity import methods_for_family
from .paths import check_name
from .profile import (
    DEMO_MAX_STEPS as DEMO_MAX_STEPS,  # the demo step cap, also read from here
    REAL,
    RunProfile,
)
from .requests import LoraSpec
from .samplers import SAMPLERS, SDXL_BUCKETS

ASSETS_PRESETS = Path(__file__).resolve().parents[1] / "assets" / "presets"
PREVIEWS_DIR = ASSETS_PRESETS / "previews"
PRESET_SUFFIX = ".json"
MAX_PRESET_BYTES = 64 * 1024
DEFAULT_SUBJECT = "a person"
SUBJECT = "{subject}"

# size buckets by name (SDXL training buckets); presets name one, never pixels
SIZE_BUCKETS: dict[str, tuple[int, int]] = {
    "square": SDXL_BUCKETS[0],  # 1024x1024
    "landscape": SDXL_BUCKETS[1],  # 1152x896
    "portrait": SDXL_BUCKETS[2],  # 896x1152
    "wide": SDXL_BUCKETS[3],  # 1216x832
    "tall": SDXL_BUCKETS[4],  # 832x1216
    "cinema": SDXL_BUCKETS[5],  # 1344x768
    "poster": SDXL_BUCKETS[6],  # 768x1344
    "banner": SDXL_BUCKETS[7],  # 1536x640
    "strip": SDXL_BUCKETS[8],  # 640x1536
}
SizeName = Literal["square", "landscape", "portrait", "wide", "tall", "cinema", "poster", "banner", "strip"]
_HEX = r"^#[0-9a-fA-F]{6}$"


class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    name: str
    title: str = Field(min_length=1, max_length=60)
    description: str = Field(default="", max_length=300)
    colors: tuple[str, str] = ("#2b2d42", "#edf2f4")  # card background, accent
    prompt: str = Field(min_length=1, max_length=2000)
    negative: str = Field(default="", max_length=2000)
    method: str  # an identity method that runs on SDXL (the size buckets are SDXL's)
    scale: float | None = Field(default=None, ge=0.0, le=2.0)
    s_scale: float = Field(default=1.0, ge=0.0, le=3.0)
    identitynet_scale: float = Field(default=0.8, ge=0.0, le=2.0)
    pose: str | None = None
    pose_scale: float = Field(default=0.8, ge=0.0, le=2.0)
    size: SizeName
    sampler: str
    steps: int = Field(ge=1, le=150)
    cfg: float = Field(ge=0.0, le=30.0)
    # quality | fast | turbo (pipelines/speed.py); sampler/steps/cfg must fit the mode
    speed: Literal["quality", "fast", "turbo"] = "quality"
    restore: Literal["none", "gfpgan", "codeformer"] = "none"
    restore_strength: float = Field(default=0.7, ge=0.0, le=1.0)
    codeformer_fidelity: float = Field(default=0.5, ge=0.0, le=1.0)
    loras: list[LoraSpec] = Field(default_factory=list, max_length=4)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        try:
            return check_name(v, "name")
        except UnsafePath as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("colors")
    @classmethod
    def _hex(cls, v: tuple[str, str]) -> tuple[str, str]:
        for c in v:
            if not re.match(_HEX, c):
                raise ValueError(f"colour {c!r} is not #RRGGBB")
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        sdxl = methods_for_family("sdxl")
        if v not in sdxl:
            raise ValueError(f"method {v!r} is not an SDXL identity method; choose one of: {', '.join(sdxl)}")
        return v

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: str) -> str:
        if v not in SAMPLERS:
            raise ValueError(f"unknown sampler {v!r}; choose one of: {', '.join(SAMPLERS)}")
        return v

    @model_validator(mode="after")
    def _speed(self):
        from .speed import get_mode

        mode = get_mode(self.speed)
        if mode.lora is not None:
            lo, hi = mode.steps_range
            clo, chi = mode.cfg_range
            if self.sampler not in mode.samplers:
                raise ValueError(f"speed {self.speed!r} needs sampler {' or '.join(mode.samplers)}")
            if not lo <= self.steps <= hi:
                raise ValueError(f"speed {self.speed!r} runs {lo} to {hi} steps")
            if not clo <= self.cfg <= chi:
                raise ValueError(f"speed {self.speed!r} needs cfg from {clo:g} to {chi:g}")
        return self

    @field_validator("prompt")
    @classmethod
    def _template(cls, v: str) -> str:
        if v.count(SUBJECT) > 1:
            raise ValueError(f"{SUBJECT} may appear once in the prompt")
        probe = v.replace(SUBJECT, "")
        if "{" in probe or "}" in probe:
            raise ValueError(f"the only placeholder allowed in the prompt is {SUBJECT}")
        return v

    @field_validator("pose")
    @classmethod
    def _pose(cls, v: str | None) -> str | None:
        if v is None:
            return v
        names = _pose_names()
        if v not in names:
            raise ValueError(f"pose template {v!r} does not exist; choose one of: {', '.join(names)}")
        return v

    @property
    def width_height(self) -> tuple[int, int]:
        return SIZE_BUCKETS[self.size]

    def format_prompt(self, subject: str | None = None) -> str:
        subject = (subject or "").strip() or DEFAULT_SUBJECT
        if SUBJECT in self.prompt:
            return self.prompt.replace(SUBJECT, subject)
        return f"{subject}, {self.prompt}"

    def request_fields(self, subject: str | None = None, profile: RunProfile = REAL) -> dict:
        """The `GenerateRequest` fields this preset sets (the caller adds photos,
        seed, count and anything the user overrides). The run `profile` sizes the
        bucket and caps the steps (demo: 1/8 per side, at most DEMO_MAX_STEPS
        steps, so a preset click takes seconds on the tiny models)."""
        w, h = profile.size(*self.width_height)
        steps = profile.cap_steps(self.steps)
        fields: dict = {
            "prompt": self.format_prompt(subject),
            "negative": self.negative,
            "method": self.method,
            "s_scale": self.s_scale,
            "identitynet_scale": self.identitynet_scale,
            "pose_scale": self.pose_scale,
            "width": w,
            "height": h,
            "sampler": self.sampler,
            "steps": steps,
            "cfg": self.cfg,
            "speed": self.speed,
            "restore": self.restore,
            "restore_strength": self.restore_strength,
            "codeformer_fidelity": self.codeformer_fidelity,
            "loras": [lo.model_dump() for lo in self.loras],
        }
        if self.scale is not None:
            fields["scale"] = self.scale
        if self.pose is not None:
            fields["pose"] = self.pose
        return fields


def _pose_names() -> list[str]:
    """Names of the shipped pose templates."""
    from .pose.templates import builtin_names

    return builtin_names()


def _describe(err: ErrorDetails) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()))
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        allowed = ", ".join(Preset.model_fields)
        return f"key {loc!r} is unknown (allowed: {allowed})"
    if err.get("type") == "missing":
        return f"key {loc!r} is missing"
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    return f"key {loc!r}: {msg}{shown}" if loc else msg


def parse_preset(text: str | bytes, source: str = "preset") -> Preset:
    """Validate preset JSON text; errors name `source` and the offending key."""
    from .datafile import parse_json_model

    return parse_json_model(text, Preset, source, "a preset",
                            f"keys: {', '.join(Preset.model_fields)}", _describe)


def read_preset_file(path: Path | str) -> Preset:
    """A preset file; its `name` must match its file name."""
    path = Path(path)
    label = f"preset file {path}"
    try:
        if not path.is_file():
            raise BadInput(f"{label} does not exist or is not a file.")
        if path.stat().st_size > MAX_PRESET_BYTES:
            raise BadInput(f"{label} is larger than {MAX_PRESET_BYTES} bytes; a preset is a small JSON file.")
        raw = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"{label} cannot be read: {exc.strerror}.") from exc
    preset = parse_preset(raw, label)
    if preset.name != path.stem:
        raise BadInput(f"{label}: key 'name' is {preset.name!r} but the file is named {path.name}; make them the same.")
    return preset


def preset_files(folder: Path | str | None = None) -> list[Path]:
    folder = Path(folder) if folder is not None else ASSETS_PRESETS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix == PRESET_SUFFIX and p.is_file())


def list_presets(folder: Path | str | None = None) -> list[Preset]:
    """Every preset in `folder` (default: the shipped ones), sorted by name.
    A malformed file is an error naming it, never a silent omission."""
    return [read_preset_file(p) for p in preset_files(folder)]


def get_preset(name: str, folder: Path | str | None = None, user_dir: Path | str | None = None) -> Preset:
    """Preset `name` from `folder` (default: the shipped ones), else from the
    user's own presets in `user_dir` (`user_presets_dir`)."""
    try:
        check_name(name, "preset")
    except UnsafePath as exc:
        raise BadInput(str(exc)) from exc
    folders = [Path(folder) if folder is not None else ASSETS_PRESETS]
    if user_dir is not None:
        folders.append(Path(user_dir))
    for f in folders:
        path = f / f"{name}{PRESET_SUFFIX}"
        if path.is_file():
            return read_preset_file(path)
    known = ", ".join(p.stem for f in folders for p in preset_files(f)) or "none"
    raise BadInput(f"preset {name!r} does not exist; choose one of: {known}.")


def apply_preset(preset: str | Preset, profile: RunProfile = REAL, *, subject: str | None = None,
                 overrides: dict | None = None, folder: Path | str | None = None,
                 user_dir: Path | str | None = None) -> dict:
    """The `GenerateRequest` fields of `preset` (a name, looked up in `folder`, the
    shipped presets by default, then the user's `user_dir`; or a `Preset`) merged
    with what the user gives. The one place where a preset meets user input:

    1. The preset's fields, sized and capped by the run `profile`.
    2. `subject` fills the prompt's {subject} (without the placeholder it goes in
       front); None fills in DEFAULT_SUBJECT.
    3. A speed in `overrides` other than the preset's drops the preset's steps,
       sampler and cfg, which the new mode fills (`speed.switch_speed`), except
       those `overrides` gives too. A speed that is not a known mode name is
       left as given, for the request's validation to name where it came from.
    4. `overrides` replace the fields they name, the prompt included: a prompt
       in `overrides` replaces the whole template.

    The front doors differ only in what they pass:

    - command line (`generate --preset`): `--prompt` is the `subject`; the other
      options and `--speed` are `overrides`;
    - web UI API (`/generate`): `prompt` is the `subject`, no overrides (it lays
      its method, seed, count and changed fields over the result as they are:
      it does not move the preset to another speed);
    - Portrait tab: a preset click takes the fields without a subject to fill the
      widgets (not the prompt box); Generate then takes only the `prompt`, with
      the prompt box as the `subject`, and the rest from the widgets
      (`app/requests_map.py::request_data`);
    - job files: no `subject`; the item's `prompt:` is an override that replaces
      the template (a job file states whole prompts), over `defaults:` and the
      item's `overrides:`, speed included.
    """
    if not isinstance(preset, Preset):
        preset = get_preset(preset, folder, user_dir)
    fields = preset.request_fields(subject, profile)
    overrides = dict(overrides or {})
    speed = overrides.get("speed")
    if isinstance(speed, str):
        from .speed import SPEED_NAMES, TUNED_FIELDS, switch_speed

        if speed in SPEED_NAMES:
            fields = switch_speed(fields, speed, {k for k in TUNED_FIELDS if k in overrides})
    fields.update(overrides)
    return fields


def load_preset(name: str, subject: str | None = None, profile: RunProfile = REAL,
                folder: Path | str | None = None, user_dir: Path | str | None = None) -> dict:
    """`apply_preset` without overrides: the `GenerateRequest` fields of preset
    `name`, `subject` filling its {subject}."""
    return apply_preset(name, profile, subject=subject, folder=folder, user_dir=user_dir)


# --------------------------------------------------------------------- the user's own presets
def user_presets_dir(settings) -> Path:
    """Where a user's own presets live: `settings.presets_dir` if the settings
    have one, else a `presets` folder beside the LoRA folder (as user poses)."""
    explicit = getattr(settings, "presets_dir", None)
    return Path(explicit) if explicit else Path(settings.loras_dir).parent / "presets"


def all_presets(user_dir: Path | str | None = None) -> list[tuple[Preset, bool]]:
    """(preset, is_user) for the shipped presets, then the user's (a user file
    with a shipped name is not listed: the shipped one wins, as in `get_preset`)."""
    shipped = list_presets()
    names = {p.name for p in shipped}
    user = [p for p in list_presets(user_dir)] if user_dir is not None else []
    return [(p, False) for p in shipped] + [(p, True) for p in user if p.name not in names]


def _bucket_name(width: int | None, height: int | None) -> SizeName:
    """The size bucket nearest to the aspect of width x height (square when unset).
    A demo size keeps its bucket's aspect, so the profile does not matter here."""
    if not width or not height:
        return "square"
    aspect = width / height
    return min(SIZE_BUCKETS, key=lambda k: abs(SIZE_BUCKETS[k][0] / SIZE_BUCKETS[k][1] - aspect))  # type: ignore


def preset_from_request(name: str, title: str, fields: dict) -> Preset:
    """A preset holding the settings of `fields` (a GenerateRequest's, as the UI
    or a recipe has them). The prompt is kept whole (no {subject}: a subject given
    later is put in front); the size becomes the nearest bucket by aspect, for
    real and demo sizes alike."""
    from .requests import GenerateRequest

    d = {k: f.get_default(call_default_factory=True) for k, f in GenerateRequest.model_fields.items()
         if not f.is_required()}
    d.update({k: v for k, v in fields.items() if v is not None})
    data = {"name": name, "title": title or name, "description": "saved from the Portrait tab",
            "prompt": d.get("prompt") or DEFAULT_SUBJECT, "negative": d["negative"], "method": d["method"],
            "scale": fields.get("scale"), "s_scale": d["s_scale"], "identitynet_scale": d["identitynet_scale"],
            "pose": d.get("pose"), "pose_scale": d["pose_scale"],
            "size": _bucket_name(d.get("width"), d.get("height")), "sampler": d["sampler"],
            "steps": d["steps"], "cfg": d["cfg"], "speed": d["speed"], "restore": d["restore"],
            "restore_strength": d["restore_strength"], "codeformer_fidelity": d["codeformer_fidelity"],
            "loras": [lo if isinstance(lo, dict) else lo.model_dump() for lo in d.get("loras") or []]}
    import json

    return parse_preset(json.dumps(data), f"preset {name!r}")


def save_user_preset(user_dir: Path | str, preset: Preset, overwrite: bool = False) -> Path:
    """Write `preset` to `<user_dir>/<name>.json` (atomically). A shipped name is
    refused (the shipped preset would win); an existing user preset is replaced
    only with `overwrite`."""
    import json

    from .paths import atomic_path, confine

    if (ASSETS_PRESETS / f"{preset.name}{PRESET_SUFFIX}").exists():
        raise BadInput(f"preset name {preset.name!r} is taken by a shipped preset; choose another name.")
    path = confine(Path(user_dir), f"{preset.name}{PRESET_SUFFIX}", "preset name")
    if path.exists() and not overwrite:
        raise BadInput(f"your preset {preset.name!r} already exists ({path}); choose another name or overwrite it.")
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(preset.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    return path


def preview_path(name: str) -> Path:
    return PREVIEWS_DIR / f"{check_name(name, 'preset')}.png"


# --------------------------------------------------------------------- preview cards
def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]



def draw_card_title(d, preset: Preset, width: int, accent, *, sizes: tuple[int, int], rows: tuple[int, int],
                    margin: int):
    """A preset card's two centred lines: the title (shortened with "…" to fit
    `width - margin`) and "method · size · steps [· speed]", at font sizes `sizes`
    and heights `rows`. Returns the small font, for lines below."""
    from PIL import ImageFont

    try:
        title_font, small = ImageFont.load_default(size=sizes[0]), ImageFont.load_default(size=sizes[1])
    except TypeError:  # Pillow without FreeType sizes
        title_font = small = ImageFont.load_default()
    title = preset.title
    while d.textlength(title, font=title_font) > width - margin and len(title) > 4:
        title = title[:-2].rstrip() + "…"
    d.text((width // 2, rows[0]), title, fill=accent, font=title_font, anchor="mm")
    info = f"{preset.method} · {preset.size} · {preset.steps} steps"
    if preset.speed != "quality":
        info += f" · {preset.speed}"
    d.text((width // 2, rows[1]), info, fill=accent, font=small, anchor="mm")
    return small

def draw_card(preset: Preset, size: tuple[int, int] = (240, 300)):
    """A preview card: a vertical gradient in the preset's colours, a portrait
    silhouette in a frame of the preset's aspect ratio, title and settings."""
    from PIL import Image, ImageDraw

    W, H = size
    bg, accent = _rgb(preset.colors[0]), _rgb(preset.colors[1])
    img = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(img)
    for y in range(H):  # darken towards the bottom
        t = y / H
        d.line([(0, y), (W, y)], fill=tuple(int(c * (1 - 0.45 * t)) for c in bg))
    # frame of the bucket's aspect ratio, with a head-and-shoulders silhouette
    bw, bh = preset.width_height
    box_h = 170
    box_w = min(W - 40, int(box_h * bw / bh))
    box_h = int(box_w * bh / bw) if box_w == W - 40 else box_h
    # the title and settings sit at the top: the UI's gallery caption covers a card's bottom
    x0, y0 = (W - box_w) // 2, 78 + (170 - box_h) // 2
    # the silhouette is drawn on a mask the size of the frame, so it stays inside it
    mask = Image.new("L", (box_w, box_h), 0)
    m = ImageDraw.Draw(mask)
    cx, base = box_w // 2, box_h
    r = max(10, min(box_w, box_h) // 6)
    m.ellipse([cx - r, base - 4 * r, cx + r, base - 2 * r], fill=255)
    m.pieslice([cx - 2 * r, base - 1.6 * r, cx + 2 * r, base + 2.4 * r], 180, 360, fill=255)
    img.paste(Image.new("RGB", (box_w, box_h), accent), (x0, y0), mask)
    d.rectangle([x0, y0, x0 + box_w, y0 + box_h], outline=accent, width=3)
    small = draw_card_title(d, preset, W, accent, sizes=(22, 13), rows=(20, 44), margin=20)
    extra = ", ".join(filter(None, [f"pose {preset.pose}" if preset.pose else "",
                                    preset.restore if preset.restore != "none" else ""]))
    if extra:
        d.text((W // 2, 62), extra, fill=accent, font=small, anchor="mm")
    return img


def write_previews(folder: Path | str | None = None, out_dir: Path | str | None = None) -> list[Path]:
    from .paths import atomic_path

    out = Path(out_dir) if out_dir is not None else PREVIEWS_DIR
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for preset in list_presets(folder):
        path = out / f"{preset.name}.png"
        with atomic_path(path) as tmp:
            draw_card(preset).save(tmp, format="PNG", optimize=True)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m pipelines.presets", description="check presets, draw preview cards")
    p.add_argument("--previews", action="store_true", help="(re)draw assets/presets/previews/*.png")
    args = p.parse_args(argv)
    presets = list_presets()
    if args.previews:
        for path in write_previews():
            print(path)
    else:
        print(f"{len(presets)} valid presets in {ASSETS_PRESETS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
