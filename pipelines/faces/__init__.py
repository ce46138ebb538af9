"""Faces: detection (SCRFD or MTCNN behind `FaceDetector`), ArcFace embeddings,
per-photo analysis with quality gates (`FaceAnalyzer`), several photos combined
into one `Identity`, and identity cards (safetensors) to reuse it.

Importing this package loads no model; insightface, onnxruntime and MTCNN are
imported on first use.
"""

from .analysis import Face, FaceAnalyzer, check_pack_folder, expected_files
from .detectors import DetectedFace, FaceDetector, InsightFaceDetector, MtcnnDetector, Recognizer
from .identity import (
    Identity,
    IdentityReport,
    PhotoOutcome,
    build_identity,
    embeddings_hash,
    find_outliers,
    load_card,
    save_card,
)

__all__ = [
    "DetectedFace",
    "Face",
    "FaceAnalyzer",
    "FaceDetector",
    "Identity",
    "IdentityReport",
    "InsightFaceDetector",
    "MtcnnDetector",
    "PhotoOutcome",
    "Recognizer",
    "build_identity",
    "check_pack_folder",
    "embeddings_hash",
    "expected_files",
    "find_outliers",
    "load_card",
    "save_card",
]
