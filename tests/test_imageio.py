"""Safe photo input. Every input is built here in code."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from pipelines.errors import BadInput, UnreadableImage
from pipelines.imageio import NEUTRAL_BACKGROUND, load_photo, load_photo_array

REPO = Path(__file__).resolve().parents[1]
GREY = NEUTRAL_BACKGROUND


# --------------------------------------------------------------------------- builders


def _png_chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def _raw_png(width: int, height: int, bit_depth: int, colour_type: int, rows: list[bytes]) -> bytes:
    """A PNG written by hand (Pillow cannot write 48-bit RGB, nor lie about its size)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\x00" + r for r in rows))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _fits_bytes() -> bytes:
    cards = [
        "SIMPLE  =                    T",
        "BITPIX  =                    8",
        "NAXIS   =                    2",
        "NAXIS1  =                    4",
        "NAXIS2  =                    4",
        "END",
    ]
    header = b"".join(c.ljust(80).encode("ascii") for c in cards).ljust(2880, b" ")
    return header + bytes(16).ljust(2880, b"\0")


def _psd_bytes() -> bytes:
    # signature, version 1, 6 reserved bytes, 3 channels, 4x4, 8 bits, RGB mode;
    # empty colour-mode, resources and layer sections; raw image data.
    header = b"8BPS" + struct.pack(">H6sHIIHH", 1, b"\0" * 6, 3, 4, 4, 8, 3)
    return header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + bytes(3 * 4 * 4)


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _region_mean(arr: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    return arr[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)


def _is_red(rgb: np.ndarray) -> bool:
    return rgb[0] > 200 and rgb[1] < 60 and rgb[2] < 60


# --------------------------------------------------------------------------- orientation (row 5)


@pytest.mark.parametrize(
    "orientation, marker_box",
    [
        (6, (16, 0, 32, 16)),  # rotate 90 deg clockwise: stored top-left -> top-right
        (8, (0, 48, 16, 64)),  # rotate 90 deg counter-clockwise: top-left -> bottom-left
    ],
)
def test_exif_orientation_is_applied(tmp_path, orientation, marker_box):
    stored = Image.new("RGB", (64, 32), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 16, 16))  # marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _write(tmp_path / f"rot{orientation}.jpg", _jpeg_bytes(stored, exif=exif))

    arr = load_photo_array(path)

    assert arr.shape == (64, 32, 3)  # width and height swapped
    x0, y0, x1, y1 = marker_box
    assert _is_red(_region_mean(arr, x0 + 2, y0 + 2, x1 - 2, y1 - 2))
    # ... and the stored position is no longer red: the pixels really moved.
    assert not _is_red(_region_mean(arr, 2, 2, 14, 14))


# --------------------------------------------------------------------------- colour modes (rows 6-8)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = _write(tmp_path / "cmyk.jpg", _jpeg_bytes(Image.new("CMYK", (24, 24), (0, 255, 255, 0))))
    assert Image.open(path).mode == "CMYK"

    img = load_photo(path)

    assert img.mode == "RGB"
    assert _is_red(np.asarray(img).reshape(-1, 3).mean(axis=0))


def _rgba_image() -> Image.Image:
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # transparent *black*
    img.paste((255, 0, 0, 255), (0, 0, 4, 8))
    img.paste((255, 0, 0, 128), (4, 0, 6, 8))
    return img


def _la_image() -> Image.Image:
    img = Image.new("LA", (8, 8), (0, 0))
    img.paste((255, 255), (0, 0, 4, 8))
    return img


def _p_image() -> Image.Image:
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0, 255, 0, 0])
    img.paste(1, (0, 0, 4, 8))
    img.info["transparency"] = 0  # palette index 0 (black) is transparent
    return img


@pytest.mark.parametrize(
    "make, opaque_colour",
    [(_rgba_image, (255, 0, 0)), (_la_image, (255, 255, 255)), (_p_image, (255, 0, 0))],
    ids=["RGBA", "LA", "P"],
)
def test_transparency_is_flattened_onto_grey(tmp_path, make, opaque_colour):
    src = make()
    path = tmp_path / f"{src.mode}.png"
    src.save(path, transparency=src.info["transparency"]) if "transparency" in src.info else src.save(path)
    assert Image.open(path).mode == src.mode

    arr = load_photo_array(path)

    assert arr.shape == (8, 8, 3)
    assert tuple(arr[0, 7]) == GREY  # fully transparent: grey, not black
    assert tuple(arr[0, 0]) == opaque_colour  # opaque: unchanged


