"""The evaluation run: every method x identity x prompt x seed, measured the way
the PuLID paper measures (Face Sim with a recogniser other than the one the
method conditions on, CLIP-T for prompt following), plus the face-detection rate
in the outputs, seconds per image, and a calibration row per recogniser: its
similarity between different real photos of the same person, the ceiling a
method's Face Sim should be read against.

Invariants:
- Every method sees the same identities, prompts and seeds (paired comparison).
- Inputs are checked, and every identity's photos analysed, before anything is
  generated, so a bad folder fails in seconds, not after an hour of sampling.
- One failing item (an identity a method cannot use) is recorded and the rest go
  on; model errors stop the run.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import BadInput
from ..identity import methods_for_family
from ..paths import sanitize_name
from .inputs import EvalIdentity, parse_methods, read_identities, read_prompts

Log = Callable[[str], None]


class EvalRequest(BaseModel):
    """One evaluation run; ranges as in `GenerateRequest`."""

    model_config = ConfigDict(extra="forbid")

    identities: str = Field(min_length=1)
    prompts: str = Field(min_length=1)
    methods: list[str] = Field(default_factory=lambda: methods_for_family("sdxl"), min_length=1, max_length=8)
    seeds: int = Field(default=1, ge=1, le=64)  # images per identity x prompt (seeds seed, seed+1, ...)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    steps: int | None = Field(default=None, ge=1, le=150)
    cfg: float | None = Field(default=None, ge=0.0, le=30.0)
    width: int | None = Field(default=None, ge=64, le=2048)
    height: int | None = Field(default=None, ge=64, le=2048)
    base_model: str | None = None  # for SDXL methods (default: the engine's, sdxl-base)
    sd15_base: str | None = None  # for SD1.5 methods such as W+ (default: sd15-base)
    out_dir: str | None = None

    @model_validator(mode="after")
    def _check(self):
        for f in ("width", "height"):
            v = getattr(self, f)
            if v is not None and v % 8:
                raise ValueError(f"{f} {v} must be a multiple of 8")
        return self


@dataclass
class ImageRecord:
    """One generated image and what was measured on it."""

    method: str
    identity: str
    prompt: str
    seed: int
    path: str
    recognizer: str
    face_found: bool
    face_sim: float | None  # mean cosine to the reference photos
    face_sim_max: float | None  # best reference photo
    clip_t: float | None
    seconds: float  # generation time per image (its call's time / images in the call)
    warmup: bool  # made by the method's first call (includes loading its models)


@dataclass
class Failure:
    method: str
    identity: str
    prompt: str
    error: str


@dataclass
class Calibration:
    """A recogniser's similarity between different real photos of one person."""

    recognizer: str
    sims: list[float]  # one per pair of photos within an identity folder
    photos: int
    photos_with_face: int

    @property
    def pairs(self) -> int:
        return len(self.sims)


@dataclass
class EvalReport:
    out_dir: Path
    rows: list  # report.SummaryRow
    records: list[ImageRecord]
    calibration: list[Calibration]
    failures: list[Failure]
    files: dict[str, Path] = field(default_factory=dict)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def default_out_dir(settings) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(settings.outputs_dir) / "eval" / stamp


# ---------------------------------------------------------------- calibration
def calibrate(engine, identities: list[EvalIdentity], packs: list[str], log: Log = _stderr) -> list[Calibration]:
    """Embed every real photo with each recogniser in `packs` (one detection per
    photo, shared by the recognisers) and take the cosine of every pair of photos
    within an identity. Raises `BadInput` naming the folder if an identity has no
    photo with a usable face."""
    from ..imageio import load_photo_array

    s = engine.settings
    analyzers = {p: engine.analyzer(p) for p in packs}
    first = analyzers[packs[0]]
    per_pack: dict[str, list[float]] = {p: [] for p in packs}
    photos = with_face = 0
    for ident in identities:
        vectors: dict[str, list[np.ndarray]] = {p: [] for p in packs}
        reasons = []
        for photo in ident.photos:
            photos += 1
            try:
                rgb = load_photo_array(photo, max_pixels=s.max_image_pixels, max_side=s.max_photo_side)
                face = first.analyze(rgb, photo)
                faces = {packs[0]: face}
                for p in packs[1:]:
                    faces[p] = analyzers[p].embed_detection(rgb, face, photo, n_faces=face.n_faces)
            except BadInput as exc:  # unreadable, no face, face too small
                reasons.append(str(exc).rstrip("."))
                continue
            with_face += 1
            for p in packs:
                vectors[p].append(faces[p].normed_embedding)
        if not vectors[packs[0]]:
            raise BadInput(f"identity folder {Path(ident.photos[0]).parent}: no photo has a usable face "
                           f"({'; '.join(reasons)}).")
        for r in reasons:
            log(f"calibration: left out a photo of {ident.name}: {r}")
        for p in packs:
            for a, b in itertools.combinations(vectors[p], 2):
                per_pack[p].append(float(np.clip(a @ b, -1.0, 1.0)))
    return [Calibration(p, per_pack[p], photos, with_face) for p in packs]


