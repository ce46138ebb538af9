"""Pose templates, their rendering, and pose extraction with the tiny annotator."""

from __future__ import annotations

import io
import json
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.errors import BadInput, ModelError, UnsafePath
from pipelines.paths import check_name
from pipelines.pose.render import (
    FACE_COLORS,
    OPENPOSE_COLORS,
    OPENPOSE_LIMBS,
    PREVIEWS_DIR,
    body_keypoints_pixels,
    face_keypoints_pixels,
    fit_box,
    main as render_main,
    preview,
    render_face_keypoints,
    render_openpose,
    write_previews,
)
from pipelines.pose.templates import (
    ASSETS_POSES,
    BODY_KEYPOINTS,
    PoseTemplate,
    list_templates,
    load_template,
    save_template,
    user_poses_dir,
)

BUCKETS = [(1024, 1024), (832, 1216), (1216, 832)]
K = {name: i for i, name in enumerate(BODY_KEYPOINTS)}


def _dim(c):
    return tuple(int(v * 0.6) for v in c)


def _iso(p, aspect):
    return np.array([p[0] * aspect, p[1]])


# ---- templates ----------------------------------------------------------------------------
def test_at_least_12_shipped_templates_validate():
    ts = list_templates()
    assert len(ts) >= 12
    names = [t.name for t in ts]
    assert len(set(names)) == len(names)
    files = sorted(p.stem for p in ASSETS_POSES.glob("*.json"))
    assert sorted(names) == files
    for t in ts:
        assert isinstance(t, PoseTemplate) and t.title and t.description
        assert t.face is not None, t.name
        assert (ASSETS_POSES / f"{t.name}.json").read_text() == t.to_json()  # canonical form


@pytest.mark.parametrize("t", list_templates(), ids=lambda t: t.name)
def test_shipped_template_is_anatomically_plausible(t):
    b = t.body_points()
    nose, neck = b[K["nose"]], b[K["neck"]]
    assert nose is not None and neck is not None
    assert nose[1] < neck[1], "the nose is above the neck"
    rs, ls = b[K["r_shoulder"]], b[K["l_shoulder"]]
    if rs and ls:  # OpenPose's neck is the middle of the shoulders
        assert np.allclose(neck, ((rs[0] + ls[0]) / 2, (rs[1] + ls[1]) / 2), atol=0.01)
    shoulder = rs or ls
    assert shoulder is not None and abs(shoulder[1] - neck[1]) < 0.1
    f = t.face_points()
    assert f[2] == nose, "the face's nose is the body's nose"
    assert max(f[0][1], f[1][1]) < min(f[3][1], f[4][1]), "eyes above the mouth corners"
    for i, eye in ((0, "r_eye"), (1, "l_eye")):  # insightface order: subject's right eye first
        if b[K[eye]] is not None:
            assert f[i] == b[K[eye]]
    # the head is smaller than the shoulders, and limbs keep human proportions
    eye_gap = np.linalg.norm(_iso(f[0], t.aspect) - _iso(f[1], t.aspect))
    if rs and ls:
        assert eye_gap < 0.5 * np.linalg.norm(_iso(rs, t.aspect) - _iso(ls, t.aspect)) + 1e-9
    for side in "rl":
        sh, el, wr = (b[K[f"{side}_{j}"]] for j in ("shoulder", "elbow", "wrist"))
        if sh and el and wr:
            upper = np.linalg.norm(_iso(sh, t.aspect) - _iso(el, t.aspect))
            fore = np.linalg.norm(_iso(el, t.aspect) - _iso(wr, t.aspect))
            assert fore < 1.3 * upper + 0.02


def _write(tmp_path, text, name="bad.json"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _good_dict():
    return json.loads(load_template("front-headshot").to_json())


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda d: d.update(colour="red"), "colour"),
        (lambda d: d["body"].update(noze=[0.5, 0.5]), "body.noze"),
        (lambda d: d["face"].update(chin=[0.5, 0.5]), "face.chin"),
        (lambda d: d["body"].update(nose=[1.5, 0.2]), "body.nose"),
        (lambda d: d["body"].update(neck=[0.5, -0.1]), "body.neck"),
        (lambda d: d["body"].update(neck=[0.5]), "body.neck"),
        (lambda d: d.update(aspect=9.0), "aspect"),
        (lambda d: d.pop("title"), "title"),
        (lambda d: d.update(name="../escape"), "name"),
        (lambda d: d["face"].pop("nose"), "face.nose"),
    ],
)
def test_bad_template_names_file_and_key(tmp_path, mutate, key):
    d = _good_dict()
    mutate(d)
    p = _write(tmp_path, json.dumps(d))
    with pytest.raises(BadInput) as e:
        load_template(p)
    msg = str(e.value)
    assert str(p) in msg and key in msg, msg


