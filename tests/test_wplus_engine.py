"""The W+ method through the engine and the train-wplus command (tiny SD1.5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.errors import BadInput
from pipelines.requests import GenerateRequest

REPO = Path(__file__).resolve().parents[1]
FAST = dict(steps=3, width=64, height=64, cfg=5.0, sampler="euler", prompt="a portrait", seed=4)


@pytest.fixture(scope="module")
def engine(tiny_models_dir, tmp_path_factory):
    from pipelines.engine import Engine
    from pipelines.settings import load_settings

    out = tmp_path_factory.mktemp("wplus-out")
    return Engine(load_settings(models_dir=tiny_models_dir, outputs_dir=out, device="cpu",
                                dtype="float32", demo=True))


def run(engine, photos_dir, **kw):
    data = dict(FAST, photos=[str(photos_dir / "astronaut.png")], method="wplus")
    data.update(kw)
    res = engine.generate(GenerateRequest(**data))
    return np.asarray(res.images[0].image).astype(np.int16), res.images[0].recipe


def test_wplus_generates_on_sd15_and_edits_change_the_image(engine, photos_dir):
    plain, recipe = run(engine, photos_dir)
    assert recipe["base_model"] == "sd15-base" and recipe["method"] == "wplus"
    smiling, recipe2 = run(engine, photos_dir, edits=["smile=+2"])
    assert recipe2["method_details"]["edits"] == ["smile=+2"]
    assert np.abs(plain - smiling).mean() > 0.1
    base, _ = run(engine, photos_dir, method="none", photos=[], base_model="sd15-base")
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
