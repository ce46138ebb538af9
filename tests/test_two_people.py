"""Two people in one picture (tiny models): each person's region is conditioned
by their own identity (IP-Adapter attention masks), likeness per person, exact
replay, and clear errors (more people than the layout has, a method that cannot)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import fast_request
from PIL import Image

from pipelines.errors import BadInput
from pipelines.profile import DEMO
from pipelines.requests import GenerateRequest

FAST = fast_request(width=128, height=96, prompt="two friends", seed=4, method="faceid")


@pytest.fixture(scope="module")
def engine(make_engine):
    return make_engine("two-out")


def first_attn2_output(engine, req) -> np.ndarray:
    """The first cross-attention layer's output at the first step (before any
    convolution spreads one region into the other): [CFG batch, tokens, channels]."""
    pipe = engine.pipeline(engine.default_base("faceid"))
    name, attn = next((n, m) for n, m in pipe.unet.named_modules() if n.endswith("attn2"))
    seen = []
    handle = attn.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()) if not seen else None)
    try:
        engine.generate(req)
    finally:
        handle.remove()
    return seen[0].numpy()


def test_each_region_is_conditioned_by_its_own_identity(engine, photos_dir):
    a, b, c = (str(photos_dir / p) for p in ("astronaut.png", "t1.jpg", "chelsea.png"))
    base = first_attn2_output(engine, GenerateRequest(**FAST, photos=[a], photos_2=[b]))
    other = first_attn2_output(engine, GenerateRequest(**FAST, photos=[a], photos_2=[a]))
    swapped = first_attn2_output(engine, GenerateRequest(**FAST, photos=[b], photos_2=[b]))
    n = base.shape[1]
    h = int(round((n * 96 / 128) ** 0.5))
    w = n // h
    left = np.zeros((h, w), bool)
    left[:, : w // 2] = True
    left = left.reshape(-1)
    d2 = np.abs(base - other).max(axis=(0, 2))  # only person 2's identity changed
    assert d2[left].max() == 0.0 and d2[~left].max() > 1e-4
    d1 = np.abs(other - swapped).max(axis=(0, 2))  # person 1's identity changed (and 2 back to b)
    assert d1[left].max() > 1e-4
    assert c  # chelsea (a cat) is not used: a face is needed for an identity


def test_likeness_per_person_and_exact_replay(engine, photos_dir):
    from cli.generate import recipe_request

    req = GenerateRequest(**FAST, photos=[str(photos_dir / "astronaut.png")], photos_2=[str(photos_dir / "t1.jpg")],
                          face_index_2={str(photos_dir / "t1.jpg"): 2})
    first = engine.generate(req).images[0]
    people = first.recipe["method_details"]["people"]
    assert people["layout"] == "two-side-by-side" and people["boxes"] == [[0, 0, 64, 96], [64, 0, 128, 96]]
    assert [p["person"] for p in first.recipe["likeness_people"]] == [1, 2]
    assert "photos_2" not in first.recipe["request"]  # no local paths: person 2 is a card by name
    replay = GenerateRequest(**recipe_request(first.path, engine.settings))
    assert replay.identity_card_2 and not replay.photos_2
    again = engine.generate(replay).images[0]
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))


def test_score_people_finds_each_persons_face_in_their_box(engine, photos_dir):
    from pipelines.multi_person import People, load_layout, score_people

    face = Image.open(photos_dir / "astronaut.png").convert("RGB").resize((256, 256))
    canvas = Image.new("RGB", (512, 256))
    canvas.paste(face, (0, 0))
    canvas.paste(face.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (256, 0))
    ident_a = engine.identity([str(photos_dir / "astronaut.png")], packs=("antelopev2",))
    ident_b = engine.identity([str(photos_dir / "t1.jpg")], packs=("antelopev2",))
    scores = score_people(engine, canvas, People(load_layout("two-side-by-side"), [ident_a, ident_b]), "faceid")
    assert [s["face_found"] for s in scores] == [True, True]
    alone = Image.new("RGB", (512, 256))
    alone.paste(face, (0, 0))
    scores = score_people(engine, alone, People(load_layout("two-side-by-side"), [ident_a, ident_b]), "faceid")
    assert [s["face_found"] for s in scores] == [True, False] and scores[1]["mean"] is None


def test_more_people_than_the_layout_has_is_a_clear_error(engine, photos_dir, tmp_path):
    layout = json.loads((__import__("pipelines.multi_person", fromlist=["x"]).ASSETS_LAYOUTS
                         / "two-side-by-side.json").read_text())
    layout.update(name="solo", people=layout["people"][:1])
    solo = tmp_path / "solo.json"
    solo.write_text(json.dumps(layout))
    with pytest.raises(BadInput, match=r"layout 'solo' has room for 1 person; the request names 2"):
        engine.generate(GenerateRequest(**FAST, photos=[str(photos_dir / "astronaut.png")],
                                        photos_2=[str(photos_dir / "t1.jpg")], layout=str(solo)))
    with pytest.raises(BadInput, match="no layout named 'nope'"):
        engine.generate(GenerateRequest(**FAST, photos=[str(photos_dir / "astronaut.png")],
                                        photos_2=[str(photos_dir / "t1.jpg")], layout="nope"))
    with pytest.raises(BadInput, match="two people: method 'wplus' cannot"):
        engine.generate(GenerateRequest(**{**FAST, "method": "wplus"}, photos=[str(photos_dir / "astronaut.png")],
                                        photos_2=[str(photos_dir / "t1.jpg")]))


def test_request_checks_and_cli_flags(demo_settings):
    from cli.generate import request_from_args
    from cli.main import build_parser
    from pipelines.requests import validate_request

    with pytest.raises(BadInput, match="layout places two people"):
        validate_request(GenerateRequest, dict(FAST, photos=["a.png"], layout="two-side-by-side"))
    with pytest.raises(BadInput, match="not both"):
        validate_request(GenerateRequest, dict(FAST, photos=["a.png"], photos_2=["b.png"], identity_card_2="c"))
    args = build_parser().parse_args(["generate", "--prompt", "p", "--photo", "a.png", "--photo-2", "b.png",
                                      "--photo-2", "c.png", "--layout", "two-side-by-side"])
    req = GenerateRequest(**request_from_args(args, demo_settings))
    assert req.photos_2 == ["b.png", "c.png"] and req.layout == "two-side-by-side"


def test_a_batch_item_names_two_identities(tmp_path, photos_dir):
    import shutil

    from pipelines.batch.jobfile import load_job

    for name in ("astronaut.png", "t1.jpg"):
        shutil.copy(photos_dir / name, tmp_path / name)
    job = tmp_path / "job.yaml"
    job.write_text("identities:\n  ann: {photos: [astronaut.png]}\n  bob: {photos: [{photo: t1.jpg, face: 2}]}\n"
                   "items:\n  - {identity: ann, second: bob, method: faceid, prompt: two friends, seed: 1}\n"
                   "  - {identity: ann, method: faceid, prompt: two friends, seed: 1}\n")
    items = load_job(job, DEMO).items
    two, one = items
    assert two.request.photos_2 == [str(tmp_path / "t1.jpg")]
    assert two.request.face_index_2 == {str(tmp_path / "t1.jpg"): 2}
    assert not one.request.photos_2 and two.id != one.id
    job.write_text("identities:\n  ann: {photos: [astronaut.png]}\n"
                   "items:\n  - {identity: ann, second: zed, method: faceid, prompt: p}\n")
    with pytest.raises(BadInput, match=r"line 4: items\[0\].second: identity 'zed' is not defined"):
        load_job(job, DEMO)


def test_instantid_two_identitynet_views_share_weights_and_each_gets_its_person(engine, photos_dir):
    import torch

    from pipelines.multi_person import identitynet_views

    req = GenerateRequest(**{**FAST, "method": "instantid"}, photos=[str(photos_dir / "astronaut.png")],
                          photos_2=[str(photos_dir / "t1.jpg")])
    first = engine.generate(req).images[0]  # loads InstantID and builds the views
    method = engine._methods["instantid"]
    views = identitynet_views(engine, method)
    src = dict(method.identitynet.named_parameters())
    for view in views.views:
        assert all(p.data_ptr() == src[n].data_ptr() for n, p in view.named_parameters())
    seen: dict = {0: [], 1: []}
    handles = []
    for k, view in enumerate(views.views):
        handles.append(view.register_forward_pre_hook(
            lambda m, a, kw, k=k: seen[k].append(("tokens", kw["encoder_hidden_states"].clone())), with_kwargs=True))
        handles.append(view.register_forward_hook(
            lambda m, a, out, k=k: seen[k].append(("res", [r.clone() for r in out[0]]))))
    try:
        engine.generate(req)
    finally:
        for h in handles:
            h.remove()
    expected = [torch.cat([t[0], t[1]]) for t in (method.face_tokens(engine._pipe, e) for e in (
        method.embedding_for(i, raw=True) for i in (engine.identity([str(photos_dir / "astronaut.png")],
                                                                    packs=("antelopev2",)),
                                                    engine.identity([str(photos_dir / "t1.jpg")],
                                                                    packs=("antelopev2",)))))]
    for k in (0, 1):
        tokens = next(v for tag, v in seen[k] if tag == "tokens")
        assert torch.allclose(tokens, expected[k].to(tokens.dtype))
        residuals = next(v for tag, v in seen[k] if tag == "res")
        for r in residuals:  # outside the person's half of the canvas: nothing
            w = r.shape[-1]
            outside = r[..., w // 2:] if k == 0 else r[..., : w // 2]
            assert outside.abs().max() == 0
    assert first.recipe["method_details"]["people"]["layout"] == "two-side-by-side"
    assert "face_region" not in first.recipe["method_details"]


def test_face_detail_repairs_each_face_with_its_own_identity(engine, photos_dir, monkeypatch):
    from pipelines import detail

    face = Image.open(photos_dir / "astronaut.png").convert("RGB").resize((128, 128))
    canvas = Image.new("RGB", (256, 128))
    canvas.paste(face, (0, 0))
    canvas.paste(face.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (128, 0))
    a, b = str(photos_dir / "astronaut.png"), str(photos_dir / "t1.jpg")
    req = GenerateRequest(**{**FAST, "steps": 3, "width": 128, "height": 64}, photos=[a], photos_2=[b],
                          face_detail=True)
    engine.generate(req)
    ctx = engine._finishing
    proj = ctx.pipe.unet.encoder_hid_proj.image_projection_layers[0]
    two_person_clip = proj.clip_embeds
    seen = []
    original = detail.inpaint_face
    monkeypatch.setattr(detail, "inpaint_face", lambda e, c, *args, **kw: (
        seen.append(c.cond.call_kwargs["ip_adapter_image_embeds"][0].clone()), original(e, c, *args, **kw))[1])
    recipe = {"seed": 4}
    out = detail.face_detail_pass(ctx, canvas, req, recipe)
    faces = recipe["face_detail"]["faces"]
    assert sorted(f["person"] for f in faces) == [1, 2]
    by_person = {f["person"]: seen[i] for i, f in enumerate(faces)}
    assert by_person[1].shape[1] == 1 and not torch_equal(by_person[1], by_person[2])  # one identity each
    assert proj.clip_embeds is two_person_clip  # the run's two-person state is back
    masks = [np.asarray(detail.face_mask(canvas.size, f["box"])) > 0 for f in faces]
    outside = ~np.logical_or(*masks)
    diff = np.abs(np.asarray(out).astype(int) - np.asarray(canvas).astype(int)).sum(axis=2)
    assert diff[outside].max() == 0 and diff[~outside].mean() > 1
    assert len(recipe["face_detail"]["likeness_after"]["people"]) == 2


def torch_equal(x, y) -> bool:
    import torch

    return bool(torch.equal(x, y))
