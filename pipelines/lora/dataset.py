"""Training set for a personal LoRA: a few photos in, face-centred crops out.

Rules (FaceChain's, plus the app's own photo checks):
- every photo is decoded through `load_photo_array` (format allow-list, pixel
  cap, EXIF orientation, 8-bit RGB);
- a photo is used only with exactly one person in it: no face, a group photo
  (another face at least `group_ratio` the size of the main one), a face under
  `min_face_px` or a blurred face (variance of the Laplacian of the face,
  measured at 128 px, under `min_sharpness`) is left out and reported with the
  reason and the measured value; exact duplicates are left out too;
- each used photo gives an upright crop (eyes levelled) in two framings,
  close-up (square bucket) and head-and-shoulders (portrait bucket), resized to
  an SDXL training bucket (sized by the run profile: 1/8 of it in demo mode,
  so tiny models stay fast),
  optionally also mirrored;
- every crop is captioned "photo of <trigger> person[, <class word>]".
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadInput
from ..profile import REAL, RunProfile

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
MAX_PHOTOS = 200
RECOMMENDED_MIN_PHOTOS = 3
RECOMMENDED_MAX_PHOTOS = 50
RECOMMENDED_FACE_PX = 100  # FaceChain keeps only faces larger than this
SHARPNESS_SIDE = 128

# framing -> (SDXL bucket (width, height), crop height in face sizes, centre below the face centre in face sizes)
FRAMINGS: dict[str, tuple[tuple[int, int], float, float]] = {
    "close-up": ((1024, 1024), 2.2, 0.15),
    "head-and-shoulders": ((896, 1152), 3.8, 0.75),
}


@dataclass
class DatasetOptions:
    trigger: str = "lkns"
    class_word: str = ""
    min_face_px: int = 64  # the app's minimum face size, as for generation
    min_sharpness: float = 35.0
    group_ratio: float = 0.33
    flip: bool = False
    framings: tuple[str, ...] = ("close-up", "head-and-shoulders")
    profile: RunProfile = REAL  # the settings' run profile (sizes the buckets)

    def __post_init__(self):
        if not self.trigger or any(c in self.trigger for c in ",\n\x00") or len(self.trigger) > 40:
            raise BadInput(f"trigger {self.trigger!r} must be one short word without commas (e.g. lkns).")
        if len(self.class_word) > 60 or any(c in self.class_word for c in "\n\x00"):
            raise BadInput("class word must be a short phrase (at most 60 characters), e.g. 'a woman'.")
        if self.min_face_px < 16:
            raise BadInput(f"min_face_px {self.min_face_px} is below 16 px.")
        unknown = [f for f in self.framings if f not in FRAMINGS]
        if unknown or not self.framings:
            raise BadInput(f"framings {list(self.framings)} must be among {', '.join(FRAMINGS)}.")

    @property
    def caption(self) -> str:
        text = f"photo of {self.trigger} person"
        return f"{text}, {self.class_word.strip()}" if self.class_word.strip() else text

    def bucket(self, framing: str) -> tuple[int, int]:
        w, h = FRAMINGS[framing][0]
        return self.profile.size(w, h)


@dataclass
class PhotoReport:
    file: str
    used: bool
    reason: str | None = None
    face_px: float | None = None
    sharpness: float | None = None
    faces: int = 0


@dataclass
class TrainSample:
    image: np.ndarray  # (H, W, 3) uint8 at the bucket size
    caption: str
    source: str
    framing: str
    flipped: bool
    original_size: tuple[int, int]  # (height, width) of the crop in the photo, for SDXL time ids

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[1]), int(self.image.shape[0])


@dataclass
class TrainingSet:
    samples: list[TrainSample]
    reports: list[PhotoReport]
    options: DatasetOptions
    warnings: list[str] = field(default_factory=list)

    @property
    def used(self) -> list[PhotoReport]:
        return [r for r in self.reports if r.used]

    @property
    def excluded(self) -> list[PhotoReport]:
        return [r for r in self.reports if not r.used]

    @property
    def caption(self) -> str:
        return self.options.caption

    def fingerprint(self) -> str:
        """Hash of exactly what is trained on (pixels, captions, sizes)."""
        h = hashlib.sha256()
        for s in self.samples:
            h.update(f"{s.caption}|{s.framing}|{s.flipped}|{s.original_size}|{s.image.shape}".encode())
            h.update(np.ascontiguousarray(s.image).tobytes())
        return h.hexdigest()


# ------------------------------------------------------------------- photos
def collect_photos(paths: Iterable[str | Path]) -> list[Path]:
    """Expand folders (their image files, sorted, not recursive) and keep files."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in PHOTO_SUFFIXES))
        elif p.is_file():
            out.append(p)
        else:
            raise BadInput(f"photos: {p} does not exist; give photo files or a folder of photos.")
    if not out:
        raise BadInput(f"photos: no image files ({', '.join(PHOTO_SUFFIXES)}) in {', '.join(map(str, paths))}.")
    if len(out) > MAX_PHOTOS:
        raise BadInput(f"photos: {len(out)} files given; at most {MAX_PHOTOS} (3-50 recommended).")
    return out


