"""Batch job files: schema, errors that name the key and the line, expansion.

A job file is YAML or JSON (JSON is read by the YAML parser too, so both get
line numbers):

    name: portraits               # optional; default: the file name
    defaults: {steps: 30}         # optional; generate options for every item
    identities:
      alice: {photos: [a1.jpg, a2.jpg]}     # or {card: alice.identity}
      bob: {photos: [{photo: group.jpg, face: 2}]}   # face N of a group photo (1 = largest)
    items:
      - identity: alice           # or identities: [alice, bob]; omitted = all
        second: bob               # optional: two people in one picture (bob in box 2 of the layout)
        preset: studio-headshot   # or presets: [...], prompt: / prompts: [...]
        methods: [faceid, instantid]        # or method: faceid
        seeds: [1, 2, 3]                    # or seed: 1; omitted = derived
        poses: [...]                        # optional axis
        loras: [...]                        # optional axis
        overrides: {steps: 30}              # any generate option

Each entry of `items` expands as identities x presets x prompts x methods x
seeds x poses x loras. Paths (photos, card, pose files) are relative to the job
file. Every expanded item is validated as a `GenerateRequest` up front, so a bad
option fails the whole job before anything runs; `check_resources` then checks
what the run will need from the installation (LoRA files, base models, pose
templates), so `--dry-run` fails exactly where the run would.

A job file may come from anywhere, so the loader bounds its work before it looks
at the content: a size limit, no YAML anchors or aliases (a few hundred bytes of
nested aliases expand to billions of nodes), at most `MAX_DEPTH` levels of
nesting, and the product of every item's axes counted (duplicates included)
before anything is expanded. Only regular files are read (no FIFOs or devices).

An item's id is the sha256 of its resolved recipe: the validated request
(without the photo paths and output options) as sorted JSON plus a hash of the
identity's photo contents. Moving the job folder or renaming an identity keeps
the ids; changing a photo, a prompt or a setting changes them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import BadInput, LikenessError
from ..imageio import MAX_PHOTO_BYTES, hash_user_file, read_user_file
from ..paths import check_name, sanitize_name
from ..requests import MAX_PHOTOS

MAX_ITEMS = 100_000  # a typo like seeds: range(10**9) must not eat memory
MAX_JOB_BYTES = 5_000_000
MAX_DEPTH = 32  # nesting levels of mappings/lists; a real job file needs 6
MAX_CARD_BYTES = 64 * 1024 * 1024
_URL_SCHEMES = ("http://", "https://", "ftp://", "file://", "data:")

# request fields the batch owns; an override naming them is a mistake
_RESERVED = {
    "photos": "use identities: in the job file",
    "identity_card": "use identities: {NAME: {card: FILE}}",
    "out_dir": "use --out on the command line",
    "name_prefix": "output names are derived from the item id",
    "prompt": "use prompt: or prompts: on the item",
    "method": "use method: or methods: on the item",
    "seed": "use seed: or seeds: on the item",
    "face_index": "name the face with the photo: identities: {NAME: {photos: [{photo: FILE, face: N}]}}",
    "photos_2": "name the second person with second: NAME on the item",
    "identity_card_2": "name the second person with second: NAME on the item",
    "face_index_2": "name the second person with second: NAME on the item",
}
# request fields left out of the id: where things go, not what is made
# (the chosen faces are part of the identity's content hash instead)
_ID_EXCLUDE = {"photos", "identity_card", "out_dir", "name_prefix", "face_index",
               "photos_2", "identity_card_2", "face_index_2"}


# --------------------------------------------------------------------- schema
_PLURAL = {"identity": "identities", "preset": "presets", "prompt": "prompts", "method": "methods", "seed": "seeds"}

class PhotoSpec(BaseModel):
    """A photo with the face to use in it: face numbers count from 1, the
    largest face, by decreasing box area (pipelines/faces/analysis.py)."""

    model_config = ConfigDict(extra="forbid")

    photo: str
    face: int = Field(default=1, ge=1, le=100)


class IdentitySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    photos: list[str | PhotoSpec] | None = Field(default=None, min_length=1, max_length=MAX_PHOTOS)
    card: str | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.photos is None) == (self.card is None):
            raise ValueError("give either photos: [...] or card: FILE")
        return self


class ItemSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    identity: str | None = None
    identities: list[str] | None = Field(default=None, min_length=1)
    second: str | None = None  # a second identity in the same picture (two people)
    preset: str | None = None
    presets: list[str] | None = Field(default=None, min_length=1)
    prompt: str | None = None
    prompts: list[str] | None = Field(default=None, min_length=1)
    method: str | None = None
    methods: list[str] | None = Field(default=None, min_length=1)
    seed: int | None = None
    seeds: list[int] | None = Field(default=None, min_length=1)
    poses: list[Any] | None = Field(default=None, min_length=1)
    loras: list[Any] | None = Field(default=None, min_length=1)
    overrides: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _singular_or_plural(self):
        for one, many in _PLURAL.items():
            if getattr(self, one) is not None and getattr(self, many) is not None:
                raise ValueError(f"give {one}: or {many}:, not both")
        return self

    def axis(self, one: str) -> list | None:
        single = getattr(self, one)
        return [single] if single is not None else getattr(self, _PLURAL.get(one, one + "s"))


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=100)
    defaults: dict[str, Any] = Field(default_factory=dict)
    identities: dict[str, IdentitySpec] = Field(default_factory=dict)
    items: list[ItemSpec] = Field(min_length=1)


# ------------------------------------------------------------ resolved items
@dataclass(frozen=True)
class IdentitySource:
    """One identity of the job, paths resolved against the job file."""

    name: str
    photos: tuple[Path, ...] = ()
    card: Path | None = None
    content_hash: str = ""  # sha256 over the photo (or card) bytes, and the chosen faces
    faces: tuple[int | None, ...] = ()  # per photo: the face number chosen, None = the largest

    def face_index(self) -> dict[str, int]:
        """The request's `face_index`: photo -> chosen face number."""
        return {str(p): k for p, k in zip(self.photos, self.faces) if k is not None}


