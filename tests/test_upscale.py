"""Upscale step: spandrel ESRGAN upscalers (tiny packs in the published key
layouts), tiling, the pixel cap, the hires pass, the recipe and exact replay."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import fast_request
from PIL import Image

from pipelines.errors import BadInput
from pipelines.requests import GenerateRequest

FAST = fast_request(seed=11)


@pytest.fixture(scope="module")
def engine(make_engine):
    return make_engine("upscale-out", accept_research_licenses=True)


@pytest.mark.parametrize("name,layout_key", [("realesrgan-x4plus", "params_ema.conv_first.weight"),
                                             ("4x-ultrasharp", "model.0.weight")])
def test_tiny_packs_keep_the_published_layout_and_load_as_esrgan_x4(engine, name, layout_key):
    from safetensors import safe_open

    from pipelines.upscale import UPSCALERS, get_upscaler

    up = get_upscaler(engine, name)
    spec = UPSCALERS[name]
    path = engine.store.file_path(spec.model, spec.weights)
    assert path.suffix == ".safetensors"  # the converted copy, never the pickle
    with safe_open(str(path), "pt") as f:
        assert layout_key in f.keys()
    assert up.descriptor.architecture.id == "ESRGAN" and up.descriptor.scale == 4


def test_tiles_bound_the_model_input_and_match_one_pass(engine):
    from pipelines.upscale import get_upscaler

    up = get_upscaler(engine, "realesrgan-x4plus")
    rgb = np.asarray(Image.open(_astronaut()).convert("RGB").resize((96, 80)))
    whole = up.upscale_native(rgb, tile=512)
    assert up.tiles_run == [(80, 96)]
    tiled = up.upscale_native(rgb, tile=32, overlap=16)
    assert whole.shape == tiled.shape == (320, 384, 3)
    # memory stays flat: no model input is larger than a tile plus its overlap on each side
    assert len(up.tiles_run) == 9 and max(max(t) for t in up.tiles_run) <= 32 + 2 * 16
    diff = np.abs(whole.astype(int) - tiled.astype(int))
    assert diff.mean() < 2.0  # seams are no visible edge: the overlap covers the context
    no_overlap = up.upscale_native(rgb, tile=32, overlap=0)
    assert np.abs(whole.astype(int) - no_overlap.astype(int)).mean() > diff.mean()


def test_engine_upscale_recipe_and_exact_replay(engine, photos_dir, tmp_path):
    from cli.generate import recipe_request

    req = GenerateRequest(**FAST, method="faceid", photos=[str(photos_dir / "astronaut.png")], upscale=2)
    first = engine.generate(req).images[0]
    assert first.image.size == (128, 128)
    up = first.recipe["upscale"]
    assert up["upscaler"] == "realesrgan-x4plus" and up["factor"] == 2.0
    assert up["from"] == [64, 64] and up["to"] == [128, 128]
    assert first.recipe["request"]["upscale"] == 2.0
    replay = GenerateRequest(**recipe_request(first.path, engine.settings))
    again = engine.generate(replay).images[0]
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))

    plain = engine.generate(req.model_copy(update={"upscale": 1.0})).images[0]
    assert plain.image.size == (64, 64) and "upscale" not in plain.recipe
    one_half = engine.generate(req.model_copy(update={"upscale": 1.5, "upscaler": "4x-ultrasharp"})).images[0]
    assert one_half.image.size == (96, 96) and one_half.recipe["upscale"]["upscaler"] == "4x-ultrasharp"


def test_hires_pass_uses_the_identity_and_the_seed(engine, photos_dir):
    base = dict(FAST, method="faceid", upscale=2, hires=True, hires_strength=0.5, steps=4)
    a = engine.generate(GenerateRequest(**base, photos=[str(photos_dir / "astronaut.png")])).images[0]
    no_hires = engine.generate(GenerateRequest(**{**base, "hires": False},
                                               photos=[str(photos_dir / "astronaut.png")])).images[0]
    b = engine.generate(GenerateRequest(**base, photos=[str(photos_dir / "t1.jpg")])).images[0]
    again = engine.generate(GenerateRequest(**base, photos=[str(photos_dir / "astronaut.png")])).images[0]
    arr = lambda g: np.asarray(g.image).astype(int)  # noqa: E731
    assert a.image.size == (128, 128)
    assert a.recipe["upscale"]["hires"] == {"strength": 0.5, "seed": 11, "steps_run": 2}
    assert np.abs(arr(a) - arr(no_hires)).mean() > 1.0  # the pass re-generates
    assert np.abs(arr(a) - arr(b)).mean() > 1.0  # ... conditioned on the identity
    assert np.array_equal(arr(a), arr(again))  # ... and seeded


def test_upscale_over_the_pixel_cap_is_refused_before_denoising(engine, photos_dir, monkeypatch):
    from pipelines.upscale import check_upscale

    with pytest.raises(BadInput, match=r"upscale: 1024x1024 x4 = 4096x4096 .* exceeds the pixel cap"):
        check_upscale(1024, 1024, 4.0, 16_000_000)
    monkeypatch.setattr(engine.settings, "max_image_pixels", 64 * 64 * 3)
    calls = []
    monkeypatch.setattr(engine, "_call_kwargs", lambda *a, **k: calls.append(1))
    with pytest.raises(BadInput, match="exceeds the pixel cap"):
        engine.generate(GenerateRequest(**FAST, method="none", upscale=2))
    assert calls == []


def test_bad_upscale_fields_are_clear_errors():
    from pipelines.requests import validate_request

    with pytest.raises(BadInput, match="field upscale: upscale 3 is not offered"):
        validate_request(GenerateRequest, dict(FAST, method="none", upscale=3))
    with pytest.raises(BadInput, match="hires needs upscale"):
        validate_request(GenerateRequest, dict(FAST, method="none", hires=True))
    with pytest.raises(BadInput, match="field upscaler"):
        validate_request(GenerateRequest, dict(FAST, method="none", upscale=2, upscaler="nope"))


def test_cli_flags_reach_the_request(demo_settings):
    from cli.generate import request_from_args
    from cli.main import build_parser

    args = build_parser().parse_args(["generate", "--prompt", "p", "--method", "none", "--upscale", "4",
                                      "--upscaler", "4x-ultrasharp", "--hires", "--hires-strength", "0.25"])
    data = request_from_args(args, demo_settings)
    req = GenerateRequest(**data)
    assert (req.upscale, req.upscaler, req.hires, req.hires_strength) == (4.0, "4x-ultrasharp", True, 0.25)


def _astronaut():
    import io

    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, format="PNG")
    buf.seek(0)
    return buf


def test_hires_pass_with_instantid_runs_with_resized_keypoints(engine, photos_dir):
    out = engine.generate(GenerateRequest(**dict(FAST, steps=4), method="instantid", upscale=2, hires=True,
                                          photos=[str(photos_dir / "astronaut.png")])).images[0]
    plain = engine.generate(GenerateRequest(**dict(FAST, steps=4), method="instantid", upscale=2,
                                            photos=[str(photos_dir / "astronaut.png")])).images[0]
    assert out.image.size == (128, 128) and out.recipe["upscale"]["hires"]["steps_run"] == 1
    assert np.abs(np.asarray(out.image).astype(int) - np.asarray(plain.image).astype(int)).mean() > 1.0


def test_a_missing_upscaler_is_named_before_denoising(tmp_path, make_engine):
    from pipelines.errors import LikenessError
    from pipelines.finishing import FinishingSteps

    engine = make_engine("upscale-missing", models_dir=tmp_path / "models", demo=False)  # nothing downloaded
    req = GenerateRequest(**FAST, method="none", upscale=2, upscaler="4x-ultrasharp")
    with pytest.raises(LikenessError, match=r"4x-ultrasharp.*--accept-license"):
        FinishingSteps.for_request(engine, req, None, None, None, None, [], None, 64, 64)
