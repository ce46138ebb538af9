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
from pathlib import Path

import numpy as np

# conditioning recogniser -> independent scoring recogniser
INDEPENDENT = {"buffalo_l": "antelopev2", "antelopev2": "buffalo_l", None: "antelopev2"}


def scorer_pack(method: str) -> str:
    from .identity import get_method_class

    recognizer = get_method_class(method).recognizer if method != "none" else None
    return INDEPENDENT.get(recognizer, "antelopev2")


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32).reshape(-1)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def reference_embeddings(engine, identity, pack: str) -> np.ndarray:
    """Unit embeddings of each reference photo with `pack`'s recogniser, from the
    identity's aligned crops (the 224 crop is the 112 ArcFace template scaled x2),
    cached on the identity."""
    import cv2

    cache = identity.__dict__.setdefault("_score_refs", {})
    if pack not in cache:
        rec = engine.analyzer(pack).recognizer
        size = rec.input_size
        refs = [_unit(rec.embed_crop(cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA)))
                for c in identity.crops]
        cache[pack] = np.stack(refs)
    return cache[pack]


def score_array(engine, rgb: np.ndarray, refs: np.ndarray, pack: str) -> dict:
    analyzer = engine.analyzer(pack)
    faces = analyzer.detect(rgb, "output")
    if not faces:
        return {"recognizer": pack, "face_found": False, "mean": None, "max": None}
    face = analyzer.embed_detection(rgb, faces[0], "output", n_faces=len(faces))
    sims = refs @ _unit(face.embedding)
    return {"recognizer": pack, "face_found": True, "mean": round(float(sims.mean()), 4),
            "max": round(float(sims.max()), 4), "references": int(len(refs))}


def score_image(engine, image, identity, method: str) -> dict:
    pack = scorer_pack(method)
    rgb = np.asarray(image.convert("RGB"))
    return score_array(engine, rgb, reference_embeddings(engine, identity, pack), pack)


def sort_key(recipe: dict) -> float:
    s = recipe.get("likeness") or {}
    return s["mean"] if s.get("face_found") else float("-inf")


def keep_best(settings, images: list, keep: int, rejects: bool = False) -> list:
    """Keep the `keep` images with the highest likeness; delete the rest, or move them
    into a `rejects/` folder beside them when `rejects` is set."""
    ranked = sorted(images, key=lambda g: sort_key(g.recipe), reverse=True)
    kept, dropped = ranked[:keep], ranked[keep:]
    for g in dropped:
        path = Path(g.path)
        if rejects:
            dest = path.parent / "rejects"
            dest.mkdir(exist_ok=True)
            shutil.move(str(path), dest / path.name)
        else:
            path.unlink(missing_ok=True)
    order = {id(g): i for i, g in enumerate(images)}
    return sorted(kept, key=lambda g: order[id(g)])
