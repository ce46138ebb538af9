"""Face analysis: detect, number the faces, pick one, gate on quality, align, embed.

`FaceAnalyzer` wraps one insightface pack ("buffalo_l" for IP-Adapter FaceID,
"antelopev2" for InstantID). It asks the model store for the pack's folder,
checks that folder itself before insightface sees it (insightface would
otherwise try to download a zip, or fail with a bare `assert`), loads the
models on first use and keeps them resident.

Detection: the pack's SCRFD with real models; MTCNN in demo mode (the tiny
SCRFD cannot find real faces). Embeddings always come from the pack's own
ArcFace, so in demo mode they are the tiny recogniser's.

Face numbers: the faces of a photo that pass the score gate are numbered 1..n,
largest first by box area (x2-x1)*(y2-y1); equal areas go left to right, then
top to bottom (`rank_faces`). Face 1, the largest, is used unless the caller
asks for another number (`--face-index`, a job file's `face`, a click in the UI).
The order depends only on the boxes, so a number names the same face every run.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInput, FaceQualityError, ModelError, ModelMissing, NoFaceFound
from ..profile import profile_of
from .detectors import (
    BoxGeometry,
    DetectedFace,
    FaceDetector,
    InsightFaceDetector,
    MtcnnDetector,
    Recognizer,
    norm_crop,
)

MIN_FACE_PX = 64
MIN_DET_SCORE = 0.5
# SCRFD reports candidates down to this score, so a face that is found but
# scores under the gate is reported with its measured score instead of "no face"
_DETECT_FLOOR = 0.3
DET_SIZE = (640, 640)
CLIP_CROP = 224  # IP-Adapter FaceID Plus feeds CLIP the 224 norm_crop of the face


@dataclass
class Face(BoxGeometry):
    """One analysed face. Coordinates are in the analysed image's pixels;
    crops are RGB uint8; `embedding` is the recogniser's raw output (InstantID
    uses it), `normed_embedding` its L2-normalised form (IP-Adapter FaceID)."""

    bbox: np.ndarray  # (4,) x1, y1, x2, y2
    kps: np.ndarray  # (5, 2) left eye, right eye, nose, left mouth, right mouth
    det_score: float
    embedding: np.ndarray  # (512,) float32, raw
    normed_embedding: np.ndarray  # (512,) float32, unit norm
    aligned: np.ndarray  # (224, 224, 3) uint8, for CLIP
    aligned_112: np.ndarray  # (112, 112, 3) uint8, the recogniser's input
    source: str
    image_size: tuple[int, int]  # (width, height) of the analysed image
    pack: str
    n_faces: int = 1  # faces passing the score gate in the image (group check)
    face_index: int = 1  # this face's number in the image (1 = the largest; see `rank_faces`)


def rank_faces(faces: list[DetectedFace]) -> list[DetectedFace]:
    """`faces` in face-number order: largest box area first, ties left to right,
    then top to bottom (a total order on the boxes, so numbers are stable)."""
    return sorted(faces, key=lambda f: (-f.area, float(f.bbox[0]), float(f.bbox[1])))


def box_crop(rgb: np.ndarray, bbox, margin: float = 0.25) -> np.ndarray:
    """A square RGB crop around a face box with `margin` of its size on each side,
    clipped to the image (a thumbnail to show or pick a face by; not a model input)."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    half = max(x2 - x1, y2 - y1) * (0.5 + margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    h, w = rgb.shape[:2]
    left, top = max(int(cx - half), 0), max(int(cy - half), 0)
    right, bottom = min(int(cx + half) + 1, w), min(int(cy + half) + 1, h)
    return np.ascontiguousarray(rgb[top:bottom, left:right])


def _pick(good: list[DetectedFace], face_index: int | None, source: str) -> DetectedFace:
    k = 1 if face_index is None else int(face_index)
    if not 1 <= k <= len(good):
        count = f"{len(good)} face" + ("s" if len(good) != 1 else "")
        raise BadInput(
            f"face {k} was asked for in {source}, which has {count} (numbered 1-{len(good)}, largest first)."
        )
    return good[k - 1]


def expected_files(pack: str) -> list[str]:
    from ..models.catalog import load_catalog

    entry = load_catalog().get(pack)
    if entry.kind != "insightface":
        raise BadInput(f"model {pack!r} is a {entry.kind} model, not an insightface pack.")
    return [f.path for f in entry.files]


