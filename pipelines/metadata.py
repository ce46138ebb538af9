"""PNG outputs that carry how they were made.

Every image we write holds three things in PNG text chunks:

- `parameters`: the A1111 "infotext" (prompt, negative prompt, then one line of
  `Key: value` pairs), the de-facto format that A1111, Forge, ComfyUI loaders
  and Civitai parse;
- `likeness`: the full JSON recipe (iTXt, UTF-8), enough for
  `launch.py generate --recipe` to reproduce the image;
- XMP (`XML:com.adobe.xmp`) with IPTC `DigitalSourceType` =
  `trainedAlgorithmicMedia`, the standard "made by a generative model" label.

Images made with the random-weight demo models also say so, in a `Comment`
chunk and in the recipe, so nobody mistakes them for real output."""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from . import __version__
from .errors import BadInput, UnreadableImage
from .imageio import DEFAULT_MAX_PIXELS, pil_decoding_limits, read_user_file
from .paths import atomic_path
from .profile import DEMO_NOTICE as DEMO_NOTICE  # what an image made with the demo models says

PARAMETERS_KEY = "parameters"
RECIPE_KEY = "likeness"
XMP_KEY = "XML:com.adobe.xmp"
COMMENT_KEY = "Comment"
SOFTWARE_KEY = "Software"
AI_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
_IPTC_EXT_NS = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
# zlib level of the pixel data: ComfyUI's SaveImage default (comfyanonymous/ComfyUI
# nodes.py). Pillow's default, 6, took 0.59 s for a 1024² photo where 4 took 0.13 s,
# for a file 1% larger; the pixels are the same (PNG is lossless).
PNG_COMPRESS_LEVEL = 4

# Keys in the A1111 parameter line must match what its parser accepts
# (a word character, then words, spaces, '-' or '/'), and never contain ':' or ','.
_PARAM_KEY_RE = re.compile(r"^\w[\w \-/]*$")
# Text in the prompt must not forge the lines infotext parsers look for (A1111's
# `parse_generation_parameters` takes a line starting "Negative prompt:" as the
# start of the negative prompt; others take the first line starting "Steps:").
# Multi-line prompts keep their line breaks, but a line that starts like such a
# line ("Word:") is joined to the line before it; every other control character
# (\r, \x0b, U+2028, ...) becomes a space. The recipe keeps the exact text.
_INFOTEXT_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]+")
_KEY_LINE = re.compile(r"^\s*\w[\w \-/]*:")
MAX_RECIPE_PNG_BYTES = 256 * 1024 * 1024


def _infotext_block(text: str) -> str:
    lines = [ln.strip() for ln in _INFOTEXT_CONTROL.sub(" ", text).strip().split("\n")]
    out: list[str] = []
    for line in lines:
        if out and _KEY_LINE.match(line):
            out[-1] = f"{out[-1]} {line}".strip()
        else:
            out.append(line)
    if out and out[0].lower().startswith("negative prompt:"):
        out[0] = "Negative prompt -" + out[0][len("negative prompt:"):]
    return "\n".join(out)


# --------------------------------------------------------------------------- A1111 infotext