@dataclass(frozen=True)
class BatchItem:
    id: str
    identity: str | None  # identity name in the job, None for method "none"
    request: Any  # GenerateRequest, with the job's photos/card
    spec_index: int  # which entry of `items` it came from

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def seed(self) -> int:
        return self.request.seed

    @property
    def short_id(self) -> str:
        return self.id[:12]

    def sort_key(self) -> tuple:
        """Items run grouped by base model, then identity method, then LoRA set, so
        the resident pipeline swaps adapters and LoRAs as rarely as possible."""
        loras = getattr(self.request, "loras", None)
        if isinstance(loras, list):
            loras = [x.model_dump() if hasattr(x, "model_dump") else x for x in loras]
        loras = json.dumps(loras, sort_keys=True, default=str)
        return (self.request.base_model or "", self.method, loras, self.identity or "", self.request.prompt,
                self.seed, self.id)

    def output_stem(self) -> str:
        who = sanitize_name(self.identity or "none", "none")[:40]
        return f"{who}-{self.method}-{self.seed}-{self.short_id}"


@dataclass
class Job:
    path: Path
    name: str
    identities: dict[str, IdentitySource]
    items: list[BatchItem] = field(default_factory=list)
    duplicates: int = 0  # expanded items whose recipe equals an earlier one
    lines: Any = field(default=None, repr=False, compare=False)  # _Lines, for errors after loading

    @property
    def folder_name(self) -> str:
        return f"batch-{sanitize_name(self.name, 'job')}"


