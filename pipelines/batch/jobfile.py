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

`load_job` is the one entry point: the web UI's dry run and run, and the
command line's, all load a job through it with the settings' run profile, so
they list the same items. The order of a load:

1. read the file, bounded (size, regular file, no anchors, depth) and parse it;
2. refuse a key given twice, then validate the schema;
3. check identity names (they become parts of file names);
4. a job from the web UI: replace uploaded photo and card names by their files;
5. resolve each identity's files and hash their contents (the item ids use it);
6. expand the items, each merged with its preset and validated as a request.

Nothing is written, and every error names the file, the line and the key. The
steps live in their own modules:

    jobspec.py    the schema (`JobSpec`) and the resolved job (`Job`, `BatchItem`)
    jobread.py    bounded, untrusting reading; errors naming the key and the line
    uploads.py    a job sent through the web UI names only what came with it
    expansion.py  the axes' product, preset merging, validation, stable item ids
    resources.py  what the items need from this installation
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import ValidationError

from ..errors import BadInput
from ..paths import check_name
from ..profile import REAL, RunProfile
from .expansion import expand, item_id
from .jobread import JobErrors, contents_hash, local_path, parse_job_file, reject_duplicate_keys
from .jobspec import (
    MAX_CARD_BYTES,
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_JOB_BYTES,
    BatchItem,
    IdentitySource,
    IdentitySpec,
    ItemSpec,
    Job,
    JobSpec,
    PhotoSpec,
    photo_file,
)
from .resources import check_resources
from .uploads import Uploads, confine_to_uploads

__all__ = [
    "MAX_CARD_BYTES", "MAX_DEPTH", "MAX_ITEMS", "MAX_JOB_BYTES",
    "BatchItem", "IdentitySource", "IdentitySpec", "ItemSpec", "Job", "JobSpec", "PhotoSpec",
    "Uploads", "check_resources", "expand", "item_id", "load_job",
]


def load_job(path: Path | str, profile: RunProfile = REAL, uploads: Uploads | None = None,
             presets_dir: Path | str | None = None) -> Job:
    """Read, validate and expand a job file; `BadInput` naming the key and line.
    `profile` is the settings' run profile (`settings.profile`): presets are sized
    by it. With `uploads` (a job sent through the web UI or the API) the file may
    name only what came with it, never a path on the server: see `Uploads`.
    `presets_dir` is the user's own presets folder (`presets.user_presets_dir`)."""
    path = Path(path).expanduser().resolve()
    data, lines = parse_job_file(path)
    errors = JobErrors(path, lines)
    if lines.root is not None:
        reject_duplicate_keys(lines.root, errors)
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
        confine_to_uploads(spec, uploads, errors)
    job = Job(path=path, name=spec.name or path.stem, identities=_resolve_identities(spec, path, errors),
              lines=lines)
    job.items, job.duplicates = expand(spec, job, errors, profile, presets_dir)
    return job


def _resolve_identities(spec: JobSpec, path: Path, errors: JobErrors) -> dict[str, IdentitySource]:
    base = path.parent
    out = {}
    for name, ident in spec.identities.items():
        loc = ("identities", name)
        if ident.card is not None:
            card = local_path(base, ident.card, loc + ("card",), errors)
            out[name] = IdentitySource(name, card=card, content_hash=contents_hash(
                [card], [loc + ("card",)], errors, MAX_CARD_BYTES))
        else:
            entries = ident.photos or ()
            locs = [loc + ("photos", k) + (("photo",) if isinstance(p, PhotoSpec) else ())
                    for k, p in enumerate(entries)]
            photos = tuple(local_path(base, photo_file(p), at, errors) for p, at in zip(entries, locs))
            faces = tuple(p.face if isinstance(p, PhotoSpec) else None for p in entries)
            content = contents_hash(photos, locs, errors)
            if any(k is not None for k in faces):  # another face is another identity
                content = hashlib.sha256(f"{content}|faces:{json.dumps(faces)}".encode()).hexdigest()
            out[name] = IdentitySource(name, photos=photos, content_hash=content, faces=faces)
    return out
