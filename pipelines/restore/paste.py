"""Align every face, restore it at 512x512, paste it back (numpy + OpenCV only).

For each face: a similarity transform (rotation, uniform scale, translation) maps
its 5 keypoints onto the FFHQ 5-point template that GFPGAN and CodeFormer were
trained on; the image is warped into that 512x512 frame, the restorer runs, and
the result goes back through the inverse transform, blended through a feathered
face-shaped mask and mixed with the original by `strength`.

The mask is an ellipse over the face in template space (forehead to chin, cheek to
cheek), feathered inwards, not the whole 512 crop: the crop also holds hair,
neck and background, which a restorer re-synthesises but which need no
restoring, so the invariant kept is "only the face region changes". Pixels where
the mask is 0 are returned bit-for-bit unchanged.

Resampling: shrinking goes through an INTER_AREA resize first (warpAffine alone
aliases when it shrinks), enlarging uses bicubic interpolation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..errors import BadInput
from .base import FACE_SIZE, FaceRestorer, check_fidelity

# the FFHQ 5-point template at 512x512 (left eye, right eye, nose tip, left and
# right mouth corners; "left" as seen in the image), as used by GFPGAN/facexlib
FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.19360],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float64,
)

# the face ellipse in template pixels: centre, semi-axes, and feather width
# (the mask fades from 1 to 0 over the outer FEATHER pixels)
MASK_CENTER = (256.0, 276.0)
MASK_AXES = (150.0, 192.0)
MASK_FEATHER = 36


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares similarity (no reflection) taking points `src` to `dst`,
    as a 2x3 matrix. Points are treated as complex numbers z: dst ~ a*z + b, where
    a = scale * e^(i*angle); closed form, deterministic (no RANSAC/LMedS)."""
    s = np.asarray(src, np.float64).reshape(-1, 2)
    d = np.asarray(dst, np.float64).reshape(-1, 2)
    zs = s[:, 0] + 1j * s[:, 1]
    zd = d[:, 0] + 1j * d[:, 1]
    zs_c = zs - zs.mean()
    denom = float(np.sum(np.abs(zs_c) ** 2))
    if not np.isfinite(denom) or denom < 1e-9:
        raise ValueError("degenerate keypoints")
    a = np.sum(np.conj(zs_c) * (zd - zd.mean())) / denom
    b = zd.mean() - a * zs.mean()
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]], dtype=np.float64)


def _h(m: np.ndarray) -> np.ndarray:
    return np.vstack([m, [0.0, 0.0, 1.0]])


def _scale_of(m: np.ndarray) -> float:
    return float(np.sqrt(abs(np.linalg.det(m[:, :2]))))


def _transform_points(m: np.ndarray, pts: ArrayLike) -> np.ndarray:
    xy = np.asarray(pts, np.float64).reshape(-1, 2)
    return xy @ m[:, :2].T + m[:, 2]


def _warp(src: np.ndarray, m: np.ndarray, out_w: int, out_h: int, *, mask: bool = False, border: int | None = None):
    """`cv2.warpAffine(src, m)` into (out_h, out_w). Where `m` shrinks, the part of
    `src` that lands in the output is first resized with INTER_AREA to the target
    scale, then warped at about 1:1, so the result is not aliased."""
    import cv2

    interp = cv2.INTER_LINEAR if mask else cv2.INTER_CUBIC
    if border is None:
        border = cv2.BORDER_CONSTANT if mask else cv2.BORDER_REFLECT_101
    scale = _scale_of(m)
    if scale < 0.95:
        inv = cv2.invertAffineTransform(m)
        corners = _transform_points(inv, [[0, 0], [out_w, 0], [0, out_h], [out_w, out_h]])
        h, w = src.shape[:2]
        x0 = int(max(0, np.floor(corners[:, 0].min()) - 2))
        y0 = int(max(0, np.floor(corners[:, 1].min()) - 2))
        x1 = int(min(w, np.ceil(corners[:, 0].max()) + 3))
        y1 = int(min(h, np.ceil(corners[:, 1].max()) + 3))
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            crop = src[y0:y1, x0:x1]
            nw = max(1, round((x1 - x0) * scale))
            nh = max(1, round((y1 - y0) * scale))
            small = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_AREA)
            rx, ry = nw / (x1 - x0), nh / (y1 - y0)
            # pixel centres: small p' <-> src p = (p' + 0.5) / r - 0.5 + origin
            to_src = np.array([[1 / rx, 0, 0.5 / rx - 0.5 + x0], [0, 1 / ry, 0.5 / ry - 0.5 + y0]])
            src, m = small, (_h(m) @ _h(to_src))[:2]
    return cv2.warpAffine(src, m, (out_w, out_h), flags=interp, borderMode=border, borderValue=0)


@lru_cache(maxsize=1)
def face_mask_512() -> np.ndarray:
    """The feathered face mask in template space, float32 (512, 512) in [0, 1].
    Its support lies inside the ellipse MASK_CENTER/MASK_AXES."""
    import cv2

    f = MASK_FEATHER
    hard = np.zeros((FACE_SIZE, FACE_SIZE), np.float32)
    # the hard core is the ellipse shrunk by the feather width; blurring it by a
    # kernel of radius f spreads the edge out to at most the full ellipse
    cv2.ellipse(
        hard,
        (round(MASK_CENTER[0]), round(MASK_CENTER[1])),
        (round(MASK_AXES[0] - f), round(MASK_AXES[1] - f)),
        0,
        0,
        360,
        1.0,
        thickness=-1,
        lineType=cv2.LINE_AA,
    )
    soft = cv2.GaussianBlur(hard, (2 * f + 1, 2 * f + 1), sigmaX=f / 2.5, borderType=cv2.BORDER_CONSTANT)
    soft[soft < 1e-3] = 0.0
    soft.setflags(write=False)
    return soft


