"""Pose ControlNet and face restore wired through the engine (tiny models)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import fast_request, generate_on_astronaut
from PIL import Image

from pipelines.errors import BadInput
from pipelines.requests import GenerateRequest

FAST = fast_request(seed=5)


@pytest.fixture(scope="module")
def engine(make_engine):
    return make_engine("pose-out")


def run(engine, photos_dir, **kw):
    res = generate_on_astronaut(engine, photos_dir, FAST, **kw)
    return np.asarray(res.images[0].image).astype(np.int16), res.images[0].recipe


@pytest.mark.parametrize("method", ["faceid", "instantid"])
def test_pose_changes_the_output_and_scale_zero_is_no_pose(engine, photos_dir, method):
    plain, _ = run(engine, photos_dir, method=method)
    posed, recipe = run(engine, photos_dir, method=method, pose="front-headshot")
    other, _ = run(engine, photos_dir, method=method, pose="full-body-standing")
    off, _ = run(engine, photos_dir, method=method, pose="front-headshot", pose_scale=0.0)
    assert np.abs(plain - posed).mean() > 0.5
    assert np.abs(posed - other).mean() > 0.5
    assert np.abs(plain - off).max() <= 1
    assert recipe["method_details"]["pose"]["pose"] == "front-headshot"


def test_instantid_with_pose_uses_a_multi_controlnet(engine, photos_dir):
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    run(engine, photos_dir, method="instantid", pose="head-tilt", pose_start=0.0, pose_end=0.5)
    pipes = [p for p in engine._views.values() if isinstance(p.controlnet, MultiControlNetModel)]
    assert pipes and len(pipes[0].controlnet.nets) == 2


def test_bad_pose_file_is_a_clear_error(engine, photos_dir, tmp_path):
    bad = tmp_path / "broken-pose.json"
    bad.write_text('{"name": "x", "bogus": 1}')
    with pytest.raises(BadInput, match="broken-pose.json"):
        run(engine, photos_dir, method="faceid", pose=str(bad))
    with pytest.raises(BadInput, match="no-such-pose"):
        run(engine, photos_dir, method="faceid", pose="no-such-pose")


def test_restore_stage_restores_the_face_in_an_output(engine, photos_dir):
    photo = Image.open(photos_dir / "astronaut.png").convert("RGB")
    req = GenerateRequest(**dict(FAST, photos=["x"], restore="codeformer", restore_strength=1.0))
    restored, report = engine.restore_stage().restore(photo, req)
    a, b = np.asarray(photo).astype(int), np.asarray(restored).astype(int)
    changed = np.abs(a - b).sum(axis=2) > 0
    ys, xs = np.nonzero(changed)
    assert changed.any() and "restored" in report[0]
    # only the face region changed (astronaut's face lies in the upper middle)
    assert ys.max() < 300 and xs.min() > 100 and xs.max() < 350


def test_identitynet_keypoints_follow_the_pose_head():
    from pipelines.identity.base import ControlUnit
    from pipelines.pose.control import align_identitynet
    from pipelines.pose.render import face_keypoints_pixels, render_face_keypoints
    from pipelines.pose.templates import load_template

    t = load_template("three-quarter-left")
    photo_kps = np.array([[10, 10], [20, 10], [15, 15], [11, 20], [19, 20]], dtype=np.float32)
    unit = ControlUnit("identitynet", None, render_face_keypoints(photo_kps, 256, 256))
    pose = ControlUnit("pose", None, None)
    assert align_identitynet([unit, pose], t, 256, 256)
    img = np.asarray(unit.image.convert("L"))
    kps = face_keypoints_pixels(t, 256, 256)
    nose = kps[2].round().astype(int)
    assert img[nose[1] - 3:nose[1] + 4, nose[0] - 3:nose[0] + 4].max() > 0  # drawn at the pose's nose
    assert img[:8, :8].max() == 0 and pose.image is None  # not at the photo's, and pose unit untouched
