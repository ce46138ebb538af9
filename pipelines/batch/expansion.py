"""Expanding a job file into items: identities x presets x prompts x methods x
seeds x poses x loras, each validated as a `GenerateRequest` up front, so a bad
option fails the whole job before anything runs.

An item's fields are merged in one order: the preset (`presets.apply_preset`,
sized by the run profile), under `defaults:`, under the item's `overrides:`,
under the item's axes (prompt, method, pose, LoRAs), with the identity's files
last. A job item's `prompt:` replaces the preset's prompt template; a speed in
`defaults:` or `overrides:` moves the preset to that mode.

The product of every item's axes is counted (duplicates included) before
anything is expanded. An item's id is the sha256 of its resolved recipe: the
validated request (without the photo paths and output options) as sorted JSON
plus a hash of the identity's photo contents. Moving the job folder or renaming
an identity keeps the ids; changing a photo, a prompt or a setting changes them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import BadInput, LikenessError
from ..imageio import hash_user_file, read_user_file
from ..profile import REAL, RunProfile
from .jobread import JobErrors, contents_hash, local_path
from .jobspec import MAX_ITEMS, MAX_JOB_BYTES, POSE_PHOTO_SUFFIXES, BatchItem, ItemSpec, Job, JobSpec

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


def _load_preset(name: str, loc: tuple, errors: JobErrors, presets_dir=None):
    """Preset `name`, shipped or the user's own (in `presets_dir`); an error names
    the item's preset key and line."""
    from ..presets import get_preset

    try:
        return get_preset(name, user_dir=presets_dir)
    except LikenessError as exc:
        raise errors.at(loc, f"preset {name!r}: {exc}") from exc


def _pose_value(value, base: Path, loc: tuple, errors: JobErrors):
    """A pose file (a .json template or a reference photo) resolved against the
    job file and checked now: a regular file, and a template that parses.
    Template names are checked against the installation by `check_resources`."""
    if not isinstance(value, str):
        return value
    looks_like_file = value.lower().endswith((".json", *POSE_PHOTO_SUFFIXES)) or "/" in value or "\\" in value
    if not looks_like_file:
        return value
    p = local_path(base, value, loc, errors)
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


def _lora_value(value, field_name: str, loc: tuple, errors: JobErrors):
    """An entry of `loras:` is one LoRA set: a name, `NAME:WEIGHT`, {name, weight},
    or a list of those ([] = no LoRA)."""
    entries = value if isinstance(value, list) else [value]
    parsed = [_lora_entry(e, loc, errors) for e in entries]
    if field_name == "loras":
        return parsed
    return parsed[0] if len(parsed) == 1 else parsed


def _lora_entry(entry, loc: tuple, errors: JobErrors):
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
        return "sha256:" + contents_hash([value])
    return value


def _count_combinations(spec: JobSpec, job: Job, errors: JobErrors) -> None:
    """Refuse a job whose axes multiply past `MAX_ITEMS`, duplicates included,
    before a single item is built (10^9 identical items take hours to dedupe)."""
    total = 0
    for i, it in enumerate(spec.items):
        n = 1
        names = it.axis("identity")
        every_identity: list[str | None] = list(job.identities) or [None]
        for axis in (names if names is not None else every_identity,
                     it.axis("preset"), it.axis("prompt"), it.axis("method"), it.axis("seed"), it.poses, it.loras):
            n *= max(1, len(axis or ()))
        total += n
        if total > MAX_ITEMS:
            raise errors.at(("items", i), f"the job expands to more than {MAX_ITEMS} items "
                                          f"(duplicates included); split it")


def _identity_fields(source, suffix: str = "") -> dict:
    """The request fields naming an identity's files: its card, or its photos and
    the chosen face (`suffix` "_2" for the second person)."""
    if source.card is not None:
        return {f"identity_card{suffix}": str(source.card)}
    fields: dict = {f"photos{suffix}": [str(p) for p in source.photos]}
    if source.face_index():
        fields[f"face_index{suffix}"] = source.face_index()
    return fields


def expand(spec: JobSpec, job: Job, errors: JobErrors, profile: RunProfile = REAL,
           presets_dir=None) -> tuple[list[BatchItem], int]:
    """identities x presets x prompts x methods x seeds x poses x loras, each
    validated as a request. Returns (unique items, number of duplicates).
    `profile`: the run profile presets are sized by."""
    from ..presets import apply_preset
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
        loaded = {p: _load_preset(p, loc + ("preset" if it.preset else "presets",), errors, presets_dir)
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
            data: dict[str, Any] = {**spec.defaults, **it.overrides}
            if prompt is not None:
                data["prompt"] = prompt  # replaces the preset's template
            if method is not None:
                data["method"] = method
            if preset is not None:
                data = apply_preset(loaded[preset], profile, overrides=data)
            if pose_field is not None:
                pose_key = json.dumps(pose, sort_keys=True, default=str)
                if pose_key not in pose_values:  # each pose file is read and checked once
                    pose_values[pose_key] = _pose_value(pose, base, loc + ("poses",), errors)
                pv = pose_values[pose_key]
                data[pose_field] = [pv] if pose_field == "poses" else pv
            if lora_field is not None:
                data[lora_field] = _lora_value(lora, lora_field, loc + ("loras",), errors)
            source = job.identities.get(name) if name else None
            if source is not None:
                data.update(_identity_fields(source))
            ident_hash = source.content_hash if source else None
            if it.second is not None:  # two people: the second identity's files and content hash
                other = job.identities.get(it.second)
                if other is None:
                    known = ", ".join(job.identities) or "none defined"
                    raise errors.at(loc + ("second",), f"identity {it.second!r} is not defined under identities: "
                                    f"({known})")
                data.update(_identity_fields(other, "_2"))
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


def _check_overrides(overrides: dict, loc: tuple, model, errors: JobErrors) -> None:
    for key in overrides:
        if key in _RESERVED:
            raise errors.at(loc + (key,), f"cannot be set here; {_RESERVED[key]}")
        if key not in model.model_fields:
            raise errors.at(loc + (key,), "unknown generate option")


_AXIS_KEYS = {"prompt": ("prompt", "prompts"), "method": ("method", "methods"), "seed": ("seed", "seeds"),
              "pose": ("poses",), "poses": ("poses",), "loras": ("loras",), "lora": ("loras",)}


def _validate(model, data: dict, seed, ident_hash, loc, it: ItemSpec, preset, defaults: dict, errors: JobErrors):
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
