"""Batch job files: schema, errors that name the key and the line, expansion.

A job file is YAML or JSON (JSON is read by the YAML parser too, so both get
line numbers):

    name: portraits               # optional; default: the file name
    defaults: {steps: 30}         # optional; generate options for every item
    identities:
      alice: {photos: [a1.jpg, a2.jpg]}     # or {card: alice.identity}
    items:
      - identity: alice           # or identities: [alice, bob]; omitted = all
        preset: studio-headshot   # or presets: [...], prompt: / prompts: [...]
        methods: [faceid, instantid]        # or method: faceid
        seeds: [1, 2, 3]                    # or seed: 1; omitted = derived
        poses: [...]                        # optional axis
        loras: [...]                        # optional axis
        overrides: {steps: 30}              # any generate option

Each entry of `items` expands as identities x presets x prompts x methods x
seeds x poses x loras. Paths (photos, card, pose files) are relative to the job
file. Every expanded item is validated as a `GenerateRequest` up front, so a bad
option fails the whole job before anything runs.

An item's id is the sha256 of its resolved recipe: the validated request
(without the photo paths and output options) as sorted JSON plus a hash of the
identity's photo contents. Moving the job folder or renaming an identity keeps
the ids; changing a photo, a prompt or a setting changes them.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import BadInput, LikenessError
from ..paths import check_name, sanitize_name

MAX_ITEMS = 100_000  # a typo like seeds: range(10**9) must not eat memory
MAX_JOB_BYTES = 5_000_000

# request fields the batch owns; an override naming them is a mistake
_RESERVED = {
    "photos": "use identities: in the job file",
    "identity_card": "use identities: {NAME: {card: FILE}}",
    "out_dir": "use --out on the command line",
    "name_prefix": "output names are derived from the item id",
    "prompt": "use prompt: or prompts: on the item",
    "method": "use method: or methods: on the item",
    "seed": "use seed: or seeds: on the item",
}
# request fields left out of the id: where things go, not what is made
_ID_EXCLUDE = {"photos", "identity_card", "out_dir", "name_prefix"}


# --------------------------------------------------------------------- schema
_PLURAL = {"identity": "identities", "preset": "presets", "prompt": "prompts", "method": "methods", "seed": "seeds"}

class IdentitySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    photos: list[str] | None = Field(default=None, min_length=1, max_length=50)
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
    content_hash: str = ""  # sha256 over the photo (or card) bytes


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
def _parse(path: Path) -> tuple[Any, _Lines]:
    import yaml

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"job file {path} cannot be read: {exc.strerror or exc}.") from None
    if len(raw) > MAX_JOB_BYTES:
        raise BadInput(f"job file {path} is {len(raw)} bytes; the limit is {MAX_JOB_BYTES}.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"job file {path} is not UTF-8 text.") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInput(f"job file {path}, line {exc.lineno}: not valid JSON ({exc.msg}).") from None
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:  # valid JSON that YAML 1.1 rejects: no line numbers then
            root = None
        return data, _Lines(root)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"line {mark.line + 1}: " if mark else ""
        raise BadInput(f"job file {path}, {line}not valid YAML ({exc.problem or exc.context}).") from None
    except yaml.YAMLError as exc:
        raise BadInput(f"job file {path} is not valid YAML ({' '.join(str(exc).split())}).") from None
    return data, _Lines(root)


def load_job(path: Path | str, request_model=None, demo: bool = False) -> Job:
    """Read, validate and expand a job file; `BadInput` naming the key and line."""
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
        raise errors.from_validation(exc) from None
    for name in spec.identities:
        try:
            check_name(name, "identity name")  # it becomes part of file names
        except BadInput as exc:
            raise errors.at(("identities", name), str(exc)) from None
    job = Job(path=path, name=spec.name or path.stem, identities=_resolve_identities(spec, path))
    job.items, job.duplicates = expand(spec, job, errors, request_model, demo)
    return job


def _resolve_identities(spec: JobSpec, path: Path) -> dict[str, IdentitySource]:
    base = path.parent
    out = {}
    for name, ident in spec.identities.items():
        if ident.card is not None:
            card = (base / ident.card).expanduser()
            out[name] = IdentitySource(name, card=card, content_hash=_contents_hash([card]))
        else:
            photos = tuple((base / p).expanduser() for p in ident.photos or ())
            out[name] = IdentitySource(name, photos=photos, content_hash=_contents_hash(photos))
    return out


def _contents_hash(files) -> str:
    """sha256 over the files' bytes in order; a file that cannot be read
    contributes its path (its items fail at run time, with the reason)."""
    h = hashlib.sha256()
    for f in files:
        fh = hashlib.sha256()
        try:
            with open(f, "rb") as src:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    fh.update(chunk)
            h.update(fh.hexdigest().encode())
        except OSError:
            h.update(f"unreadable:{Path(f).resolve()}".encode())
    return h.hexdigest()


# ------------------------------------------------------------------ expansion
def _request_model(request_model):
    if request_model is not None:
        return request_model
    from ..requests import GenerateRequest

    return GenerateRequest


def _load_preset(name: str, loc: tuple, errors: _Errors, demo: bool = False) -> dict:
    try:
        mod = importlib.import_module("pipelines.presets")
        load = mod.load_preset
    except ModuleNotFoundError as exc:
        if exc.name != "pipelines.presets":
            raise
        raise errors.at(loc, "presets are not available in this build; use prompt: instead") from None
    except AttributeError:
        raise errors.at(loc, "presets are not available in this build; use prompt: instead") from None
    try:
        fields = load(name, demo=demo)
    except LikenessError as exc:
        raise errors.at(loc, f"preset {name!r}: {exc}") from None
    return dict(fields)


def _axis_field(model, key: str, candidates: tuple[str, ...], loc: tuple, errors: _Errors) -> str:
    for f in candidates:
        if f in model.model_fields:
            return f
    raise errors.at(loc, f"{key} are not available in this build (generate has no {candidates[0]} option)")


def _pose_value(value, base: Path):
    if isinstance(value, str):
        p = (base / value).expanduser()
        if p.is_file():
            return str(p.resolve())
    return value


def _lora_value(value, field_name: str):
    """An entry of `loras:` is one LoRA set: a name, `NAME:WEIGHT`, {name, weight},
    or a list of those ([] = no LoRA)."""
    entries = value if isinstance(value, list) else [value]
    parsed = [_lora_entry(e) for e in entries]
    if field_name == "loras":
        return parsed
    return parsed[0] if len(parsed) == 1 else parsed


def _lora_entry(entry):
    if isinstance(entry, str):
        name, sep, weight = entry.rpartition(":")
        if sep:
            try:
                return {"name": name, "weight": float(weight)}
            except ValueError:
                pass
        return {"name": entry}
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


def expand(spec: JobSpec, job: Job, errors: _Errors, request_model=None, demo: bool = False) -> tuple[list[BatchItem], int]:
    """identities x presets x prompts x methods x seeds x poses x loras, each
    validated as a request. Returns (unique items, number of duplicates)."""
    model = _request_model(request_model)
    base = job.path.parent
    _check_overrides(spec.defaults, ("defaults",), model, errors)
    items: list[BatchItem] = []
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
        preset_fields = {p: _load_preset(p, loc + ("preset" if it.preset else "presets",), errors, demo)
                         for p in presets if p is not None}
        prompts = it.axis("prompt") or [None]
        methods = it.axis("method") or [None]
        seeds = it.axis("seed") or [None]
        pose_field = lora_field = None
        if it.poses is not None:
            pose_field = _axis_field(model, "poses", ("pose", "poses"), loc + ("poses",), errors)
        if it.loras is not None:
            lora_field = _axis_field(model, "loras", ("loras", "lora"), loc + ("loras",), errors)
        poses = it.poses or [None]
        loras = it.loras or [None]
        combos = itertools.product(names, presets, prompts, methods, poses, loras)
        for name, preset, prompt, method, pose, lora in combos:
            data: dict[str, Any] = {}
            if preset is not None:
                data.update(preset_fields[preset])
            data.update(spec.defaults)
            data.update(it.overrides)
            if prompt is not None:
                data["prompt"] = prompt
            if method is not None:
                data["method"] = method
            if pose_field is not None:
                pv = _pose_value(pose, base)
                data[pose_field] = [pv] if pose_field == "poses" else pv
            if lora_field is not None:
                data[lora_field] = _lora_value(lora, lora_field)
            source = job.identities.get(name) if name else None
            if source is not None:
                if source.card is not None:
                    data["identity_card"] = str(source.card)
                else:
                    data["photos"] = [str(p) for p in source.photos]
            ident_hash = source.content_hash if source else None
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
            raise errors.at(loc + ("overrides", name), msg) from None
        if name in _AXIS_KEYS:
            keys = _AXIS_KEYS[name]
            key = next((k for k in keys if getattr(it, k, None) is not None), keys[0])
            raise errors.at(loc + (key,), msg) from None
        if name in defaults:
            raise errors.at(("defaults", name), msg) from None
        if name is not None and preset is not None:
            raise errors.at(loc + ("preset" if it.preset else "presets",), f"preset {preset!r}: {name}: {msg}") from None
        raise errors.at(loc, f"{name}: {msg}" if name else msg) from None
