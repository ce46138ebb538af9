"""FFHQ-style face alignment from insightface's 5 keypoints.

e4e was trained on FFHQ crops, which are defined by an oriented square built
from the eye centres and the mouth corners (dlib's 68 points). insightface gives
5 points: the eye centres (kps[0], kps[1]) and the mouth corners (kps[3],
kps[4]), which is enough to build the same square (the eye centres are a close
approximation of dlib's eye-contour means).

The square's horizontal extent in the source photo is the face size the W+
pipeline gates on: faces under 160 px were dropped when the adapter was trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BadInput, FaceQualityError

OUTPUT_SIZE = 256
MIN_FACE_PX = 160


@dataclass(frozen=True)
class AlignedFace:
    image: np.ndarray  # (size, size, 3) RGB uint8
    face_px: float  # horizontal extent of the crop square in the source photo
    too_small: bool  # face_px < the minimum (flagged, not refused: callers decide)
    matrix: np.ndarray  # (2, 3) affine source -> crop pixels


def ffhq_quad(kps) -> tuple[np.ndarray, float]:
    """The FFHQ crop square for 5-point kps: (corners (4, 2) in the order
    top-left, bottom-left, bottom-right, top-right; side length in pixels)."""
    kps = np.asarray(kps, dtype=np.float64)
    if kps.shape != (5, 2) or not np.all(np.isfinite(kps)):
        raise BadInput(f"face keypoints have shape {kps.shape}; expected 5 finite (x, y) points.")
    eye_left, eye_right = kps[0], kps[1]
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    mouth_avg = (kps[3] + kps[4]) / 2
    eye_to_mouth = mouth_avg - eye_avg
    # x axis: the eye line, tilted to be perpendicular to the eye->mouth line
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    norm = np.hypot(*x)
    if norm < 1e-6:
        raise BadInput("face keypoints are degenerate (eyes and mouth coincide).")
    x = x / norm * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.array([-x[1], x[0]])
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad, float(np.hypot(*x) * 2)


def align_face(image, kps, size: int = OUTPUT_SIZE, min_face_px: float = MIN_FACE_PX) -> AlignedFace:
    """Warp the FFHQ square around the face in `image` (RGB uint8 (H, W, 3)) to a
    `size`² crop. Borders outside the photo are mirrored (as FFHQ pads)."""
    import cv2

    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise BadInput(f"photo array has shape {img.shape} and dtype {img.dtype}; expected RGB uint8 (H, W, 3).")
    quad, side = ffhq_quad(kps)
    face_px = float(quad[:, 0].max() - quad[:, 0].min())
    # a bilinear warp aliases when it shrinks more than 2:1, so a large face is
    # first reduced with an area filter
    h, w = img.shape[:2]
    src = img
    if side > 2 * size:
        f = 2 * size / side
        src = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        quad = quad * np.array([src.shape[1] / w, src.shape[0] / h])
    # quad corners are pixel-index coordinates; the crop's outer corners lie half a
    # pixel outside its first and last pixel centres
    dst = np.array([[0, 0], [0, size], [size, size]], dtype=np.float64) - 0.5
    m = cv2.getAffineTransform(quad[:3].astype(np.float32), dst.astype(np.float32))
    crop = cv2.warpAffine(src, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if src is not img:  # express the matrix in source-photo pixels
        scale = np.diag([src.shape[1] / w, src.shape[0] / h, 1.0])
        m = (np.vstack([m, [0, 0, 1]]) @ scale)[:2]
    return AlignedFace(image=crop, face_px=face_px, too_small=face_px < min_face_px, matrix=m)


def ensure_face_size(aligned: AlignedFace, source: str, min_face_px: float = MIN_FACE_PX) -> AlignedFace:
    """Raise `FaceQualityError` naming `source` when the face is below the minimum."""
    if aligned.face_px < min_face_px:
        raise FaceQualityError(
            f"{source}: the face is {aligned.face_px:.0f} px wide; the W+ encoder needs at least "
            f"{min_face_px:.0f} px, so use a closer or larger photo."
        )
    return aligned
