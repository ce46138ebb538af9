"""PNG outputs: A1111 parameters, JSON recipe, AI-generated marker, atomic writes."""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image

from pipelines.errors import BadInput
from pipelines.metadata import (
    AI_SOURCE_TYPE,
    DEMO_NOTICE,
    a1111_parameters,
    read_recipe,
    save_png,
)
from pipelines.profile import DEMO

RECIPE = {
    "method": "faceid",
    "scales": {"adapter": 0.8, "s_scale": 1.0},
    "seed": 7,
    "sampler": "DPM++ 2M Karras",
    "models": [{"name": "sdxl-base", "sha256": "ab" * 32}],
    "identity_hash": "cd" * 32,
    "prompt": "portrait of a person, «studio light», 日本",
    "app_version": "0.1.0",
}


# --------------------------------------------------------------------------- helpers


def _chunks(path: Path) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk, read straight from the file."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        out.append((ctype, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def _text_chunks(path: Path) -> dict[str, tuple[bytes, str]]:
    """keyword -> (chunk type, text) for tEXt and uncompressed iTXt chunks."""
    found = {}
    for ctype, data in _chunks(path):
        if ctype == b"tEXt":
            key, _, value = data.partition(b"\0")
            found[key.decode("latin-1")] = (ctype, value.decode("latin-1"))
        elif ctype == b"iTXt":
            key, _, rest = data.partition(b"\0")
            compressed, _method = rest[0], rest[1]
            _lang, _, rest = rest[2:].partition(b"\0")
            _tkey, _, value = rest.partition(b"\0")
            text = zlib.decompress(value) if compressed else value
            found[key.decode("latin-1")] = (ctype, text.decode("utf-8"))
    return found


# An infotext parser written from A1111's documented format: prompt lines, an
# optional "Negative prompt:" section, and a last line of `Key: value` pairs where
# a value is either JSON-quoted or runs to the next comma.
_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_infotext(text: str) -> dict:
    *lines, last = text.strip().split("\n")
    assert len(_PARAM_RE.findall(last)) >= 3, "last line is not a parameter line"
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    result = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _PARAM_RE.findall(last):
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            value = json.loads(value)
        result[key.strip()] = value
    return result


def _image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))


# --------------------------------------------------------------------------- A1111 parameters


def test_parameters_follow_the_a1111_layout():
    text = a1111_parameters(
        "a photo of a person", "blurry", 30, "DPM++ 2M Karras", 5.0, 7, 1024, 1024,
        "sdxl-base", "abcd1234", {},
    )
    assert text == (
        "a photo of a person\n"
        "Negative prompt: blurry\n"
        "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 5, Seed: 7, Size: 1024x1024, "
        "Model hash: abcd1234, Model: sdxl-base"
    )


def test_parameters_parse_back_with_an_a1111_style_parser():
    extra = {
        "Identity method": "FaceID Plus v2",
        "IP-Adapter scale": 0.85,
        "Lora hashes": "face: 0123456789, style: abcdef",  # commas and colons: quoted
        "Note": 'says "hi"',
        "Skipped": None,
    }
    text = a1111_parameters(
        "portrait, close-up\nsoft light", "lowres, bad hands", 4, "Euler a", 6.5, 123456789,
        832, 1216, "sdxl-base", "0a1b2c3d4e", extra,
    )
    parsed = parse_infotext(text)

    assert parsed["Prompt"] == "portrait, close-up\nsoft light"
    assert parsed["Negative prompt"] == "lowres, bad hands"
    assert parsed["Steps"] == "4" and parsed["Sampler"] == "Euler a"
    assert parsed["CFG scale"] == "6.5" and parsed["Seed"] == "123456789"
    assert parsed["Size"] == "832x1216"
    assert parsed["Model hash"] == "0a1b2c3d4e" and parsed["Model"] == "sdxl-base"
    assert parsed["Identity method"] == "FaceID Plus v2"
    assert parsed["IP-Adapter scale"] == "0.85"
    assert parsed["Lora hashes"] == "face: 0123456789, style: abcdef"
    assert parsed["Note"] == 'says "hi"'
    assert "Skipped" not in parsed


def test_empty_negative_prompt_is_left_out():
    text = a1111_parameters("p", "", 2, "Euler", 1, 0, 64, 64, "m", "h", {})
    assert "Negative prompt" not in text
    assert parse_infotext(text)["Prompt"] == "p"


@pytest.mark.parametrize("key", ["Bad: key", "a,b", "", "-x", "Steps"])
def test_unparseable_or_duplicate_parameter_names_are_refused(key):
    with pytest.raises(ValueError, match="parameter name"):
        a1111_parameters("p", "", 2, "Euler", 1, 0, 64, 64, "m", "h", {key: 1})


# --------------------------------------------------------------------------- save / read


def test_png_round_trip(tmp_path):
    params = a1111_parameters("a portrait", "blurry", 30, "Euler", 5, 7, 32, 24, "sdxl-base", "abcd", {})
    img = _image()

    out = save_png(img, tmp_path / "out.png", parameters=params, recipe=RECIPE)

    assert out == tmp_path / "out.png"
    assert read_recipe(out) == RECIPE
    with Image.open(out) as back:
        assert back.info["parameters"] == params
        np.testing.assert_array_equal(np.asarray(back.convert("RGB")), np.asarray(img))
    chunks = _text_chunks(out)
    assert chunks["parameters"][0] == b"tEXt"  # plain Latin-1 text, like A1111
    assert chunks["likeness"] == (b"iTXt", json.dumps(RECIPE, ensure_ascii=False, sort_keys=True))
    assert "Comment" not in chunks and "demo" not in read_recipe(out)
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_xmp_marks_the_image_as_ai_generated(tmp_path):
    out = save_png(_image(), tmp_path / "x.png", parameters="p\nSteps: 1, Seed: 1, Size: 8x8",
                   recipe={})
    ctype, xmp = _text_chunks(out)["XML:com.adobe.xmp"]
    assert ctype == b"iTXt"
    root = ElementTree.fromstring(xmp[xmp.index("<x:xmpmeta") : xmp.index("</x:xmpmeta>") + 12])
    desc = root.find(".//{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description")
    key = "{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}DigitalSourceType"
    assert desc is not None and desc.attrib[key] == AI_SOURCE_TYPE
    assert AI_SOURCE_TYPE.endswith("/trainedAlgorithmicMedia")
    with Image.open(out) as back:  # Pillow finds it where XMP readers look
        assert b"trainedAlgorithmicMedia" in back.info["xmp"]  # raw XMP bytes