def test_half_transparent_pixels_blend_with_grey(tmp_path):
    path = tmp_path / "rgba.png"
    _rgba_image().save(path)
    r, g, b = (int(v) for v in load_photo_array(path)[0, 4])
    assert abs(r - (255 * 128 + 128 * 127) / 255) <= 2
    assert abs(g - 128 * 127 / 255) <= 2 and abs(b - 128 * 127 / 255) <= 2


def test_sixteen_bit_grey_png_is_scaled_not_clipped(tmp_path):
    a = np.zeros((4, 6), dtype=np.uint16)
    a[:, :2] = 32896  # mid-grey in 16 bits
    a[:, 2:4] = 65535
    path = tmp_path / "grey16.png"
    Image.fromarray(a).save(path)
    assert Image.open(path).mode == "I;16"

    arr = load_photo_array(path)

    assert (arr[:, :2] == 128).all()
    assert (arr[:, 2:4] == 255).all()
    assert (arr[:, 4:] == 0).all()


def test_48_bit_rgb_png_is_scaled_not_clipped(tmp_path):
    pixel = struct.pack(">HHH", 32896, 16448, 65535)
    path = _write(tmp_path / "rgb48.png", _raw_png(5, 3, 16, 2, [pixel * 5] * 3))

    arr = load_photo_array(path)

    assert arr.shape == (3, 5, 3)
    assert (np.abs(arr.astype(int) - [128, 64, 255]) <= 1).all()


def test_uint16_array_is_scaled(tmp_path):
    arr = load_photo_array(np.full((4, 4, 3), 32896, dtype=np.uint16), name="array")
    assert (arr == 128).all()


# --------------------------------------------------------------------------- size (rows 9-10)


def test_large_png_is_downscaled_to_max_side(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (3000, 1500), (10, 200, 30)).save(path)
    img = load_photo(path)
    assert img.size == (2048, 1024)
    assert load_photo(path, max_side=None).size == (3000, 1500)


# Peak RSS of a fresh process, from /proc: VmHWM starts anew at exec, unlike
# ru_maxrss, which a child inherits from the (possibly large) pytest process.
_MEMORY_PROBE = r"""
import json, sys
from PIL import Image
from pipelines.imageio import load_photo

def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

path, mode = sys.argv[1], sys.argv[2]
load_photo(sys.argv[3])  # warm up decoders and imports
before = peak_kib()
if mode == "ours":
    img = load_photo(path)
    size, colour = img.size, img.getpixel((10, 10))
else:  # a plain full decode
    img = Image.open(path)
    img.load()
    size, colour = img.size, img.getpixel((10, 10))
after = peak_kib()
print(json.dumps({"peak_kib": after - before, "size": size, "colour": colour}))
"""


def _probe(mode: str, path: Path, small: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(path), mode, str(small)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_48_megapixel_jpeg_is_decoded_reduced_with_bounded_memory(tmp_path):
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (8000, 6000), (200, 120, 60)).save(path, quality=90)
    small = tmp_path / "small.jpg"
    Image.new("RGB", (64, 48), (1, 2, 3)).save(small)
    full_decode_kib = 8000 * 6000 * 3 // 1024  # 140 MiB of RGB pixels

    ours = _probe("ours", path, small)
    naive = _probe("naive", path, small)

    # Decoded at 1/4 scale: long side within [90%, 100%] of max_side, aspect kept.
    assert 0.9 * 2048 <= max(ours["size"]) <= 2048
    assert ours["size"][0] * 3 == ours["size"][1] * 4
    assert all(abs(a - b) <= 3 for a, b in zip(ours["colour"], (200, 120, 60)))
    # The measurement sees a full decode ...
    assert naive["peak_kib"] > full_decode_kib, naive
    # ... and ours stays well under it.
    assert ours["peak_kib"] < naive["peak_kib"] / 4, (ours, naive)


def _bomb_png() -> bytes:
    """A 100-byte PNG whose header claims 30000x30000 pixels."""
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 100))
        + _png_chunk(b"IEND", b"")
    )