def test_bad_json_and_non_object_and_nan(tmp_path):
    p = _write(tmp_path, '{"name": "x",\n "title": "t",}')
    with pytest.raises(BadInput, match=r"bad\.json is not valid JSON.*line 2"):
        load_template(p)
    p = _write(tmp_path, "[1, 2]", "list.json")
    with pytest.raises(BadInput, match="list.json must hold a JSON object"):
        load_template(p)
    d = _good_dict()
    d["body"]["nose"] = [float("nan"), 0.3]
    text = json.dumps(d)  # Python's json writes (and reads) the NaN token
    assert "NaN" in text
    with pytest.raises(BadInput, match=r"nan\.json.*body\.nose"):
        load_template(_write(tmp_path, text, "nan.json"))
    p = tmp_path / "bin.json"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(BadInput, match="bin.json"):
        load_template(p)


def test_too_few_points_and_too_big_file(tmp_path):
    d = _good_dict()
    d["body"] = {"nose": [0.5, 0.3], "neck": [0.5, 0.5]}
    with pytest.raises(BadInput, match="at least 3 body keypoints"):
        load_template(_write(tmp_path, json.dumps(d)))
    big = tmp_path / "big.json"
    big.write_text(" " * 300_000 + "{}")
    with pytest.raises(BadInput, match="big.json is .* bytes"):
        load_template(big)


def test_load_by_name_path_and_errors(tmp_path):
    t = load_template("profile-left")
    assert t.name == "profile-left"
    assert load_template(ASSETS_POSES / "profile-left.json") == t
    assert load_template(str(ASSETS_POSES / "profile-left.json")) == t
    with pytest.raises(BadInput, match="unknown pose 'no-such-pose'.*front-headshot"):
        load_template("no-such-pose")
    with pytest.raises(BadInput, match="does not exist"):
        load_template(tmp_path / "missing.json")
    with pytest.raises(BadInput, match="not a .json file"):
        load_template(tmp_path / "pose.png")
    with pytest.raises(UnsafePath):
        load_template("..")
    # a template whose name does not match its file, inside a poses folder
    d = _good_dict()
    d["name"] = "other"
    (tmp_path / "mine.json").write_text(json.dumps(d))
    with pytest.raises(BadInput, match="mine.json.*name is 'other'"):
        load_template("mine", user_dir=tmp_path)


def test_check_name_blocks_traversal():
    for bad in ("../x", "..", "a/b", "a\\b", "x\x00y", "", "x" * 300, "/etc/passwd"):
        with pytest.raises(UnsafePath):
            check_name(bad)
    assert check_name("my-pose_2.v1") == "my-pose_2.v1"


def test_save_load_round_trip(tmp_path):
    t = load_template("hand-on-chin")
    folder = tmp_path / "poses"
    path = save_template(t, "my-pose", folder)
    assert path == folder / "my-pose.json" and path.is_file()
    assert [p.name for p in folder.iterdir()] == ["my-pose.json"]  # no temp files left
    back = load_template("my-pose", user_dir=folder)
    assert back.name == "my-pose"
    assert back.model_dump(exclude={"name"}) == t.model_dump(exclude={"name"})
    assert load_template(path) == back
    assert [x.name for x in list_templates(folder)][-1] == "my-pose"
    with pytest.raises(BadInput, match="already exists"):
        save_template(t, "my-pose", folder)
    assert save_template(t, "my-pose", folder, overwrite=True) == path
    with pytest.raises(BadInput, match="shipped template"):
        save_template(t, "front-headshot", folder)
    for bad in ("../evil", "a/b", ".."):
        with pytest.raises(UnsafePath):
            save_template(t, bad, folder)
    assert not (tmp_path / "evil.json").exists()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["my-pose.json"]


def test_save_defaults_to_user_poses_dir(demo_settings):
    t = load_template("walking")
    path = save_template(t, "stride", settings=demo_settings)
    assert path.parent == user_poses_dir(demo_settings) == demo_settings.loras_dir.parent / "poses"
    assert load_template("stride", user_dir=path.parent).aspect == t.aspect


