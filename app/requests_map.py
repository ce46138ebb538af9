"""Widget values <-> typed requests, by field NAME.

The UI keeps a dict from each widget to a key (`PortraitWidgets.fields`); a
handler receives `{key: value}` and `request_from_ui` turns it into a validated
`GenerateRequest`. The keys are `GenerateRequest` field names, plus three UI
keys that stand for several fields or need converting:

- `preset`: a preset name; the prompt box then describes the subject;
- `size`: a bucket name (sized by the run profile: scaled down in demo mode)
  or "WIDTHxHEIGHT";
- `photos`: the uploaded files.

The functions that size things take the settings' run profile
(`settings.profile`; real models when none is given).

No positional lists anywhere, and no gradio here (testable alone)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipelines.errors import BadInput
from pipelines.identity import DEFAULT_METHOD, method_family, method_info
from pipelines.models.bases import DEFAULT_BASE
from pipelines.presets import SIZE_BUCKETS, apply_preset
from pipelines.profile import REAL, RunProfile
from pipelines.requests import MAX_PHOTOS, GenerateRequest, validate_request

NONE = "(none)"
SIZE_AUTO = "auto"
DEFAULT_SCALE = method_info(DEFAULT_METHOD).default_scale  # the scale slider's default


def _default(field: str) -> Any:
    """A `GenerateRequest` field's default: the widget starts where the request does."""
    return GenerateRequest.model_fields[field].default


# UI key -> default widget value (also the set of keys the Portrait tab maps)
UI_DEFAULTS: dict[str, Any] = {
    "photos": None,
    "pose_photo": None,  # a reference pose photo: becomes the request's `pose` (a file)
    "identity_card": None,
    "face_index": None,  # {photo: face number} picked in the face gallery (1 = the largest)
    "preset": NONE,
    "prompt": "",
    "negative": _default("negative"),
    "method": _default("method"),
    "size": SIZE_AUTO,
    "sampler": _default("sampler"),
    "speed": _default("speed"),
    "steps": _default("steps"),
    "cfg": _default("cfg"),
    "seed": -1,
    "count": _default("count"),
    "keep": 0,
    "scale": DEFAULT_SCALE,
    "s_scale": _default("s_scale"),
    "identitynet_scale": _default("identitynet_scale"),
    "enhance_face_region": True,
    "pose": NONE,
    "pose_scale": _default("pose_scale"),
    "restore": _default("restore"),
    "restore_strength": _default("restore_strength"),
    "codeformer_fidelity": _default("codeformer_fidelity"),
    "loras": None,
    "edits": None,
    # finishing steps, template portraits, a second person (pipelines/finishing.py, templates.py,
    # multi_person.py)
    "face_detail": _default("face_detail"),
    "face_detail_strength": _default("face_detail_strength"),
    "face_detail_keep_better": _default("face_detail_keep_better"),
    "upscale": _default("upscale"),
    "upscaler": _default("upscaler"),
    "hires": _default("hires"),
    "hires_strength": _default("hires_strength"),
    "template": NONE,
    "template_strength": _default("template_strength"),
    "photos_2": None,
    "layout": NONE,
}
# widgets that hold a method's reference recipe (W+: Euler, cfg 7.5, its negative prompt)
RECIPE_KEYS = ("sampler", "cfg", "negative")
# request fields copied as they are
_PLAIN = ("negative", "method", "sampler", "speed", "steps", "cfg", "count", "scale", "s_scale",
          "identitynet_scale", "enhance_face_region", "pose_scale", "restore", "restore_strength",
          "codeformer_fidelity", "face_detail", "face_detail_strength", "face_detail_keep_better", "upscale",
          "upscaler", "hires", "hires_strength", "template_strength")
_INTS = {"steps", "count"}
_SIZE_RE = re.compile(r"^\s*(\d{2,4})\s*[x×]\s*(\d{2,4})\s*$")


# ------------------------------------------------------------------------ speed
def speed_widget_values(speed: str, method: str | None = None) -> dict[str, Any]:
    """The sampler/steps/cfg widgets for a Performance choice: the mode's values for
    this method (a method may declare its own few-step mode, pipelines/speed.py
    `mode_for`), or the request defaults for quality."""
    from pipelines.speed import mode_for

    mode = mode_for(speed, method)
    if mode.lora is None:
        return {k: _default(k) for k in ("sampler", "steps", "cfg")}
    return {"sampler": mode.sampler, "steps": mode.steps, "cfg": mode.cfg}


# ------------------------------------------------------------------------ sizes
def size_choices(profile: RunProfile = REAL) -> list[tuple[str, str]]:
    out = [("auto (model default)", SIZE_AUTO)]
    for name, (w, h) in SIZE_BUCKETS.items():
        label = f"{name} {w}×{h}"
        if profile.demo:
            dw, dh = profile.size(w, h)
            label += f" (demo: {dw}×{dh})"
        out.append((label, name))
    return out


