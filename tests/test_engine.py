"""Identity portraits end to end on tiny models (demo mode): the real loaders run
(from_pretrained, load_ip_adapter, ControlNetModel, FaceAnalysis); a tiny model
proves the wiring, not image quality."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import fast_request, generate_on_astronaut

from pipelines.errors import BadInput, NoFaceFound
from pipelines.requests import GenerateRequest

FAST = fast_request(prompt="a portrait photo", seed=7)


@pytest.fixture(scope="module")
def engine(make_engine):
    return make_engine("engine-out")


def gen(engine, photos_dir, **kw):
    res = generate_on_astronaut(engine, photos_dir, FAST, **kw)
    return [np.asarray(i.image).astype(np.int16) for i in res.images], res


def test_same_seed_same_pixels_and_seed_per_image(engine, photos_dir):
    a, res = gen(engine, photos_dir, method="faceid", count=2)
    b, _ = gen(engine, photos_dir, method="faceid", count=2)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert [i.seed for i in res.images] == [7, 8]
    assert not (a[0] == a[1]).all()  # each image its own seed
    assert engine.load_count == 1  # the base stayed resident


@pytest.mark.parametrize("method", ["faceid", "instantid"])
def test_identity_conditions_the_output(engine, photos_dir, method):
    from pipelines.faces.person import load_card

    _, res = gen(engine, photos_dir, method=method)
    ident = res.identity
    base, _ = gen(engine, photos_dir, method=method)
    # same request with a different embedding (a constructed other person)
    from pipelines.outputs import find_recipe_identity

    # the recipe names the card (no local path); the replay lookup finds it in outputs/identities
    card = find_recipe_identity(res.images[0].path, res.images[0].recipe["identity"], engine.settings)
    other = load_card(card["identity_card"])
    rng = np.random.default_rng(0)
    for table in (other.embeddings, other.raw_embeddings):
        for k, v in table.items():
            w = rng.standard_normal(v.shape).astype(np.float32)
            table[k] = w / np.linalg.norm(w) * np.linalg.norm(v)
    assert other.embeddings and ident.hash != other.hash
    from pipelines.faces.person import save_card

    card = save_card(other, res.images[0].path.parent / "other")
    diff, _ = gen(engine, photos_dir, method=method, photos=[], identity_card=str(card))
    assert np.abs(base[0] - diff[0]).mean() > 0.5


@pytest.mark.parametrize("method,extra", [("faceid", {}), ("instantid", {"identitynet_scale": 0.0})])
def test_scale_zero_equals_no_adapter(engine, photos_dir, method, extra):
    plain, _ = gen(engine, photos_dir, method="none", photos=[])
    zero, _ = gen(engine, photos_dir, method=method, scale=0.0, **extra)
    on, _ = gen(engine, photos_dir, method=method)
    assert np.abs(plain[0] - zero[0]).max() <= 1
    assert np.abs(plain[0] - on[0]).mean() > 0.5


def test_switching_and_unloading_restore_the_base(engine, photos_dir, make_engine):
    before, _ = gen(engine, photos_dir, method="none", photos=[])
    gen(engine, photos_dir, method="faceid")
    gen(engine, photos_dir, method="instantid")
    gen(engine, photos_dir, method="faceid")
    after, _ = gen(engine, photos_dir, method="none", photos=[])
    assert (before[0] == after[0]).all()
    assert not engine.pipeline().unet.peft_config if hasattr(engine.pipeline().unet, "peft_config") else True
    assert engine.pipeline().unet.encoder_hid_proj is None
    fresh = make_engine("engine-fresh")
    ref, _ = gen(fresh, photos_dir, method="none", photos=[])
    assert (ref[0] == after[0]).all()


def test_recipe_metadata_and_exact_replay(engine, photos_dir, tmp_path):
    from pipelines.metadata import read_recipe

    imgs, res = gen(engine, photos_dir, method="instantid", count=1, seed=11)
    path = res.images[0].path
    recipe = read_recipe(path)
    assert recipe["seed"] == 11 and recipe["method"] == "instantid"
    assert recipe["models"]["sdxl-base"] and recipe["identity"]["hash"] == res.identity.hash
    from PIL import Image

    info = Image.open(path).info
    assert "Seed: 11" in info["parameters"] and "trainedAlgorithmicMedia" in info["XML:com.adobe.xmp"]
    from pipelines.outputs import find_recipe_identity

    replay = GenerateRequest(**{**recipe["request"], **find_recipe_identity(path, recipe["identity"], engine.settings)})
    again = engine.generate(replay).images[0]
    assert (np.asarray(again.image).astype(np.int16) == imgs[0]).all()


def test_photo_without_face_is_a_clear_error(engine, photos_dir):
    with pytest.raises(NoFaceFound, match="chelsea.png"):
        gen(engine, photos_dir, method="faceid", photos=[str(photos_dir / "chelsea.png")])


def test_multi_photo_identity_reports_left_out_photos(engine, photos_dir, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    _, res = gen(engine, photos_dir, method="faceid",
                 photos=[str(photos_dir / "astronaut.png"), str(photos_dir / "chelsea.png"), str(bad)])
    reasons = {f["file"]: f["reason"] for f in res.excluded}
    assert str(photos_dir / "chelsea.png") in reasons and str(bad) in reasons
    assert len(res.images) == 1


def test_method_needs_identity_and_base_family_is_checked(engine, photos_dir):
    with pytest.raises(ValueError):
        GenerateRequest(prompt="x", method="faceid")
    with pytest.raises(BadInput, match="SD1.5|SDXL"):
        gen(engine, photos_dir, method="faceid", base_model="sd15-base")


@pytest.mark.parametrize("title,key", [("DPM++ 2M Karras", "dpmpp_2m_karras"), ("Euler a", "euler_a"),
                                       ("euler", "euler"), ("UniPC", "unipc")])
def test_sampler_accepts_a1111_titles(title, key):
    assert GenerateRequest(prompt="x", photos=["p"], sampler=title).sampler == key


def test_bad_request_fields_name_the_field_and_range():
    from pipelines.requests import validate_request

    for data, needle in [({"steps": 0}, "steps"), ({"sampler": "bogus"}, "sampler"), ({"width": 100}, "width"),
                         ({"cfg": 99}, "cfg"), ({"keep": 5, "count": 2}, "keep"), ({"pose_start": 0.8, "pose_end": 0.2}, "pose_end")]:
        with pytest.raises(BadInput, match=needle):
            validate_request(GenerateRequest, {"prompt": "x", "photos": ["p"], **data})