def test_demo_images_say_so(tmp_path):
    out = save_png(_image(), tmp_path / "d.png", parameters="p\nSteps: 1, Seed: 1, Size: 8x8",
                   recipe=RECIPE, notice=DEMO.notice)
    assert _text_chunks(out)["Comment"] == (b"tEXt", DEMO_NOTICE)
    recipe = read_recipe(out)
    assert recipe["demo"] == DEMO_NOTICE == "demo models: random weights"
    assert {k: v for k, v in recipe.items() if k != "demo"} == RECIPE
    assert "demo" not in RECIPE  # the caller's dict is untouched


def test_non_latin_parameters_go_to_itxt(tmp_path):
    params = a1111_parameters("肖像, 柔光", "", 2, "Euler", 1, 0, 8, 8, "m", "h", {})
    out = save_png(_image(), tmp_path / "u.png", parameters=params, recipe={})
    assert _text_chunks(out)["parameters"] == (b"iTXt", params)
    with Image.open(out) as back:
        assert back.info["parameters"] == params


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    dest = tmp_path / "keep.png"
    dest.write_bytes(b"previous image")

    def disk_full(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG half written")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_png(_image(), dest, parameters="p", recipe=RECIPE)
    with pytest.raises(OSError, match="No space"):
        save_png(_image(), tmp_path / "new.png", parameters="p", recipe=RECIPE)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]
    assert dest.read_bytes() == b"previous image"


def test_unserialisable_recipe_fails_before_touching_disk(tmp_path):
    with pytest.raises(TypeError):
        save_png(_image(), tmp_path / "r.png", parameters="p", recipe={"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_output_must_be_png(tmp_path):
    with pytest.raises(BadInput, match=r"out\.jpg must end in \.png"):
        save_png(_image(), tmp_path / "out.jpg", parameters="p", recipe={})


def test_recipe_behind_the_pixel_data_is_found(tmp_path):
    # Some editors re-save text chunks after IDAT; move ours there by hand.
    src = save_png(_image(), tmp_path / "a.png", parameters="p", recipe=RECIPE)
    data = src.read_bytes()
    chunks = _chunks(src)
    recipe_chunk = next(d for t, d in chunks if t == b"iTXt" and d.startswith(b"likeness\0"))
    raw = struct.pack(">I", len(recipe_chunk)) + b"iTXt" + recipe_chunk
    raw += struct.pack(">I", zlib.crc32(b"iTXt" + recipe_chunk))
    iend = data.rindex(b"IEND") - 4
    moved = tmp_path / "moved.png"
    moved.write_bytes(data[:iend].replace(raw, b"") + raw + data[iend:])
    assert moved.read_bytes().index(b"likeness") > moved.read_bytes().index(b"IDAT")

    assert read_recipe(moved) == RECIPE


# --------------------------------------------------------------------------- read_recipe errors


def test_plain_png_has_no_recipe(tmp_path):
    path = tmp_path / "plain.png"
    _image().save(path)
    with pytest.raises(BadInput) as exc:
        read_recipe(path)
    assert str(exc.value).startswith(f"{path} has no Likeness recipe")
    assert exc.value.exit_code == 2


def test_non_png_and_missing_files_are_named(tmp_path):
    jpg = tmp_path / "photo.jpg"
    _image().save(jpg)
    with pytest.raises(BadInput, match=r"photo\.jpg is not a PNG file"):
        read_recipe(jpg)
    with pytest.raises(BadInput, match=r"gone\.png does not exist"):
        read_recipe(tmp_path / "gone.png")


def test_damaged_recipe_is_named(tmp_path):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("likeness", '{"method": "faceid", ')
    path = tmp_path / "cut.png"
    _image().save(path, pnginfo=info)
    with pytest.raises(BadInput, match=r"cut\.png has a damaged Likeness recipe"):
        read_recipe(path)
    info = PngImagePlugin.PngInfo()
    info.add_itxt("likeness", "[1, 2]")
    _image().save(path, pnginfo=info)
    with pytest.raises(BadInput, match="not a JSON object"):
        read_recipe(path)


def test_pixels_are_written_at_the_fast_zlib_level(tmp_path):
    """The image data is deflated at level 4 (ComfyUI's SaveImage level), not
    Pillow's slower default 6: zlib records the level class in the stream header
    (FLEVEL 1 = levels 2-5, 2 = level 6), and the pixels still read back exactly."""
    import struct
    import zlib

    img = _image()
    out = save_png(img, tmp_path / "fast.png", parameters="p", recipe=RECIPE)
    data, pos, idat = out.read_bytes(), 8, b""
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    assert idat[1] >> 6 == 1  # FLEVEL of the zlib header
    assert len(zlib.decompress(idat)) > 0
    with Image.open(out) as back:
        np.testing.assert_array_equal(np.asarray(back.convert("RGB")), np.asarray(img))