def _param_value(value: Any) -> str:
    if isinstance(value, bool):
        text = str(value)
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (int, str)):
        text = str(value)
    else:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    # A1111 quotes a value (as JSON) only when it would break the line's syntax.
    if "," in text or ":" in text or "\n" in text or _INFOTEXT_CONTROL.search(text) or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def a1111_parameters(
    prompt: str,
    negative: str,
    steps: int,
    sampler: str,
    cfg: float,
    seed: int,
    width: int,
    height: int,
    model_name: str | None,
    model_hash: str | None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The A1111 infotext:

        <prompt>
        Negative prompt: <negative>          (omitted when empty)
        Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 5, Seed: 7, Size: 1024x1024, Model hash: ..., Model: ..., <extra>

    `model_hash` is written as given (left out when empty or None); A1111 uses the first 10 hex digits of the
    checkpoint's SHA-256. `extra` values of None are left out."""
    fields: dict[str, Any] = {
        "Steps": int(steps),
        "Sampler": sampler,
        "CFG scale": float(cfg),
        "Seed": int(seed),
        "Size": f"{int(width)}x{int(height)}",
        "Model hash": model_hash or None,
        "Model": model_name or None,
    }
    for key, value in (extra or {}).items():
        if not isinstance(key, str) or not _PARAM_KEY_RE.match(key):
            raise ValueError(
                f"parameter name {key!r} is not allowed in A1111 parameters; use letters, digits, "
                "spaces, '-' or '/'."
            )
        if key in fields:
            raise ValueError(f"parameter name {key!r} is already part of the A1111 parameters.")
        fields[key] = value
    line = ", ".join(f"{k}: {_param_value(v)}" for k, v in fields.items() if v is not None)
    text = _infotext_block(prompt)
    if negative and _infotext_block(negative):
        text += f"\nNegative prompt: {_infotext_block(negative)}"
    return f"{text}\n{line}"


def lora_hashes(loras: Any) -> str | None:
    """The infotext's `Lora hashes` value, `name: hash, name: hash`, as A1111's
    built-in Lora extension writes it (extensions-builtin/Lora/networks.py: the
    network's alias with ':' and ',' removed, and its `shorthash`, the first 12
    hex digits of the file's SHA-256), which Civitai reads to link the LoRAs.
    `loras` is the recipe's list of {"name", "weight", "sha256"}; None if empty."""
    items = []
    for lo in loras or []:
        if not isinstance(lo, Mapping) or not lo.get("sha256"):
            continue
        alias = str(lo.get("name", "")).rsplit("/", 1)[-1].replace(":", "").replace(",", "")
        items.append(f"{alias}: {str(lo['sha256'])[:12]}")
    return ", ".join(items) or None


# --------------------------------------------------------------------------- XMP


def xmp_packet() -> str:
    """An XMP packet that labels the image as made by a trained generative model."""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        f'    xmlns:Iptc4xmpExt="{_IPTC_EXT_NS}"\n'
        '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
        f"    Iptc4xmpExt:DigitalSourceType={quoteattr(AI_SOURCE_TYPE)}\n"
        f"    xmp:CreatorTool={quoteattr(f'Likeness {__version__}')}/>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="r"?>'
    )


# --------------------------------------------------------------------------- write / read


