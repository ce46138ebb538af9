"""The W+ method through the engine and the train-wplus command (tiny SD1.5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fast_request, generate_on_astronaut

from pipelines.errors import BadInput
from pipelines.requests import GenerateRequest

REPO = Path(__file__).resolve().parents[1]
FAST = fast_request(steps=3, seed=4)
W_RECIPE = dict(negative="monochrome, lowres, bad anatomy, worst quality, low quality", freeu=True, vae="ft-mse")


@pytest.fixture(scope="module")
def engine(make_engine):
    return make_engine("wplus-out")


def run(engine, photos_dir, **kw):
    res = generate_on_astronaut(engine, photos_dir, {**FAST, "method": "wplus"}, **kw)
    return np.asarray(res.images[0].image).astype(np.int16), res.images[0].recipe


def test_wplus_generates_on_sd15_and_edits_change_the_image(engine, photos_dir):
    plain, recipe = run(engine, photos_dir)
    assert recipe["base_model"] == "sd15-base" and recipe["method"] == "wplus"
    smiling, recipe2 = run(engine, photos_dir, edits=["smile=+2"])
    assert recipe2["method_details"]["edits"] == ["smile=+2"]
    assert np.abs(plain - smiling).mean() > 0.1
    # the plain base under the W+ recipe (which a W+ request gets by default)
    base, _ = run(engine, photos_dir, method="none", photos=[], base_model="sd15-base", **W_RECIPE)
    zero, _ = run(engine, photos_dir, scale=0.0)
    assert np.abs(base - zero).max() <= 1  # scale 0 = the base model
    assert np.abs(base - plain).mean() > 0.1


def test_bad_edit_names_the_field(engine, photos_dir):
    with pytest.raises(BadInput, match="edit"):
        run(engine, photos_dir, edits=["wisdom=+1"])
    with pytest.raises(ValueError):
        GenerateRequest(**dict(FAST, photos=["x"], method="faceid", edits=["age=+1"]))


def test_train_wplus_cli_runs_and_its_result_loads(tiny_models_dir, photos_dir, tmp_path):
    faces = tmp_path / "faces"
    faces.mkdir()
    (faces / "a.png").write_bytes((photos_dir / "astronaut.png").read_bytes())
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(REPO / "launch.py"), "--demo", "--models-dir", str(tiny_models_dir),
           "train-wplus", "--faces", str(faces), "--steps", "3"]
    r = subprocess.run([*cmd, "--name", "mine"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    out = Path(r.stdout.strip().splitlines()[-1])
    assert out.is_file() and out.parent == tiny_models_dir / "wplus-trained"
    from diffusers import UNet2DConditionModel

    from pipelines.wplus.adapter import install_wplus, load_adapter_file, remove_wplus

    unet = UNet2DConditionModel.from_pretrained(tiny_models_dir / "demo" / "sd15-base" / "unet", variant="fp16")
    handle = install_wplus(unet, load_adapter_file(out))
    remove_wplus(unet, handle)
    r = subprocess.run([*cmd, "--name", "../escape"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 2 and "--name" in r.stderr


# ------------------------------------------------------------ the reference recipe
REFERENCE = dict(sampler="euler", cfg=7.5, negative="monochrome, lowres, bad anatomy, worst quality, low quality",
                 freeu=True, vae="ft-mse")


def test_reference_recipe_is_the_default_and_each_part_overridable(engine, photos_dir):
    data = dict(steps=2, width=64, height=64, prompt="a portrait", seed=4, method="wplus",
                photos=[str(photos_dir / "astronaut.png")])
    res = engine.generate(GenerateRequest(**data))
    recipe = res.images[0].recipe
    assert {k: recipe["request"][k] for k in REFERENCE} == REFERENCE
    assert recipe["sampler"] == "euler" and recipe["cfg"] == 7.5 and recipe["negative"] == REFERENCE["negative"]
    assert recipe["method_details"]["freeu"] == {"s1": 0.6, "s2": 0.4, "b1": 1.1, "b2": 1.2}
    assert recipe["method_details"]["unconditioned_steps"] == 1  # int(0.2 * 2) + 1
    assert 0 < recipe["method_details"]["whitened"] < 1
    # the sd-vae-ft-mse weights decode, not the base's own VAE
    from safetensors.torch import load_file

    pipe = engine.pipeline("sd15-base", "ft-mse")
    ft = load_file(str(engine.store.folder("sd-vae-ft-mse") / "diffusion_pytorch_model.safetensors"))
    key = "decoder.conv_out.weight"
    assert torch.equal(pipe.vae.state_dict()[key].float(), ft[key].float())
    first = np.asarray(res.images[0].image).astype(np.int16)

    # replaying the recorded request gives the same pixels
    replay = dict(recipe["request"], photos=data["photos"])
    again = engine.generate(GenerateRequest(**replay))
    assert np.array_equal(np.asarray(again.images[0].image).astype(np.int16), first)

    # every part of the recipe yields to a value the request sets, even the field defaults
    own = dict(sampler="ddim", cfg=5.0, negative="", freeu=False, vae="base")
    res2 = engine.generate(GenerateRequest(**data, **own))
    assert {k: res2.images[0].recipe["request"][k] for k in own} == own
    assert "freeu" not in res2.images[0].recipe["method_details"]
    assert np.abs(np.asarray(res2.images[0].image).astype(np.int16) - first).mean() > 0.1

    # FreeU alone changes the picture
    no_freeu = engine.generate(GenerateRequest(**data, freeu=False))
    assert np.abs(np.asarray(no_freeu.images[0].image).astype(np.int16) - first).mean() > 0.1


def test_recipe_options_of_one_family_are_refused_on_the_other(engine):
    from pipelines.engine import check_family_options

    req = GenerateRequest(prompt="p", method="none", vae="ft-mse", base_model="sdxl-base")
    with pytest.raises(BadInput, match="vae 'ft-mse'"):
        check_family_options(req, "sdxl")
    with pytest.raises(BadInput, match="freeu"):
        check_family_options(GenerateRequest(prompt="p", method="none", freeu=True), "sdxl")
    check_family_options(GenerateRequest(prompt="p", method="none", freeu=True, vae="ft-mse"), "sd15")


def test_cli_sets_only_the_fields_it_was_given(demo_settings):
    from cli.generate import request_from_args
    from cli.main import build_parser
    from pipelines.engine import apply_method_defaults
    from pipelines.identity import get_method_class
    from pipelines.requests import validate_request

    args = build_parser().parse_args(["generate", "--method", "wplus", "--photo", "me.png", "--prompt", "p",
                                      "--edit", "lipstick=+1"])
    req = validate_request(GenerateRequest, request_from_args(args, demo_settings), "generate")
    assert not set(REFERENCE) & req.model_fields_set
    eff = apply_method_defaults(req, get_method_class("wplus"))
    assert {k: getattr(eff, k) for k in REFERENCE} == REFERENCE and eff.edits == ["lipstick=+1"]
    args = build_parser().parse_args(["generate", "--method", "wplus", "--photo", "me.png", "--prompt", "p",
                                      "--cfg", "4", "--sampler", "ddim", "--negative", "", "--no-freeu",
                                      "--vae", "base"])
    req = validate_request(GenerateRequest, request_from_args(args, demo_settings), "generate")
    eff = apply_method_defaults(req, get_method_class("wplus"))
    assert (eff.cfg, eff.sampler, eff.negative, eff.freeu, eff.vae) == (4.0, "ddim", "", False, "base")
    # other methods declare no recipe: their requests are unchanged
    faceid = GenerateRequest(prompt="p", photos=["me.png"])
    assert apply_method_defaults(faceid, get_method_class("faceid")) is faceid


def test_a_recipe_written_before_a_field_existed_replays_with_its_default(engine, photos_dir, tmp_path):
    """A W+ recipe from before `freeu` existed was made without FreeU: replaying it
    must not switch FreeU on although it is W+'s default today."""
    from PIL import Image

    from cli.generate import recipe_request
    from pipelines.metadata import read_recipe, save_png

    res = engine.generate(GenerateRequest(**dict(FAST, method="wplus", photos=[str(photos_dir / "astronaut.png")],
                                                 steps=2, freeu=False)))
    recipe = read_recipe(res.images[0].path)
    assert recipe["request"]["freeu"] is False
    old = dict(recipe, request={k: v for k, v in recipe["request"].items() if k != "freeu"})
    png = res.images[0].path.parent / "old-recipe.png"
    save_png(Image.open(res.images[0].path), png, parameters="x", recipe=old,
             notice=engine.settings.profile.notice)
    data = recipe_request(png, engine.settings, need_identity=False)
    assert data["freeu"] is False and data["vae"] == recipe["request"]["vae"]
    # a current recipe keeps every value it recorded
    assert recipe_request(res.images[0].path, engine.settings, need_identity=False)["sampler"] == "euler"
