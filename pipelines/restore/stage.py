"""The engine's restore stage: find the faces in a generated image and restore
each one (restorers stay resident on the engine between images)."""

from __future__ import annotations

import numpy as np

from .base import get_restorer
from .paste import restore_faces

DETECTOR_PACKS = ("buffalo_l", "antelopev2")  # either has an SCRFD detector


def detector_pack(engine) -> str:
    """The first face pack that is on disk (demo packs are built on demand)."""
    if engine.settings.demo:
        return DETECTOR_PACKS[0]
    for pack in DETECTOR_PACKS:
        if engine.store.status(pack).present:
            return pack
    return DETECTOR_PACKS[0]  # ensure() then names what to download


def restore_output(engine, image, req):
    """Returns (image, report lines). No face in the output is reported, not an error."""
    cache = engine.__dict__.setdefault("_restorers", {})
    if req.restore not in cache:
        cache[req.restore] = get_restorer(req.restore, engine.store, engine.device, engine.dtype)
    restorer = cache[req.restore]
    rgb = np.asarray(image.convert("RGB"))
    faces = engine.analyzer(detector_pack(engine)).detect(rgb, "output")
    if not faces:
        return image, ["no face found in the output; nothing restored"]
    fidelity = req.codeformer_fidelity if req.restore == "codeformer" else None
    return restore_faces(image, faces, restorer, req.restore_strength, fidelity=fidelity)