def check_pack_folder(folder: Path | str, pack: str) -> Path:
    """Raise `ModelMissing` naming the expected path and files unless `folder`
    holds every file the catalog lists for `pack` (non-empty). Recognises the
    common `antelopev2/antelopev2` nesting left by unzipping into a folder of the
    same name."""
    folder = Path(folder)
    files = expected_files(pack)
    listing = ", ".join(files)
    from ..models.commands import model_command

    fix = f"run `{model_command(pack)}` or put those files directly in that folder"
    if not folder.is_dir():
        raise ModelMissing(f"insightface pack {pack} not found: expected folder {folder} with {listing}; {fix}.")
    missing = [f for f in files if not (folder / f).is_file() or (folder / f).stat().st_size == 0]
    if not missing:
        return folder
    nested = folder / pack
    if nested.is_dir() and any((nested / f).is_file() for f in missing):
        raise ModelMissing(
            f"insightface pack {pack} is nested one level too deep ({nested}); move {listing} "
            f"from {nested} up into {folder}."
        )
    raise ModelMissing(
        f"insightface pack {pack} in {folder} is incomplete: missing or empty {', '.join(missing)} "
        f"(expected {listing}); {fix}."
    )


def _onnx_providers(device: str) -> tuple[list[str], int]:
    """ONNX Runtime providers and insightface ctx_id for the settings' device."""
    import onnxruntime

    if device in ("auto", "cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"], 0
    return ["CPUExecutionProvider"], -1


def _check_rgb(rgb, source: str) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        shape = getattr(rgb, "shape", None)
        dtype = getattr(rgb, "dtype", type(rgb).__name__)
        raise BadInput(f"{source}: expected an RGB uint8 image (H, W, 3), got {shape} {dtype}.")
    if min(rgb.shape[:2]) < 16:
        raise BadInput(f"{source} is only {rgb.shape[1]}x{rgb.shape[0]} px; no face can be found in it.")
    return rgb


