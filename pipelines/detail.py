"""The face-detail pass: each face of a generated image is re-generated at a
higher resolution with the same identity conditioning, then pasted back.

It follows ADetailer's documented defaults (Bing-su/adetailer, behaviour only:
`args.py`, `scripts/!adetailer.py`) on AUTOMATIC1111's "inpaint only masked":
1. faces are detected in the output (the app's SCRFD detector, in its face
   order: 1 = the largest); each box becomes a filled rectangle, dilated by
   4 px and blurred (Gaussian, sigma 4) into a feathered mask;
2. one inpaint per face, in order, each on the previous one's result: the
   pipeline crops the mask's box plus 32 px of padding, grown to the
   generation's aspect, resizes it to the generation size (so a small face is
   re-generated at a higher resolution), denoises at `face_detail_strength`
   (0.4) with the generation's prompt, steps, cfg, sampler and identity
   conditioning, seed + face index, and pastes the result back through the
   blurred mask (diffusers `padding_mask_crop` / `apply_overlay`, a copy of
   A1111's algorithm); pixels where the mask is 0 are the input's exactly;
3. the likeness score before and after goes into the recipe; with
   `face_detail_keep_better` the pre-pass image is kept when it scores higher.

The inpaint pipelines are views over the resident components (the base UNet
with the identity adapter's processors, LoRAs and hooks): the SDXL inpaint
pipeline blends the known latents each step when the UNet has 4 channels, so
no inpainting model is needed. InstantID goes through the ControlNet inpaint
pipeline: IdentityNet gets the keypoints of the detected face drawn on the
full canvas (the pipeline crops them with the same box), and its face region
(the "enhance non-face region" mask) is moved to where the face lands in the
processed crop. Deviation from ADetailer: a pose ControlNet stays on (ADetailer
turns ControlNet units off unless "passthrough") because it is the same unit
list the generation ran with; `--pose-scale 0` removes its effect.

The pass is given the engine as `EngineServices` (pipelines/types.py) and the
generation's `FinishingSteps` (pipelines/finishing.py) as `ctx`; it imports
neither module, and two people are scored through `ctx.people_likeness`.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import numpy as np

from .types import EngineServices

if TYPE_CHECKING:
    from PIL import Image

MASK_DILATE = 4  # px, RECT kernel (ADetailer default)
MASK_BLUR = 4  # sigma, A1111 mask blur default
CROP_PADDING = 32  # px, A1111 "only masked padding" default


def face_mask(size: tuple[int, int], box) -> Image.Image:
    """The feathered mask (PIL "L", full canvas) of one face box."""
    import cv2
    from PIL import Image

    w, h = size
    x1, y1, x2, y2 = [int(round(v)) for v in box]
    hard: np.ndarray = np.zeros((h, w), np.uint8)
    hard[max(0, y1):min(h, y2), max(0, x1):min(w, x2)] = 255
    hard = cv2.dilate(hard, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * MASK_DILATE + 1,) * 2))
    k = 2 * int(2.5 * MASK_BLUR + 0.5) + 1  # A1111's kernel size for a blur of sigma MASK_BLUR
    soft = cv2.GaussianBlur(hard, (k, k), MASK_BLUR)
    return Image.fromarray(soft, "L")


def inpaint_pipe(engine: EngineServices, pipe, units):
    """An inpaint view over the resident components (no copies), with the generation's
    ControlNets when it had any (InstantID's IdentityNet); see `Engine.view`."""
    return engine.view(pipe, "inpaint", units)


def crop_box(mask, width: int, height: int) -> tuple[int, int, int, int]:
    """The image box the inpaint pipeline processes for `mask` (diffusers' copy of
    A1111's get_crop_region + expand to the processing aspect)."""
    from diffusers.image_processor import VaeImageProcessor

    x1, y1, x2, y2 = (int(v) for v in VaeImageProcessor.get_crop_region(mask, width, height, pad=CROP_PADDING))
    return x1, y1, x2, y2


def inpaint_face(engine: EngineServices, ctx, image, mask, req, seed: int, kps=None, face_box=None, strength: float | None = None,
                 index: int = 0):
    """One masked re-generation of `image` (PIL) under `mask` at the generation
    size with the generation's conditioning. `kps`/`face_box` (image pixels):
    the face being re-generated, for InstantID's keypoint image and face region."""
    import inspect

    from .pose.render import render_face_keypoints

    run = inpaint_pipe(engine, ctx.pipe, ctx.units)
    run.scheduler = engine.scheduler(req.sampler)
    W, H = image.size
    kwargs = engine.call_kwargs(req, ctx.cond, ctx.units, ctx.width, ctx.height, seed, None, ctx.cancel, index)
    region: Any = None  # InstantID's face region (pipelines/identity/instantid.py), when a unit has one
    saved: tuple | None = None
    if ctx.units:
        images = kwargs.pop("image")
        images = images if isinstance(images, list) else [images]
        control = []
        for unit, img in zip(ctx.units, images):
            if getattr(unit, "method", None) is not None and kps is not None:  # InstantID's IdentityNet
                img = render_face_keypoints(np.asarray(kps, np.float32), W, H)
                region = unit.method.region
            control.append(img if img.size == (W, H) else img.resize((W, H)))
        kwargs["control_image"] = control if len(control) > 1 else control[0]
    if region is not None and region.active and face_box is not None:
        saved = (region.mask, dict(region._cache))
        region.set_box(_box_in_crop(face_box, crop_box(mask, ctx.width, ctx.height), ctx.width, ctx.height),
                       ctx.width, ctx.height, region.mask.device, region.mask.dtype)
    kwargs.update(image=image, mask_image=mask, padding_mask_crop=CROP_PADDING, output_type="pil",
                  strength=req.face_detail_strength if strength is None else strength)
    accepted = set(inspect.signature(run.__call__).parameters)
    try:
        out = run(**{k: v for k, v in kwargs.items() if k in accepted}).images[0]
    finally:
        if saved is not None:
            region.mask, region._cache = saved[0], saved[1]
    return out


def _box_in_crop(box, crop, width: int, height: int):
    """`box` (image pixels) in the coordinates of `crop` resized to width x height."""
    cx1, cy1, cx2, cy2 = crop
    sx, sy = width / max(1, cx2 - cx1), height / max(1, cy2 - cy1)
    x1, y1, x2, y2 = box
    return ((x1 - cx1) * sx, (y1 - cy1) * sy, (x2 - cx1) * sx, (y2 - cy1) * sy)


def detect_faces(engine: EngineServices, image):
    """The faces of `image` with the first SCRFD pack on disk (the restore stage's choice)."""
    from .restore.stage import DETECTOR_PACKS

    pack = next((p for p in DETECTOR_PACKS if engine.settings.profile.builds_models or engine.store.status(p).present),
                DETECTOR_PACKS[0])  # none on disk: ensure() then names what to download
    return engine.analyzer(pack).detect(np.asarray(image.convert("RGB")), "output")


def face_detail_pass(ctx, image, req, recipe: dict):
    """Run the pass on `image` and record it in `recipe["face_detail"]`."""
    engine = ctx.engine
    seed = int(recipe["seed"])
    faces = detect_faces(engine, image)
    entry: dict = {"strength": req.face_detail_strength, "padding": CROP_PADDING, "mask_blur": MASK_BLUR,
                   "faces": []}
    if not faces:
        entry["note"] = "no face found in the output; nothing re-generated"
        recipe["face_detail"] = entry
        return image
    before = image
    with _per_person(ctx, req) as person_ctx:
        for j, face in enumerate(faces):
            box = [float(v) for v in np.asarray(face.bbox).reshape(4)]
            mask = face_mask(image.size, box)
            face_ctx, person = person_ctx(box, image.size)
            image = inpaint_face(engine, face_ctx, image, mask, req, (seed + j) % 2**32, kps=face.kps, face_box=box,
                                 index=j)
            entry["faces"].append({"face": j + 1, "box": [int(round(v)) for v in box], "seed": (seed + j) % 2**32,
                                   "crop": list(crop_box(mask, ctx.width, ctx.height)),
                                   **({"person": person} if person else {})})
    if getattr(ctx, "people", None) is not None:  # two people: per person, compared by their mean
        lists = [ctx.people_likeness(im, req.method) for im in (before, image)]
        entry["likeness_before"], entry["likeness_after"] = [
            {"people": people, "mean": _people_mean(people)} for people in lists]
        if req.face_detail_keep_better and _mean(entry["likeness_before"]) > _mean(entry["likeness_after"]):
            entry["kept"] = "before"
            recipe["face_detail"] = entry
            return before
    elif ctx.identity is not None:
        from .scoring import score_image

        entry["likeness_before"] = score_image(engine, before, ctx.identity, req.method)
        entry["likeness_after"] = score_image(engine, image, ctx.identity, req.method)
        if req.face_detail_keep_better and _mean(entry["likeness_before"]) > _mean(entry["likeness_after"]):
            entry["kept"] = "before"
            recipe["face_detail"] = entry
            return before
    entry["kept"] = "after"
    recipe["face_detail"] = entry
    return image


@contextlib.contextmanager
def _per_person(ctx, req):
    """`(face box, image size) -> (steps context, person number or None)`. With two
    people each face is re-generated with its own person's single-person
    conditioning (the person whose layout box holds the face's centre); the
    method state that conditioning sets (FaceID's CLIP features, InstantID's face
    tokens and region) is put back afterwards for the next image of the run."""
    import dataclasses

    people = getattr(ctx, "people", None)
    if people is None:
        yield lambda box, size: (ctx, None)
        return
    method, pipe = ctx.method, ctx.pipe
    proj = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    saved = (getattr(proj, "clip_embeds", None), getattr(method, "_clip", None), getattr(method, "_tokens", None),
             getattr(method, "region", None) and (method.region.mask, dict(method.region._cache)))
    per: dict = {}

    def for_face(box, size):
        w, h = size
        cx, cy = (box[0] + box[2]) / 2 / w, (box[1] + box[3]) / 2 / h
        k = next((i for i, p in enumerate(people.layout.people[:2])
                  if p.box[0] <= cx < p.box[2] and p.box[1] <= cy < p.box[3]), 0)
        if k not in per:
            cond = method.conditioning(pipe, people.identities[k], req, ctx.width, ctx.height)
            per[k] = dataclasses.replace(ctx, cond=cond, units=list(cond.controlnets))
        else:  # the method's state follows the last conditioning made: make person k's again
            per[k] = dataclasses.replace(per[k], cond=method.conditioning(pipe, people.identities[k], req,
                                                                          ctx.width, ctx.height))
        return per[k], k + 1

    try:
        yield for_face
    finally:
        if saved[0] is not None:
            proj.clip_embeds = saved[0]
        if hasattr(method, "_clip"):
            method._clip = saved[1]
        if hasattr(method, "_tokens"):
            method._tokens = saved[2]
        if saved[3]:
            method.region.mask, method.region._cache = saved[3]
        elif getattr(method, "region", None) is not None:
            method.region.clear()


def _people_mean(people: list[dict]) -> float | None:
    means = [p["mean"] for p in people if p.get("mean") is not None]
    return round(sum(means) / len(means), 4) if means else None


def _mean(likeness: dict | None) -> float:
    m = (likeness or {}).get("mean")
    return float(m) if m is not None else float("-inf")
