"""Template portraits ("put me in this photo"): the user's face in a photo they
chose. The template is kept; only its face region is re-generated, by SDXL
inpainting (the base UNet through the inpaint views of `pipelines/detail.py`)
with the identity method's conditioning and, for InstantID, the keypoints of
the template's own face, so the new face sits where the old one was.

Rules:
- A template is a photo: a name from `assets/templates/` (shipped) or the
  user's templates folder (`templates/` beside the loras folder), or a path to a
  photo file. Names are confined to those folders; files go through the app's
  photo loader (regular files, size and pixel caps, EXIF orientation).
- The template must show a face (`template_face` picks one of several, numbered
  as everywhere: 1 = the largest). No face is a `BadInput` naming the file.
- The mask is the face box grown by `FACE_GROW` on each side (hair line, chin,
  cheeks), dilated and blurred as in the face-detail pass. Pixels where the mask
  is 0 are the template's exactly (the inpaint pipeline pastes the result back
  through the mask).
- The face crop is processed at the request's size (or the SDXL bucket nearest
  the template's aspect); the output has the template's size.
- `template_strength` (default 0.85) is the denoise of the face region: high
  enough for another person's face, below 1 so the template's light and
  colours carry over (FaceChain's inpaint mode takes the user's strength too).

Why the base UNet and not the SDXL inpainting model: the catalog has
diffusers/stable-diffusion-xl-1.0-inpainting-0.1 (`sdxl-inpainting`, a 9-channel
UNet), but templates do not load it, deliberately.
- The identity adapters (FaceID Plus v2, InstantID's IP part and IdentityNet,
  PuLID) were trained against the SDXL base UNet; the inpainting UNet is a
  separate fine-tune they were not trained on, so likeness is not known to carry.
- The adapters live in the resident base UNet (attention processors, LoRAs,
  hooks). Using the inpainting UNet would mean a second 5 GB UNet in memory with
  every adapter installed into it again, for each method, not a small switch.
- With a 4-channel UNet, diffusers' StableDiffusionXLInpaintPipeline blends the
  template's noised latents outside the mask at every step
  (pipeline_stable_diffusion_xl_inpaint.py, `num_channels_unet == 4`), and the
  result is pasted back through the mask, so the template is kept exactly.
Users who want the inpainting model for their own workflows can fetch it with
`models download sdxl-inpainting` and load it with
`StableDiffusionXLInpaintPipeline.from_pretrained(<folder>, variant="fp16")`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadInput
from .types import EngineServices

ASSETS_TEMPLATES = Path(__file__).resolve().parents[1] / "assets" / "templates"
TEMPLATE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
FACE_GROW = 0.15  # of the face box's width/height, on each side


def user_templates_dir(settings) -> Path:
    return Path(settings.loras_dir).parent / "templates"


def list_templates(settings) -> dict[str, Path]:
    """Template name -> file: the shipped ones, then the user's (a user file with
    a shipped name replaces it)."""
    found: dict[str, Path] = {}
    for folder in (ASSETS_TEMPLATES, user_templates_dir(settings)):
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                if p.suffix.lower() in TEMPLATE_SUFFIXES and p.is_file() and not p.name.startswith("."):
                    found[p.stem] = p
    return found


def resolve_template(settings, name: str) -> Path:
    """The file of template `name` (a name or a photo path)."""
    from .imageio import MAX_PHOTO_BYTES, regular_file

    if "/" in name or "\\" in name or Path(name).suffix.lower() in TEMPLATE_SUFFIXES:
        path = Path(name).expanduser()
        regular_file(path, f"template {name}", max_bytes=MAX_PHOTO_BYTES)
        return path
    from .paths import check_name

    check_name(name, "template")
    known = list_templates(settings)
    if name not in known:
        raise BadInput(f"template: no template named {name!r}; known: {', '.join(sorted(known)) or 'none'} "
                       f"(add your own to {user_templates_dir(settings)}).")
    return known[name]


@dataclass
class Template:
    name: str
    file: Path
    image: Any  # PIL RGB
    face: Any  # the chosen detection (.bbox, .kps)
    n_faces: int

    @property
    def box(self) -> list[float]:
        return [float(v) for v in np.asarray(self.face.bbox).reshape(4)]

    def mask(self):
        from .detail import face_mask

        x1, y1, x2, y2 = self.box
        gx, gy = (x2 - x1) * FACE_GROW, (y2 - y1) * FACE_GROW
        return face_mask(self.image.size, (x1 - gx, y1 - gy, x2 + gx, y2 + gy))

    def describe(self) -> dict:
        return {"template": self.name, "size": list(self.image.size), "faces": self.n_faces,
                "box": [int(round(v)) for v in self.box]}


def load_template(engine: EngineServices, req) -> Template:
    """The request's template with its chosen face; errors name the file."""
    from PIL import Image

    from .detail import detect_faces
    from .finishing import check_denoise_steps
    from .imageio import load_photo_array

    check_denoise_steps(req.steps, req.template_strength, "template_strength")
    path = resolve_template(engine.settings, req.template)
    rgb = load_photo_array(path, name=f"template {path.name}", max_pixels=engine.settings.max_image_pixels,
                           max_side=engine.settings.max_photo_side)
    image = Image.fromarray(rgb)
    faces = detect_faces(engine, image)
    if not faces:
        raise BadInput(f"template {path.name}: no face found in it; choose a photo with a clearly visible face.")
    if req.template_face > len(faces):
        raise BadInput(f"template_face {req.template_face}: template {path.name} has {len(faces)} "
                       f"face{'s' if len(faces) != 1 else ''}.")
    return Template(req.template if path.parent in (ASSETS_TEMPLATES, user_templates_dir(engine.settings))
                    else path.name, path, image, faces[req.template_face - 1], len(faces))


class TemplateRun:
    """Stands in for the pipeline in the engine's image loop: each call inpaints
    the template's face with the call's seed (one image per generator)."""

    def __init__(self, engine: EngineServices, ctx, template: Template, req):
        self.engine, self.ctx, self.template, self.req = engine, ctx, template, req

    def __call__(self, **kwargs):
        from .detail import inpaint_face

        gens = kwargs.get("generator")
        gens = gens if isinstance(gens, list) else [gens]
        mask = self.template.mask()
        images = [inpaint_face(self.engine, self.ctx, self.template.image, mask, self.req, int(g.initial_seed()),
                               kps=self.template.face.kps, face_box=self.template.box,
                               strength=self.req.template_strength)
                  for g in gens]
        return _Output(images)


@dataclass
class _Output:
    images: list


def template_run(engine: EngineServices, req, run, pipe, method, cond, units, identity, width: int, height: int, template,
                 cancel=None) -> TemplateRun:
    """The runner for `req` (records the template in the method details)."""
    from .finishing import FinishingSteps

    ctx = FinishingSteps(engine, run, pipe, method, cond, units, identity, width, height, cancel)
    cond.recipe["template"] = {**template.describe(), "strength": req.template_strength}
    return TemplateRun(engine, ctx, template, req)