def parse_size(value: str | None, profile: RunProfile = REAL) -> tuple[int | None, int | None]:
    """A size widget value -> (width, height); (None, None) = the engine's default."""
    value = (value or SIZE_AUTO).strip()
    if value == SIZE_AUTO:
        return None, None
    if value in SIZE_BUCKETS:
        return profile.size(*SIZE_BUCKETS[value])
    m = _SIZE_RE.match(value)
    if not m:
        raise BadInput(f"size {value!r}: choose a size bucket or type WIDTHxHEIGHT, e.g. 896x1152.")
    return int(m.group(1)), int(m.group(2))


def size_value(width: int | None, height: int | None, profile: RunProfile = REAL) -> str:
    """The size widget value for a request's width/height (a bucket name when it is
    one, at full size or at the profile's size)."""
    if width is None or height is None:
        return SIZE_AUTO
    for name, (w, h) in SIZE_BUCKETS.items():
        if (width, height) in ((w, h), profile.size(w, h)):
            return name
    return f"{width}x{height}"


# ------------------------------------------------------------------------ LoRAs
def lora_names(settings) -> list[str]:
    """LoRA files the user can pick (the LoRA manager's listing: loras/, then
    other apps' folders named in extra_model_paths.yaml)."""
    from pipelines.lora.manager import user_lora_names

    return user_lora_names(settings)


def lora_rows(names: Iterable[str], weights: dict[str, float] | None = None) -> list[list]:
    """Table rows [name, weight]: every LoRA on disk (weight 0 = off), plus any
    LoRA named in `weights` that is not on disk (so a reused recipe shows it)."""
    weights = dict(weights or {})
    rows = [[n, float(weights.pop(n, 0.0))] for n in names]
    rows += [[n, float(w)] for n, w in weights.items()]
    return rows


def loras_from_rows(rows) -> list[dict]:
    """The LoRA table's rows with a non-zero weight (a missing weight is 1)."""
    return [{"name": n, "weight": w} for n, w in _table_rows(rows, "LoRA", "weight", 1.0) if w != 0.0]


# ------------------------------------------------------------------ W+ edits
def edit_rows(names: Iterable[str], strengths: dict[str, float] | None = None) -> list[list]:
    """Table rows [edit, strength] for every W+ edit (strength 0 = off), plus any
    edit in `strengths` that is not listed (so a reused recipe shows it)."""
    strengths = dict(strengths or {})
    rows = [[n, float(strengths.pop(n, 0.0))] for n in names]
    return rows + [[n, float(s)] for n, s in strengths.items()]


def edits_from_rows(rows) -> list[str]:
    """Table rows -> `--edit` strings ("name=+1.5") for the non-zero strengths."""
    out = []
    for name, weight in _table_rows(rows):
        if weight != 0.0:
            out.append(f"{name}={weight:+g}")
    return out


def edits_to_strengths(edits: Iterable[str]) -> dict[str, float]:
    from pipelines.wplus.edits import parse_edit

    return dict(parse_edit(e, field="edit") for e in edits or [])


def _table_rows(rows, what: str = "edit", number: str = "strength", missing: float = 0.0):
    """(name, number) pairs of a two-column table (a list of rows or a pandas
    frame); blank names are skipped, an empty cell is 0, an absent one `missing`."""
    if rows is None:
        return []
    if hasattr(rows, "values") and hasattr(rows, "columns"):  # a pandas frame
        rows = rows.values.tolist()
    out = []
    for row in rows or []:
        if not row or row[0] is None or not str(row[0]).strip():
            continue
        name, raw = str(row[0]).strip(), (row[1] if len(row) > 1 else missing)
        try:
            out.append((name, float(raw) if raw not in (None, "") else 0.0))
        except (TypeError, ValueError) as exc:
            raise BadInput(f"{what} {name!r}: {number} {raw!r} is not a number.") from exc
    return out


# ------------------------------------------------------------- method recipes
def method_recipe(method: str) -> dict[str, Any]:
    """The recipe widgets' values for `method`: its reference recipe where it
    declares one (`IdentityMethod.recipe_defaults`), else the UI defaults."""
    from pipelines.identity import get_method_class

    declared = get_method_class(method).recipe_defaults if method != "none" else {}
    return {k: declared.get(k, UI_DEFAULTS[k]) for k in RECIPE_KEYS}


def switch_method(method: str, current: dict[str, Any], methods: Iterable[str]) -> dict[str, Any]:
    """Recipe widget values after the method changes to `method`: a widget the
    user has not changed (it still shows some method's default) takes the new
    method's default; an edited one is kept."""
    untouched = {k: {method_recipe(m)[k] for m in methods} for k in RECIPE_KEYS}
    new = method_recipe(method)
    return {k: new[k] for k in RECIPE_KEYS if current.get(k) in untouched[k]}


