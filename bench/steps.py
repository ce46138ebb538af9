"""Cost of each engine step beyond one portrait, against plain diffusers/spandrel
doing the same step (used by bench/generate.py; prints nothing itself).

The engine side is the engine's own step (upscale: its tiled upscaler; face
detail: its pass on a photo with a face; template: a whole `Engine.generate`
with the template, detection, scoring and PNG included), medians of
`--repeats` calls. The plain side is the step alone as a diffusers/spandrel user
would write it:
- upscale: spandrel's ModelLoader on the same converted file, one untiled pass,
  then a Lanczos resize to the factor;
- face detail: StableDiffusionXLInpaintPipeline.from_pretrained (same folder)
  with the same mask, padding_mask_crop, strength and steps, no identity;
- template: the same plain inpaint of the template's face region;
- two people: no plain counterpart (diffusers has no two-identity pipeline);
  reported as the engine's two-person generate against its one-person one.
"""

from __future__ import annotations

import statistics

from bench.timing import time_calls


def _median(fn, n: int) -> float:
    return statistics.median(time_calls(fn, max(1, n)))


def step_costs(engine, ctx, args, request, load_sdxl) -> dict:
    """{step: {engine_seconds, plain_seconds, ratio}}; `request(method)` makes the
    bench's request, `load_sdxl(ctx, cls)` loads the plain pipeline."""
    import diffusers
    import numpy as np
    from PIL import Image

    method = next((m for m in args.methods if m != "none"), None)
    if method is None:
        return {}
    base_req = request(method)
    n = args.repeats
    gen = lambda req: engine.generate(req)  # noqa: E731
    out: dict = {}

    # upscale x2
    from pipelines.upscale import UPSCALERS, get_upscaler

    up_req = base_req.model_copy(update={"upscale": 2.0})
    gen(up_req)  # loads the upscaler
    spec = UPSCALERS[up_req.upscaler]
    from spandrel import ModelLoader

    from pipelines.restore.spandrel_restorer import _unwrap

    loader = ModelLoader(device=ctx.device)
    desc = loader.load_from_state_dict(_unwrap(loader.load_state_dict_from_file(
        engine.store.file_path(spec.model, spec.weights)))).to(ctx.device).eval()
    image = gen(base_req).images[0].image
    upscaler = get_upscaler(engine, up_req.upscaler)

    def plain_upscale():
        import torch

        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float().div(255).to(ctx.device)
        with torch.inference_mode():
            y = desc(x)
        big = Image.fromarray((y[0].clamp(0, 1) * 255).byte().permute(1, 2, 0).cpu().numpy())
        return big.resize((image.width * 2, image.height * 2), Image.Resampling.LANCZOS)

    out["upscale_x2"] = _pair(_median(lambda: upscaler.upscale(image, 2.0), n), _median(plain_upscale, n))

    # face detail and template: the engine's pass on a real face vs a plain inpaint
    from pipelines.detail import CROP_PADDING, detect_faces, face_detail_pass, face_mask

    inpaint = load_sdxl(ctx, diffusers.StableDiffusionXLInpaintPipeline)
    photo = Image.open(ctx.photo).convert("RGB").resize((ctx.width * 2, ctx.height * 2))
    faces = []
    if int(ctx.steps * 0.4) < 1:  # the pass would run no denoising step: the engine refuses it
        out["face_detail"] = out["template"] = f"skipped: {ctx.steps} steps x denoise 0.4 is no step"
    else:
        gen(base_req.model_copy(update={"face_detail": True}))
        faces = detect_faces(engine, photo)
    steps_ctx = engine._finishing
    if faces:
        detail_req = base_req.model_copy(update={"face_detail": True})
        mask = face_mask(photo.size, faces[0].bbox)

        def plain_inpaint(strength):
            kw = ctx.call_kwargs()
            kw.update(image=photo, mask_image=mask, padding_mask_crop=CROP_PADDING, strength=strength)
            return inpaint(**kw).images[0]

        out["face_detail"] = _pair(
            _median(lambda: face_detail_pass(steps_ctx, photo, detail_req, {"seed": 1}), n),
            _median(lambda: plain_inpaint(detail_req.face_detail_strength), n))
        tpl_req = base_req.model_copy(update={"template": "astronaut"})
        gen(tpl_req)
        from pipelines.templates import load_template

        tpl = load_template(engine, tpl_req)
        tmask = tpl.mask()

        def plain_template():
            kw = ctx.call_kwargs()
            kw.update(image=tpl.image, mask_image=tmask, padding_mask_crop=CROP_PADDING,
                      strength=tpl_req.template_strength)
            return inpaint(**kw).images[0]

        out["template"] = _pair(_median(lambda: gen(tpl_req), n), _median(plain_template, n))
    if method == "faceid":
        two = base_req.model_copy(update={"photos_2": list(base_req.photos)})
        gen(two)
        two_s, one_s = _median(lambda: gen(two), n), _median(lambda: gen(base_req), n)
        out["two_people"] = {"engine_seconds": round(two_s, 4), "one_person_seconds": round(one_s, 4),
                             "ratio": round(two_s / one_s, 3) if one_s > 0 else None}
    return out


def _pair(engine_s: float, plain_s: float) -> dict:
    return {"engine_seconds": round(engine_s, 4), "plain_seconds": round(plain_s, 4),
            "ratio": round(engine_s / plain_s, 3) if plain_s > 0 else None}