def _face_geometry(face: Any) -> tuple[np.ndarray | None, np.ndarray]:
    """(kps, bbox) from a `(kps, bbox)` pair or an object with `.kps` and `.bbox`
    (e.g. `pipelines.faces` detections)."""
    if hasattr(face, "kps") and hasattr(face, "bbox"):
        kps, bbox = face.kps, face.bbox
    else:
        kps, bbox = face
    bbox = np.asarray(bbox, np.float64).reshape(4)
    return (None if kps is None else np.asarray(kps, np.float64).reshape(5, 2)), bbox


def _check_args(strength: float, min_size: int) -> tuple[float, int]:
    try:
        strength = float(strength)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"restore strength: {strength!r} is not a number; use a value from 0 to 1.") from exc
    if not 0.0 <= strength <= 1.0:
        raise BadInput(f"restore strength: {strength:g} is out of range; use a value from 0 to 1.")
    if int(min_size) < 0:
        raise BadInput(f"minimum face size: {min_size} must be 0 or more pixels.")
    return strength, int(min_size)


def _paste_region(m_back: np.ndarray, width: int, height: int) -> tuple[int, int, int, int] | None:
    """Image rectangle (x0, y0, x1, y1) that can receive mask > 0, or None."""
    cx, cy = MASK_CENTER
    ax, ay = MASK_AXES
    box = [[cx - ax, cy - ay], [cx + ax, cy - ay], [cx - ax, cy + ay], [cx + ax, cy + ay]]
    pts = _transform_points(m_back, box)
    x0 = max(0, int(np.floor(pts[:, 0].min())) - 2)
    y0 = max(0, int(np.floor(pts[:, 1].min())) - 2)
    x1 = min(width, int(np.ceil(pts[:, 0].max())) + 3)
    y1 = min(height, int(np.ceil(pts[:, 1].max())) + 3)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def restore_faces(
    image,
    faces: Sequence[Any] | Iterable[Any],
    restorer: FaceRestorer,
    strength: float,
    min_size: int = 48,
    fidelity: float | None = None,
):
    """Restore every face of `image` (PIL) and return `(new_image, report)`.

    `faces`: (kps (5, 2), bbox (x1, y1, x2, y2)) pairs in image pixels, or face
    objects with `.kps`/`.bbox`. `strength` 0..1 mixes restored and original
    (0 = unchanged); faces whose bbox's shorter side is below `min_size` pixels are
    skipped. `fidelity` 0..1 goes to restorers that use it (CodeFormer's w).
    `report` has one line per face, numbered from 1 in the given order. An image
    with alpha comes back as RGB."""
    import cv2
    from PIL import Image

    strength, min_size = _check_args(strength, min_size)
    fidelity = check_fidelity(fidelity, "restore fidelity")
    faces = list(faces)
    src = np.asarray(image.convert("RGB"), dtype=np.uint8)
    height, width = src.shape[:2]
    if strength == 0.0:
        return Image.fromarray(src.copy()), [
            f"face {i} left as it is: restore strength is 0" for i in range(1, len(faces) + 1)
        ]

    out = src.astype(np.float32)
    report: list[str] = []
    mask_512 = face_mask_512()
    for i, face in enumerate(faces, start=1):
        kps, bbox = _face_geometry(face)
        size = float(min(bbox[2] - bbox[0], bbox[3] - bbox[1]))
        if size < min_size:
            report.append(f"face {i} skipped: {max(0, int(size))} px < {min_size} px minimum")
            continue
        if kps is None or not np.all(np.isfinite(kps)):
            report.append(f"face {i} skipped: no usable keypoints to align it")
            continue
        try:
            m = similarity_transform(kps, FFHQ_TEMPLATE_512)
        except ValueError:
            report.append(f"face {i} skipped: its keypoints coincide, so it cannot be aligned")
            continue
        m_back = cv2.invertAffineTransform(m)
        region = _paste_region(m_back, width, height)
        if region is None:
            report.append(f"face {i} skipped: it lies outside the image")
            continue

        aligned = _warp(src, m, FACE_SIZE, FACE_SIZE)
        restored = np.asarray(restorer.restore_face(aligned, fidelity))
        if restored.shape != aligned.shape:
            raise ValueError(f"restorer {restorer.name!r} returned {restored.shape}, expected {aligned.shape}")

        x0, y0, x1, y1 = region
        m_roi = m_back.copy()
        m_roi[:, 2] -= (x0, y0)
        back = _warp(np.clip(restored, 0, 255).astype(np.uint8), m_roi, x1 - x0, y1 - y0, border=cv2.BORDER_REPLICATE)
        alpha = _warp(mask_512, m_roi, x1 - x0, y1 - y0, mask=True)
        alpha = np.clip(alpha, 0.0, 1.0)[..., None] * strength
        roi = out[y0:y1, x0:x1]
        # where alpha is 0 this adds exactly 0: untouched pixels stay bit-identical
        roi += alpha * (back.astype(np.float32) - roi)
        report.append(f"face {i} restored with {restorer.name} ({int(size)} px, strength {strength:g})")

    result = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return Image.fromarray(result), report