def face_sharpness(rgb: np.ndarray, bbox: Sequence[float]) -> float:
    """Variance of the Laplacian of the face box, resized to 128 px (so the value
    does not depend on the photo's resolution); low = blurred."""
    import cv2

    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in bbox)
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return 0.0
    gray = cv2.cvtColor(np.ascontiguousarray(rgb[y1:y2, x1:x2]), cv2.COLOR_RGB2GRAY)
    gray = cv2.resize(gray, (SHARPNESS_SIDE, SHARPNESS_SIDE), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def upright_crop(rgb: np.ndarray, face, framing: str, bucket: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """The face-centred crop for `framing`, rotated so the eyes are level,
    resized to `bucket` (width, height). Returns (image, (crop_h, crop_w) in photo px)."""
    import cv2

    _, height_faces, drop = FRAMINGS[framing]
    bw, bh = bucket
    kps = np.asarray(face.kps, np.float32)
    (lx, ly), (rx, ry) = kps[0], kps[1]
    angle = math.degrees(math.atan2(ry - ly, rx - lx))
    x1, y1, x2, y2 = (float(v) for v in face.bbox)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    size = max(x2 - x1, y2 - y1)
    h, w = rgb.shape[:2]
    rot = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    upright = cv2.warpAffine(rgb, rot, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    crop_h = height_faces * size
    crop_w = crop_h * bw / bh
    fit = min(1.0, w / crop_w, h / crop_h)  # shrink to stay inside the photo
    crop_w, crop_h = crop_w * fit, crop_h * fit
    ccx, ccy = cx, cy + drop * size * fit
    left = min(max(ccx - crop_w / 2, 0.0), w - crop_w)
    top = min(max(ccy - crop_h / 2, 0.0), h - crop_h)
    x0, y0 = int(round(left)), int(round(top))
    x1, y1 = min(w, x0 + max(1, int(round(crop_w)))), min(h, y0 + max(1, int(round(crop_h))))
    crop = upright[y0:y1, x0:x1]
    interp = cv2.INTER_AREA if crop.shape[1] > bw else cv2.INTER_CUBIC
    out = cv2.resize(np.ascontiguousarray(crop), (bw, bh), interpolation=interp)
    return np.ascontiguousarray(out), (int(crop.shape[0]), int(crop.shape[1]))


def _digest(path: Path) -> str | None:
    """sha256 of the photo, read as any user-named file is (regular files only,
    size-capped); None when it cannot be read (the decoder then reports why)."""
    from ..imageio import hash_user_file

    try:
        return hash_user_file(path, str(path))
    except BadInput:
        return None


def _judge(analyzer, rgb: np.ndarray, label: str, opts: DatasetOptions) -> tuple[object | None, PhotoReport]:
    faces = analyzer.detect(rgb, label)
    if not faces:
        return None, PhotoReport(label, False, "no face found", faces=0)
    main = faces[0]  # largest by (x2-x1)*(y2-y1)
    rep = PhotoReport(label, False, face_px=round(main.size, 1), faces=len(faces))
    crowd = [f for f in faces[1:] if f.size >= opts.group_ratio * main.size]
    if crowd:
        rep.reason = (f"group photo: {len(crowd) + 1} faces (training needs exactly one person per photo; "
                      "crop it to one face)")
        return None, rep
    if main.size < opts.min_face_px:
        rep.reason = (f"face is {main.width:.0f}x{main.height:.0f} px, smaller than the minimum "
                      f"{opts.min_face_px} px")
        return None, rep
    rep.sharpness = round(face_sharpness(rgb, main.bbox), 1)
    if rep.sharpness < opts.min_sharpness:
        rep.reason = (f"face is blurred: sharpness {rep.sharpness:.1f} (variance of the Laplacian), "
                      f"minimum {opts.min_sharpness:g}")
        return None, rep
    rep.used = True
    return main, rep


def prepare_dataset(
    photos: Iterable[str | Path],
    analyzer,
    options: DatasetOptions | None = None,
    *,
    max_pixels: int = 64_000_000,
    max_side: int = 2048,
) -> TrainingSet:
    """Filter `photos` to usable single-face photos and crop them for training.

    `analyzer` is a `FaceAnalyzer` (its `detect(rgb, source)` lists faces
    largest first). Raises `BadInput` listing every file's reason when no photo
    is usable; warns (in `TrainingSet.warnings`) with fewer than 3."""
    from ..imageio import load_photo_array

    opts = options or DatasetOptions()
    files = collect_photos(photos)
    reports: list[PhotoReport] = []
    samples: list[TrainSample] = []
    warnings: list[str] = []
    seen: dict[str, str] = {}
    for path in files:
        label = str(path)
        digest = _digest(path)
        if digest is not None and digest in seen:
            reports.append(PhotoReport(label, False, f"duplicate of {seen[digest]}"))
            continue
        # a photo the loader or the face detector refuses (not an image, a
        # 1x1 px file, a 30000x10 strip) is left out and reported, like a cat
        try:
            rgb = load_photo_array(path, max_pixels=max_pixels, max_side=max_side)
            face, rep = _judge(analyzer, rgb, label, opts)
        except BadInput as exc:
            reports.append(PhotoReport(label, False, str(exc)))
            continue
        reports.append(rep)
        if face is None:
            continue
        if digest is not None:
            seen[digest] = label
        if rep.face_px is not None and rep.face_px < RECOMMENDED_FACE_PX:
            warnings.append(f"the face in {label} is {rep.face_px:.0f} px; faces over {RECOMMENDED_FACE_PX} px "
                            "give sharper results")
        for framing in opts.framings:
            img, orig = upright_crop(rgb, face, framing, opts.bucket(framing))
            samples.append(TrainSample(img, opts.caption, label, framing, False, orig))
            if opts.flip:
                samples.append(TrainSample(np.ascontiguousarray(img[:, ::-1]), opts.caption, label, framing, True, orig))
    used = [r for r in reports if r.used]
    if not used:
        detail = "; ".join(f"{Path(r.file).name}: {r.reason}" for r in reports)
        raise BadInput(f"photos: none of the {len(reports)} photos is usable for training ({detail}).")
    if len(used) < RECOMMENDED_MIN_PHOTOS:
        warnings.insert(0, f"only {len(used)} usable photo{'s' if len(used) != 1 else ''}; "
                           f"{RECOMMENDED_MIN_PHOTOS}-{RECOMMENDED_MAX_PHOTOS} photos of the person give a better likeness")
    elif len(used) > RECOMMENDED_MAX_PHOTOS:
        warnings.insert(0, f"{len(used)} usable photos; more than {RECOMMENDED_MAX_PHOTOS} rarely helps and "
                           "makes each step see a photo less often")
    return TrainingSet(samples=samples, reports=reports, options=opts, warnings=warnings)


def preview_grid(samples: Sequence[TrainSample], dest: Path | str, cell: int = 160, columns: int = 6) -> Path:
    """A PNG contact sheet of what will be trained on (written atomically)."""
    from PIL import Image

    from ..paths import atomic_path

    if not samples:
        raise ValueError("no samples to preview")
    cols = min(columns, len(samples))
    rows = math.ceil(len(samples) / cols)
    pad = 4
    sheet = Image.new("RGB", (cols * (cell + pad) + pad, rows * (cell + pad) + pad), (40, 40, 40))
    for i, s in enumerate(samples):
        img = Image.fromarray(s.image)
        img.thumbnail((cell, cell))
        x = pad + (i % cols) * (cell + pad) + (cell - img.width) // 2
        y = pad + (i // cols) * (cell + pad) + (cell - img.height) // 2
        sheet.paste(img, (x, y))
    dest = Path(dest)
    with atomic_path(dest, suffix=".png") as tmp:
        sheet.save(tmp, format="PNG")
    return dest
