"""The engine's restore stage: find the faces in a generated image and restore
each one. The stage owns its restorers (resident between images); it is given
the store, device and dtype to build them with and the engine's face-analyser
lookup, nothing else of the engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..profile import RunProfile
from .factory import get_restorer
from .paste import restore_faces

DETECTOR_PACKS = ("buffalo_l", "antelopev2")  # either has an SCRFD detector


class RestoreStage:
    def __init__(self, store, device: str, dtype, profile: RunProfile, analyzer: Callable[[str], Any]):
        """`profile`: the settings' run profile."""
        self.store = store
        self.device = device
        self.dtype = dtype
        self.profile = profile
        self.analyzer = analyzer  # pack name -> FaceAnalyzer (the engine's, shared)
        self._restorers: dict[str, Any] = {}

    def detector_pack(self) -> str:
        """The first face pack that is on disk (demo packs are built on demand)."""
        if self.profile.builds_models:
            return DETECTOR_PACKS[0]
        for pack in DETECTOR_PACKS:
            if self.store.status(pack).present:
                return pack
        return DETECTOR_PACKS[0]  # ensure() then names what to download

    def restorer(self, name: str):
        if name not in self._restorers:
            self._restorers[name] = get_restorer(name, self.store, self.device, self.dtype)
        return self._restorers[name]

    def restore(self, image, req):
        """Returns (image, report lines). No face in the output is reported, not an error."""
        restorer = self.restorer(req.restore)
        rgb = np.asarray(image.convert("RGB"))
        faces = self.analyzer(self.detector_pack()).detect(rgb, "output")
        if not faces:
            return image, ["no face found in the output; nothing restored"]
        fidelity = req.codeformer_fidelity if req.restore == "codeformer" else None
        return restore_faces(image, faces, restorer, req.restore_strength, fidelity=fidelity)
