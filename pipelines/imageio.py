"""Safe photo input: every user photo enters the engine through `load_photo`.

What comes out is always an upright 8-bit RGB image whose long side is at most
`max_side`; what cannot be turned into one is refused with a one-sentence
`BadInput` / `UnreadableImage` naming the file. The rules:

- the *decoded* format must be in `ALLOWED_FORMATS` (the extension is ignored);
- the pixel count declared in the header is checked against a cap before any
  pixel is decoded, and Pillow's own decompression-bomb check is set to the same
  cap, so both paths give the same message;
- truncated files are never accepted, whatever `ImageFile.LOAD_TRUNCATED_IMAGES`
  was set to elsewhere;
- EXIF orientation is applied before anything else looks at the pixels;
- CMYK, palette, alpha and 16-bit images are converted without clipping, and
  transparency is flattened onto a neutral grey (not black, which would read
  as dark hair or shadow to a face detector);
- huge JPEGs are decoded reduced (`Image.draft`), so memory stays bounded;
  other formats are bounded by the pixel cap, then downscaled;
- a strip (long side over `MAX_ASPECT` times the short side) is refused with its
  real size: downscaled it would be a line of pixels that holds no face.

Every file a user names (photos, cards, job files, recipes, pose files) is opened
through `regular_file` / `read_user_file` / `hash_user_file`: only regular files,
checked with `stat` before opening, opened non-blocking and checked again on the
open descriptor, read up to a size limit. A FIFO, `/dev/zero` or a folder is
refused at once instead of hanging a read.

Pillow keeps its limits in module globals. We never change them at import; while
decoding we set them under a lock and restore them afterwards. (Python < 3.14
keeps warning filters process-wide, so another thread warning at the same
instant may see our filter for `DecompressionBombWarning` — a stricter setting,
never a looser one.)"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat as _stat
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, cast

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import BadInput, UnreadableImage

# Decoders we are willing to run on user files: common photo formats only. GIF is
# refused (256 colours and often animated: a poor source for a likeness);
# FITS, PSD, AVIF, ICO, EPS and the other Pillow plugins are refused too.
# HEIC/HEIF (the iPhone default) decode through pillow-heif (libheif), registered
# with Pillow on first use, never at import; its files pass the same pixel cap and
# truncation rules as the others (Pillow checks the header size of every plugin).
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "HEIF"})
# Order in which Pillow tries the plugins (MPO files open through the JPEG plugin).
_OPEN_ORDER = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "HEIF")

SUPPORTED_FORMATS_TEXT = "JPEG, PNG, WebP, BMP, TIFF or HEIC/HEIF"  # for messages

DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_SIDE = 2048
# A photo file over this size is refused before it is read (a 64 MP 16-bit PNG is
# well under it).
MAX_PHOTO_BYTES = 512 * 1024 * 1024
# Long side / short side above which an image is a strip, not a photo of a person.
MAX_ASPECT = 20
NEUTRAL_BACKGROUND = (128, 128, 128)
_DRAFT_SLACK = 0.9

PhotoSource = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray

# Guards the Pillow globals we override while decoding.
_PIL_STATE_LOCK = threading.RLock()

_TRANSPARENT_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_HIGH_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
# ISO-BMFF brands of formats Pillow cannot open here, to name them in the error.
_FTYP_BRANDS = {b"avif": "AVIF", b"avis": "AVIF"}
_HEIF_LOCK = threading.Lock()
_heif_registered = False


def _register_heif() -> None:
    """Teach Pillow HEIC/HEIF once per process (pillow-heif's documented
    `register_heif_opener`). Without pillow-heif installed HEIC stays refused
    with the usual format message."""
    global _heif_registered
    with _HEIF_LOCK:
        if _heif_registered:
            return
        try:
            import pillow_heif
        except ImportError:
            _FTYP_BRANDS.update({b: "HEIC" for b in (b"heic", b"heix", b"hevc", b"heim", b"heis")})
        else:
            pillow_heif.register_heif_opener()
        _heif_registered = True


# --------------------------------------------------------------------------- user files


def _kind(mode: int) -> str:
    if _stat.S_ISDIR(mode):
        return "a folder"
    if _stat.S_ISFIFO(mode):
        return "a pipe (FIFO)"
    if _stat.S_ISCHR(mode) or _stat.S_ISBLK(mode):
        return "a device"
    if _stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def regular_file(path: str | os.PathLike, label: str | None = None, *,
                 max_bytes: int | None = None) -> os.stat_result:
    """`stat` of `path` if it is an existing regular file of at most `max_bytes`;
    otherwise a one-sentence `BadInput` naming it. Follows symlinks (a link to a
    regular file is fine; a link to a device is refused)."""
    label = label or os.fspath(path)
    if "\x00" in os.fspath(path):
        raise BadInput(f"{label!r} contains a NUL byte; it cannot be a file name.")
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise BadInput(f"{label} does not exist; check the path.") from exc
    except OSError as exc:
        raise BadInput(f"{label} cannot be read: {exc.strerror or exc}.") from exc
    if not _stat.S_ISREG(st.st_mode):
        raise BadInput(f"{label} is {_kind(st.st_mode)}, not a file; give a regular file.")
    if max_bytes is not None and st.st_size > max_bytes:
        raise BadInput(f"{label} is {st.st_size:,} bytes; the limit is {max_bytes:,}.")
    return st


@contextlib.contextmanager
def open_user_file(path: str | os.PathLike, label: str | None = None, *,
                   max_bytes: int | None = None) -> Iterator[IO[bytes]]:
    """Open a user-named regular file for reading, binary. Non-blocking open, so a
    FIFO swapped in after the `stat` cannot block; the open descriptor is checked
    again (`fstat`) before a byte is read."""
    label = label or os.fspath(path)
    regular_file(path, label, max_bytes=max_bytes)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise BadInput(f"{label} cannot be read: {exc.strerror or exc}.") from exc
    try:
        st = os.fstat(fd)
        if not _stat.S_ISREG(st.st_mode):
            raise BadInput(f"{label} is {_kind(st.st_mode)}, not a file; give a regular file.")
        if max_bytes is not None and st.st_size > max_bytes:
            raise BadInput(f"{label} is {st.st_size:,} bytes; the limit is {max_bytes:,}.")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh


def read_user_file(path: str | os.PathLike, label: str | None = None, *, max_bytes: int) -> bytes:
    """The bytes of a user-named regular file, at most `max_bytes` (a file that
    grows past the limit while being read is refused too)."""
    label = label or os.fspath(path)
    with open_user_file(path, label, max_bytes=max_bytes) as fh:
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise BadInput(f"{label} cannot be read: {exc.strerror or exc}.") from exc
    if len(data) > max_bytes:
        raise BadInput(f"{label} is over the limit of {max_bytes:,} bytes.")
    return data


def hash_user_file(path: str | os.PathLike, label: str | None = None, *,
                   max_bytes: int = MAX_PHOTO_BYTES) -> str:
    """Hex sha256 of a user-named regular file, read in chunks up to `max_bytes`."""
    label = label or os.fspath(path)
    h = hashlib.sha256()
    total = 0
    with open_user_file(path, label, max_bytes=max_bytes) as fh:
        try:
            while chunk := fh.read(1 << 20):
                total += len(chunk)
                if total > max_bytes:
                    raise BadInput(f"{label} is over the limit of {max_bytes:,} bytes.")
                h.update(chunk)
        except OSError as exc:
            raise BadInput(f"{label} cannot be read: {exc.strerror or exc}.") from exc
    return h.hexdigest()


def load_photo(
    src: PhotoSource,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = DEFAULT_MAX_SIDE,
) -> Image.Image:
    """Load a user photo as an upright 8-bit RGB image, long side <= `max_side`.

    `src` is a path, the file's bytes, a binary file object, a PIL image or a
    numpy array (HxW or HxWxC, uint8/uint16/bool/float in [0, 1]). `name` is
    how errors refer to it (default: the path, or the file object's name)."""
    label = _label(src, name)
    if max_pixels < 1 or (max_side is not None and max_side < 1):
        raise ValueError("max_pixels and max_side must be positive")
    if isinstance(src, np.ndarray):
        return _finish(_array_to_image(src, label, max_pixels), max_side)
    if isinstance(src, Image.Image):
        return _load_pil(src, label, max_pixels, max_side)
    return _load_encoded(src, label, max_pixels, max_side)


def load_photo_array(
    src: PhotoSource,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = DEFAULT_MAX_SIDE,
) -> np.ndarray:
    """`load_photo` as a C-contiguous uint8 array of shape (H, W, 3), RGB order."""
    img = load_photo(src, name=name, max_pixels=max_pixels, max_side=max_side)
    return np.ascontiguousarray(np.array(img, dtype=np.uint8))


# --------------------------------------------------------------------------- sources


def _label(src: object, name: str | None) -> str:
    if name:
        return name
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    file_name = getattr(src, "name", None) or getattr(src, "filename", None)
    if isinstance(file_name, str) and file_name:
        return file_name
    return "the image"


def _read_source(src: object, label: str) -> Path | bytes:
    """A path (checked to be a non-empty file) or the whole encoded file in memory."""
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        try:
            st = regular_file(path, label, max_bytes=MAX_PHOTO_BYTES)
        except BadInput as e:
            if os.path.isdir(path):
                raise BadInput(f"{label} is a folder, not an image file; choose a photo file.") from e
            raise
        if st.st_size == 0:
            raise UnreadableImage(f"{label} is unreadable: the file is empty (0 bytes).")
        # decoded from memory: Pillow never opens the path itself (a file swapped
        # for a FIFO after the stat would block it)
        return read_user_file(path, label, max_bytes=MAX_PHOTO_BYTES)
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    elif hasattr(src, "read"):
        stream = cast(IO[bytes], src)  # a file object; one without seek() is read from where it is
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.seek(0)
        data = stream.read()
        if not isinstance(data, (bytes, bytearray)):
            raise BadInput(f"{label} was opened in text mode; open it in binary mode ('rb').")
        data = bytes(data)
    else:
        raise BadInput(
            f"{label} is a {type(src).__name__}; give a file path, bytes, a file, a PIL image "
            "or a numpy array."
        )
    if not data:
        raise UnreadableImage(f"{label} is unreadable: the file is empty (0 bytes).")
    return data


def _open_arg(source: Path | bytes) -> Path | IO[bytes]:
    """What `Image.open` gets: a path (Pillow then owns and closes the file) or
    an in-memory file."""
    return source if isinstance(source, Path) else io.BytesIO(source)


# --------------------------------------------------------------------------- Pillow limits


def _effective_cap(max_pixels: int) -> int:
    """Our cap, or Pillow's if someone set that stricter process-wide."""
    pil_cap = Image.MAX_IMAGE_PIXELS
    return max_pixels if pil_cap is None else min(max_pixels, int(pil_cap))


@contextlib.contextmanager
def pil_decoding_limits(max_pixels: int) -> Iterator[int]:
    """Within this block Pillow refuses images over `max_pixels` (its warning
    becomes an error) and refuses truncated files; the previous global settings
    come back on exit. Yields the cap in force."""
    with _PIL_STATE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        cap = _effective_cap(max_pixels)
        Image.MAX_IMAGE_PIXELS = cap
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield cap
        finally:
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


@contextlib.contextmanager
def _header_only() -> Iterator[None]:
    """Lift Pillow's pixel limit to read a header we have already refused to
    decode (to name its size or format). Only called inside `pil_decoding_limits`."""
    with _PIL_STATE_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)


