"""Template portraits (tiny models): the template's pixels outside the face mask
are kept exactly, the identity and (InstantID) the template's keypoints drive the
face, the recipe records it; a template without a face and unknown names are
clear errors; users add their own."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import fast_request
from PIL import Image

from pipelines.errors import BadInput
from pipelines.profile import DEMO
from pipelines.requests import GenerateRequest

FAST = fast_request(steps=3, width=128, height=128, seed=9)


@pytest.fixture(scope="module")
def engine(make_engine):
    return make_engine("tpl-out")


def make(engine, photos_dir, photo="t1.jpg", **kw):
    data = dict(FAST, method="faceid", photos=[str(photos_dir / photo)], template="astronaut")
    data.update(kw)
    return engine.generate(GenerateRequest(**data)).images[0]


@pytest.mark.parametrize("method", ["faceid", "instantid"])
def test_pixels_outside_the_mask_are_the_templates(engine, photos_dir, method):
    from pipelines.templates import ASSETS_TEMPLATES, load_template

    out = make(engine, photos_dir, method=method)
    template = Image.open(ASSETS_TEMPLATES / "astronaut.png").convert("RGB")
    assert out.image.size == template.size
    tpl = load_template(engine, GenerateRequest(**dict(FAST, method="none", template="astronaut")))
    mask = np.asarray(tpl.mask()) > 0
    diff = np.abs(np.asarray(out.image).astype(int) - np.asarray(template).astype(int)).sum(axis=2)
    assert diff[~mask].max() == 0
    assert diff[mask].mean() > 5
    details = out.recipe["method_details"]["template"]
    assert details["template"] == "astronaut" and details["size"] == [512, 512] and details["strength"] == 0.85
    assert out.recipe["request"]["template"] == "astronaut"


def test_identity_drives_the_face_and_the_seed_replays(engine, photos_dir):
    a = np.asarray(make(engine, photos_dir).image).astype(int)
    a2 = np.asarray(make(engine, photos_dir).image).astype(int)
    b = np.asarray(make(engine, photos_dir, photo="astronaut.png").image).astype(int)
    assert np.array_equal(a, a2)
    assert np.abs(a - b).mean() > 0.05


def test_instantid_gets_the_template_faces_keypoints(engine, photos_dir, monkeypatch):
    from pipelines.pose.render import render_face_keypoints
    from pipelines.templates import load_template

    make(engine, photos_dir, method="instantid")  # builds the views
    tpl = load_template(engine, GenerateRequest(**dict(FAST, method="none", template="astronaut")))
    run = next(v for k, v in engine._views.items() if k[0] == "inpaint" and len(k) > 1)
    original = type(run).__call__
    seen = {}

    @functools.wraps(original)
    def spy(self, **kw):
        seen.update(kw)
        return original(self, **kw)

    monkeypatch.setattr(type(run), "__call__", spy)
    make(engine, photos_dir, method="instantid")
    expected = render_face_keypoints(np.asarray(tpl.face.kps, np.float32), 512, 512)
    assert np.array_equal(np.asarray(seen["control_image"]), np.asarray(expected))
    assert seen["strength"] == 0.85


def test_a_template_without_a_face_is_a_clear_error(engine, photos_dir):
    with pytest.raises(BadInput, match=r"template chelsea.png: no face found"):
        make(engine, photos_dir, template=str(photos_dir / "chelsea.png"))
    with pytest.raises(BadInput, match=r"template_face 3: template astronaut.png has 1 face\."):
        make(engine, photos_dir, template_face=3)
    with pytest.raises(BadInput, match="no template named 'nope'"):
        make(engine, photos_dir, template="nope")


def test_users_add_their_own_templates(engine, photos_dir):
    from pipelines.templates import list_templates, user_templates_dir

    folder = user_templates_dir(engine.settings)
    folder.mkdir(parents=True, exist_ok=True)
    Image.open(photos_dir / "astronaut.png").resize((256, 256)).save(folder / "my-shot.jpg")
    assert {"astronaut", "my-shot"} <= set(list_templates(engine.settings))
    out = make(engine, photos_dir, template="my-shot")
    assert out.image.size == (256, 256) and out.recipe["method_details"]["template"]["template"] == "my-shot"


def test_template_request_checks_and_cli_flags(demo_settings):
    from cli.generate import request_from_args
    from cli.main import build_parser
    from pipelines.requests import validate_request

    with pytest.raises(BadInput, match="template and pose"):
        validate_request(GenerateRequest, dict(FAST, method="none", template="astronaut", pose="head-tilt"))
    args = build_parser().parse_args(["generate", "--prompt", "p", "--photo", "x.png", "--template", "astronaut",
                                      "--template-face", "2", "--template-strength", "0.7"])
    req = GenerateRequest(**request_from_args(args, demo_settings))
    assert (req.template, req.template_face, req.template_strength) == ("astronaut", 2, 0.7)


def test_api_clients_cannot_name_server_files_as_template_layout_or_second_photos():
    from pydantic import ValidationError

    from app.http_api import GenerateBody
    from app.requests_map import api_field_specs

    gradio_fields = {name for name, _, _ in api_field_specs()}
    for field in ("template", "layout", "photos_2", "identity_card_2", "face_index_2"):
        assert field not in GenerateBody.model_fields and field not in gradio_fields
        with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
            GenerateBody(prompt="p", **{field: "/etc/passwd"})
    assert {"upscale", "face_detail", "template_strength"} <= set(GenerateBody.model_fields)


def test_a_web_job_file_names_templates_and_layouts_by_name_only(tmp_path, photos_dir):
    import shutil

    from pipelines.batch.jobfile import Uploads, load_job

    shutil.copy(photos_dir / "astronaut.png", tmp_path / "a.png")
    uploads = Uploads.from_files([tmp_path / "a.png"])
    job = tmp_path / "job.yaml"
    for key, value in (("template", "/etc/hosts.png"), ("template", "me.jpg"), ("layout", "../x.json")):
        job.write_text(f"identities:\n  ann: {{photos: [a.png]}}\nitems:\n"
                       f"  - {{identity: ann, method: faceid, prompt: p, overrides: {{{key}: '{value}'}}}}\n")
        with pytest.raises(BadInput, match=f"names {key}s by"):
            load_job(job, DEMO, uploads=uploads)
    job.write_text("identities:\n  ann: {photos: [a.png]}\nitems:\n"
                   "  - {identity: ann, method: faceid, prompt: p, overrides: {template: astronaut}}\n")
    assert load_job(job, DEMO, uploads=uploads).items[0].request.template == "astronaut"
