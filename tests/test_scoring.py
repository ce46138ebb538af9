"""Likeness score (independent recogniser, mean/max over reference photos) and
best-of-N, on the tiny insightface packs with real photos (demo mode: MTCNN
finds the faces, the tiny ArcFace nets embed them)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageOps

from pipelines.profile import DEMO
from pipelines.scoring import LikenessScorer, describe, keep_best, scorer_pack, sort_key


@pytest.fixture(scope="module")
def engine(make_engine):
    return make_engine("scoring-out")


def t1_face(photos_dir: Path) -> Image.Image:
    """The largest face of the insightface group photo, cropped with margin: a
    second real person."""
    from pipelines.faces.detectors import MtcnnDetector

    t1 = Image.open(photos_dir / "t1.jpg").convert("RGB")
    f = max(MtcnnDetector().detect(np.asarray(t1)), key=lambda d: d.area)
    cx, cy = (f.bbox[0] + f.bbox[2]) / 2, (f.bbox[1] + f.bbox[3]) / 2
    s = 1.6 * max(f.width, f.height)
    return t1.crop((int(cx - s), int(cy - s), int(cx + s), int(cy + s))).resize((320, 320), Image.LANCZOS)


@pytest.fixture(scope="module")
def people(engine, photos_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("people")
    t1_face(photos_dir).save(d / "t1face.png")
    packs = ("buffalo_l", "antelopev2")
    return {
        "astronaut": engine.identity([str(photos_dir / "astronaut.png")], packs=packs),
        "t1face": engine.identity([str(d / "t1face.png")], packs=packs),
        "t1_image": Image.open(d / "t1face.png"),
    }


def test_independent_recogniser_per_method():
    # FaceID conditions on buffalo_l -> scored by antelopev2, and the other way round
    assert scorer_pack("faceid") == "antelopev2"
    assert scorer_pack("instantid") == "buffalo_l"


@pytest.mark.parametrize("method", ["faceid", "instantid"])
def test_image_against_its_own_face_scores_about_one(engine, people, photos_dir, method):
    image = Image.open(photos_dir / "astronaut.png")
    s = engine.scorer().score(image, people["astronaut"], method)
    assert s["recognizer"] == scorer_pack(method)
    assert s["face_found"] is True and s["references"] == 1
    assert -1.0 <= s["mean"] <= s["max"] <= 1.0
    assert s["mean"] > 0.97  # same face; only the crop resampling differs


def test_different_identities_score_lower(engine, people, photos_dir):
    astro = Image.open(photos_dir / "astronaut.png")
    for method in ("faceid", "instantid"):
        same = engine.scorer().score(astro, people["astronaut"], method)["mean"]
        other = engine.scorer().score(astro, people["t1face"], method)["mean"]
        back = engine.scorer().score(people["t1_image"], people["t1face"], method)["mean"]
        cross = engine.scorer().score(people["t1_image"], people["astronaut"], method)["mean"]
        assert all(-1.0 <= v <= 1.0 for v in (same, other, back, cross))
        assert other < same - 0.01 and cross < back - 0.01


def test_mirrored_photo_is_found_and_scored_in_range(engine, people, photos_dir):
    flipped = ImageOps.mirror(Image.open(photos_dir / "astronaut.png"))
    s = engine.scorer().score(flipped, people["astronaut"], "faceid")
    assert s["face_found"] and -1.0 <= s["mean"] == s["max"] <= 1.0  # one reference photo


def test_output_without_a_face_is_reported_not_raised(engine, people, photos_dir):
    cat = Image.open(photos_dir / "chelsea.png")
    s = engine.scorer().score(cat, people["astronaut"], "faceid")
    assert s == {"recognizer": "antelopev2", "face_found": False, "mean": None, "max": None, "independent": True}
    assert sort_key({"likeness": s}) == float("-inf")
    assert "no face found" in describe(s)


def test_several_reference_photos_give_mean_and_max(engine, photos_dir, tmp_path):
    flipped = tmp_path / "flipped.png"
    ImageOps.mirror(Image.open(photos_dir / "astronaut.png")).save(flipped)
    ident = engine.identity([str(photos_dir / "astronaut.png"), str(flipped)], packs=("buffalo_l",))
    s = engine.scorer().score(Image.open(photos_dir / "astronaut.png"), ident, "faceid")
    assert s["references"] == 2
    assert -1.0 <= s["mean"] < s["max"] <= 1.0  # the unflipped reference matches best
    assert s["max"] > 0.97


# ------------------------------------------------------------------ best-of-N
def fake_images(folder: Path, means: list) -> list:
    out = []
    for i, m in enumerate(means):
        p = folder / f"img-{i}.png"
        p.write_bytes(b"png")
        lk = {"recognizer": "antelopev2", "face_found": m is not None, "mean": m, "max": m}
        out.append(SimpleNamespace(path=p, seed=i, image=None, recipe={"likeness": lk}))
    return out


def test_keep_best_keeps_the_most_alike_and_deletes_the_rest(tmp_path):
    imgs = fake_images(tmp_path, [0.31, None, 0.72, 0.55, -0.2])
    kept = keep_best(None, imgs, keep=2)
    assert [g.seed for g in kept] == [2, 3]  # the two highest, in generation order
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img-2.png", "img-3.png"]


def test_keep_best_ranks_faceless_outputs_last(tmp_path):
    imgs = fake_images(tmp_path, [None, -0.9, None])
    assert [g.seed for g in keep_best(None, imgs, keep=1)] == [1]


def test_keep_best_moves_rejects_without_overwriting(tmp_path):
    rejects = tmp_path / "rejects"
    rejects.mkdir()
    (rejects / "img-0.png").write_bytes(b"earlier reject")
    imgs = fake_images(tmp_path, [0.1, 0.9, 0.5])
    kept = keep_best(None, imgs, keep=1, rejects=True)
    assert [g.seed for g in kept] == [1]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["img-1.png"]
    assert sorted(p.name for p in rejects.iterdir()) == ["img-0-1.png", "img-0.png", "img-2.png"]
    assert (rejects / "img-0.png").read_bytes() == b"earlier reject"
    assert imgs[0].path == rejects / "img-0-1.png"  # the moved image knows where it went


def test_describe():
    assert describe({"recognizer": "buffalo_l", "face_found": True, "mean": 0.5, "max": 0.61}) == \
        "likeness 0.500 (max 0.610, buffalo_l)"
    assert "not scored" in describe(None)


# ------------------------------------------------------------ generate CLI
def run_cli(argv, capsys):
    from cli.main import run

    rc = run(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_generate_keep_best_of_n_in_demo_mode(tiny_models_dir, photos_dir, tmp_path, capsys):
    from pipelines.metadata import read_recipe

    out = tmp_path / "out"
    common = ["--demo", "--models-dir", str(tiny_models_dir), "--outputs-dir", str(tmp_path / "outputs"),
              "--device", "cpu", "--dtype", "float32", "generate", "--photo", str(photos_dir / "astronaut.png"),
              "--prompt", "a portrait", "--steps", "2", "--width", "64", "--height", "64", "--seed", "3",
              "--out", str(out)]
    rc, stdout, stderr = run_cli([*common, "-n", "3", "--keep", "1", "--rejects"], capsys)
    assert rc == 0, stderr
    printed = [Path(line) for line in stdout.splitlines() if line.strip()]
    assert len(printed) == 1 and printed[0].is_file()
    assert sorted(p for p in out.glob("*.png")) == printed
    assert len(list((out / "rejects").glob("*.png"))) == 2
    assert "best-of-3: kept the 1 most alike; the others were moved to rejects/" in stderr
    assert f"{printed[0].name}: likeness" in stderr  # the kept image's score is shown
    recipe = read_recipe(printed[0])
    lk = recipe["likeness"]  # the PNG carries the score
    assert lk["recognizer"] == "antelopev2" and isinstance(lk["face_found"], bool)
    # the kept image ranks first among all three by the same key
    rejected = [read_recipe(p) for p in (out / "rejects").glob("*.png")]
    assert all(sort_key(recipe) >= sort_key(r) for r in rejected)

    rc, _, stderr = run_cli([*common, "--rejects"], capsys)
    assert rc == 2 and "--rejects needs --keep" in stderr


def test_recipe_replay_of_a_best_of_n_image_makes_one_image(tmp_path):
    from cli.generate import request_from_args
    from pipelines.metadata import save_png
    from pipelines.requests import GenerateRequest, validate_request

    req = GenerateRequest(prompt="p", method="none", count=4, keep=2, rejects=True)
    recipe = {"request": {**req.model_dump(exclude={"out_dir", "photos", "identity_card"}), "count": 1}}
    png = tmp_path / "r.png"
    save_png(Image.new("RGB", (8, 8)), png, parameters="p", recipe=recipe, notice=DEMO.notice)
    args = SimpleNamespace(recipe=str(png), photo=[], identity=None, out=None, keep=None, rejects=False)
    data = request_from_args(args, None)
    replay = validate_request(GenerateRequest, data, "generate")
    assert replay.count == 1 and replay.keep is None and replay.rejects is False


def test_missing_independent_recogniser_falls_back_and_never_fails(photos_dir, tmp_path):
    """Real mode with only the method's own recogniser present: the score uses it,
    flagged not independent; with neither present the score is a note, not an error."""
    from types import SimpleNamespace

    from PIL import Image

    from pipelines import scoring

    calls = []

    def fake_refs(self, identity, pack):
        calls.append(pack)
        return np.ones((1, 4), np.float32) / 2

    def fake_score(analyzer, rgb, refs, pack):
        return {"recognizer": pack, "face_found": True, "mean": 0.5, "max": 0.5}

    img = Image.open(photos_dir / "astronaut.png")
    present = {"buffalo_l"}
    scorer = LikenessScorer(analyzer=lambda pack: SimpleNamespace(pack=pack), available=lambda p: p in present)
    orig = LikenessScorer.reference_embeddings, scoring.score_array
    LikenessScorer.reference_embeddings, scoring.score_array = fake_refs, fake_score
    try:
        r = scorer.score(img, None, "faceid")  # independent would be antelopev2
        assert r["recognizer"] == "buffalo_l" and r["independent"] is False
        present.add("antelopev2")
        assert scorer.score(img, None, "faceid")["independent"] is True
        present.clear()
        r = scorer.score(img, None, "faceid")
        assert r["face_found"] is None and "no face recogniser" in r["note"]
    finally:
        LikenessScorer.reference_embeddings, scoring.score_array = orig