def save_png(
    image: Image.Image,
    path: Path | str,
    *,
    parameters: str,
    recipe: Mapping[str, Any],
    notice: str | None = None,
) -> Path:
    """Write `image` to `path` (atomically: the file appears whole or not at all)
    with the A1111 parameters, the JSON recipe and the AI-generated marker.
    With a `notice` (the run profile's, `settings.profile.notice`: demo models
    say "demo models: random weights") the recipe gains `"demo": notice` and a
    Comment chunk says the same.
    The caller confines `path` to the outputs folder."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise BadInput(f"output file {path} must end in .png.")
    stored = dict(recipe)
    if notice:
        stored["demo"] = notice
    # Serialise before touching the disk: an unserialisable recipe is a bug, and
    # must not leave a half-written file behind.
    recipe_json = json.dumps(stored, ensure_ascii=False, sort_keys=True, allow_nan=False)

    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, parameters)  # tEXt, or iTXt when not Latin-1 (as A1111)
    info.add_itxt(RECIPE_KEY, recipe_json)
    info.add_itxt(XMP_KEY, xmp_packet())  # XMP readers expect it uncompressed
    info.add_text(SOFTWARE_KEY, f"Likeness {__version__}")
    if notice:
        info.add_text(COMMENT_KEY, notice)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    return path


def read_recipe(path: Path | str) -> dict:
    """The JSON recipe stored by `save_png`. Raises `BadInput` naming the file
    when it is not a PNG or holds no (valid) Likeness recipe."""
    label = os.fspath(path)
    if os.path.isdir(path):
        raise BadInput(f"{label} is a folder; give a PNG written by Likeness.")
    data = read_user_file(path, label, max_bytes=MAX_RECIPE_PNG_BYTES)  # a regular file, bounded
    raw = None
    try:
        with pil_decoding_limits(DEFAULT_MAX_PIXELS), Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            raw = img.info.get(RECIPE_KEY)
            if raw is None:
                # Some tools move text chunks behind the pixel data; reaching them
                # means decoding the image (bounded by the pixel cap above).
                assert isinstance(img, PngImagePlugin.PngImageFile)  # opened with formats=["PNG"]
                raw = img.text.get(RECIPE_KEY)
    except FileNotFoundError as exc:
        raise BadInput(f"{label} does not exist; check the path.") from exc
    except IsADirectoryError as exc:
        raise BadInput(f"{label} is a folder; give a PNG written by Likeness.") from exc
    except UnidentifiedImageError as exc:
        raise BadInput(f"{label} is not a PNG file; give a PNG written by Likeness.") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadInput(
            f"{label} declares more than {DEFAULT_MAX_PIXELS:,} pixels; give a PNG written by Likeness."
        ) from exc
    except Exception as e:  # damaged chunks raise OSError, SyntaxError, ValueError, ...
        reason = " ".join(str(e).split()) or type(e).__name__
        raise UnreadableImage(f"{label} is unreadable: {reason}.") from e
    if raw is None:
        raise BadInput(
            f"{label} has no Likeness recipe (no '{RECIPE_KEY}' text chunk); "
            "give a PNG written by Likeness."
        )
    try:
        recipe = json.loads(str(raw))
    except ValueError as e:
        raise BadInput(f"{label} has a damaged Likeness recipe ({getattr(e, 'msg', e)}); use another image.") from e
    except RecursionError as e:
        raise BadInput(f"{label} has a damaged Likeness recipe (nested too deeply); use another image.") from e
    if not isinstance(recipe, dict):
        raise BadInput(f"{label} has a damaged Likeness recipe (not a JSON object); use another image.")
    return recipe


# --------------------------------------------------------------------------- reading other apps' PNGs

# one `Key: value` of the infotext's last line; a value is a JSON string or runs to
# the next comma (A1111 modules/infotext_utils.py `re_param`)
_PARAM_RE = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_A1111_FIELDS = {"Steps": ("steps", int), "Sampler": ("sampler", str), "CFG scale": ("cfg", float),
                 "Seed": ("seed", int)}


def png_text_chunks(path: Path | str) -> dict[str, str]:
    """The text chunks of a PNG that come before its pixel data (where Likeness,
    A1111 and ComfyUI write them), read without decoding the image; {} when the
    file is not a readable PNG. The file is a regular, size-capped user file."""
    data = read_user_file(path, os.fspath(path), max_bytes=MAX_RECIPE_PNG_BYTES)
    try:
        with pil_decoding_limits(DEFAULT_MAX_PIXELS), Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            return {k: v for k, v in img.info.items() if isinstance(k, str) and isinstance(v, str)}
    except Exception:  # not a PNG, damaged or over the pixel cap: it simply holds no settings
        return {}


def parse_a1111(text: str) -> dict[str, Any]:
    """`GenerateRequest` fields from an A1111 infotext: prompt, negative, steps,
    sampler (A1111 titles are accepted by the request), cfg, seed, width, height.
    Keys it does not know are left out; `<lora:...>` tags stay in the prompt."""
    lines = text.strip().split("\n")
    params = ""
    if lines and re.match(r"\s*Steps:", lines[-1]):
        params = lines.pop()
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].lstrip()
        (negative if in_negative else prompt).append(line)
    out: dict[str, Any] = {"prompt": "\n".join(prompt).strip()}
    if negative:
        out["negative"] = "\n".join(negative).strip()
    for key, value in _PARAM_RE.findall(params):
        key, value = key.strip(), value.strip()
        if value.startswith('"'):
            try:
                value = json.loads(value)
            except ValueError:
                continue
        try:
            if key in _A1111_FIELDS:
                field, cast = _A1111_FIELDS[key]
                out[field] = cast(value)
            elif key == "Size":
                w, h = value.lower().split("x")
                out["width"], out["height"] = int(w), int(h)
        except ValueError:
            continue  # an odd value is left out, the rest is still useful
    return out


def png_settings(path: Path | str) -> tuple[str, dict[str, Any]]:
    """("likeness", recipe) or ("a1111", request fields) for a PNG that carries
    settings; `BadInput` naming the file when it carries neither."""
    chunks = png_text_chunks(path)
    if RECIPE_KEY in chunks:
        return "likeness", read_recipe(path)
    if chunks.get(PARAMETERS_KEY, "").strip():
        fields = parse_a1111(chunks[PARAMETERS_KEY])
        if fields.get("prompt"):
            return "a1111", fields
    raise BadInput(f"{Path(path).name} holds no Likeness recipe and no A1111 parameters; "
                   "give a PNG written by Likeness or AUTOMATIC1111.")