# ---- rendering ----------------------------------------------------------------------------
@pytest.mark.parametrize("size", BUCKETS, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", ["full-body-standing", "three-quarter-left", "arms-crossed"])
def test_render_openpose_size_determinism_and_keypoints(name, size):
    t = load_template(name)
    w, h = size
    img = render_openpose(t, w, h)
    assert img.size == (w, h) and img.mode == "RGB"
    again = render_openpose(t, w, h)
    assert img.tobytes() == again.tobytes()
    b1, b2 = io.BytesIO(), io.BytesIO()
    img.save(b1, format="PNG")
    again.save(b2, format="PNG")
    assert b1.getvalue() == b2.getvalue()
    a = np.asarray(img)
    pts = body_keypoints_pixels(t, w, h)
    assert sum(p is not None for p in pts) >= 5
    for i, p in enumerate(pts):
        if p is None:
            continue
        x, y = int(round(p[0])), int(round(p[1]))
        assert a[max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3].any(), (BODY_KEYPOINTS[i], p)
        assert tuple(a[y, x]) in OPENPOSE_COLORS  # a joint disc, at full colour
    # nothing is drawn outside the box the template is fitted into
    left, top, bw, bh = fit_box(t.aspect, w, h)
    mask = np.ones((h, w), bool)
    mask[max(int(top) - 8, 0) : int(top + bh) + 8, max(int(left) - 8, 0) : int(left + bw) + 8] = False
    assert not a[mask].any()
    assert 0.001 < (a.sum(-1) > 0).mean() < 0.2


def test_render_uses_the_openpose_colour_scheme():
    t = load_template("front-headshot")
    img = np.asarray(render_openpose(t, 1024, 1024))
    pts = body_keypoints_pixels(t, 1024, 1024)
    for (i, j), colour in zip(OPENPOSE_LIMBS, OPENPOSE_COLORS):
        if pts[i] is None or pts[j] is None:
            continue
        length = np.hypot(pts[j][0] - pts[i][0], pts[j][1] - pts[i][1])
        if length < 60:  # short limbs are covered by their joint discs
            continue
        mx, my = (pts[i][0] + pts[j][0]) / 2, (pts[i][1] + pts[j][1]) / 2
        assert tuple(img[int(round(my)), int(round(mx))]) == _dim(colour), (BODY_KEYPOINTS[i], BODY_KEYPOINTS[j])
    neck = pts[K["neck"]]
    assert tuple(img[int(round(neck[1])), int(round(neck[0]))]) == OPENPOSE_COLORS[1]
    # strokes scale with the canvas: about 4 px per 512 px of short side (half-width)
    small = (np.asarray(render_openpose(t, 512, 512)).sum(-1) > 0).sum()
    big = (img.sum(-1) > 0).sum()
    assert 3.0 < big / small < 5.0


def test_render_keeps_the_figure_proportions():
    t = load_template("seated-lean")
    ratios = []
    for w, h in BUCKETS:
        p = body_keypoints_pixels(t, w, h)
        nose, neck, rs, ls = (np.array(p[K[k]]) for k in ("nose", "neck", "r_shoulder", "l_shoulder"))
        ratios.append(np.linalg.norm(nose - neck) / np.linalg.norm(rs - ls))
    assert np.allclose(ratios, ratios[0])


def test_bad_render_sizes():
    t = load_template("front-headshot")
    for w, h in ((0, 1024), (1024, 100000), (1024.5, 1024), (True, 1024)):
        with pytest.raises(BadInput, match="width|height"):
            render_openpose(t, w, h)


def test_render_face_keypoints():
    t = load_template("three-quarter-right")
    kps = face_keypoints_pixels(t, 1024, 1024)
    assert kps.shape == (5, 2)
    img = render_face_keypoints(kps, 1024, 1024)
    assert img.size == (1024, 1024) and img.mode == "RGB"
    assert img.tobytes() == render_face_keypoints(kps, 1024, 1024).tobytes()
    a = np.asarray(img)
    for p, colour in zip(kps, FACE_COLORS):
        assert tuple(a[int(round(p[1])), int(round(p[0]))]) == colour
    # the limbs join the outer points to the nose at 60 % of the outer point's colour
    far = max(range(5), key=lambda i: np.linalg.norm(kps[i] - kps[2]) if i != 2 else -1)
    mid = (kps[far] + kps[2]) / 2
    assert tuple(a[int(round(mid[1])), int(round(mid[0]))]) == _dim(FACE_COLORS[far])
    lit = a.sum(-1) > 0
    assert not lit[:100].any() and not lit[-100:].any()
    x0, y0 = kps.min(0) - 16
    x1, y1 = kps.max(0) + 16
    assert lit.sum() == lit[int(y0) : int(y1), int(x0) : int(x1)].sum()
    for bad in ([[1, 2]] * 4, np.full((5, 2), np.nan), "abc"):
        with pytest.raises(BadInput, match="face keypoints"):
            render_face_keypoints(bad, 1024, 1024)


def test_committed_previews_match_the_templates(tmp_path):
    ts = list_templates()
    committed = sorted(p.stem for p in PREVIEWS_DIR.glob("*.png"))
    assert committed == sorted(t.name for t in ts)
    for t in ts:
        fresh = preview(t)
        assert max(fresh.size) == 256
        with Image.open(PREVIEWS_DIR / f"{t.name}.png") as im:
            assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(fresh)), t.name
    assert render_main(["--previews", "--out", str(tmp_path / "prev"), "--size", "64"]) == 0
    written = sorted(p.name for p in (tmp_path / "prev").iterdir())
    assert written == sorted(f"{t.name}.png" for t in ts)
    one = write_previews(tmp_path / "one", 96, [ts[0]])
    with Image.open(one[0]) as im:
        assert max(im.size) == 96


