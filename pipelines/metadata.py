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

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping
from xml.sax.saxutils import quoteattr

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from . import __version__
from .errors import BadInput, UnreadableImage
from .imageio import DEFAULT_MAX_PIXELS, pil_decoding_limits
from .paths import atomic_path

PARAMETERS_KEY = "parameters"
RECIPE_KEY = "likeness"
XMP_KEY = "XML:com.adobe.xmp"
COMMENT_KEY = "Comment"
SOFTWARE_KEY = "Software"
DEMO_NOTICE = "demo models: random weights"
AI_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
_IPTC_EXT_NS = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"

# Keys in the A1111 parameter line must match what its parser accepts
# (a word character, then words, spaces, '-' or '/'), and never contain ':' or ','.
_PARAM_KEY_RE = re.compile(r"^\w[\w \-/]*$")


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
    if "," in text or ":" in text or "\n" in text or text.startswith('"'):
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
    model_name: str,
    model_hash: str,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The A1111 infotext:

        <prompt>
        Negative prompt: <negative>          (omitted when empty)
        Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 5, Seed: 7, Size: 1024x1024, Model hash: ..., Model: ..., <extra>

    `model_hash` is written as given; A1111 uses the first 10 hex digits of the
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
    text = prompt.strip()
    if negative and negative.strip():
        text += f"\nNegative prompt: {negative.strip()}"
    return f"{text}\n{line}"


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
    demo: bool,
) -> Path:
    """Write `image` to `path` (atomically: the file appears whole or not at all)
    with the A1111 parameters, the JSON recipe and the AI-generated marker.
    With `demo`, the recipe gains `"demo": DEMO_NOTICE` and a Comment chunk says
    the same. The caller confines `path` to the outputs folder."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise BadInput(f"output file {path} must end in .png.")
    stored = dict(recipe)
    if demo:
        stored["demo"] = DEMO_NOTICE
    # Serialise before touching the disk: an unserialisable recipe is a bug, and
    # must not leave a half-written file behind.
    recipe_json = json.dumps(stored, ensure_ascii=False, sort_keys=True, allow_nan=False)

    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, parameters)  # tEXt, or iTXt when not Latin-1 (as A1111)
    info.add_itxt(RECIPE_KEY, recipe_json)
    info.add_itxt(XMP_KEY, xmp_packet())  # XMP readers expect it uncompressed
    info.add_text(SOFTWARE_KEY, f"Likeness {__version__}")
    if demo:
        info.add_text(COMMENT_KEY, DEMO_NOTICE)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


def read_recipe(path: Path | str) -> dict:
    """The JSON recipe stored by `save_png`. Raises `BadInput` naming the file
    when it is not a PNG or holds no (valid) Likeness recipe."""
    label = os.fspath(path)
    raw = None
    try:
        with pil_decoding_limits(DEFAULT_MAX_PIXELS), Image.open(path, formats=["PNG"]) as img:
            raw = img.info.get(RECIPE_KEY)
            if raw is None:
                # Some tools move text chunks behind the pixel data; reaching them
                # means decoding the image (bounded by the pixel cap above).
                raw = img.text.get(RECIPE_KEY)
    except FileNotFoundError:
        raise BadInput(f"{label} does not exist; check the path.") from None
    except IsADirectoryError:
        raise BadInput(f"{label} is a folder; give a PNG written by Likeness.") from None
    except UnidentifiedImageError:
        raise BadInput(f"{label} is not a PNG file; give a PNG written by Likeness.") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadInput(
            f"{label} declares more than {DEFAULT_MAX_PIXELS:,} pixels; give a PNG written by Likeness."
        ) from None
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
        raise BadInput(f"{label} has a damaged Likeness recipe ({e.msg}); use another image.") from None
    if not isinstance(recipe, dict):
        raise BadInput(f"{label} has a damaged Likeness recipe (not a JSON object); use another image.")
    return recipe
