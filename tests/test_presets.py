"""Portrait presets: schema-validated data files, CLI listing, generate --preset."""

from __future__ import annotations

import json

import pytest

from pipelines import presets as P
from pipelines.errors import BadInput
from pipelines.profile import DEMO
from pipelines.requests import GenerateRequest, validate_request


def write(folder, name, **changes):
    data = json.loads((P.ASSETS_PRESETS / "studio-headshot.json").read_text())
    data["name"] = name
    for k, v in changes.items():
        if v is _DROP:
            data.pop(k)
        else:
            data[k] = v
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


_DROP = object()


def test_at_least_twelve_shipped_presets_all_valid_with_preview_cards():
    presets = P.list_presets()
    assert len(presets) >= 12
    assert len({p.name for p in presets}) == len(presets)
    for p in presets:
        assert P.preview_path(p.name).is_file(), p.name
        assert P.SUBJECT in p.prompt, p.name
        req = validate_request(GenerateRequest, {**p.request_fields("a man"), "photos": ["me.jpg"]}, p.name)
        assert req.prompt.count("a man") == 1 and req.method == p.method
        assert (req.width, req.height) == P.SIZE_BUCKETS[p.size]
        assert req.steps == p.steps and req.cfg == p.cfg and req.pose == p.pose
    # the shipped set exercises the schema: both methods, poses, both restorers, several buckets
    assert {p.method for p in presets} == {"faceid", "instantid"}
    assert any(p.pose for p in presets) and {"gfpgan", "codeformer"} <= {p.restore for p in presets}
    assert len({p.size for p in presets}) >= 4


def test_shipped_poses_exist():
    from pipelines.pose.templates import builtin_names

    names = set(builtin_names())
    for p in P.list_presets():
        assert p.pose is None or p.pose in names


def test_subject_fills_placeholder_or_is_prepended(tmp_path):
    p = P.get_preset("studio-headshot")
    assert p.format_prompt("a woman with red hair").startswith("professional studio headshot of a woman with red hair,")
    assert "of a person," in p.format_prompt(None)
    write(tmp_path, "plain", prompt="oil painting, dramatic light")
    assert P.get_preset("plain", tmp_path).format_prompt("a man") == "a man, oil painting, dramatic light"


def test_demo_mode_shrinks_size_and_steps():
    p = P.get_preset("studio-headshot")
    fields = P.load_preset("studio-headshot", profile=DEMO)
    assert (fields["width"], fields["height"]) == DEMO.size(*P.SIZE_BUCKETS[p.size])
    assert fields["steps"] == min(p.steps, P.DEMO_MAX_STEPS)
    full = P.load_preset("studio-headshot")
    assert (full["width"], full["height"]) == (896, 1152) and full["steps"] == p.steps


@pytest.mark.parametrize(
    "changes, key, words",
    [
        ({"colour_scheme": "red"}, "colour_scheme", "unknown"),
        ({"steps": 999}, "steps", "less than or equal to 150"),
        ({"cfg": -1}, "cfg", "greater than or equal to 0"),
        ({"scale": 5}, "scale", "less than or equal to 2"),
        ({"size": "huge"}, "size", "square"),
        ({"sampler": "heun"}, "sampler", "unknown sampler"),
        ({"method": "dreambooth"}, "method", "faceid"),
        ({"pose": "moonwalk"}, "pose", "does not exist"),
        ({"restore": "magic"}, "restore", "gfpgan"),
        ({"colors": ["red", "#ffffff"]}, "colors", "#RRGGBB"),
        ({"prompt": "{subject} with {hat}"}, "prompt", "only placeholder"),
        ({"loras": [{"name": "style", "weight": 9}]}, "loras.0.weight", "less than or equal to 5"),
        ({"steps": _DROP}, "steps", "missing"),
    ],
)
def test_bad_preset_names_file_and_key(tmp_path, changes, key, words):
    path = write(tmp_path, "broken", **changes)
    with pytest.raises(BadInput) as err:
        P.list_presets(tmp_path)
    msg = str(err.value)
    assert str(path) in msg and f"'{key}'" in msg and words in msg, msg


def test_bad_files_are_errors_naming_the_file(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(BadInput, match=r"bad\.json is not valid JSON"):
        P.list_presets(tmp_path)
    (tmp_path / "bad.json").unlink()
    write(tmp_path, "other-name").rename(tmp_path / "renamed.json")
    with pytest.raises(BadInput, match=r"renamed\.json: key 'name' is 'other-name'"):
        P.list_presets(tmp_path)
    with pytest.raises(BadInput, match="does not exist"):
        P.load_preset("no-such-preset")
    with pytest.raises(BadInput, match="not allowed"):
        P.load_preset("../../etc/passwd")


def test_style_lora_is_passed_through(tmp_path):
    write(tmp_path, "styled", loras=[{"name": "ink-style", "weight": 0.6}])
    fields = P.load_preset("styled", folder=tmp_path)
    assert fields["loras"] == [{"name": "ink-style", "weight": 0.6}]
    assert validate_request(GenerateRequest, {**fields, "photos": ["a.jpg"]}).loras[0].weight == 0.6


def test_preview_cards_script(tmp_path):
    from PIL import Image

    written = P.write_previews(out_dir=tmp_path)
    assert sorted(p.stem for p in written) == sorted(p.name for p in P.list_presets())
    card = Image.open(written[0])
    assert card.size == (240, 300) and card.mode == "RGB"
    # the card carries the preset's colours
    preset = P.get_preset(written[0].stem)
    assert card.getpixel((2, 0)) == tuple(int(preset.colors[0][i:i + 2], 16) for i in (1, 3, 5))


def test_presets_list_command(capsys):
    from cli.main import run

    assert run(["presets", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["NAME", "METHOD", "SIZE"]
    names = {line.split()[0] for line in out[1:]}
    assert names == {p.name for p in P.list_presets()} and len(names) >= 12
    assert run(["presets", "show", "nope"]) == 2


def _generate_args(argv):
    from cli.main import build_parser

    return build_parser().parse_args(["generate", *argv])


def test_generate_preset_fields_are_defaults_and_flags_override(demo_settings):
    from cli.generate import request_from_args

    args = _generate_args(["--preset", "cinematic-noir", "--photo", "a.jpg", "--prompt", "a tall man",
                           "--steps", "3", "--cfg", "2.5"])
    data = request_from_args(args, demo_settings)
    req = validate_request(GenerateRequest, data)
    preset = P.get_preset("cinematic-noir")
    assert req.prompt == preset.format_prompt("a tall man")
    assert req.method == "instantid" and req.sampler == preset.sampler and req.negative == preset.negative
    assert (req.width, req.height) == DEMO.size(*P.SIZE_BUCKETS["cinema"])  # demo settings
    assert req.steps == 3 and req.cfg == 2.5  # explicit flags win
    # no --prompt needed with a preset; an unknown preset is a clear error
    assert "a person" in request_from_args(_generate_args(["--preset", "polaroid", "--photo", "a.jpg"]),
                                           demo_settings)["prompt"]
    with pytest.raises(BadInput, match="preset 'nope' does not exist"):
        request_from_args(_generate_args(["--preset", "nope", "--photo", "a.jpg"]), demo_settings)