class FaceAnalyzer:
    """Face analysis with one insightface pack ("buffalo_l" or "antelopev2").

    `store.ensure(pack)` must return the pack's folder (the real models, or in
    demo mode the tiny pack); models load on first use and stay resident until
    `unload()`. Thread-safe: one analysis at a time."""

    def __init__(
        self,
        store,
        settings,
        pack: str,
        *,
        min_face_px: int = MIN_FACE_PX,
        min_det_score: float = MIN_DET_SCORE,
    ):
        self.store = store
        self.settings = settings
        self.pack = pack
        self.min_face_px = int(min_face_px)
        self.min_det_score = float(min_det_score)
        self.demo = profile_of(settings).demo  # demo: MTCNN finds faces (the tiny SCRFD has random weights)
        self._app = None
        self._detector: FaceDetector | None = None
        self._recognizer: Recognizer | None = None
        self._lock = threading.RLock()

    # -- model life -------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._app is not None

    def _load(self) -> None:
        if self._app is not None:
            return
        from insightface.app import FaceAnalysis

        folder = check_pack_folder(Path(self.store.ensure(self.pack)), self.pack)
        providers, ctx_id = _onnx_providers(getattr(self.settings, "device", "cpu"))
        try:
            # the absolute folder as `name`: insightface then never looks
            # elsewhere (a relative name is first tried against the cwd)
            app = FaceAnalysis(
                name=str(folder.resolve()),
                root=str(folder.parent.parent),
                allowed_modules=["detection", "recognition"],
                providers=providers,
            )
            app.prepare(ctx_id=ctx_id, det_thresh=min(_DETECT_FLOOR, self.min_det_score), det_size=DET_SIZE)
        except AssertionError as exc:
            raise ModelError(f"insightface found no face detector among the .onnx files in {folder}.") from exc
        except Exception as exc:  # onnxruntime: corrupt or unsupported file
            raise ModelError(f"insightface could not load the models in {folder}: {exc}") from exc
        if "recognition" not in app.models:
            raise ModelError(f"insightface found no ArcFace recogniser among the .onnx files in {folder}.")
        self._recognizer = Recognizer(app.models["recognition"])
        self._detector = MtcnnDetector() if self.demo else InsightFaceDetector(app.det_model)
        self._app = app

    def unload(self) -> None:
        with self._lock:
            self._app = self._detector = self._recognizer = None

    @property
    def detector(self) -> FaceDetector:
        with self._lock:
            self._load()
            return self._detector  # type: ignore[return-value]

    @property
    def recognizer(self) -> Recognizer:
        with self._lock:
            self._load()
            return self._recognizer  # type: ignore[return-value]

    # -- analysis ---------------------------------------------------------
    def detect(self, rgb: np.ndarray, source: str = "image") -> list[DetectedFace]:
        """All detections passing the score gate, in face-number order (largest
        first, `rank_faces`; no embeddings)."""
        rgb = _check_rgb(rgb, source)
        with self._lock:
            self._load()
            faces = self._detector.detect(rgb)  # type: ignore[union-attr]
        return rank_faces([f for f in faces if f.det_score >= self.min_det_score])

    def analyze(self, rgb: np.ndarray, source: str, face_index: int | None = None) -> Face:
        """Face number `face_index` of `rgb` (1, the default, is the largest by
        (x2-x1)*(y2-y1); see `rank_faces`), gated and embedded.

        Raises `NoFaceFound` naming `source` when there is no face, `BadInput`
        when `face_index` is not one of the faces found, and `FaceQualityError`
        with the measured value when the faces score under `min_det_score` or
        the chosen one is smaller than `min_face_px`."""
        rgb = _check_rgb(rgb, source)
        with self._lock:
            self._load()
            faces = self._detector.detect(rgb)  # type: ignore[union-attr]
        if not faces:
            raise NoFaceFound(
                f"no face found in {source}; use a photo where the face is clearly visible and facing the camera."
            )
        good = [f for f in faces if f.det_score >= self.min_det_score]
        if not good:
            best = max(faces, key=lambda f: f.det_score)
            raise FaceQualityError(
                f"the face in {source} was detected with score {best.det_score:.2f}, below the minimum "
                f"{self.min_det_score:.2f}; use a sharper, better-lit photo."
            )
        good = rank_faces(good)
        k = 1 if face_index is None else int(face_index)
        chosen = _pick(good, k, source)
        if chosen.size < self.min_face_px:
            raise FaceQualityError(
                f"the face in {source} is {chosen.width:.0f}x{chosen.height:.0f} px, smaller than the minimum "
                f"{self.min_face_px} px; use a photo where the face is larger."
            )
        return self._complete(rgb, chosen, source, n_faces=len(good), face_index=k)

    def detect_all(self, rgb: np.ndarray, source: str = "image") -> list[Face]:
        """Every face passing the score gate, in face-number order, each embedded
        (for group checks; no size gate, `Face.size` tells the caller)."""
        dets = self.detect(rgb, source)
        return [self._complete(rgb, d, source, n_faces=len(dets), face_index=i)
                for i, d in enumerate(dets, start=1)]

    def embed_detection(self, rgb: np.ndarray, det: DetectedFace | Face, source: str, n_faces: int = 1,
                        face_index: int = 1) -> Face:
        """This pack's `Face` for a face another analyzer already found (same
        box and keypoints), so several recognisers embed the very same face."""
        rgb = _check_rgb(rgb, source)
        if isinstance(det, Face):
            det = DetectedFace(bbox=det.bbox, kps=det.kps, det_score=det.det_score)
        return self._complete(rgb, det, source, n_faces=n_faces, face_index=face_index)

    def _complete(self, rgb: np.ndarray, det: DetectedFace, source: str, n_faces: int,
                  face_index: int = 1) -> Face:
        with self._lock:
            self._load()
            emb, crop112 = self._recognizer.embed(rgb, det.kps)  # type: ignore[union-attr]
        norm = float(np.linalg.norm(emb))
        normed = emb / norm if norm > 0 else emb.copy()
        return Face(
            bbox=det.bbox.copy(),
            kps=det.kps.copy(),
            det_score=det.det_score,
            embedding=emb.astype(np.float32),
            normed_embedding=normed.astype(np.float32),
            aligned=norm_crop(rgb, det.kps, CLIP_CROP),
            aligned_112=crop112,
            source=source,
            image_size=(int(rgb.shape[1]), int(rgb.shape[0])),
            pack=self.pack,
            n_faces=n_faces,
            face_index=face_index,
        )
