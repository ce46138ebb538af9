"""Face-detail pass (tiny models): only the face region changes, the identity
conditioning reaches it, InstantID's keypoints follow the detected face, the
recipe records it, and keep-the-better picks by likeness."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import fast_request
from PIL import Image

from pipelines.requests import GenerateRequest

FAST = fast_request(steps=3, width=128, height=128)


@pytest.fixture(scope="module")
def engine(make_engine):
    return make_engine("detail-out")


def steps_for(engine, photos_dir, method, photo="astronaut.png", **kw):
    """Generate once (its output has no face: random weights), then hand back the
    finishing steps of that request to run the pass on a real photo."""
    req = GenerateRequest(**dict(FAST, method=method, photos=[str(photos_dir / photo)], face_detail=True, **kw))
    res = engine.generate(req)
    assert res.images[0].recipe["face_detail"]["note"].startswith("no face found")
    return engine._finishing, req


def astronaut(photos_dir, side=256):
    return Image.open(photos_dir / "astronaut.png").convert("RGB").resize((side, side))


def recipe_for(seed=3):
    return {"seed": seed}


@pytest.mark.parametrize("method", ["faceid", "instantid"])
def test_only_the_face_region_changes(engine, photos_dir, method):
    from pipelines.detail import face_detail_pass, face_mask

    ctx, req = steps_for(engine, photos_dir, method)
    photo = astronaut(photos_dir)
    recipe = recipe_for()
    out = face_detail_pass(ctx, photo, req, recipe)
    entry = recipe["face_detail"]
    assert out.size == photo.size and len(entry["faces"]) == 1 and entry["kept"] == "after"
    mask = np.asarray(face_mask(photo.size, entry["faces"][0]["box"])) > 0
    diff = np.abs(np.asarray(out).astype(int) - np.asarray(photo).astype(int)).sum(axis=2)
    assert diff[~mask].max() == 0  # outside the feathered mask: the input's pixels exactly
    assert diff[mask].mean() > 5  # inside: re-generated
    assert "likeness_before" in entry and "likeness_after" in entry
    if method == "instantid":  # the generation's face region is back after the pass
        assert ctx.method.region.active


def test_identity_conditioning_reaches_the_face(engine, photos_dir):
    from pipelines.detail import face_detail_pass

    ctx, req = steps_for(engine, photos_dir, "faceid")
    a = np.asarray(face_detail_pass(ctx, astronaut(photos_dir), req, recipe_for())).astype(int)
    a2 = np.asarray(face_detail_pass(ctx, astronaut(photos_dir), req, recipe_for())).astype(int)
    ctx_b, req_b = steps_for(engine, photos_dir, "faceid", photo="t1.jpg")
    b = np.asarray(face_detail_pass(ctx_b, astronaut(photos_dir), req_b, recipe_for())).astype(int)
    assert np.array_equal(a, a2)  # seeded
    assert np.abs(a - b).mean() > 0.2  # another person's embedding gives another face


def test_instantid_keypoints_are_the_detected_faces(engine, photos_dir, monkeypatch):
    from pipelines import detail
    from pipelines.pose.render import render_face_keypoints

    ctx, req = steps_for(engine, photos_dir, "instantid")
    photo = astronaut(photos_dir)
    face = detail.detect_faces(engine, photo)[0]
    seen = {}
    run = detail.inpaint_pipe(engine, ctx.pipe, ctx.units)
    original = type(run).__call__

    @functools.wraps(original)  # keeps the signature the pass filters its arguments by
    def spy(self, **kw):
        seen.update(kw)
        return original(self, **kw)

    monkeypatch.setattr(type(run), "__call__", spy)
    detail.face_detail_pass(ctx, photo, req, recipe_for())
    expected = np.asarray(render_face_keypoints(np.asarray(face.kps, np.float32), 256, 256))
    assert np.array_equal(np.asarray(seen["control_image"]), expected)
    assert seen["padding_mask_crop"] == detail.CROP_PADDING and seen["strength"] == 0.4


def test_keep_better_keeps_the_image_with_the_higher_likeness(engine, photos_dir, monkeypatch):
    from pipelines import detail, scoring

    ctx, req = steps_for(engine, photos_dir, "faceid", face_detail_keep_better=True)
    photo = astronaut(photos_dir)
    scores = iter([{"mean": 0.9}, {"mean": 0.1}])  # before, after
    monkeypatch.setattr(scoring, "score_image", lambda *a: next(scores))
    recipe = recipe_for()
    out = detail.face_detail_pass(ctx, photo, req, recipe)
    assert recipe["face_detail"]["kept"] == "before" and out is photo


def test_engine_records_the_pass_and_cli_flags(engine, photos_dir, demo_settings):
    from cli.generate import request_from_args
    from cli.main import build_parser

    args = build_parser().parse_args(["generate", "--prompt", "p", "--photo", "x.png", "--face-detail",
                                      "--face-detail-strength", "0.5", "--face-detail-keep-better"])
    req = GenerateRequest(**request_from_args(args, demo_settings))
    assert (req.face_detail, req.face_detail_strength, req.face_detail_keep_better) == (True, 0.5, True)
    res = engine.generate(GenerateRequest(**dict(FAST, method="faceid", face_detail=True,
                                                 photos=[str(photos_dir / "astronaut.png")])))
    recipe = res.images[0].recipe
    assert recipe["request"]["face_detail"] is True and recipe["face_detail"]["strength"] == 0.4


def test_a_pass_that_would_run_no_step_is_refused_up_front(engine, photos_dir):
    from pipelines.errors import BadInput

    with pytest.raises(BadInput, match=r"face_detail_strength 0.4 with steps 2 runs no denoising step"):
        engine.generate(GenerateRequest(**dict(FAST, steps=2, method="faceid", face_detail=True,
                                               photos=[str(photos_dir / "astronaut.png")])))
    with pytest.raises(BadInput, match=r"template_strength 0.3 with steps 3"):
        engine.generate(GenerateRequest(**dict(FAST, method="faceid", template="astronaut", template_strength=0.3,
                                               photos=[str(photos_dir / "astronaut.png")])))
