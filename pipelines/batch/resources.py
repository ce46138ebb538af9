"""What a job's items need from this installation, checked before anything runs
(and in `--dry-run`), so a dry run fails exactly where the run would: LoRA
files, base models, pose templates. Errors name the item and the line."""

from __future__ import annotations

from pathlib import Path

from ..errors import BadInput, LikenessError
from .jobread import JobErrors, JobLines
from .jobspec import Job


def check_resources(job: Job, settings) -> None:
    """Check what the items need from this installation, before anything runs (and
    in `--dry-run`): every LoRA file exists and is a safetensors file, every base
    model is in the catalog or registered, every pose template name exists. The
    error names the item and the line of the job file."""
    from ..lora.manager import find_lora
    from ..models.catalog import load_catalog
    from ..pose.templates import load_template, user_poses_dir

    errors = JobErrors(job.path, job.lines or JobLines(None))
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
