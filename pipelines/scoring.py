"""Likeness score: how much a generated portrait looks like the person.

Measured the way the papers measure it (PuLID's Face Sim): detect the face in the
output, embed it with a recogniser *different* from the one the method conditioned
on (antelopev2's glintr100 for buffalo_l-conditioned FaceID, buffalo_l's w600k_r50
for antelopev2-conditioned InstantID), and take the cosine similarity to the
identity's reference photos (mean and max). "No face found in the output" is a
reported outcome, not an error.

With demo models the recognisers have random weights: scores prove the wiring only.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REJECTS_DIR = "rejects"

# conditioning recogniser -> independent scoring recogniser
# Arc2Face's arcface.onnx is trained on WebFace42M, of which buffalo_l's w600k_r50
# (WebFace600K) is a cleaned part: antelopev2's glintr100 (Glint360K) shares neither
# weights nor training faces with it, so it scores Arc2Face.
INDEPENDENT = {"buffalo_l": "antelopev2", "antelopev2": "buffalo_l", "arc2face-arcface": "antelopev2",
               None: "antelopev2"}


def scorer_pack(method: str) -> str:
    from .identity import method_recognizer

    return INDEPENDENT.get(method_recognizer(method), "antelopev2")


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32).reshape(-1)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def score_array(analyzer, rgb: np.ndarray, refs: np.ndarray, pack: str) -> dict:
    """Detect the face in `rgb` with `analyzer` (pack `pack`) and compare it with `refs`."""
    faces = analyzer.detect(rgb, "output")
    if not faces:
        return {"recognizer": pack, "face_found": False, "mean": None, "max": None}
    face = analyzer.embed_detection(rgb, faces[0], "output", n_faces=len(faces))
    sims = np.clip(refs @ _unit(face.embedding), -1.0, 1.0)  # cosines; clip float error
    return {"recognizer": pack, "face_found": True, "mean": round(float(sims.mean()), 4),
            "max": round(float(sims.max()), 4), "references": int(len(refs))}


class LikenessScorer:
    """Scores outputs against an identity's reference photos.

    It is given what it uses: `analyzer(pack)` (the engine's face analysers,
    shared) and `available(pack)` (whether a recogniser pack can be loaded), and
    it owns its cache of reference embeddings, keyed by the identity's content
    hash and the pack."""

    def __init__(self, analyzer: Callable[[str], Any], available: Callable[[str], bool]):
        self.analyzer = analyzer
        self.available = available
        self._refs: dict[tuple[str, str], np.ndarray] = {}

    def reference_embeddings(self, identity, pack: str) -> np.ndarray:
        """Unit embeddings of each reference photo with `pack`'s recogniser, from the
        identity's aligned crops (the 224 crop is the 112 ArcFace template scaled x2)."""
        import cv2

        key = (identity.hash, pack)
        if key not in self._refs:
            rec = self.analyzer(pack).recognizer
            size = rec.input_size
            refs = [_unit(rec.embed_crop(cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA)))
                    for c in identity.crops]
            self._refs[key] = np.stack(refs)
        return self._refs[key]

    def prepare(self, identity, method: str) -> Callable[[Any], dict]:
        """`score(image) -> dict`, with the recogniser and the reference embeddings
        loaded now, on the caller's thread. Uses the independent recogniser when it
        is downloaded; otherwise the method's own one, flagged `independent: False`
        (a missing scoring model never stops a generation). The function only runs
        ONNX Runtime sessions (safe to call from another thread), so the engine
        scores image k on a worker thread while image k+1 denoises."""
        from .identity import method_recognizer

        pack = scorer_pack(method)
        independent = True
        if not self.available(pack):
            own = method_recognizer(method)
            if own is None or not self.available(own):
                note = {"recognizer": None, "face_found": None, "mean": None, "max": None,
                        "note": f"no face recogniser downloaded for scoring ({pack})"}
                return lambda image: dict(note)
            pack, independent = own, False
        refs = self.reference_embeddings(identity, pack)
        analyzer = self.analyzer(pack)  # fetched here: a worker thread never waits for the engine's lock

        def score(image) -> dict:
            rgb = np.asarray(image.convert("RGB"))
            result = score_array(analyzer, rgb, refs, pack)
            result["independent"] = independent
            return result

        return score

    def score(self, image, identity, method: str) -> dict:
        """The likeness of one output (see `prepare`)."""
        return self.prepare(identity, method)(image)


# For callers that hold an engine: its scorer (see `Engine.scorer`).
def score_image(engine, image, identity, method: str) -> dict:
    return engine.scorer().score(image, identity, method)


def prepare_scorer(engine, identity, method: str) -> Callable[[Any], dict]:
    return engine.scorer().prepare(identity, method)


def reference_embeddings(engine, identity, pack: str) -> np.ndarray:
    return engine.scorer().reference_embeddings(identity, pack)


def sort_key(recipe: dict) -> float:
    """Ranking key for best-of-N: the mean likeness; an output without a face
    ranks below every output with one."""
    s = recipe.get("likeness") or {}
    mean = s.get("mean") if s.get("face_found") else None
    return float(mean) if mean is not None else float("-inf")


def describe(likeness: dict | None) -> str:
    """One line for the user: `likeness 0.62 (max 0.70, antelopev2)` or why there is none."""
    if not likeness:
        return "likeness not scored (no identity)"
    if likeness.get("note"):
        return f"likeness not scored: {likeness['note']}"
    if not likeness.get("face_found"):
        return f"likeness: no face found in the output ({likeness.get('recognizer')})"
    own = "" if likeness.get("independent", True) else ", not independent: the method's own recogniser"
    return f"likeness {likeness['mean']:.3f} (max {likeness['max']:.3f}, {likeness.get('recognizer')}{own})"


def _free_name(folder: Path, name: str) -> Path:
    """`folder/name`, or `folder/<stem>-N<suffix>` when a file of that name is there
    (a rejected file never overwrites an earlier one)."""
    dest = folder / name
    stem, suffix = Path(name).stem, Path(name).suffix
    n = 1
    while dest.exists():
        dest = folder / f"{stem}-{n}{suffix}"
        n += 1
    return dest


def keep_best(settings, images: list, keep: int, rejects: bool = False) -> list:
    """Keep the `keep` images with the highest likeness (ties and faceless outputs
    keep generation order); delete the rest, or move them into a `rejects/` folder
    beside them when `rejects` is set. Returns the kept images in generation order."""
    if keep < 1:
        raise ValueError("keep must be at least 1")
    ranked = sorted(images, key=lambda g: sort_key(g.recipe), reverse=True)
    kept, dropped = ranked[:keep], ranked[keep:]
    for g in dropped:
        path = Path(g.path)
        if rejects:
            dest = path.parent / REJECTS_DIR
            dest.mkdir(exist_ok=True)
            target = _free_name(dest, path.name)
            shutil.move(str(path), target)
            g.path = target
        else:
            path.unlink(missing_ok=True)
    order = {id(g): i for i, g in enumerate(images)}
    return sorted(kept, key=lambda g: order[id(g)])