def _too_large(label: str, size: tuple[int, int] | None, cap: int) -> BadInput:
    if size is None:
        declared = "more pixels than"
    else:
        w, h = size
        declared = f"{w}x{h} pixels ({w * h / 1e6:.1f} MP), more than"
    return BadInput(
        f"{label} declares {declared} the limit of {cap:,} pixels ({cap / 1e6:.1f} MP); "
        "use a smaller photo."
    )


def _check_pixels(label: str, size: tuple[int, int], cap: int) -> None:
    if max(1, size[0]) * max(1, size[1]) > cap:
        raise _too_large(label, size, cap)
    w, h = size
    if min(w, h) >= 1 and max(w, h) > MAX_ASPECT * min(w, h):
        raise BadInput(
            f"{label} is {w}x{h} px, a strip (more than {MAX_ASPECT}:1), not a photo of a person; "
            "crop it around the face."
        )


def _declared_size(source: Path | bytes) -> tuple[int, int] | None:
    with _header_only():
        try:
            with Image.open(_open_arg(source)) as img:
                return img.size
        except Exception:  # the size is only for the message; the refusal stands
            return None


# --------------------------------------------------------------------------- decoding


def _unreadable(label: str, err: BaseException) -> UnreadableImage:
    reason = " ".join(str(err).split()).rstrip(".") or type(err).__name__
    return UnreadableImage(f"{label} is unreadable: {reason}; re-export or re-download it.")