# ------------------------------------------------------------------------ run
def _generate_request(req: EvalRequest, ident: EvalIdentity, prompt: str, index: int, method: str,
                      base: str | None, out: Path):
    from ..requests import GenerateRequest

    data: dict[str, Any] = dict(photos=list(ident.photos), prompt=prompt, method=method, count=req.seeds, seed=req.seed,
                out_dir=str(out), name_prefix=f"p{index:03d}")
    if base is not None:
        data["base_model"] = base
    for f in ("steps", "cfg", "width", "height"):
        v = getattr(req, f)
        if v is not None:
            data[f] = v
    try:
        return GenerateRequest(**data)
    except ValidationError as exc:  # name the field
        from ..requests import _field_message

        raise BadInput(f"eval: {_field_message(exc.errors()[0])}.") from exc


def run_eval(engine, req: EvalRequest, clip=None, log: Log = _stderr) -> EvalReport:
    """Generate and measure everything `req` asks for, then write the reports
    (CSV, Markdown, chart) into the output folder."""
    from ..identity import get_method_class
    from ..scoring import scorer_pack
    from .clipscore import ClipScorer
    from .report import summarise, write_reports

    methods = parse_methods(req.methods)
    identities = read_identities(req.identities)
    prompts = read_prompts(req.prompts)
    out = Path(req.out_dir).expanduser() if req.out_dir else default_out_dir(engine.settings)
    out.mkdir(parents=True, exist_ok=True)
    classes = {m: get_method_class(m) for m in methods}
    packs = list(dict.fromkeys(scorer_pack(m) for m in methods))

    total = len(methods) * len(identities) * len(prompts) * req.seeds
    log(f"eval: {len(methods)} methods x {len(identities)} identities x {len(prompts)} prompts x "
        f"{req.seeds} seeds = {total} images -> {out}")
    calibration = calibrate(engine, identities, packs, log)
    clip = clip or ClipScorer(engine.store, engine.device, engine.dtype)

    records: list[ImageRecord] = []
    failures: list[Failure] = []
    for method in methods:
        base = req.sd15_base if classes[method].base == "sd15" else req.base_model
        warm = True
        for ident, (j, prompt) in itertools.product(identities, enumerate(prompts)):
            folder = out / "images" / method / sanitize_name(ident.name, "identity")
            greq = _generate_request(req, ident, prompt, j, method, base, folder)
            try:
                result = engine.generate(greq)
            except BadInput as exc:  # this identity/prompt only; model errors stop the run
                failures.append(Failure(method, ident.name, prompt, str(exc)))
                log(f"eval: {method} / {ident.name} / prompt {j + 1} failed: {exc}")
                continue
            per_image = result.seconds / max(len(result.images), 1)
            for img in result.images:
                lk = img.recipe.get("likeness") or {}
                found = bool(lk.get("face_found"))
                records.append(ImageRecord(
                    method=method, identity=ident.name, prompt=prompt, seed=img.seed,
                    path=str(Path(img.path).resolve().relative_to(out.resolve())),
                    recognizer=lk.get("recognizer") or scorer_pack(method), face_found=found,
                    face_sim=lk.get("mean") if found else None, face_sim_max=lk.get("max") if found else None,
                    clip_t=clip.score(img.image, prompt), seconds=round(per_image, 4), warmup=warm,
                ))
            warm = False
            done = len(records) + len(failures) * req.seeds
            log(f"eval: {done}/{total} {method} / {ident.name} / prompt {j + 1}: {per_image:.2f} s per image")

    rows = summarise(methods, records, calibration, failures)
    report = EvalReport(out, rows, records, calibration, failures)
    report.files = write_reports(report, req, engine.settings, prompts=prompts, identities=identities)
    return report
