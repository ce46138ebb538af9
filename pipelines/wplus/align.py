"""FFHQ-style face alignment from insightface's 5 keypoints.

e4e was trained on FFHQ crops, which are defined by an oriented square built
from the eye centres and the mouth corners (dlib's 68 points). insightface gives
5 points: the eye centres (kps[0], kps[1]) and the mouth corners (kps[3],
kps[4]), which is enough to build the same square (the eye centres are a close
approximation of dlib's eye-contour means).

The square's horizontal extent in the source photo is the face size the W+
pipeline gates on: faces under 160 px were dropped when the adapter was trained.

Deviations from csxmli2016/w-plus-adapter `script/utils.py` `align_face`, and why:
- 5 insightface points instead of dlib's 68: the app detects faces with
  insightface everywhere; dlib would be a second detector stack (and a C++
  build). The eye centres stand in for dlib's eye-contour means.
- the square is warped with one affine map (cv2) instead of PIL's QUAD
  transform to 4096² followed by an antialiased resize; the same square.
- padding: that copy sets `enable_padding = False`, so PIL fills the area
  outside the photo with black, while FFHQ itself (and e4e's copy of the
  script, which is what e4e saw in training) reflects, blurs and fades it
  (`ffhq_pad`). We pad the FFHQ way: for a face near the border this is
  what e4e was trained on; the area beyond the photo carries no face, so
  the parser will mostly label it background and whitening removes it.
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


def ffhq_pad(img: np.ndarray, quad: np.ndarray, qsize: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The FFHQ crop-and-pad step (NVlabs/ffhq-dataset `download_ffhq.py`
    `recreate_aligned_images`, copied into omertov/encoder4editing
    `utils/alignment.py`): crop the quad's box plus a 10 % border, then, when the
    quad reaches outside the photo, pad by at least 30 % of the quad, reflected,
    blurred towards the edge (sigma 2 % of the quad) and faded to the median
    colour. Returns (image uint8, quad in its pixels, offset added to source
    pixels)."""
    from scipy.ndimage import gaussian_filter

    h, w = img.shape[:2]
    border = max(int(np.rint(qsize * 0.1)), 3)
    lo = np.floor(quad.min(axis=0)).astype(int)
    hi = np.ceil(quad.max(axis=0)).astype(int)
    x0, y0 = max(lo[0] - border, 0), max(lo[1] - border, 0)
    x1, y1 = min(hi[0] + border, w), min(hi[1] + border, h)
    offset = np.zeros(2)
    if x1 - x0 < w or y1 - y0 < h:
        img = img[y0:y1, x0:x1]
        quad = quad - (x0, y0)
        offset -= (x0, y0)
    h, w = img.shape[:2]
    lo = np.floor(quad.min(axis=0)).astype(int)
    hi = np.ceil(quad.max(axis=0)).astype(int)
    pad = np.array([max(-lo[0] + border, 0), max(-lo[1] + border, 0),
                    max(hi[0] - w + border, 0), max(hi[1] - h + border, 0)])
    if pad.max() > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        big = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
        hh, ww, _ = big.shape
        y, x, _ = np.ogrid[:hh, :ww, :1]
        mask = np.maximum(1.0 - np.minimum(np.float32(x) / pad[0], np.float32(ww - 1 - x) / pad[2]),
                          1.0 - np.minimum(np.float32(y) / pad[1], np.float32(hh - 1 - y) / pad[3]))
        blur = qsize * 0.02
        big += (gaussian_filter(big, [blur, blur, 0]) - big) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        big += (np.median(big, axis=(0, 1)) - big) * np.clip(mask, 0.0, 1.0)
        img = np.uint8(np.clip(np.rint(big), 0, 255))
        quad = quad + pad[:2]
        offset += pad[:2]
    return np.ascontiguousarray(img), quad, offset


def align_face(image, kps, size: int = OUTPUT_SIZE, min_face_px: float = MIN_FACE_PX) -> AlignedFace:
    """Warp the FFHQ square around the face in `image` (RGB uint8 (H, W, 3)) to a
    `size`² crop. Outside the photo the FFHQ padding applies (`ffhq_pad`:
    reflected, blurred and faded to the median colour), never a sharp mirror
    copy of the face."""
    import cv2

    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise BadInput(f"photo array has shape {img.shape} and dtype {img.dtype}; expected RGB uint8 (H, W, 3).")
    quad, side = ffhq_quad(kps)
    face_px = float(quad[:, 0].max() - quad[:, 0].min())
    # a bilinear warp aliases when it shrinks more than 2:1, so a large face is
    # first reduced with an area filter
    h, w = img.shape[:2]
    src, f = img, np.array([1.0, 1.0])
    if side > 2 * size:
        s = 2 * size / side
        src = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        f = np.array([src.shape[1] / w, src.shape[0] / h])
        quad = quad * f
    work, wquad, offset = ffhq_pad(src, quad, side * float(f.mean()))
    # quad corners are pixel-index coordinates; the crop's outer corners lie half a
    # pixel outside its first and last pixel centres
    dst = np.array([[0, 0], [0, size], [size, size]], dtype=np.float64) - 0.5
    m = cv2.getAffineTransform(wquad[:3].astype(np.float32), dst.astype(np.float32))
    crop = cv2.warpAffine(work, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    # express the matrix in source-photo pixels: work = source * f + offset
    to_work = np.array([[f[0], 0, offset[0]], [0, f[1], offset[1]], [0, 0, 1.0]])
    m = (np.vstack([m, [0, 0, 1]]) @ to_work)[:2]
    return AlignedFace(image=crop, face_px=face_px, too_small=face_px < min_face_px, matrix=m)


def ensure_face_size(aligned: AlignedFace, source: str, min_face_px: float = MIN_FACE_PX) -> AlignedFace:
    """Raise `FaceQualityError` naming `source` when the face is below the minimum."""
    if aligned.face_px < min_face_px:
        raise FaceQualityError(
            f"{source}: the face is {aligned.face_px:.0f} px wide; the W+ encoder needs at least "
            f"{min_face_px:.0f} px, so use a closer or larger photo."
        )
    return aligned