def _refuse_format(label: str, fmt: str) -> BadInput:
    return BadInput(
        f"{label} is a {fmt} image; supported formats: {SUPPORTED_FORMATS_TEXT} "
        "(convert it to one of these)."
    )


def _refuse_unidentified(label: str, source: Path | bytes) -> BadInput:
    """Name the format if some other Pillow plugin or a known signature knows
    it; otherwise the file is unreadable. Only headers are parsed here."""
    with _header_only():
        try:
            with Image.open(_open_arg(source)) as img:
                return _refuse_format(label, img.format or "unsupported")
        except Exception:  # no plugin knows it either
            pass
    if isinstance(source, Path):
        with open(source, "rb") as fh:
            head = fh.read(32)
    else:
        head = source[:32]
    if head[4:8] == b"ftyp" and head[8:12] in _FTYP_BRANDS:
        return _refuse_format(label, _FTYP_BRANDS[head[8:12]])
    return UnreadableImage(
        f"{label} is unreadable: it is not a {SUPPORTED_FORMATS_TEXT} image "
        "(damaged, or not an image at all)."
    )


def _load_encoded(src: object, label: str, max_pixels: int, max_side: int | None) -> Image.Image:
    source = _read_source(src, label)
    _register_heif()
    with pil_decoding_limits(max_pixels) as cap:
        try:
            img: Image.Image = Image.open(_open_arg(source), formats=list(_OPEN_ORDER))
        except _BOMB_ERRORS as exc:
            raise _too_large(label, _declared_size(source), cap) from exc
        except UnidentifiedImageError as exc:
            raise _refuse_unidentified(label, source) from exc
        except Exception as e:  # malformed headers raise anything from OSError to struct.error
            raise _unreadable(label, e) from e
        with img:
            if img.format not in ALLOWED_FORMATS:
                raise _refuse_format(label, img.format or "unknown")
            _check_pixels(label, img.size, cap)
            if max_side:
                # JPEG only: libjpeg decodes at 1/2, 1/4 or 1/8 scale, so a 48 MP
                # photo never exists in memory whole. Accepting a long side down to
                # 90% of max_side lets e.g. 8000 px decode at 1/4 (2000 px, 12 MB)
                # instead of 1/2 (4000 px, 48 MB, then a resize).
                img.draft(None, _fit_size(img.size, max(1, int(max_side * _DRAFT_SLACK))))
            img = _decode(img, label, cap, owned=True)
    return _finish(img, max_side)