# --------------------------------------------------------------- line lookup
class _Lines:
    """Maps a pydantic error location to a line of the job file, through the
    composed YAML node tree (marks survive composition, not construction)."""

    def __init__(self, root):
        self.root = root

    def line(self, loc: tuple) -> int | None:
        import yaml

        node, found = self.root, None
        if node is None:
            return None
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                hit = next(((k, v) for k, v in node.value if str(k.value) == str(part)), None)
                if hit is None:
                    break
                found, node = hit[0], hit[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                node = found = node.value[part]
            else:
                break
        mark = (found if found is not None else node).start_mark
        return mark.line + 1


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class _Errors:
    def __init__(self, path: Path, lines: _Lines):
        self.path, self.lines = path, lines

    def at(self, loc: tuple, message: str) -> BadInput:
        line = self.lines.line(loc)
        where = f"line {line}: " if line else ""
        key = _dotted(loc)
        message = message.rstrip(".")
        return BadInput(f"job file {self.path}, {where}{key + ': ' if key else ''}{message}.")

    def from_validation(self, exc: ValidationError, prefix: tuple = ()) -> BadInput:
        err = exc.errors()[0]
        # drop pydantic's union/type tags ("list[str]", "function-after[...]")
        loc = tuple(p for p in err.get("loc", ()) if isinstance(p, int) or "[" not in str(p))
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown key"
        elif err.get("type") == "missing":
            msg = "required key is missing"
        return self.at(prefix + loc, msg)


def _reject_duplicate_keys(root, errors: _Errors) -> None:
    import yaml

    def walk(node, loc):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for k, v in node.value:
                key = str(k.value)
                if key in seen:
                    raise BadInput(f"job file {errors.path}, line {k.start_mark.line + 1}: "
                                   f"{_dotted(loc + (key,))}: key given twice.")
                seen.add(key)
                walk(v, loc + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, loc + (i,))

    walk(root, ())


# -------------------------------------------------------------------- loading
def _check_events(text: str, path: Path) -> None:
    """Refuse anchors, aliases and deep nesting from the YAML event stream: the
    parser is a state machine (linear in the text, no recursion), so this runs
    before anything builds or walks a tree."""
    import yaml

    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise BadInput(f"job file {path}, line {line}: YAML anchors and aliases (& and *) are not "
                           "allowed in job files; write the values out.")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise BadInput(f"job file {path}, line {line}: nested more than {MAX_DEPTH} levels deep.")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _json_depth_ok(data, limit: int) -> bool:
    """Iteratively: is `data` nested at most `limit` levels of dicts/lists?"""
    stack = [(data, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, (dict, list)):
            if d > limit:
                return False
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return True


def _parse(path: Path) -> tuple[Any, _Lines]:
    import yaml

    raw = read_user_file(path, f"job file {path}", max_bytes=MAX_JOB_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"job file {path} is not UTF-8 text.") from exc
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInput(f"job file {path}, line {exc.lineno}: not valid JSON ({exc.msg}).") from exc
        except RecursionError as exc:
            raise BadInput(f"job file {path}: nested more than {MAX_DEPTH} levels deep.") from exc
        if not _json_depth_ok(data, MAX_DEPTH + 1):
            raise BadInput(f"job file {path}: nested more than {MAX_DEPTH} levels deep.")
        try:
            _check_events(text, path)
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except (yaml.YAMLError, BadInput, RecursionError):  # valid JSON that YAML 1.1 rejects: no line numbers then
            root = None
        return data, _Lines(root)
    try:
        _check_events(text, path)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"line {mark.line + 1}: " if mark else ""
        raise BadInput(f"job file {path}, {line}not valid YAML ({exc.problem or exc.context}).") from exc
    except yaml.YAMLError as exc:
        raise BadInput(f"job file {path} is not valid YAML ({' '.join(str(exc).split())}).") from exc
    except RecursionError as exc:  # bounded by _check_events; kept as the last line of defence
        raise BadInput(f"job file {path}: nested too deeply.") from exc
    except ValueError as exc:  # the YAML resolver's own errors (e.g. a timestamp out of range)
        raise BadInput(f"job file {path} has a value YAML cannot read ({' '.join(str(exc).split())}).") from exc
    return data, _Lines(root)


def load_job(path: Path | str, demo: bool = False, uploads: Uploads | None = None,
             presets_dir: Path | str | None = None) -> Job:
    """Read, validate and expand a job file; `BadInput` naming the key and line.
    With `uploads` (a job sent through the web UI or the API) the file may name
    only what came with it, never a path on the server: see `Uploads`."""
    path = Path(path).expanduser().resolve()
    data, lines = _parse(path)
    errors = _Errors(path, lines)
    if lines.root is not None:
        _reject_duplicate_keys(lines.root, errors)
    if not isinstance(data, dict):
        raise BadInput(f"job file {path} must be a mapping with identities: and items: keys.")
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise errors.from_validation(exc) from exc
    for name in spec.identities:
        try:
            check_name(name, "identity name")  # it becomes part of file names
        except BadInput as exc:
            raise errors.at(("identities", name), str(exc)) from exc
    if uploads is not None:
        _confine(spec, uploads, errors)
    job = Job(path=path, name=spec.name or path.stem, identities=_resolve_identities(spec, path, errors),
              lines=lines)
    job.items, job.duplicates = expand(spec, job, errors, demo, presets_dir)
    return job


def _local_path(base: Path, value: str, loc: tuple, errors: _Errors) -> Path:
    """A path named in the job file, resolved against its folder; URLs and NUL
    bytes are refused (photos are read from this machine only)."""
    if "\x00" in value:
        raise errors.at(loc, "the path contains a NUL byte")
    if value.strip().lower().startswith(_URL_SCHEMES):
        raise errors.at(loc, f"{value!r} is a URL; download the file and give its local path")
    return (base / value).expanduser()


def _photo_file(entry) -> str:
    return entry.photo if isinstance(entry, PhotoSpec) else entry


def _resolve_identities(spec: JobSpec, path: Path, errors: _Errors) -> dict[str, IdentitySource]:
    base = path.parent
    out = {}
    for name, ident in spec.identities.items():
        loc = ("identities", name)
        if ident.card is not None:
            card = _local_path(base, ident.card, loc + ("card",), errors)
            out[name] = IdentitySource(name, card=card, content_hash=_contents_hash(
                [card], [loc + ("card",)], errors, MAX_CARD_BYTES))
        else:
            entries = ident.photos or ()
            locs = [loc + ("photos", k) + (("photo",) if isinstance(p, PhotoSpec) else ())
                    for k, p in enumerate(entries)]
            photos = tuple(_local_path(base, _photo_file(p), at, errors) for p, at in zip(entries, locs))
            faces = tuple(p.face if isinstance(p, PhotoSpec) else None for p in entries)
            content = _contents_hash(photos, locs, errors)
            if any(k is not None for k in faces):  # another face is another identity
                content = hashlib.sha256(f"{content}|faces:{json.dumps(faces)}".encode()).hexdigest()
            out[name] = IdentitySource(name, photos=photos, content_hash=content, faces=faces)
    return out


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


def _bare_name(value, loc: tuple, errors: _Errors, what: str) -> str:
    if not isinstance(value, str) or not value or "/" in value or "\\" in value or "\x00" in value \
            or value.startswith((".", "~")):
        raise errors.at(loc, f"a job run from the web UI names {what} by name, not by path ({value!r})")
    return value


def _confine(spec: JobSpec, uploads: Uploads, errors: _Errors) -> None:
    """Replace uploaded photo names and card names by their files; refuse
    anything else that would name a file on the server."""
    listed = ", ".join(sorted(uploads.photos)) or "none were uploaded"
    for name, ident in spec.identities.items():
        loc = ("identities", name)
        if ident.photos is not None:
            files = []
            for k, entry in enumerate(ident.photos):
                photo = _photo_file(entry)
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
    for loc, options in [(("defaults",), spec.defaults)] + [(("items", i, "overrides"), it.overrides)
                                                             for i, it in enumerate(spec.items)]:
        for key in ("template", "layout"):
            v = options.get(key)
            if v is not None and (_bare_name(v, loc + (key,), errors, f"{key}s") != v
                                  or v.lower().endswith((".json", ".png", ".jpg", ".jpeg", ".webp"))):
                raise errors.at(loc + (key,), f"a job run from the web UI names {key}s by name, not by file "
                                f"({v!r})")


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _no_file_suffix(value: str, loc: tuple, errors: _Errors) -> None:
    if value.lower().endswith((".json", *_POSE_PHOTO_SUFFIXES)):
        raise errors.at(loc, f"a job run from the web UI names poses by template name, not by file ({value!r})")


def _contents_hash(files, locs=None, errors: _Errors | None = None, max_bytes: int = MAX_PHOTO_BYTES) -> str:
    """sha256 over the files' bytes in order. Only regular files within the size
    limit are read; anything else (missing, a FIFO, a device, a folder) is an
    error naming the key, raised before the run starts."""
    h = hashlib.sha256()
    for k, f in enumerate(files):
        try:
            h.update(hash_user_file(f, str(f), max_bytes=max_bytes).encode())
        except BadInput as exc:
            if errors is None or locs is None:
                raise
            raise errors.at(locs[k], str(exc)) from exc
    return h.hexdigest()


# ------------------------------------------------------------------ expansion
def _preset_at_speed(fields: dict, defaults: dict, overrides: dict) -> dict:
    """A preset's fields at the speed the job asks for (item overrides, then
    defaults): a different speed drops the preset's steps/sampler/cfg, which the
    new mode fills, unless the job gives them too."""
    speed = overrides.get("speed", defaults.get("speed"))
    if not isinstance(speed, str):
        return fields
    from ..speed import SPEED_NAMES, TUNED_FIELDS, switch_speed

    if speed not in SPEED_NAMES:
        return fields  # the request's validation names the bad value
    given = {k for k in TUNED_FIELDS if k in overrides or k in defaults}
    return switch_speed(fields, speed, given)


def _load_preset(name: str, loc: tuple, errors: _Errors, demo: bool = False, presets_dir=None) -> dict:
    from ..presets import load_preset

    try:
        fields = load_preset(name, demo=demo, user_dir=presets_dir)  # shipped, then the user's own
    except LikenessError as exc:
        raise errors.at(loc, f"preset {name!r}: {exc}") from exc
    return dict(fields)


_POSE_PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _pose_value(value, base: Path, loc: tuple, errors: _Errors):
    """A pose file (a .json template or a reference photo) resolved against the
    job file and checked now: a regular file, and a template that parses.
    Template names are checked against the installation by `check_resources`."""
    if not isinstance(value, str):
        return value
    looks_like_file = value.lower().endswith((".json", *_POSE_PHOTO_SUFFIXES)) or "/" in value or "\\" in value
    if not looks_like_file:
        return value
    p = _local_path(base, value, loc, errors)
    try:
        if value.lower().endswith(".json"):
            from ..pose.templates import load_template

            read_user_file(p, f"pose file {p}", max_bytes=MAX_JOB_BYTES)  # a regular file, bounded
            load_template(p)
        else:
            hash_user_file(p, f"pose photo {p}")
    except BadInput as exc:
        raise errors.at(loc, str(exc)) from exc
    return str(p.resolve())


def _lora_value(value, field_name: str, loc: tuple, errors: _Errors):
    """An entry of `loras:` is one LoRA set: a name, `NAME:WEIGHT`, {name, weight},
    or a list of those ([] = no LoRA)."""
    entries = value if isinstance(value, list) else [value]
    parsed = [_lora_entry(e, loc, errors) for e in entries]
    if field_name == "loras":
        return parsed
    return parsed[0] if len(parsed) == 1 else parsed


def _lora_entry(entry, loc: tuple, errors: _Errors):
    """`NAME[:WEIGHT]` through the same parser as `generate --lora`."""
    if isinstance(entry, str):
        from pydantic import ValidationError as _VE

        from ..requests import LoraSpec

        try:
            return LoraSpec.parse(entry).model_dump()
        except _VE as exc:
            raise errors.at(loc, f"{entry!r}: {exc.errors()[0]['msg']}") from exc
        except ValueError as exc:
            raise errors.at(loc, str(exc)) from exc
    return entry


def item_id(request, identity_hash: str | None) -> str:
    """The stable id: sha256 of the resolved recipe (validated request without
    paths/output options, plus the identity content hash), as sorted JSON."""
    data = request.model_dump(mode="json", exclude=_ID_EXCLUDE, exclude_defaults=True)
    # a pose file is identified by its bytes, not by where the job folder lives
    for key in ("pose", "poses"):
        if key in data:
            data[key] = _file_ids(data[key])
    blob = json.dumps({"identity": identity_hash, "request": data}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _file_ids(value):
    if isinstance(value, list):
        return [_file_ids(v) for v in value]
    if isinstance(value, str) and Path(value).is_absolute() and Path(value).is_file():
        return "sha256:" + _contents_hash([value])
    return value


def _count_combinations(spec: JobSpec, job: Job, errors: _Errors) -> None:
    """Refuse a job whose axes multiply past `MAX_ITEMS`, duplicates included,
    before a single item is built (10^9 identical items take hours to dedupe)."""
    total = 0
    for i, it in enumerate(spec.items):
        n = 1
        names = it.axis("identity")
        for axis in (names if names is not None else (list(job.identities) or [None]),
                     it.axis("preset"), it.axis("prompt"), it.axis("method"), it.axis("seed"), it.poses, it.loras):
            n *= max(1, len(axis or ()))
        total += n
        if total > MAX_ITEMS:
            raise errors.at(("items", i), f"the job expands to more than {MAX_ITEMS} items "
                                          f"(duplicates included); split it")


def expand(spec: JobSpec, job: Job, errors: _Errors, demo: bool = False,
           presets_dir=None) -> tuple[list[BatchItem], int]:
    """identities x presets x prompts x methods x seeds x poses x loras, each
    validated as a request. Returns (unique items, number of duplicates)."""
    from ..requests import GenerateRequest

    model = GenerateRequest
    base = job.path.parent
    _count_combinations(spec, job, errors)
    _check_overrides(spec.defaults, ("defaults",), model, errors)
    items: list[BatchItem] = []
    pose_values: dict[str, Any] = {}
    seen: set[str] = set()
    duplicates = 0
    for i, it in enumerate(spec.items):
        loc = ("items", i)
        _check_overrides(it.overrides, loc + ("overrides",), model, errors)
        names = it.axis("identity")
        if names is None:
            names = list(job.identities) or [None]
        for k, n in enumerate(names):
            if n is not None and n not in job.identities:
                key = loc + (("identity",) if it.identity is not None else ("identities", k))
                known = ", ".join(job.identities) or "none defined"
                raise errors.at(key, f"identity {n!r} is not defined under identities: ({known})")
        presets = it.axis("preset") or [None]
        preset_fields = {p: _load_preset(p, loc + ("preset" if it.preset else "presets",), errors, demo, presets_dir)
                         for p in presets if p is not None}
        prompts = it.axis("prompt") or [None]
        methods = it.axis("method") or [None]
        seeds = it.axis("seed") or [None]
        pose_field = "pose" if it.poses is not None else None  # the request field each axis sets
        lora_field = "loras" if it.loras is not None else None
        poses = it.poses or [None]
        loras = it.loras or [None]
        combos = itertools.product(names, presets, prompts, methods, poses, loras)
        for name, preset, prompt, method, pose, lora in combos:
            data: dict[str, Any] = {}
            if preset is not None:
                data.update(_preset_at_speed(preset_fields[preset], spec.defaults, it.overrides))
            data.update(spec.defaults)
            data.update(it.overrides)
            if prompt is not None:
                data["prompt"] = prompt
            if method is not None:
                data["method"] = method
            if pose_field is not None:
                key = json.dumps(pose, sort_keys=True, default=str)
                if key not in pose_values:  # each pose file is read and checked once
                    pose_values[key] = _pose_value(pose, base, loc + ("poses",), errors)
                pv = pose_values[key]
                data[pose_field] = [pv] if pose_field == "poses" else pv
            if lora_field is not None:
                data[lora_field] = _lora_value(lora, lora_field, loc + ("loras",), errors)
            source = job.identities.get(name) if name else None
            if source is not None:
                if source.card is not None:
                    data["identity_card"] = str(source.card)
                else:
                    data["photos"] = [str(p) for p in source.photos]
                    if source.face_index():
                        data["face_index"] = source.face_index()
            ident_hash = source.content_hash if source else None
            if it.second is not None:  # two people: the second identity's files and content hash
                other = job.identities.get(it.second)
                if other is None:
                    known = ", ".join(job.identities) or "none defined"
                    raise errors.at(loc + ("second",), f"identity {it.second!r} is not defined under identities: "
                                    f"({known})")
                if other.card is not None:
                    data["identity_card_2"] = str(other.card)
                else:
                    data["photos_2"] = [str(p) for p in other.photos]
                    if other.face_index():
                        data["face_index_2"] = other.face_index()
                ident_hash = f"{ident_hash}+{other.content_hash}"
            for seed in seeds:
                req = _validate(model, data, seed, ident_hash, loc, it, preset, spec.defaults, errors)
                iid = item_id(req, ident_hash)
                if iid in seen:
                    duplicates += 1
                    continue
                seen.add(iid)
                items.append(BatchItem(id=iid, identity=name, request=req, spec_index=i))
                if len(items) > MAX_ITEMS:
                    raise errors.at(loc, f"the job expands to more than {MAX_ITEMS} items; split it")
    return items, duplicates


def _check_overrides(overrides: dict, loc: tuple, model, errors: _Errors) -> None:
    for key in overrides:
        if key in _RESERVED:
            raise errors.at(loc + (key,), f"cannot be set here; {_RESERVED[key]}")
        if key not in model.model_fields:
            raise errors.at(loc + (key,), "unknown generate option")


_AXIS_KEYS = {"prompt": ("prompt", "prompts"), "method": ("method", "methods"), "seed": ("seed", "seeds"),
              "pose": ("poses",), "poses": ("poses",), "loras": ("loras",), "lora": ("loras",)}


def _validate(model, data: dict, seed, ident_hash, loc, it: ItemSpec, preset, defaults: dict, errors: _Errors):
    data = dict(data)
    if seed is None:
        # no seed given: derive one from the recipe, so reruns make the same image
        probe = _validate(model, data, 0, ident_hash, loc, it, preset, defaults, errors)
        seed = int(item_id(probe, ident_hash)[:8], 16)
    data["seed"] = seed
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = next((str(p) for p in err.get("loc", ()) if isinstance(p, str)), None)
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        if err.get("type") == "missing":
            msg = "required (give it on the item, in defaults: or through a preset)"
        if name in it.overrides:
            raise errors.at(loc + ("overrides", name), msg) from exc
        if name in _AXIS_KEYS:
            keys = _AXIS_KEYS[name]
            key = next((k for k in keys if getattr(it, k, None) is not None), keys[0])
            raise errors.at(loc + (key,), msg) from exc
        if name in defaults:
            raise errors.at(("defaults", name), msg) from exc
        if name is not None and preset is not None:
            raise errors.at(loc + ("preset" if it.preset else "presets",), f"preset {preset!r}: {name}: {msg}") from exc
        raise errors.at(loc, f"{name}: {msg}" if name else msg) from exc


# ------------------------------------------------- what the run will need
def check_resources(job: Job, settings) -> None:
    """Check what the items need from this installation, before anything runs (and
    in `--dry-run`): every LoRA file exists and is a safetensors file, every base
    model is in the catalog or registered, every pose template name exists. The
    error names the item and the line of the job file."""
    from ..lora.manager import find_lora
    from ..models.catalog import load_catalog
    from ..pose.templates import load_template, user_poses_dir

    errors = _Errors(job.path, job.lines or _Lines(None))
    catalog = {e.name: e for e in load_catalog()}
    user = _user_checkpoints(settings)
    checked: set[tuple] = set()
    for item in job.items:
        req, loc = item.request, ("items", item.spec_index)
        for spec in getattr(req, "loras", None) or []:
            if ("lora", spec.name) in checked:
                continue
            try:
                find_lora(settings, spec.name)
            except BadInput as exc:
                raise errors.at(loc + ("loras",), str(exc)) from exc
            checked.add(("lora", spec.name))
        base = getattr(req, "base_model", None)
        if base is not None and ("base", base) not in checked:
            entry = catalog.get(base)
            if entry is None and base not in user:
                known = ", ".join(sorted(n for n, e in catalog.items() if e.kind in ("sdxl", "sd15")) + sorted(user))
                raise errors.at(loc, f"base_model {base!r} is not a known base model "
                                f"({known}; or register a checkpoint with `models register PATH`)")
            if entry is not None and entry.kind not in ("sdxl", "sd15"):
                raise errors.at(loc,
                                f"base_model {base!r} is a {entry.kind} model, not an SDXL or SD1.5 base")
            checked.add(("base", base))
        pose = getattr(req, "pose", None)
        if isinstance(pose, str) and not Path(pose).is_absolute() and ("pose", pose) not in checked:
            try:
                load_template(pose, user_dir=user_poses_dir(settings))
            except BadInput as exc:
                raise errors.at(loc + ("poses",), str(exc)) from exc
            checked.add(("pose", pose))


def _user_checkpoints(settings) -> set[str]:
    from ..stores import open_store

    try:
        return set(open_store(settings).user_checkpoints())
    except LikenessError:
        return set()
