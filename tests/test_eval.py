"""`launch.py eval` in demo mode: identity folders x prompts x methods, Face Sim
with the independent recogniser, CLIP-T with the tiny OpenCLIP pack through
open_clip's real loader, calibration from real photos, CSV + Markdown + chart."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageOps

from pipelines.errors import BadInput


@pytest.fixture(scope="module")
def eval_inputs(photos_dir, tmp_path_factory):
    """Two people, two photos each (a photo and its mirror image), and a prompts
    file with a comment and a blank line."""
    d = tmp_path_factory.mktemp("eval-in")
    astro = Image.open(photos_dir / "astronaut.png")
    other = t1_face(photos_dir)
    for name, img in (("astronaut", astro), ("t1face", other)):
        (d / "ids" / name).mkdir(parents=True)
        img.save(d / "ids" / name / "1.png")
        ImageOps.mirror(img).save(d / "ids" / name / "2.jpg")
    (d / "ids" / name / "notes.txt").write_text("not a photo")
    (d / "prompts.txt").write_text("a portrait photo in a garden\n\n# skipped\nan oil painting of a person\n")
    return d


def t1_face(photos_dir: Path) -> Image.Image:
    """The largest face of the insightface group photo, cropped with margin."""
    from pipelines.faces.detectors import MtcnnDetector

    t1 = Image.open(photos_dir / "t1.jpg").convert("RGB")
    f = max(MtcnnDetector().detect(np.asarray(t1)), key=lambda d: d.area)
    cx, cy = (f.bbox[0] + f.bbox[2]) / 2, (f.bbox[1] + f.bbox[3]) / 2
    s = 1.6 * max(f.width, f.height)
    return t1.crop((int(cx - s), int(cy - s), int(cx + s), int(cy + s))).resize((320, 320), Image.LANCZOS)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_eval_demo_writes_csv_markdown_and_chart(tiny_models_dir, eval_inputs, tmp_path, capsys):
    from cli.main import run

    out = tmp_path / "report"
    rc = run(["--demo", "--models-dir", str(tiny_models_dir), "--outputs-dir", str(tmp_path / "outputs"),
              "--device", "cpu", "--dtype", "float32", "eval", "--identities", str(eval_inputs / "ids"),
              "--prompts", str(eval_inputs / "prompts.txt"), "--methods", "faceid,instantid", "--seeds", "1",
              "--seed", "5", "--steps", "2", "--width", "64", "--height", "64", "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    printed = {Path(p).name for p in cap.out.split()}
    assert printed == {"summary.csv", "images.csv", "summary.md", "summary.png"}

    images = read_csv(out / "images.csv")
    assert len(images) == 2 * 2 * 2  # methods x identities x prompts x 1 seed
    assert {(r["method"], r["identity"]) for r in images} == {
        (m, i) for m in ("faceid", "instantid") for i in ("astronaut", "t1face")}
    assert {r["prompt"] for r in images} == {"a portrait photo in a garden", "an oil painting of a person"}
    assert {r["seed"] for r in images} == {"5"}  # the same seed for every method: paired
    for r in images:
        assert (out / r["path"]).is_file()
        assert r["recognizer"] == {"faceid": "antelopev2", "instantid": "buffalo_l"}[r["method"]]
        assert -100.0 <= float(r["clip_t"]) <= 100.0
        assert float(r["seconds"]) > 0
        if r["face_found"] == "True":
            assert -1.0 <= float(r["face_sim"]) <= 1.0
    # CLIP-T depends on the prompt (the text tower is wired in)
    by_prompt = {}
    for r in images:
        by_prompt.setdefault(r["prompt"], []).append(float(r["clip_t"]))
    assert len({round(np.mean(v), 3) for v in by_prompt.values()}) == 2

    summary = read_csv(out / "summary.csv")
    methods = {r["method"]: r for r in summary if r["kind"] == "method"}
    calib = {r["recognizer"]: r for r in summary if r["kind"] == "calibration"}
    assert set(methods) == {"faceid", "instantid"} and set(calib) == {"antelopev2", "buffalo_l"}
    for r in methods.values():
        assert r["count"] == "4" and r["failed"] == "0"
        assert 0.0 <= float(r["face_rate"]) <= 1.0
        assert float(r["sec_per_image"]) > 0
        faced = [x for x in images if x["method"] == r["method"] and x["face_found"] == "True"]
        assert float(r["face_rate"]) == pytest.approx(len(faced) / 4)
        clip_mean = np.mean([float(x["clip_t"]) for x in images if x["method"] == r["method"]])
        assert float(r["clip_t"]) == pytest.approx(clip_mean, abs=1e-3)
    for r in calib.values():
        assert r["count"] == "2"  # one pair of photos per person
        assert -1.0 <= float(r["face_sim"]) <= 1.0 and float(r["face_rate"]) == 1.0

    md = (out / "summary.md").read_text()
    assert "| Method | Face Sim" in md and "CLIP-T" in md
    assert "(`faceid`)" in md and "(`instantid`)" in md and "Calibration" in md
    assert "Demo mode" in md

    with Image.open(out / "summary.png") as chart:
        assert chart.format == "PNG" and chart.size[0] >= 600 and chart.size[1] >= 400
        assert len(np.unique(np.asarray(chart.convert("L")))) > 10  # not blank


def test_clip_scorer_loads_the_catalog_model_through_open_clip(demo_settings):
    from safetensors import safe_open

    from pipelines.eval import ClipScorer
    from pipelines.stores import open_store

    store = open_store(demo_settings)
    folder = store.ensure("clip-vit-b-32-laion")
    entry = store.catalog.get("clip-vit-b-32-laion")
    assert sorted(f.path for f in entry.files) == sorted(
        p.name for p in folder.iterdir() if not p.name.startswith("."))
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    assert set(cfg) == {"model_cfg", "preprocess_cfg"}
    assert cfg["model_cfg"]["text_cfg"]["vocab_size"] == 49408  # open_clip's own BPE tokenizer fits
    with safe_open(str(folder / "open_clip_model.safetensors"), "pt") as f:
        keys = set(f.keys())
    for k in ("visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.proj",
              "visual.transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.1.mlp.c_fc.weight",
              "token_embedding.weight", "ln_final.weight", "text_projection", "logit_scale"):
        assert k in keys

    clip = ClipScorer(store, "cpu")
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    a = clip.score(img, "a photo of a person")
    assert clip.loaded and -100.0 <= a <= 100.0
    assert clip.score(img, "a photo of a person") == a  # deterministic, model resident
    assert clip.score(img, "a red car on a bridge at night") != a


def test_summary_aggregates_like_the_table_says():
    from pipelines.eval.harness import Calibration, Failure, ImageRecord
    from pipelines.eval.report import summarise

    def rec(sim, clip_t, seconds, warm):
        return ImageRecord("faceid", "p", "x", 0, "a.png", "antelopev2", sim is not None, sim, sim, clip_t,
                           seconds, warm)

    records = [rec(0.5, 20.0, 9.0, True), rec(None, 30.0, 1.0, False), rec(0.7, 25.0, 2.0, False)]
    cal = [Calibration("antelopev2", [0.6, 0.8], photos=4, photos_with_face=3)]
    rows = summarise(["faceid"], records, cal, [Failure("faceid", "q", "y", "no face")])
    m, c = rows
    assert m.face_sim == pytest.approx(0.6)  # over the outputs with a face
    assert m.face_rate == pytest.approx(2 / 3, abs=1e-4)
    assert m.clip_t == pytest.approx(25.0)  # over every output
    assert m.sec_per_image == pytest.approx(1.5)  # the warm-up call left out
    assert m.failed == 1 and m.count == 3
    assert (c.kind, c.count, c.face_rate) == ("calibration", 2, 0.75)
    assert c.face_sim == pytest.approx(0.7)


def test_methods_are_checked_up_front(monkeypatch):
    from pipelines import identity
    from pipelines.eval import parse_methods

    assert parse_methods("faceid, instantid,faceid") == ["faceid", "instantid"]
    with pytest.raises(BadInput, match="'photomaker' is not an identity method"):
        parse_methods("faceid,photomaker")
    with pytest.raises(BadInput, match="empty"):
        parse_methods(" , ")
    # a registered method's module that fails to import is a real error, never hidden
    monkeypatch.setitem(identity._METHODS, "ghost", "pipelines.identity.ghost_method:Ghost")
    assert parse_methods("faceid,ghost") == ["faceid", "ghost"]
    with pytest.raises(ModuleNotFoundError, match="ghost_method"):
        identity.get_method_class("ghost")


def test_wplus_is_evaluated_only_when_its_method_exists():
    from pipelines.eval import parse_methods

    if importlib.util.find_spec("pipelines.identity.wplus") is None:
        with pytest.raises(BadInput, match="'wplus' is not available"):
            parse_methods("faceid,wplus")
    else:
        assert parse_methods("faceid,wplus") == ["faceid", "wplus"]


def test_bad_identity_folders_and_prompt_files(tmp_path):
    from pipelines.eval import read_identities, read_prompts

    with pytest.raises(BadInput, match="is not a folder"):
        read_identities(tmp_path / "missing")
    with pytest.raises(BadInput, match="has no sub-folders"):
        read_identities(tmp_path)
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "readme.txt").write_text("x")
    with pytest.raises(BadInput, match="alice has no photos"):
        read_identities(tmp_path)
    with pytest.raises(BadInput, match="does not exist"):
        read_prompts(tmp_path / "nope.txt")
    (tmp_path / "p.txt").write_text("# only a comment\n\n")
    with pytest.raises(BadInput, match="has no prompts"):
        read_prompts(tmp_path / "p.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(BadInput, match="UTF-8"):
        read_prompts(tmp_path / "bin.txt")


def test_identity_without_any_face_fails_before_generating(demo_settings, photos_dir, tmp_path):
    from pipelines.engine import Engine
    from pipelines.eval import EvalRequest, run_eval

    ids = tmp_path / "ids" / "cat"
    ids.mkdir(parents=True)
    Image.open(photos_dir / "chelsea.png").save(ids / "1.png")
    (tmp_path / "p.txt").write_text("a portrait\n")
    engine = Engine(demo_settings)
    req = EvalRequest(identities=str(tmp_path / "ids"), prompts=str(tmp_path / "p.txt"), methods=["faceid"],
                      steps=2, width=64, height=64, out_dir=str(tmp_path / "out"))
    with pytest.raises(BadInput, match=r"identity folder .*cat: no photo has a usable face"):
        run_eval(engine, req, clip=SimpleNamespace(score=lambda *a: pytest.fail("generated anyway")),
                 log=lambda m: None)
    assert engine.load_count == 0  # no base pipeline was loaded


def test_face_sim_of_outputs_with_faces_reaches_the_table(demo_settings, eval_inputs, tmp_path, monkeypatch):
    """Tiny random diffusion models draw no faces, so here the 'output' is the
    identity's own first photo (diffusion stood in for, scoring real): its best
    reference is itself (~1), its mirror image scores lower."""
    from pipelines.engine import Engine, GeneratedImage, GenerateResult
    from pipelines.eval import EvalRequest, run_eval
    from pipelines.identity import get_method_class
    engine = Engine(demo_settings)

    def fake_generate(req):
        ident = engine.identity(req.photos, packs=(get_method_class(req.method).recognizer,))
        img = Image.open(req.photos[0]).convert("RGB")
        path = Path(req.out_dir) / f"{req.name_prefix}-{req.method}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        recipe = {"likeness": engine.scorer().score(img, ident, req.method)}
        return GenerateResult([GeneratedImage(path, req.seed, img, recipe)], ident, seconds=0.5)

    monkeypatch.setattr(engine, "generate", fake_generate)
    req = EvalRequest(identities=str(eval_inputs / "ids"), prompts=str(eval_inputs / "prompts.txt"),
                      methods=["faceid", "instantid"], out_dir=str(tmp_path / "out"))
    report = run_eval(engine, req, clip=SimpleNamespace(score=lambda image, prompt: 12.5), log=lambda m: None)
    rows = {r.method: r for r in report.rows if r.kind == "method"}
    for r in rows.values():
        assert r.count == 4 and r.face_rate == 1.0 and r.clip_t == 12.5 and r.sec_per_image == 0.5
        assert r.face_sim_max > 0.97 and -1.0 <= r.face_sim < r.face_sim_max
    summary = {r["method"]: r for r in read_csv(report.files["summary_csv"]) if r["kind"] == "method"}
    assert float(summary["faceid"]["face_sim"]) == rows["faceid"].face_sim
    assert all(r.face_found and r.face_sim is not None for r in report.records)