def _load_pil(img: Image.Image, label: str, max_pixels: int, max_side: int | None) -> Image.Image:
    if img.format is not None and img.format not in ALLOWED_FORMATS:
        raise _refuse_format(label, img.format)
    with pil_decoding_limits(max_pixels) as cap:
        _check_pixels(label, img.size, cap)
        img = _decode(img, label, cap, owned=False)
    return _finish(img, max_side)


def _decode(img: Image.Image, label: str, cap: int, *, owned: bool) -> Image.Image:
    """Decode every pixel (a truncated file raises here) and apply the EXIF
    orientation. Runs inside `pil_decoding_limits`. The result is ours to modify."""
    try:
        img.load()
        if owned:
            ImageOps.exif_transpose(img, in_place=True)
            return img
        return ImageOps.exif_transpose(img)  # a copy: never modify the caller's image
    except _BOMB_ERRORS as exc:
        raise _too_large(label, img.size, cap) from exc
    except Exception as e:  # decoders report damage as OSError, SyntaxError, ValueError, ...
        raise _unreadable(label, e) from e


# --------------------------------------------------------------------------- pixels


def _array_to_image(arr: np.ndarray, label: str, max_pixels: int) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise BadInput(f"{label} has array shape {arr.shape}; expected HxW, HxWx3 or HxWx4.")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UnreadableImage(f"{label} is unreadable: the array is empty ({arr.shape}).")
    _check_pixels(label, (arr.shape[1], arr.shape[0]), max_pixels)
    if arr.dtype == np.uint8:
        arr8 = arr
    elif arr.dtype == np.uint16:
        arr8 = _sixteen_to_eight(arr)
    elif arr.dtype == np.bool_:
        arr8 = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
            raise BadInput(f"{label} is a float array outside [0, 1]; scale it to [0, 1] or uint8.")
        arr8 = np.round(arr * 255.0).astype(np.uint8)
    else:
        raise BadInput(f"{label} has array dtype {arr.dtype}; use uint8, uint16 or float in [0, 1].")
    return Image.fromarray(np.ascontiguousarray(arr8))