# ---- extraction ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def annotator_store(make_settings):
    from pipelines.stores import open_store

    return open_store(make_settings("pose-settings"))


@pytest.fixture(scope="module")
def extracted(annotator_store, photos_dir):
    from pipelines.pose.extract import extract_pose

    return extract_pose(photos_dir / "astronaut.png", annotator_store, face_landmarks=False, name="astro")


def test_store_keeps_only_safetensors_of_the_annotator(annotator_store):
    folder = annotator_store.ensure("openpose-annotator")
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert names == ["body_pose_model.safetensors", "facenet.safetensors", "hand_pose_model.safetensors"]


def test_extract_pose_runs_with_the_tiny_annotator(extracted):
    from pipelines.tiny.annotator import part_cells

    t = extracted
    assert isinstance(t, PoseTemplate) and t.name == "astro"
    assert t.aspect == 1.0  # astronaut.png is square
    # the tiny body model always "sees" the same person: every part must come
    # back in COCO-18 order at its designed place (cells of 8 px in the 184 px
    # network input)
    for i, (cx, cy) in enumerate(part_cells()):
        p = t.body_points()[i]
        assert p is not None, BODY_KEYPOINTS[i]
        expected = (cx * 8 + 3.5) / 184, (cy * 8 + 3.5) / 184
        assert np.allclose(p, expected, atol=0.02), (BODY_KEYPOINTS[i], p, expected)
    assert t.body.r_shoulder[0] < t.body.neck[0] < t.body.l_shoulder[0]
    assert t.body.nose[1] < t.body.neck[1] < t.body.r_hip[1] < t.body.r_knee[1] < t.body.r_ankle[1]
    f = t.face_points()
    assert f is not None and f[0] == t.body.r_eye and f[1] == t.body.l_eye and f[2] == t.body.nose
    assert min(f[3][1], f[4][1]) > f[2][1]  # mouth below the nose
    img = render_openpose(t, 832, 1216)
    assert np.asarray(img).any()


def test_extracted_pose_saves_and_loads(extracted, tmp_path):
    from pipelines.pose.extract import save_template as save_from_extract

    path = save_from_extract(extracted, "astro-pose", tmp_path)
    back = load_template(path)
    assert back.body_points() == extracted.body_points()
    assert back.face_points() == extracted.face_points()


def test_load_openpose_refuses_wrong_or_unsafe_weights(tmp_path):
    import torch
    from safetensors.torch import save_file

    from pipelines.pose.extract import load_openpose

    with pytest.raises(ModelError, match="body_pose_model.safetensors .*missing from"):
        load_openpose(tmp_path, face=False)
    save_file({"conv1_1.weight": torch.zeros(64, 3, 3, 3)}, str(tmp_path / "body_pose_model.safetensors"))
    with pytest.raises(ModelError, match=r"body_pose_model.safetensors is not the expected OpenPose model.*conv1_1.bias"):
        load_openpose(tmp_path, face=False)

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save({"conv1_1.weight": Evil()}, pickled / "body_pose_model.pth")
    with pytest.raises(ModelError, match="refused to load"):
        load_openpose(pickled, face=False)
    assert not marker.exists()


Landmark = namedtuple("Landmark", "x y")