# ------------------------------------------------------------------ UI -> request
def _file_path(f) -> str:
    for attr in ("path", "name"):
        v = getattr(f, attr, None)
        if isinstance(v, str):
            return v
    if isinstance(f, dict) and isinstance(f.get("path"), str):
        return f["path"]
    return str(f)


def photo_paths(files) -> list[str]:
    if not files:
        return []
    if isinstance(files, (str, Path)):
        files = [files]
    paths = [_file_path(f) for f in files]
    if len(paths) > MAX_PHOTOS:
        raise BadInput(f"photos: upload at most {MAX_PHOTOS} photos of the person (got {len(paths)}).")
    return paths


def _seed(value) -> int | None:
    if value is None or value == "":
        return None
    try:
        seed = int(float(value))
    except (TypeError, ValueError) as exc:
        raise BadInput(f"seed {value!r} is not a whole number; use -1 for a random seed.") from exc
    return None if seed < 0 else seed


def request_data(values: dict[str, Any], profile: RunProfile = REAL,
                 presets_dir: Path | str | None = None) -> dict:
    """Widget values by key -> `GenerateRequest` fields (unvalidated). A preset
    is looked up among the shipped ones, then the user's in `presets_dir`; its
    other fields are in the widgets already (a preset click filled them), so
    only its prompt template is taken, with the prompt box as the subject."""
    v = {**UI_DEFAULTS, **{k: x for k, x in values.items() if x is not None}}
    data: dict[str, Any] = {k: (int(v[k]) if k in _INTS else v[k]) for k in _PLAIN}
    prompt = str(v.get("prompt") or "").strip()
    preset = v.get("preset") or NONE
    if preset != NONE:
        data["prompt"] = apply_preset(preset, profile, subject=prompt, user_dir=presets_dir)["prompt"]
    elif prompt:
        data["prompt"] = prompt
    else:
        raise BadInput("prompt is empty: describe the portrait, or pick a preset.")
    photos = photo_paths(values.get("photos"))
    if photos:
        data["photos"] = photos
        chosen = {p: int(k) for p, k in (v.get("face_index") or {}).items() if p in photos}
        if chosen:
            data["face_index"] = chosen
    elif v.get("identity_card"):
        data["identity_card"] = str(v["identity_card"])
    elif data["method"] != "none":
        raise BadInput(f"photos: upload 1 to {MAX_PHOTOS} photos of the person (or choose method 'none').")
    data["seed"] = _seed(v.get("seed"))
    keep = int(v.get("keep") or 0)
    if keep > 0:
        data["keep"] = keep
    pose = v.get("pose") or NONE
    if pose != NONE:
        data["pose"] = pose
    pose_photo = photo_paths([values["pose_photo"]]) if values.get("pose_photo") else []
    if pose_photo:  # a reference pose photo takes the place of a template
        data["pose"] = pose_photo[0]
    template = v.get("template") or NONE
    if template != NONE:
        data["template"] = template
    photos_2 = photo_paths(values.get("photos_2"))
    if photos_2:  # a second person: two people in one picture
        data["photos_2"] = photos_2
        if (v.get("layout") or NONE) != NONE:
            data["layout"] = v["layout"]
    data["width"], data["height"] = parse_size(v.get("size"), profile)
    data["loras"] = loras_from_rows(v.get("loras"))
    if method_family(data["method"]) == "sd15":  # an SD1.5 method runs on the SD1.5 base
        data["base_model"] = DEFAULT_BASE["sd15"]
        data["edits"] = edits_from_rows(v.get("edits"))
        if v.get("size") in SIZE_BUCKETS:  # SDXL buckets do not apply
            data["width"] = data["height"] = None
    return data


def request_from_ui(values: dict[str, Any], profile: RunProfile = REAL,
                    presets_dir: Path | str | None = None) -> GenerateRequest:
    """Widget values by key -> a validated request (BadInput names the field)."""
    return validate_request(GenerateRequest, request_data(values, profile, presets_dir), "request")


