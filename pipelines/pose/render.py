"""Pose templates -> ControlNet conditioning images, drawn by our code.

`render_openpose` draws the body-18 skeleton in the colour scheme the OpenPose
ControlNets were trained on (controlnet-aux's drawing: 17 limbs as filled
ellipses at 60 % of their colour, then 18 joint discs at full colour, on black).
controlnet-aux draws at a 512 px detection size and the result is scaled to the
output, so stroke width and disc radius here scale with the canvas' short side
/ 512 to look the same at every SDXL bucket.

`render_face_keypoints` draws InstantID's IdentityNet input exactly as the
reference `draw_kps` (InstantX/InstantID, `pipeline_stable_diffusion_xl_instantid.py`)
does, with the same OpenCV calls: on a black canvas, the four outer face points
joined to the nose by `cv2.ellipse2Poly` + `cv2.fillConvexPoly` limbs of
half-width 4 (centre and angle truncated to int), the whole image times 0.6,
then a filled radius-10 `cv2.circle` at each truncated point. The sizes are in
pixels and do not scale with the canvas: IdentityNet was trained on this
drawing, so an SDXL bucket gets exactly the reference pixels. (On demo mode's
tiny canvases the discs therefore look large; that is the reference drawing,
kept on purpose.)

Everything is deterministic: no anti-aliasing, integer geometry, same input ->
identical pixels (and identical PNG bytes from the same Pillow/zlib).

`python -m pipelines.pose.render --previews` writes assets/poses/previews/*.png.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import BadInput
from ..paths import atomic_path
from .templates import ASSETS_POSES, PoseTemplate, list_templates

PREVIEWS_DIR = ASSETS_POSES / "previews"

# joint colours, COCO-18 order (nose, neck, r_shoulder, ...)
OPENPOSE_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip
# limbs as (from, to) indices into COCO-18; limb i is drawn in OPENPOSE_COLORS[i] * 0.6
OPENPOSE_LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7),  # shoulders, arms
    (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),  # torso sides, legs
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),  # neck-nose, eyes, ears
)  # fmt: skip
LIMB_DIM = 0.6
OPENPOSE_REFERENCE_SIZE = 512  # controlnet-aux's detection size: stroke 4, disc 4
OPENPOSE_STROKE = 4
OPENPOSE_DISC = 4

# InstantID's face-keypoint drawing (insightface order: eyes, nose, mouth corners);
# the published `draw_kps` parameters, in pixels at any canvas size
FACE_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255),
)  # fmt: skip
FACE_LIMBS: tuple[tuple[int, int], ...] = ((0, 2), (1, 2), (3, 2), (4, 2))  # colour of the first point
FACE_STROKE = 4  # the limb ellipse's minor semi-axis ("stickwidth")
FACE_DISC = 10  # the keypoint circle's radius
FACE_LIMB_DIM = 0.6  # the limbs (and only they: circles come after) are dimmed

MAX_SIDE = 8192


# ---- geometry ----------------------------------------------------------------------------
def _check_size(width: int, height: int) -> None:
    for field, v in (("width", width), ("height", height)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 8 <= v <= MAX_SIDE:
            raise BadInput(f"pose image {field} must be an integer from 8 to {MAX_SIDE} (got {v!r}).")


def fit_box(aspect: float, width: int, height: int) -> tuple[float, float, float, float]:
    """The largest box of `aspect` (w/h) centred in width x height:
    (left, top, box_width, box_height). The figure keeps its proportions."""
    if width / height > aspect:
        bw, bh = height * aspect, float(height)
    else:
        bw, bh = float(width), width / aspect
    return (width - bw) / 2.0, (height - bh) / 2.0, bw, bh


def _to_pixels(points, box) -> list[tuple[float, float] | None]:
    left, top, bw, bh = box
    return [None if p is None else (left + p[0] * bw, top + p[1] * bh) for p in points]


def body_keypoints_pixels(template: PoseTemplate, width: int, height: int) -> list[tuple[float, float] | None]:
    """The 18 body points in pixels of a width x height canvas (None where missing)."""
    _check_size(width, height)
    return _to_pixels(template.body_points(), fit_box(template.aspect, width, height))


def face_keypoints_pixels(template: PoseTemplate, width: int, height: int) -> np.ndarray | None:
    """The template's 5 face points in pixels of a width x height canvas, shape
    (5, 2), in insightface order; None if the template has no face."""
    _check_size(width, height)
    pts = template.face_points()
    if pts is None:
        return None
    return np.array(_to_pixels(pts, fit_box(template.aspect, width, height)), dtype=np.float64)


def _ellipse_polygon(p1, p2, half_width: float, step_deg: int = 5) -> list[tuple[int, int]]:
    """A filled stroke from p1 to p2: an ellipse with semi-axes (length/2,
    half_width) along the segment, as an integer polygon."""
    (x1, y1), (x2, y2) = p1, p2
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    a = max(math.hypot(x2 - x1, y2 - y1) / 2.0, 0.5)
    b = max(half_width, 0.5)
    phi = math.atan2(y2 - y1, x2 - x1)
    c, s = math.cos(phi), math.sin(phi)
    pts = []
    for deg in range(0, 360, step_deg):
        t = math.radians(deg)
        ex, ey = a * math.cos(t), b * math.sin(t)
        pts.append((int(round(cx + ex * c - ey * s)), int(round(cy + ex * s + ey * c))))
    return pts


def _disc(draw: ImageDraw.ImageDraw, p, radius: float, color) -> None:
    x, y = int(round(p[0])), int(round(p[1]))
    r = max(int(round(radius)), 1)
    draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(color))


def _dim(color, factor: float = LIMB_DIM) -> tuple[int, int, int]:
    return tuple(int(c * factor) for c in color)  # type: ignore[return-value]


# ---- drawing -----------------------------------------------------------------------------
def draw_openpose(
    canvas: Image.Image,
    points: Sequence[tuple[float, float] | None],
    *,
    scale: float | None = None,
) -> Image.Image:
    """Draw body-18 pixel `points` onto an RGB canvas (in place) and return it.
    `scale` multiplies the reference stroke/disc sizes (default: short side / 512)."""
    if len(points) != len(OPENPOSE_COLORS):
        raise BadInput(f"an OpenPose body has {len(OPENPOSE_COLORS)} keypoints, got {len(points)}.")
    k = scale if scale is not None else min(canvas.size) / OPENPOSE_REFERENCE_SIZE
    draw = ImageDraw.Draw(canvas)
    for (i, j), color in zip(OPENPOSE_LIMBS, OPENPOSE_COLORS):
        if points[i] is None or points[j] is None:
            continue
        draw.polygon(_ellipse_polygon(points[i], points[j], OPENPOSE_STROKE * k), fill=_dim(color))
    for p, color in zip(points, OPENPOSE_COLORS):
        if p is not None:
            _disc(draw, p, OPENPOSE_DISC * k, color)
    return canvas


def render_openpose(template: PoseTemplate, width: int, height: int, *, face_dots: bool = False) -> Image.Image:
    """The OpenPose ControlNet image of `template` at width x height (RGB, black
    background). The template's canvas is fitted, centred, into the target so
    the figure keeps its proportions. `face_dots` adds the 5 face points as
    small white dots (the way OpenPose draws face landmarks)."""
    _check_size(width, height)
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw_openpose(canvas, body_keypoints_pixels(template, width, height))
    if face_dots:
        face = face_keypoints_pixels(template, width, height)
        if face is not None:
            draw = ImageDraw.Draw(canvas)
            k = min(width, height) / OPENPOSE_REFERENCE_SIZE
            for p in face:
                _disc(draw, p, 3 * k, (255, 255, 255))
    return canvas


def _check_kps5(kps5) -> np.ndarray:
    """5 finite (x, y) points. float32 stays float32 (insightface's keypoints are
    float32, and the reference's means and lengths are then computed in float32,
    which decides the int truncations); anything else becomes float64."""
    try:
        arr = np.asarray(kps5)
        if arr.dtype != np.float32:
            arr = arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise BadInput("face keypoints must be 5 (x, y) pixel pairs.") from exc
    if arr.shape != (5, 2):
        raise BadInput(f"face keypoints must be 5 (x, y) pixel pairs, got shape {arr.shape}.")
    if not np.isfinite(arr).all():
        raise BadInput("face keypoints contain NaN or infinite values.")
    return arr


def render_face_keypoints(kps5, width: int, height: int) -> Image.Image:
    """InstantID IdentityNet conditioning: the 5 face points (pixel coordinates
    in the width x height canvas, insightface order) drawn on black, pixel for
    pixel as the reference `draw_kps` draws them (see the module docstring)."""
    import cv2

    _check_size(width, height)
    kps = _check_kps5(kps5)
    canvas = np.zeros((height, width, 3))  # float64, as the reference fills it
    for i, j in FACE_LIMBS:
        xs, ys = kps[[i, j], 0], kps[[i, j], 1]
        length = ((xs[0] - xs[1]) ** 2 + (ys[0] - ys[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
        centre = (int(np.mean(xs)), int(np.mean(ys)))
        polygon = cv2.ellipse2Poly(centre, (int(length / 2), FACE_STROKE), int(angle), 0, 360, 1)
        # opencv's stubs type ellipse2Poly's result as nested sequences; it is an int32 array
        cv2.fillConvexPoly(canvas, polygon, FACE_COLORS[i])  # type: ignore[call-overload]
    out = np.ascontiguousarray((canvas * FACE_LIMB_DIM).astype(np.uint8))
    for (x, y), color in zip(kps, FACE_COLORS):
        cv2.circle(out, (int(x), int(y)), FACE_DISC, color, -1)
    return Image.fromarray(out, "RGB")


# ---- previews ----------------------------------------------------------------------------
def preview_size(aspect: float, size: int) -> tuple[int, int]:
    if aspect >= 1:
        return size, max(8, int(round(size / aspect)))
    return max(8, int(round(size * aspect))), size


def preview(template: PoseTemplate, size: int = 256) -> Image.Image:
    """A small picture of the template (long side `size`, the template's
    aspect): the OpenPose skeleton plus white face dots, drawn at twice the size
    and downsampled so thin previews stay legible."""
    if not isinstance(size, int) or not 32 <= size <= 2048:
        raise BadInput(f"preview size must be an integer from 32 to 2048 (got {size!r}).")
    w, h = preview_size(template.aspect, size)
    big = render_openpose(template, 2 * w, 2 * h, face_dots=True)
    return big.resize((w, h), Image.Resampling.LANCZOS)


def write_previews(folder: Path | str = PREVIEWS_DIR, size: int = 256, templates=None) -> list[Path]:
    """Write `<name>.png` for every template (default: the shipped ones) into
    `folder`, atomically; returns the paths written."""
    folder = Path(folder)
    written = []
    for t in templates if templates is not None else list_templates():
        dest = folder / f"{t.name}.png"
        with atomic_path(dest) as tmp:
            preview(t, size).save(tmp, format="PNG")
        written.append(dest)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.pose.render", description=__doc__.split("\n")[0])
    ap.add_argument("--previews", action="store_true", help="write a preview PNG for every shipped template")
    ap.add_argument("--out", type=Path, default=PREVIEWS_DIR, help="folder for the previews")
    ap.add_argument("--size", type=int, default=256, help="long side of each preview in pixels")
    args = ap.parse_args(argv)
    if not args.previews:
        ap.print_help()
        return 2
    for p in write_previews(args.out, args.size):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