def test_face_points_from_openpose_face_landmarks():
    from pipelines.pose.extract import face5_from_landmarks

    pts = [Landmark(0.5, 0.5) for _ in range(70)]
    for i in range(36, 42):
        pts[i] = Landmark(0.40 + 0.01 * (i % 2), 0.40)
    for i in range(42, 48):
        pts[i] = Landmark(0.60 + 0.01 * (i % 2), 0.40)
    pts[30], pts[48], pts[54] = Landmark(0.5, 0.5), Landmark(0.42, 0.6), Landmark(0.58, 0.6)
    f = face5_from_landmarks(pts + [Landmark(0.1, 0.1)])  # + the background map's peak
    assert np.allclose(f, [(0.405, 0.4), (0.605, 0.4), (0.5, 0.5), (0.42, 0.6), (0.58, 0.6)])
    assert face5_from_landmarks(pts[:69]) is None  # a lost landmark shifts every later index
    assert face5_from_landmarks(None) is None
    pts[48] = Landmark(-0.002, 0.6)
    assert face5_from_landmarks(pts) is None


@pytest.mark.parametrize("t", list_templates(), ids=lambda t: t.name)
def test_face_points_approximated_from_the_body(t):
    from pipelines.pose.extract import face5_from_body

    f = np.array(face5_from_body(t.body_points(), t.aspect))
    truth = np.array(t.face_points())
    assert f.shape == (5, 2)
    assert np.allclose(f[2], truth[2])  # the nose is the body's nose
    scale = np.linalg.norm((truth[2] - truth[:2].mean(0)) * [t.aspect, 1]) + np.linalg.norm(
        (truth[0] - truth[1]) * [t.aspect, 1]
    )
    err = np.linalg.norm((f - truth) * [t.aspect, 1], axis=1).max()
    assert err < 0.6 * scale, (t.name, f, truth)


def test_template_from_too_few_keypoints():
    from pipelines.pose.extract import template_from_keypoints

    body = [None] * 18
    body[0], body[1] = (0.5, 0.3), (0.5, 0.5)
    with pytest.raises(BadInput, match="fewer than 3 body keypoints"):
        template_from_keypoints(body, 1.0)
    body[2] = (0.3, 0.5)
    t = template_from_keypoints(body, 0.75, name="three")
    assert t.body.r_shoulder == (0.3, 0.5) and t.face is None


def _fake_detector(poses):
    from types import SimpleNamespace

    return SimpleNamespace(face_estimation=None, detect_poses=lambda *a, **k: poses)


def test_extract_picks_the_largest_person_and_reports_none(photos_dir):
    from pipelines.pose.extract import controlnet_aux_open_pose, extract_pose

    controlnet_aux_open_pose()  # imports controlnet-aux with its import-time warnings silenced
    from controlnet_aux.open_pose import BodyResult, Keypoint, PoseResult

    def person(x0, y0, size, score):
        kps = [None] * 18
        kps[0] = Keypoint(x0, y0)  # nose
        kps[1] = Keypoint(x0, y0 + size)  # neck
        kps[2] = Keypoint(x0 - size, y0 + size)  # r_shoulder
        kps[5] = Keypoint(x0 + size, y0 + size)  # l_shoulder
        return PoseResult(BodyResult(kps, score, 4), None, None, None)

    small_high_score = person(0.3, 0.1, 0.05, 9.0)
    big_lower = person(0.6, 0.5, 0.2, 1.0)
    t = extract_pose(photos_dir / "astronaut.png", detector=_fake_detector([small_high_score, big_lower]))
    assert t.body.nose == (0.6, 0.5) and t.body.l_shoulder == (0.8, 0.7)
    with pytest.raises(BadInput, match=r"no person found in .*astronaut.png"):
        extract_pose(photos_dir / "astronaut.png", detector=_fake_detector([]))
    with pytest.raises(BadInput, match="chelsea"):  # a bad photo fails before any model loads
        extract_pose(photos_dir / "chelsea.png.missing", detector=_fake_detector([]))


@pytest.mark.slow
def test_extract_pose_with_face_landmarks_on_a_wide_photo(annotator_store, photos_dir):
    from pipelines.pose.extract import extract_pose

    t = extract_pose(photos_dir / "t1.jpg", annotator_store, face_landmarks=True)
    assert t.aspect == pytest.approx(1280 / 886, abs=0.01)
    assert t.face is not None and sum(p is not None for p in t.body_points()) == 18
    # the designed person stands in the middle of the map, whatever the photo's shape
    assert t.body.neck[0] == pytest.approx(0.5, abs=0.03)
