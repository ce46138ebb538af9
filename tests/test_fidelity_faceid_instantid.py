"""FaceID Plus v2 and InstantID compute what their official reference code computes.

Each check compares against an independent computation written here from the
published reference (tencent-ailab/IP-Adapter `ip_adapter/ip_adapter_faceid.py`;
InstantX/InstantID `pipeline_stable_diffusion_xl_instantid.py` `draw_kps`,
`pipeline_stable_diffusion_xl_instantid_full.py` control_mask, `gradio_demo/app.py`
enhance_face_region, `ip_adapter/attention_processor.py` region_control), on the
tiny random-weight packs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import fast_request
from PIL import Image

from pipelines.requests import GenerateRequest

FAST = fast_request(without=("width", "height"))  # the size follows the photo
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]


@pytest.fixture(scope="module")
def engine(make_engine):
    return make_engine("fidelity-out")


@pytest.fixture(scope="module")
def tall_photo(photos_dir, tmp_path_factory):
    """A 512x910 portrait photo (a phone selfie's aspect) with the face near the top."""
    src = Image.open(photos_dir / "astronaut.png").convert("RGB")
    canvas = Image.new("RGB", (512, 910), (128, 128, 128))
    canvas.paste(src, (0, 0))
    path = tmp_path_factory.mktemp("tall") / "tall.png"
    canvas.save(path)
    return path


def method_ready(engine, name, photo, **kw):
    """The engine's loaded method, its pipe, the identity and a request."""
    req = GenerateRequest(photos=[str(photo)], method=name, **{**FAST, **kw})
    res = engine.generate(req)
    return engine._methods[name], engine.pipeline(), res.identity, req, res


# ================================================================ FaceID Plus v2
def independent_clip(engine, pixel_values):
    """The tiny CLIP ViT-H stand-in loaded here from its published folder, run on
    `pixel_values`; penultimate hidden states, as IPAdapterFaceIDPlusXL uses."""
    import torch
    from transformers import CLIPVisionModelWithProjection

    folder = engine.store.ensure("clip-vit-h-image-encoder") / "models" / "image_encoder"
    enc = CLIPVisionModelWithProjection.from_pretrained(folder, torch_dtype=torch.float32, local_files_only=True).eval()
    with torch.no_grad():
        return enc(pixel_values, output_hidden_states=True).hidden_states[-2], enc


def test_faceid_uncond_clip_is_the_encoder_on_zero_pixels(engine, photos_dir):
    import torch
    from transformers import CLIPImageProcessor

    method, pipe, identity, req, _ = method_ready(engine, "faceid", photos_dir / "astronaut.png", width=64, height=64)
    uncond, cond = method.clip_features(list(identity.crops))
    size = method._encoder.config.image_size
    expected_uncond, enc = independent_clip(engine, torch.zeros(1, 3, size, size))
    assert torch.allclose(uncond, expected_uncond, atol=1e-5)
    # the old input (the processor on a black picture) is not zeros and gives other features
    proc = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    black = proc(images=[np.zeros((size, size, 3), np.uint8)], return_tensors="pt").pixel_values
    assert black.abs().min() > 1.0
    with torch.no_grad():
        old = enc(black, output_hidden_states=True).hidden_states[-2]
    assert (old - expected_uncond).abs().max() > 1e-2
    # the conditional side: the processed RGB crop through the same encoder
    pix = proc(images=list(identity.crops), return_tensors="pt").pixel_values
    expected_cond, _ = independent_clip(engine, pix)
    assert torch.allclose(cond, expected_cond.mean(0, keepdim=True), atol=1e-5)
    # and that is what the projection layer gets for CFG: [uncond, cond]
    method.conditioning(pipe, identity, req, 64, 64)
    clip = pipe.unet.encoder_hid_proj.image_projection_layers[0].clip_embeds
    assert clip.shape[0] == 2
    assert torch.allclose(clip[0, 0], expected_uncond[0], atol=1e-5)
    assert torch.allclose(clip[1, 0], expected_cond.mean(0), atol=1e-5)
    # without CFG only the conditional side goes in
    method.conditioning(pipe, identity, req.model_copy(update={"cfg": 1.0}), 64, 64)
    assert pipe.unet.encoder_hid_proj.image_projection_layers[0].clip_embeds.shape[0] == 1


def _faceid_lora_scalings(pipe) -> list[float]:
    out = []
    for mod in pipe.unet.modules():
        scaling = getattr(mod, "scaling", None)
        if isinstance(scaling, dict) and "faceid_0" in scaling:
            out.append(float(scaling["faceid_0"]))
    return out


def test_faceid_lora_fades_with_scale_unless_a_weight_is_given(engine, photos_dir):
    method, pipe, identity, req, res = method_ready(engine, "faceid", photos_dir / "astronaut.png",
                                                    width=64, height=64)
    assert res.images[0].recipe["method_details"]["lora_weight"] == 1.0  # default scale 0.8: full weight
    full = _faceid_lora_scalings(pipe)
    assert full and all(s > 0 for s in full)
    # below 0.8 the LoRA weight fades with the scale (a documented choice) ...
    cond = method.conditioning(pipe, identity, req.model_copy(update={"scale": 0.4}), 64, 64)
    assert cond.recipe["lora_weight"] == 0.5
    assert np.allclose(_faceid_lora_scalings(pipe), np.array(full) * 0.5)
    # ... and the reference's fixed weight 1.0 is one field away, whatever the scale
    cond = method.conditioning(pipe, identity, req.model_copy(update={"scale": 0.4, "faceid_lora_weight": 1.0}),
                               64, 64)
    assert cond.recipe["lora_weight"] == 1.0
    assert np.allclose(_faceid_lora_scalings(pipe), full)


def test_faceid_crop_goes_to_clip_in_rgb_and_bgr_is_available(engine, photos_dir):
    import torch

    method, _, identity, _, _ = method_ready(engine, "faceid", photos_dir / "astronaut.png", width=64, height=64)
    crops = list(identity.crops)
    _, rgb = method.clip_features(crops)
    _, bgr = method.clip_features(crops, "bgr")
    _, swapped = method.clip_features([c[..., ::-1].copy() for c in crops])
    assert torch.allclose(bgr, swapped, atol=1e-6)
    assert (rgb - bgr).abs().max() > 1e-3


# ====================================================== InstantID: keypoint drawing
def reference_draw_kps(width, height, kps):
    """InstantID's published `draw_kps` parameters, drawn here with OpenCV:
    black canvas; limbs (0,2), (1,2), (3,2), (4,2) in the first point's colour,
    ellipse2Poly at the int-truncated midpoint with axes (int(length/2), 4) and
    the int-truncated angle, fillConvexPoly; everything * 0.6 to uint8; then a
    filled radius-10 circle at each int-truncated point."""
    import cv2

    kps = np.array(kps)
    img = np.zeros([height, width, 3])
    for a, b in ((0, 2), (1, 2), (3, 2), (4, 2)):
        x, y = kps[[a, b], 0], kps[[a, b], 1]
        length = ((x[0] - x[1]) ** 2 + (y[0] - y[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(y[0] - y[1], x[0] - x[1]))
        poly = cv2.ellipse2Poly((int(np.mean(x)), int(np.mean(y))), (int(length / 2), 4), int(angle), 0, 360, 1)
        img = cv2.fillConvexPoly(img.copy(), poly, COLOURS[a])
    img = (img * 0.6).astype(np.uint8)
    for (x, y), colour in zip(kps, COLOURS):
        img = cv2.circle(img.copy(), (int(x), int(y)), 10, colour, -1)
    return img


@pytest.mark.parametrize("size", [(1024, 1024), (1216, 832), (1536, 640), (832, 1216), (128, 128), (64, 64)])
def test_keypoint_image_is_the_reference_drawing_pixel_for_pixel(size):
    from pipelines.pose.render import render_face_keypoints

    w, h = size
    rng = np.random.default_rng(w * 7 + h)
    for trial in range(6):
        centre = rng.uniform(0.2, 0.8, 2) * (w, h)
        span = min(w, h) * rng.uniform(0.05, 0.3)
        # eyes, nose, mouth corners around the centre, with fractional coordinates
        layout = np.array([[-0.3, -0.3], [0.3, -0.3], [0.0, 0.0], [-0.25, 0.3], [0.25, 0.3]])
        kps = (centre + layout * span + rng.normal(0, 2, (5, 2))).astype(np.float32)
        if trial == 5:
            kps[0] = (-3.7, -2.2)  # off the canvas: int() truncates towards zero
        got = np.asarray(render_face_keypoints(kps, w, h))
        assert got.shape == (h, w, 3) and got.dtype == np.uint8
        assert np.array_equal(got, reference_draw_kps(w, h, kps)), (size, trial)
        assert np.array_equal(np.asarray(render_face_keypoints(kps.astype(np.float64), w, h)),
                              reference_draw_kps(w, h, kps.astype(np.float64)))


@pytest.mark.parametrize("size", [(1024, 1024), (1536, 640), (64, 64)])
def test_keypoint_marks_keep_their_pixel_size_on_every_canvas(size):
    from pipelines.pose.render import render_face_keypoints

    w, h = size
    cx, cy = w // 2, h // 2 + 8
    kps = np.array([[cx - 20, cy - 14], [cx + 20, cy - 14], [cx, cy], [cx - 16, cy + 14], [cx + 16, cy + 14]],
                   np.float32)
    img = np.asarray(render_face_keypoints(kps, w, h)).astype(int)
    x, y = int(kps[0, 0]), int(kps[0, 1])
    assert tuple(img[y - 10, x]) == COLOURS[0]  # radius 10 at any canvas size
    assert tuple(img[y - 11, x]) == (0, 0, 0) and tuple(img[y, x - 11]) == (0, 0, 0)
    if h >= 200:  # a long limb: the first point's colour at 60 %, 4 px either side of its axis
        kps[3] = (cx - 60, cy + 60)
        img = np.asarray(render_face_keypoints(kps, w, h)).astype(int)
        assert tuple(img[cy + 30, cx - 30]) == (153, 153, 0)
        assert tuple(img[cy + 32, cx - 28]) == (153, 153, 0)  # 2.8 px off the axis
        assert tuple(img[cy + 34, cx - 26]) == (0, 0, 0)  # 5.7 px off the axis


# ========================================================== InstantID: placement
def centre_cover(kps, src, dst):
    """The old mapping: cover the canvas and centre the crop, blind to the face."""
    s = max(dst[0] / src[0], dst[1] / src[1])
    return kps * s + ((dst[0] - src[0] * s) / 2, (dst[1] - src[1] * s) / 2)


SELFIE_KPS = np.array([[300, 180], [420, 180], [360, 250], [310, 310], [410, 310]], np.float32)  # 720x1280
SELFIE_BOX = np.array([250, 60, 470, 380], np.float32)


def inside(points, w, h):
    points = np.asarray(points)
    return bool(((points[:, 0] >= 0) & (points[:, 0] < w) & (points[:, 1] >= 0) & (points[:, 1] < h)).all())


def test_selfie_face_stays_on_the_canvas_at_the_nearest_bucket_and_at_a_square():
    from pipelines.identity.instantid import place_face
    from pipelines.samplers import nearest_bucket

    assert nearest_bucket(720, 1280) == (768, 1344)
    # the old centre cover-crop into 1024x1024 loses every keypoint of this selfie
    assert not inside(centre_cover(SELFIE_KPS, (720, 1280), (1024, 1024)), 1024, 1024)
    for w, h in ((768, 1344), (1024, 1024), (1216, 832)):
        p = place_face(SELFIE_KPS, SELFIE_BOX, (720, 1280), (w, h))
        assert inside(p.kps, w, h) and p.warning is None and not p.shrunk
        x1, y1, x2, y2 = p.box
        assert 0 <= x1 and 0 <= y1 and x2 <= w and y2 <= h
        # the photo still covers the canvas (a crop, not a letterbox) at the cover scale
        assert p.scale == pytest.approx(max(w / 720, h / 1280))
        ox, oy = p.offset
        assert w - 720 * p.scale - 1e-6 <= ox <= 1e-6 and h - 1280 * p.scale - 1e-6 <= oy <= 1e-6
        assert np.allclose(p.kps, SELFIE_KPS * p.scale + (ox, oy), atol=1e-3)
    # a face that the centre crop keeps is placed exactly as the centre crop places it
    middle = SELFIE_KPS + (0, 400)
    p = place_face(middle, SELFIE_BOX + (0, 400, 0, 400), (720, 1280), (1024, 1024))
    assert np.allclose(p.kps, centre_cover(middle, (720, 1280), (1024, 1024)), atol=1e-3)


def test_a_size_that_would_cut_the_face_shrinks_it_and_says_so():
    from pipelines.identity.instantid import place_face

    close_up = np.array([[200, 500], [520, 500], [360, 700], [230, 900], [490, 900]], np.float32)
    box = np.array([60, 250, 660, 1100], np.float32)
    p = place_face(close_up, box, (720, 1280), (1536, 640))
    assert p.shrunk and "does not fit a 1536x640 canvas" in p.warning
    assert inside(p.kps, 1536, 640)
    x1, y1, x2, y2 = p.box
    assert 0 <= y1 and y2 <= 640 and (y2 - y1) == pytest.approx(0.9 * 640, rel=1e-4)


def test_without_a_size_instantid_uses_the_bucket_nearest_the_photo(engine, tall_photo):
    from pipelines.samplers import nearest_bucket

    _, _, identity, _, res = method_ready(engine, "instantid", tall_photo)
    assert identity.image_size == (512, 910)
    recipe = res.images[0].recipe
    w, h = engine.settings.profile.size(*nearest_bucket(512, 910))
    assert (recipe["width"], recipe["height"]) == (w, h) == (96, 168)
    placement = recipe["method_details"]["face_placement"]
    x1, y1, x2, y2 = placement["box"]
    assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
    # FaceID draws no keypoints: its default size stays the square bucket
    res = engine.generate(GenerateRequest(photos=[str(tall_photo)], method="faceid", **FAST))
    assert (res.images[0].recipe["width"], res.images[0].recipe["height"]) == engine.settings.profile.size(1024, 1024)


def test_cut_face_warning_reaches_the_recipe_and_the_command_line(engine, photos_dir, cli_generate):
    photo = str(photos_dir / "astronaut.png")
    err = cli_generate(engine.settings, ["--photo", photo, "--method", "instantid", "--prompt", "a portrait",
                                         "--steps", "1", "--width", "384", "--height", "64", "--seed", "3",
                                         "--out", str(engine.settings.outputs_dir / "cli")])
    assert "warning: InstantID: the face" in err and "384x64" in err
    from pipelines.metadata import read_recipe

    png = sorted((engine.settings.outputs_dir / "cli").glob("*.png"))[-1]
    details = read_recipe(png)["method_details"]
    assert details["face_placement"]["shrunk_to_fit"] and details["warnings"][0].startswith("InstantID: the face")


# =============================================== InstantID: enhance non-face region
def demo_control_mask(box, width, height):
    """gradio_demo/app.py: zeros, 255 inside the int-truncated face box; the
    pipeline then uses channel 0 / 255."""
    mask = np.zeros([height, width, 3])
    x1, y1, x2, y2 = (int(v) for v in box)
    mask[y1:y2, x1:x2] = 255
    return mask[:, :, 0] / 255.0


def _run_identitynet(method, width, height):
    import torch

    net = method.identitynet
    cfg = net.config
    g = torch.Generator().manual_seed(0)
    text_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    with torch.no_grad():
        return net(torch.randn(2, 4, height // 8, width // 8, generator=g), 10,
                   encoder_hidden_states=torch.randn(2, 77, cfg.cross_attention_dim, generator=g),
                   controlnet_cond=torch.rand(2, 3, height, width, generator=g), conditioning_scale=0.8,
                   added_cond_kwargs={"text_embeds": torch.randn(2, text_dim, generator=g),
                                      "time_ids": torch.randn(2, 6, generator=g)},
                   return_dict=False)


def test_enhance_face_region_masks_identitynet_residuals_as_the_reference(engine, photos_dir):
    import torch
    import torch.nn.functional as F

    method, pipe, identity, req, res = method_ready(engine, "instantid", photos_dir / "astronaut.png",
                                                    width=128, height=128)
    details = res.images[0].recipe["method_details"]
    assert req.enhance_face_region is True and details["enhance_face_region"] is True  # the demo's default
    box = details["face_placement"]["box"]
    method.conditioning(pipe, identity, req.model_copy(update={"enhance_face_region": False}), 128, 128)
    plain_down, plain_mid = _run_identitynet(method, 128, 128)
    method.conditioning(pipe, identity, req, 128, 128)
    down, mid = _run_identitynet(method, 128, 128)
    mask = torch.from_numpy(demo_control_mask(box, 128, 128)).float()[None, None]
    assert 0 < mask.mean() < 0.5
    for got, plain in [*zip(down, plain_down), (mid, plain_mid)]:
        scale = 128 // got.shape[-1]  # the residual's stride in image pixels: 8, 16, (32 on SDXL)
        weight = F.interpolate(mask, (128 // scale, 128 // scale), mode="bilinear")
        assert torch.allclose(got, plain * weight, atol=1e-6)
        outside = (weight == 0).expand_as(got)
        assert outside.any() and (got[outside] == 0).all() and (plain[outside] != 0).any()
    # off again: no mask at all
    method.conditioning(pipe, identity, req.model_copy(update={"enhance_face_region": False}), 128, 128)
    again_down, _ = _run_identitynet(method, 128, 128)
    assert all(torch.equal(a, b) for a, b in zip(again_down, plain_down))


def test_enhance_face_region_masks_the_face_attention_as_region_control(engine, photos_dir):
    import torch
    import torch.nn.functional as F
    from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0

    method, pipe, identity, req, res = method_ready(engine, "instantid", photos_dir / "astronaut.png",
                                                    width=128, height=128, identitynet_scale=0.0, steps=1)
    box = res.images[0].recipe["method_details"]["face_placement"]["box"]
    first = next(m for m in pipe.unet.modules()
                 if isinstance(m, Attention) and isinstance(m.processor, IPAdapterAttnProcessor2_0))
    seen = []
    hook = first.register_forward_hook(lambda mod, args, out: seen.append(out.detach().clone()))
    try:
        outs = {}
        for key, update in (("on", {}), ("off", {"enhance_face_region": False}), ("text", {"scale": 0.0})):
            seen.clear()
            engine.generate(req.model_copy(update={**update, "steps": 1, "identitynet_scale": 0.0}))
            outs[key] = seen[0]  # the first call: same latents and text in all three runs
    finally:
        hook.remove()
    n = outs["on"].shape[1]
    region = torch.from_numpy(demo_control_mask(box, 128, 128)).float()
    ratio = (128 * 128 / n) ** 0.5
    mask = F.interpolate(region[None, None], scale_factor=1 / ratio, mode="nearest").reshape(-1)
    assert mask.numel() == n and 0 < mask.sum() < n
    face, rest = mask == 1, mask == 0
    assert torch.allclose(outs["on"][:, face], outs["off"][:, face], atol=1e-6)
    assert torch.allclose(outs["on"][:, rest], outs["text"][:, rest], atol=1e-6)
    assert (outs["off"][:, rest] - outs["text"][:, rest]).abs().max() > 1e-4  # the mask does something


def test_pose_moves_the_keypoints_and_the_face_region(engine, photos_dir):
    from pipelines.pose.control import align_identitynet
    from pipelines.pose.render import face_keypoints_pixels, render_face_keypoints
    from pipelines.pose.templates import load_template

    method, pipe, identity, req, _ = method_ready(engine, "instantid", photos_dir / "astronaut.png",
                                                  width=128, height=128)
    cond = method.conditioning(pipe, identity, req, 128, 128)
    (unit,) = cond.controlnets
    before = method.region.mask.clone()
    template = load_template("three-quarter-left")
    assert align_identitynet([unit], template, 128, 128)
    kps = face_keypoints_pixels(template, 128, 128)
    assert np.array_equal(np.asarray(unit.image), np.asarray(render_face_keypoints(kps, 128, 128)))
    placement = cond.recipe["face_placement"]
    assert placement["from"] == "pose"
    x1, y1, x2, y2 = cond.recipe["face_region"]
    assert (kps[:, 0] >= x1).all() and (kps[:, 0] <= x2).all() and (kps[:, 1] >= y1).all() and (kps[:, 1] <= y2).all()
    ys, xs = np.nonzero(method.region.mask.numpy())
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)
    assert not np.array_equal(before.numpy(), method.region.mask.numpy())
    # a keypoint off the canvas is a recorded warning, not silence
    unit.move_face(kps + (200, 0), 128, 128)
    assert any("outside the 128x128 canvas" in w for w in cond.recipe["warnings"])


def test_command_line_flags_reach_the_request(demo_settings):
    import argparse

    from cli.generate import register, request_from_args

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    base = ["generate", "--photo", "me.jpg", "--prompt", "p"]
    data = request_from_args(parser.parse_args(base), demo_settings)
    req = GenerateRequest(**data)
    assert req.enhance_face_region is True and req.faceid_lora_weight is None and req.faceid_crop_channels == "rgb"
    args = parser.parse_args([*base, "--no-enhance-face-region", "--faceid-lora-weight", "1",
                              "--faceid-crop-channels", "bgr"])
    req = GenerateRequest(**request_from_args(args, demo_settings))
    assert req.enhance_face_region is False and req.faceid_lora_weight == 1.0 and req.faceid_crop_channels == "bgr"


def test_unloading_instantid_removes_its_hooks_and_region(engine, photos_dir):
    method, pipe, _, _, _ = method_ready(engine, "instantid", photos_dir / "astronaut.png", width=64, height=64)
    net = method.identitynet
    assert net._forward_hooks and net._forward_pre_hooks and method.region.active
    engine.use_method("none", pipe)
    assert not net._forward_hooks and not net._forward_pre_hooks and not method.region.active
    assert not any("FaceRegion" in type(p).__name__ for p in pipe.unet.attn_processors.values())
