"""The method registry (`pipelines.identity`) is the one home of method facts: a
method registered there, and nowhere else, shows up in the web UI's choices, the
command line's choices, request validation, the engine's base choice, scoring,
batch and evaluation, with the facts its class declares."""

from __future__ import annotations

import pytest

from pipelines import identity
from pipelines.errors import BadInput
from pipelines.identity.base import Conditioning, IdentityMethod
from pipelines.profile import REAL


class FakeSD15Method(IdentityMethod):
    name = "fakeid"
    label, title = "Fake ID (SD1.5)", "Fake identity method"
    help = "a test double registered only in the registry"
    base = "sd15"
    recognizer = "antelopev2"
    default_scale = 0.5

    def load(self, pipe) -> None:
        self.loaded = True

    def unload(self, pipe) -> None:
        self.loaded = False

    def conditioning(self, pipe, identity, request, width, height) -> Conditioning:
        return Conditioning()


class FakeSDXLMethod(FakeSD15Method):
    name = "fakexl"
    label, title = "Fake XL", "Fake SDXL identity method"
    base = "sdxl"
    recognizer = "buffalo_l"


@pytest.fixture()
def registered(monkeypatch):
    monkeypatch.setitem(identity._METHODS, "fakeid", f"{__name__}:FakeSD15Method")
    monkeypatch.setitem(identity._METHODS, "fakexl", f"{__name__}:FakeSDXLMethod")


def test_registry_reports_the_class_facts(registered):
    assert identity.method_names() == ["faceid", "instantid", "wplus", "arc2face", "pulid", "pulid-v1", "fakeid", "fakexl"]
    assert identity.method_names(include_none=True)[-1] == "none"
    info = identity.method_info("fakeid")
    assert (info.label, info.title, info.base, info.recognizer, info.default_scale) == (
        "Fake ID (SD1.5)", "Fake identity method", "sd15", "antelopev2", 0.5)
    assert identity.method_family("none") == "sdxl" and identity.method_recognizer("none") is None
    assert identity.methods_for_family("sdxl") == ["faceid", "instantid", "pulid", "pulid-v1", "fakexl"]


def test_fake_method_is_in_the_ui_choices_and_maps_to_its_base(registered):
    from app.requests_map import request_from_ui
    from app.widgets import method_choices

    choices = method_choices()
    assert ("Fake ID (SD1.5)", "fakeid") in choices and choices[-1][1] == "none"
    req = request_from_ui({"photos": ["me.jpg"], "prompt": "a portrait", "method": "fakeid"}, REAL)
    assert req.method == "fakeid" and req.base_model == "sd15-base"  # its family's base, from the registry
    req = request_from_ui({"photos": ["me.jpg"], "prompt": "a portrait", "method": "fakexl"}, REAL)
    assert req.base_model is None  # SDXL: the engine's default base


def test_fake_method_is_a_cli_choice(registered, capsys):
    from cli.main import build_parser

    args = build_parser().parse_args(["generate", "--method", "fakeid", "--prompt", "p", "--photo", "me.jpg"])
    assert args.method == "fakeid"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--method", "ghost", "--prompt", "p"])
    err = capsys.readouterr().err
    assert "fakeid" in err and "fakexl" in err


def test_fake_method_passes_request_validation_and_others_do_not(registered):
    from pipelines.requests import GenerateRequest, validate_request

    req = validate_request(GenerateRequest, {"prompt": "p", "method": "fakeid", "photos": ["me.jpg"]})
    assert req.method == "fakeid"
    with pytest.raises(BadInput, match="field method: Input should be .*'fakeid', 'fakexl' or 'none'"):
        validate_request(GenerateRequest, {"prompt": "p", "method": "ghost", "photos": ["me.jpg"]})


def test_engine_scoring_batch_eval_and_presets_read_the_registry(registered):
    from pipelines.batch.runner import _recognizer
    from pipelines.engine import Engine
    from pipelines.eval import parse_methods
    from pipelines.eval.report import method_title
    from pipelines.presets import Preset
    from pipelines.scoring import scorer_pack

    assert Engine.default_base("fakeid") == "sd15-base" and Engine.default_base("fakexl") == "sdxl-base"
    assert scorer_pack("fakeid") == "buffalo_l"  # independent of the antelopev2 it conditions on
    assert _recognizer("fakeid") == "antelopev2" and _recognizer("none") is None
    assert parse_methods("fakeid,faceid") == ["fakeid", "faceid"]
    assert method_title("fakeid") == "Fake identity method"
    fields = dict(name="p", title="P", prompt="{subject}", size="square", sampler="euler", steps=4, cfg=5.0)
    assert Preset(method="fakexl", **fields).method == "fakexl"
    with pytest.raises(ValueError, match="not an SDXL identity method"):
        Preset(method="fakeid", **fields)


def test_unregistered_names_are_refused_everywhere():
    from pipelines.requests import GenerateRequest, validate_request

    assert "fakeid" not in identity.method_names()
    with pytest.raises(BadInput, match="'fakeid' is unknown"):
        identity.get_method_class("fakeid")
    with pytest.raises(BadInput, match="field method"):
        validate_request(GenerateRequest, {"prompt": "p", "method": "fakeid", "photos": ["me.jpg"]})