def _pil_globals():
    return Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters)


def test_decompression_bomb_is_refused_from_the_header(tmp_path):
    path = _write(tmp_path / "bomb.png", _bomb_png())
    before = _pil_globals()

    with pytest.raises(BadInput) as exc:
        load_photo(path)

    msg = str(exc.value)
    assert str(path) in msg and "30000x30000" in msg and "64,000,000" in msg
    assert exc.value.exit_code == 2
    assert _pil_globals() == before
    # The process is fine: the next photo loads.
    ok = tmp_path / "ok.png"
    Image.new("RGB", (10, 10)).save(ok)
    assert load_photo(ok).size == (10, 10)


@pytest.mark.parametrize("side", [40, 100], ids=["pil-warning", "pil-error"])
def test_pillow_bomb_checks_give_the_same_clear_error(tmp_path, side):
    # cap 1000: 40x40 = 1600 trips Pillow's warning (> cap), 100x100 its error (> 2 x cap).
    path = tmp_path / f"s{side}.png"
    Image.new("RGB", (side, side)).save(path)
    before = _pil_globals()

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(BadInput) as exc:
            load_photo(path, max_pixels=1000)

    assert f"{side}x{side}" in str(exc.value) and "1,000 pixels" in str(exc.value)
    assert str(path) in str(exc.value)
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]
    assert _pil_globals() == before


def test_in_memory_images_obey_the_cap_too():
    with pytest.raises(BadInput, match=r"selfie declares 40x40 pixels"):
        load_photo(Image.new("RGB", (40, 40)), name="selfie", max_pixels=1000)
    with pytest.raises(BadInput, match=r"arr declares 50x20 pixels"):
        load_photo(np.zeros((20, 50, 3), np.uint8), name="arr", max_pixels=999)


# --------------------------------------------------------------------------- unreadable (row 11)


