"""Faces: detection (SCRFD or MTCNN behind `FaceDetector`), ArcFace embeddings,
per-photo analysis with quality gates and numbered faces (`FaceAnalyzer`: face 1
is the largest, see `analysis.rank_faces`), several photos combined
into one `Identity`, and identity cards (safetensors) to reuse it.

Importing this package loads no model; insightface, onnxruntime and MTCNN are
imported on first use.
"""

from .analysis import Face, FaceAnalyzer, box_crop, check_pack_folder, expected_files, rank_faces
from .detectors import DetectedFace, FaceDetector, InsightFaceDetector, MtcnnDetector, Recognizer
from .person import (
    FaceChoice,
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
    "FaceChoice",
    "FaceDetector",
    "Identity",
    "IdentityReport",
    "InsightFaceDetector",
    "MtcnnDetector",
    "PhotoOutcome",
    "Recognizer",
    "box_crop",
    "build_identity",
    "check_pack_folder",
    "embeddings_hash",
    "expected_files",
    "find_outliers",
    "load_card",
    "rank_faces",
    "save_card",
]