# ------------------------------------------------------------------ request -> UI
def ui_from_fields(fields: dict[str, Any], profile: RunProfile = REAL, lora_on_disk: Iterable[str] = (),
                   include_prompt: bool = True, edit_names: Iterable[str] | None = None) -> dict[str, Any]:
    """`GenerateRequest` fields (a preset's, or a recipe's `request`) -> widget
    values by key. Keys the fields do not mention are left out (unchanged)."""
    out: dict[str, Any] = {}
    for k in _PLAIN:
        if k in fields and fields[k] is not None:
            out[k] = fields[k]
    if "scale" in fields:
        out["scale"] = DEFAULT_SCALE if fields["scale"] is None else fields["scale"]
    if include_prompt and "prompt" in fields:
        out["prompt"] = fields["prompt"]
        out["preset"] = NONE
    if "seed" in fields:
        out["seed"] = -1 if fields["seed"] is None else int(fields["seed"])
    if "keep" in fields:
        out["keep"] = fields["keep"] or 0
    if "pose" in fields:
        out["pose"] = fields["pose"] or NONE
    if "template" in fields:
        out["template"] = fields["template"] or NONE
    if "layout" in fields:
        out["layout"] = fields["layout"] or NONE
    if "width" in fields or "height" in fields:
        out["size"] = size_value(fields.get("width"), fields.get("height"), profile)
    if "loras" in fields:
        weights = {lo["name"]: lo.get("weight", 1.0) for lo in fields["loras"] or []}
        out["loras"] = lora_rows(lora_on_disk, weights)
    if "edits" in fields and edit_names is not None:
        out["edits"] = edit_rows(edit_names, edits_to_strengths(fields["edits"]))
    return out


# ------------------------------------------------------------------ results
def likeness_text(recipe: dict) -> str:
    s = recipe.get("likeness")
    if not s:
        return "likeness not scored"
    if not s.get("face_found"):
        return "no face found"
    return f"likeness {s['mean']:.2f}"


def caption(recipe: dict) -> str:
    return f"seed {recipe.get('seed')} · {likeness_text(recipe)}"


# ------------------------------------------------------------------ API fields
# Request fields an API client never sets: they name files on the server (photos
# come as uploads) or where output goes.
API_SERVER_ONLY = ("photos", "face_index", "identity_card", "out_dir",
                   # the second person's files, and a template or layout (which may name a file on the server)
                   "photos_2", "face_index_2", "identity_card_2", "template", "layout")
# fields the `generate` endpoint has always had, with meanings of their own there
API_BASIC = ("prompt", "method", "seed", "count")


def api_field_specs() -> list[tuple[str, str, Any]]:
    """(field, kind, default) for every other `GenerateRequest` field, in model
    order; kind is bool | int | float | text | json (the component to build)."""
    import typing

    out = []
    for name, f in GenerateRequest.model_fields.items():
        if name in API_SERVER_ONLY or name in API_BASIC:
            continue
        default = f.get_default(call_default_factory=True)
        base = f.annotation
        if typing.get_origin(base) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            base = next(a for a in typing.get_args(base) if a is not type(None))
        if typing.get_origin(base) in (list, dict):
            kind = "json"
        elif base is bool:
            kind = "bool"
        elif base is int:
            kind = "int"
        elif base is float:
            kind = "float"
        elif base is str or typing.get_origin(base) is typing.Literal:
            kind = "text"
        else:
            kind = "json"
        out.append((name, kind, "" if kind == "text" and default is None else default))
    return out


def api_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """The fields a client changed from their defaults (unchanged ones stay unset,
    so a preset's or a method's recipe still fills them). An empty text of an
    optional field is None; a pose or template is a name, never a path."""
    out: dict[str, Any] = {}
    for name, kind, default in api_field_specs():
        if name not in values:
            continue
        v = values[name]
        if kind == "text" and isinstance(v, str):
            v = v.strip()
        if v == default or (v is None and default in ("", None)):
            continue
        if kind == "int" and isinstance(v, float) and v.is_integer():
            v = int(v)
        if kind == "text" and v == "":
            v = None
        if name in ("pose", "template") and isinstance(v, str) and ("/" in v or "\\" in v):
            raise BadInput(f"{name} {v!r}: give a name (see the list endpoints), not a file path.")
        out[name] = v
    return out


# ------------------------------------------------------------------ messages
def upload_root() -> str:
    """gradio's upload folder: uploads live at `<root>/<hash>/<file name>`."""
    import os
    import tempfile

    return os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")


def hide_upload_paths(text: str) -> str:
    """`text` with every gradio upload path shortened to the name the user
    uploaded (a message never shows the server's temporary folders)."""
    root = upload_root().rstrip("/\\")
    roots = {root, str(Path(root).resolve())}
    for r in sorted(roots, key=len, reverse=True):
        text = re.sub(re.escape(r) + r"[/\\][^/\\\s'\"`]+[/\\]", "", text)
    return text


def photo_thumbnails(files, side: int = 160) -> list[tuple[Any, str]]:
    """(thumbnail, file name) of each uploaded photo, decoded by the safe photo
    loader (so HEIC shows too); an unreadable one is a grey tile saying why."""
    from PIL import Image

    from pipelines.imageio import load_photo

    out = []
    for path in photo_paths(files):
        name = Path(path).name
        try:
            img = load_photo(path, name=name, max_side=side)
        except BadInput as exc:
            img, name = Image.new("RGB", (side, side), (128, 128, 128)), f"{name}: {str(exc)[:60]}"
        out.append((img, name))
    return out