def _noise_jpeg() -> bytes:
    return _jpeg_bytes(Image.effect_noise((128, 96), 60).convert("RGB"))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_refused_even_if_pillow_is_told_to_accept_it(tmp_path, monkeypatch, fmt):
    buf = io.BytesIO()
    Image.effect_noise((128, 96), 60).convert("RGB").save(buf, fmt)
    data = buf.getvalue()
    path = _write(tmp_path / f"cut.{fmt.lower()}", data[: len(data) * 2 // 3])
    # Some other library in the process flipped the global switch:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    Image.open(path).load()  # plain Pillow now silently accepts the damaged file

    with pytest.raises(UnreadableImage, match="truncated") as exc:
        load_photo(path)

    assert str(exc.value).startswith(f"{path} is unreadable")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # their setting is restored


def test_zero_byte_file_is_unreadable(tmp_path):
    path = _write(tmp_path / "empty.jpg", b"")
    with pytest.raises(UnreadableImage, match=r"empty\.jpg is unreadable: the file is empty"):
        load_photo(path)
    with pytest.raises(UnreadableImage, match=r"upload\.jpg is unreadable"):
        load_photo(b"", name="upload.jpg")


def test_text_renamed_jpg_is_unreadable(tmp_path):
    path = _write(tmp_path / "notes.jpg", b"shopping list: eggs, milk\n" * 20)
    with pytest.raises(UnreadableImage) as exc:
        load_photo(path)
    assert str(exc.value).startswith(f"{path} is unreadable")
    assert "\n" not in str(exc.value)


def test_missing_file_and_folder_are_named(tmp_path):
    with pytest.raises(BadInput, match=r"nope\.jpg does not exist"):
        load_photo(tmp_path / "nope.jpg")
    with pytest.raises(BadInput, match="is a folder"):
        load_photo(tmp_path)


# --------------------------------------------------------------------------- format allow-list (row 12)


@pytest.mark.parametrize(
    "filename, make, fmt",
    [
        ("sky.fits", _fits_bytes, "FITS"),
        ("sky.png", _fits_bytes, "FITS"),  # the extension does not matter
        ("layers.psd", _psd_bytes, "PSD"),
        ("anim.gif", lambda: _encode(Image.new("RGB", (8, 8), (9, 9, 9)), "GIF"), "GIF"),
        ("phone.jpg", lambda: b"\x00\x00\x00\x18ftypavif\x00\x00\x00\x00mif1avif" + bytes(64), "AVIF"),
    ],
)
def test_formats_outside_the_allow_list_are_refused(tmp_path, filename, make, fmt):
    path = _write(tmp_path / filename, make())
    with pytest.raises(BadInput) as exc:
        load_photo(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path} is a {fmt} image") and "supported formats" in msg
    assert not isinstance(exc.value, UnreadableImage)


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def test_real_format_wins_over_the_extension(tmp_path):
    path = tmp_path / "really-a-png.jpg"
    Image.new("RGB", (6, 4), (1, 2, 3)).save(path, format="PNG")
    assert tuple(load_photo_array(path)[0, 0]) == (1, 2, 3)


def test_pil_image_in_a_refused_format_is_refused(tmp_path):
    path = _write(tmp_path / "a.gif", _encode(Image.new("RGB", (8, 8)), "GIF"))
    with pytest.raises(BadInput, match="is a GIF image"):
        load_photo(Image.open(path))


# --------------------------------------------------------------------------- normal photos


def test_real_photo_loads_unchanged_from_every_kind_of_source(photos_dir):
    path = photos_dir / "astronaut.png"
    expected = np.asarray(Image.open(path).convert("RGB"))
    data = path.read_bytes()

    results = {
        "path": load_photo_array(path),
        "str": load_photo_array(str(path)),
        "bytes": load_photo_array(data, name="astronaut.png"),
        "file": load_photo_array(io.BytesIO(data)),
        "pil": load_photo_array(Image.open(path)),
        "array": load_photo_array(expected),
    }
    for kind, arr in results.items():
        assert arr.dtype == np.uint8 and arr.flags.c_contiguous, kind
        assert arr.shape == (512, 512, 3), kind
        np.testing.assert_array_equal(arr, expected, err_msg=kind)


def test_caller_pil_image_is_not_modified(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _write(tmp_path / "r.jpg", _jpeg_bytes(Image.new("RGB", (40, 20), (0, 0, 255)), exif=exif))
    src = Image.open(path)
    out = load_photo(src)
    assert out.size == (20, 40)
    assert src.size == (40, 20) and src.getexif().get(0x0112) == 6


def test_error_names_the_given_name():
    with pytest.raises(UnreadableImage, match=r"^holiday\.jpg is unreadable"):
        load_photo(b"GIF89 not really", name="holiday.jpg")


def test_import_changes_no_pillow_state():
    code = (
        "import numpy\nfrom PIL import Image, ImageFile\n"
        "import warnings\n"
        "before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))\n"
        "import pipelines.imageio, pipelines.metadata\n"
        "after = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))\n"
        "assert before == after, (before, after)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


# --------------------------------------------------------------------------- HEIC / HEIF


def _heic_bytes(img: Image.Image) -> bytes:
    pillow_heif = pytest.importorskip("pillow_heif")
    buf = io.BytesIO()
    pillow_heif.from_pillow(img).save(buf, format="HEIF", quality=95)
    return buf.getvalue()


def test_heic_photo_is_decoded_to_rgb(tmp_path):
    src = Image.new("RGB", (96, 64), (200, 40, 30))
    path = _write(tmp_path / "IMG_0001.HEIC", _heic_bytes(src))
    img = load_photo(path)
    assert img.mode == "RGB" and img.size == (96, 64)
    r, g, b = img.getpixel((48, 32))
    assert abs(r - 200) < 20 and g < 80 and b < 80


def test_heic_over_the_pixel_cap_is_refused_before_decoding(tmp_path):
    path = _write(tmp_path / "big.heic", _heic_bytes(Image.new("RGB", (128, 128), (9, 9, 9))))
    with pytest.raises(BadInput, match=r"big\.heic declares 128x128 pixels .* the limit of 10,000 pixels"):
        load_photo(path, max_pixels=10_000)


def test_truncated_heic_is_unreadable(tmp_path):
    data = _heic_bytes(Image.new("RGB", (64, 64), (9, 99, 9)))
    path = _write(tmp_path / "cut.heic", data[: len(data) * 2 // 3])
    with pytest.raises(BadInput, match=r"cut\.heic is unreadable"):
        load_photo(path)