def _sixteen_to_eight(a: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255 by the full 16-bit range (v / 257, rounded): mid-grey
    stays mid-grey instead of clipping to white."""
    return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    a = np.asarray(img)
    if img.mode.startswith("I;16"):
        return Image.fromarray(_sixteen_to_eight(a))
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if img.mode == "I" and lo >= 0 and hi <= 65535:
        return Image.fromarray(_sixteen_to_eight(a))  # 16-bit data widened to 32 bits
    if img.mode == "F" and lo >= 0 and hi <= 1.0:
        return Image.fromarray(np.round(a * 255.0).astype(np.uint8))
    # Anything else (32-bit integers, HDR floats): stretch the real range.
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return Image.fromarray(np.round((a.astype(np.float64) - lo) * scale).astype(np.uint8))


def _has_alpha(img: Image.Image) -> bool:
    if img.mode in _TRANSPARENT_MODES:
        return True
    if img.mode in ("P", "L", "RGB", "1") and "transparency" in img.info:
        return True
    return img.mode == "P" and img.palette is not None and img.palette.mode == "RGBA"


def _flatten(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, NEUTRAL_BACKGROUND + (255,))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_l(img).convert("RGB")
    if _has_alpha(img):
        return _flatten(img)
    if img.mode != "RGB":
        return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, RGBX, ...
    return img


def _fit_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    w, h = size
    scale = max_side / max(w, h)
    if scale >= 1:
        return w, h
    return max(1, round(w * scale)), max(1, round(h * scale))


def _finish(img: Image.Image, max_side: int | None) -> Image.Image:
    """8-bit RGB, then downscale (after conversion: Pillow cannot resize every mode)."""
    img = _to_rgb(img)
    if max_side and max(img.size) > max_side:
        img = img.resize(_fit_size(img.size, max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return img
