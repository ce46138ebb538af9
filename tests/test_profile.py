"""The run profile (pipelines/profile.py) and the one preset merge
(presets.apply_preset): each demo rule has one home, the settings resolve the
profile once, and every front door (command line, web API, Portrait tab, job
files, the Batch tab's dry run and run) gets its documented result from it."""

from __future__ import annotations

import dataclasses
import textwrap
from types import SimpleNamespace

import pytest

from pipelines.presets import SIZE_BUCKETS, apply_preset, get_preset, load_preset
from pipelines.profile import DEMO, DEMO_NOTICE, REAL, RunProfile, profile_of
from pipelines.samplers import SDXL_BUCKETS

PRESET = "studio-headshot"  # portrait bucket 896x1152, 30 steps, quality speed


@pytest.fixture()
def demo_settings_here(tmp_path):
    from pipelines.settings import load_settings

    return load_settings(models_dir=tmp_path / "models", loras_dir=tmp_path / "loras",
                         outputs_dir=tmp_path / "outputs", device="cpu", demo=True)


# ------------------------------------------------------------------ the rules
def test_profile_sizes_caps_and_train_steps():
    assert REAL.size(896, 1152) == (896, 1152)
    assert DEMO.size(896, 1152) == (112, 144)  # 1/8 per side
    assert DEMO.size(1024, 1024) == (128, 128)
    assert DEMO.size(256, 200) == (64, 64)  # never under 64 px
    assert DEMO.size(1000, 1000) == (120, 120)  # a multiple of 8
    for w, h in SDXL_BUCKETS:  # every bucket: 1/8 per side, a multiple of 8, at least 64 px
        assert DEMO.size(w, h) == (max(64, w // 64 * 8), max(64, h // 64 * 8))
    assert (REAL.cap_steps(30), DEMO.cap_steps(30), DEMO.cap_steps(4)) == (30, 8, 4)
    assert [REAL.train_steps(n) for n in (1, 3, 10)] == [200, 600, 800]
    assert [DEMO.train_steps(n) for n in (1, 3, 10)] == [10, 30, 40]
    assert (REAL.train_resolution(512), DEMO.train_resolution(512)) == (512, 64)
    assert (REAL.training_face_px(160), DEMO.training_face_px(160)) == (160, 64)
    assert (REAL.notice, DEMO.notice) == (None, DEMO_NOTICE) and DEMO_NOTICE == "demo models: random weights"
    assert (REAL.builds_models, DEMO.builds_models) == (False, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEMO.demo = False  # type: ignore[misc]


def test_settings_resolve_the_profile_once(tmp_path, monkeypatch):
    from pipelines.settings import DEMO_BANNER, load_settings

    dirs = dict(models_dir=tmp_path / "m", loras_dir=tmp_path / "l", outputs_dir=tmp_path / "o")
    assert load_settings(**dirs).profile is REAL
    assert load_settings(**dirs, demo=True).profile is DEMO
    monkeypatch.setenv("LIKENESS_DEMO", "1")
    assert load_settings(**dirs).profile is DEMO
    assert DEMO_BANNER == DEMO.notice  # what the UI and the CLI show
    # a settings stand-in without the property (tests, scripts): by its demo attribute
    assert profile_of(SimpleNamespace(demo=True)) is DEMO and profile_of(SimpleNamespace()) is REAL


def test_web_form_mapping_takes_the_profile_and_no_demo_flag():
    from app.requests_map import parse_size, request_from_ui, size_choices

    assert parse_size("portrait", DEMO) == DEMO.size(*parse_size("portrait", REAL))
    assert parse_size("portrait") == parse_size("portrait", REAL)  # real models unless told
    assert any("(demo:" in label for label, _ in size_choices(DEMO))
    assert not any("demo" in label for label, _ in size_choices())
    with pytest.raises(TypeError):
        request_from_ui({"prompt": "p", "method": "none"}, demo=True)  # type: ignore[call-arg]


def test_engine_functions_take_the_profile_and_no_demo_keyword(tmp_path):
    from PIL import Image

    from pipelines.batch.jobfile import load_job
    from pipelines.lora.dataset import DatasetOptions
    from pipelines.lora.train import TrainConfig, default_steps, make_plan
    from pipelines.metadata import save_png

    assert load_preset(PRESET, profile=DEMO) == apply_preset(PRESET, DEMO) != load_preset(PRESET)
    assert DatasetOptions(profile=DEMO).bucket("close-up") == (128, 128)
    assert DatasetOptions().bucket("close-up") == (1024, 1024)
    assert default_steps(3, DEMO) == 30 and default_steps(3) == 600
    assert make_plan(TrainConfig(name="x"), 2, DEMO).steps == 20
    job = tmp_path / "job.yaml"
    job.write_text("items:\n  - {preset: studio-headshot, method: none}\n")
    with pytest.raises(TypeError, match="demo"):
        load_preset(PRESET, demo=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="demo"):
        DatasetOptions(demo=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="demo"):
        default_steps(3, demo=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="demo"):
        make_plan(TrainConfig(name="x"), photos=2, demo=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="demo"):
        load_job(job, demo=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="demo"):
        save_png(Image.new("RGB", (8, 8)), tmp_path / "a.png", parameters="p", recipe={}, demo=True)  # type: ignore[call-arg]


def test_restore_stage_and_metadata_take_the_profile(tmp_path):
    from PIL import Image

    from pipelines.metadata import read_recipe, save_png
    from pipelines.restore.stage import DETECTOR_PACKS, RestoreStage

    class NoPacks:
        def status(self, name):
            return SimpleNamespace(present=False)

    assert RestoreStage(NoPacks(), "cpu", None, DEMO, lambda p: None).detector_pack() == DETECTOR_PACKS[0]
    png = save_png(Image.new("RGB", (8, 8)), tmp_path / "a.png", parameters="p", recipe={"x": 1}, notice=DEMO.notice)
    assert read_recipe(png)["demo"] == DEMO_NOTICE
    plain = save_png(Image.new("RGB", (8, 8)), tmp_path / "b.png", parameters="p", recipe={"x": 1}, notice=REAL.notice)
    assert "demo" not in read_recipe(plain)


# ------------------------------------------------------- one preset merge
def test_apply_preset_sizes_fills_the_subject_and_lets_overrides_win():
    preset = get_preset(PRESET)
    real, demo = apply_preset(PRESET, REAL, subject="a woman"), apply_preset(PRESET, DEMO, subject="a woman")
    assert (real["width"], real["height"]) == SIZE_BUCKETS[preset.size]
    assert (demo["width"], demo["height"]) == DEMO.size(*SIZE_BUCKETS[preset.size])
    assert (real["steps"], demo["steps"]) == (preset.steps, 8)
    assert real["prompt"] == preset.prompt.replace("{subject}", "a woman") == demo["prompt"]
    assert apply_preset(PRESET, DEMO)["prompt"] == preset.prompt.replace("{subject}", "a person")
    # an override replaces what it names, the prompt template included
    out = apply_preset(preset, DEMO, subject="ignored", overrides={"prompt": "a knight", "cfg": 2.5})
    assert out["prompt"] == "a knight" and out["cfg"] == 2.5 and out["steps"] == 8
    # another speed drops the preset's sampling, except what the overrides give
    fast = apply_preset(PRESET, REAL, overrides={"speed": "fast", "steps": 6})
    assert fast["speed"] == "fast" and fast["steps"] == 6 and "sampler" not in fast and "cfg" not in fast
    same = apply_preset(PRESET, REAL, overrides={"speed": "quality"})
    assert same["sampler"] == preset.sampler and same["steps"] == preset.steps
    # an unknown speed is left for the request's validation to name
    assert apply_preset(PRESET, REAL, overrides={"speed": "warp"})["sampler"] == preset.sampler


def test_command_line_preset_merge(demo_settings_here):
    from cli.generate import request_from_args
    from cli.main import build_parser

    def data(*extra):
        args = build_parser().parse_args(["generate", "--preset", PRESET, "--prompt", "a woman",
                                          "--photo", "me.jpg", *extra])
        return request_from_args(args, demo_settings_here)

    got = data("--cfg", "3")
    want = apply_preset(PRESET, DEMO, subject="a woman", overrides={"cfg": 3.0})
    assert {k: got[k] for k in want} == want  # --prompt is the subject, options override, demo sizes
    assert got["prompt"].startswith("professional studio headshot of a woman")
    turbo = data("--speed", "turbo")
    assert turbo["speed"] == "turbo" and not {"steps", "sampler", "cfg"} & set(turbo)


def test_api_and_portrait_tab_preset_merge(demo_settings_here):
    from app.api import api_request
    from app.requests_map import request_data, ui_from_fields

    req = api_request(demo_settings_here, ["me.jpg"], "a woman", PRESET, "", -1, 1)
    want = apply_preset(PRESET, DEMO, subject="a woman")
    assert (req.prompt, req.width, req.height, req.steps) == (want["prompt"], want["width"], want["height"], 8)
    # the Portrait tab: a preset click fills the widgets (not the prompt box, which is the subject) ...
    widgets = ui_from_fields(apply_preset(PRESET, DEMO), DEMO, include_prompt=False)
    assert widgets["size"] == get_preset(PRESET).size and widgets["steps"] == 8 and "prompt" not in widgets
    # ... and Generate takes the template with the prompt box as the subject, the rest from the widgets
    fields = request_data({**widgets, "preset": PRESET, "prompt": "a woman", "method": "none"}, DEMO)
    assert fields["prompt"] == want["prompt"] and (fields["width"], fields["height"]) == (want["width"], want["height"])


def test_job_file_preset_merge(tmp_path):
    from pipelines.batch import jobfile as jf

    job = tmp_path / "job.yaml"
    job.write_text(textwrap.dedent(f"""
        defaults: {{cfg: 2.0}}
        items:
          - {{preset: {PRESET}, method: none, seed: 1, prompt: a knight in armour}}
          - {{preset: {PRESET}, method: none, seed: 1, overrides: {{speed: fast, steps: 6}}}}
    """))
    knight, fast = (it.request for it in jf.load_job(job, DEMO).items)
    want = apply_preset(PRESET, DEMO, overrides={"cfg": 2.0, "prompt": "a knight in armour", "method": "none"})
    assert knight.prompt == "a knight in armour"  # an item's prompt replaces the template
    assert (knight.width, knight.height, knight.steps, knight.cfg) == (want["width"], want["height"], 8, 2.0)
    assert fast.speed == "fast" and fast.steps == 6 and "sampler" not in fast.model_fields_set
    assert fast.prompt == apply_preset(PRESET, DEMO)["prompt"]  # no subject in a job file: "a person"


# ------------------------------------------- Batch tab: dry run = run
def test_batch_tab_dry_run_lists_the_items_run_makes_in_demo_mode(demo_settings_here, tmp_path, monkeypatch):
    import pipelines.batch.runner as runner
    from app.batch_tab import check_job, run_batch
    from app.jobs import CancelRegistry, EngineHolder
    from pipelines.batch import jobfile as jf

    job = tmp_path / "job.yaml"
    job.write_text(f"items:\n  - presets: [{PRESET}, polaroid]\n    method: none\n    seeds: [1, 2]\n")
    listing = check_job(demo_settings_here, str(job), [])
    ran = []

    def fake_run(job, settings, engine=None, stream=None, out=None, on_step=None, cancel=None):
        ran.extend(job.items)
        return SimpleNamespace(records={}, out_dir=tmp_path)

    monkeypatch.setattr(runner, "run_job", fake_run)
    holder = EngineHolder(demo_settings_here, factory=lambda s: object())
    list(run_batch(demo_settings_here, holder, CancelRegistry(), str(job), [], None))
    assert len(ran) == 4
    assert sorted(ln.split()[0] for ln in listing.splitlines()[2:] if ln.strip()) == sorted(it.short_id for it in ran)
    for it in ran:  # the run's items are the demo ones: demo sizes and steps
        preset = get_preset(_preset_of(it))
        assert (it.request.width, it.request.height) == DEMO.size(*SIZE_BUCKETS[preset.size])
        assert it.request.steps == DEMO.cap_steps(preset.steps)
    real_ids = {it.short_id for it in jf.load_job(job, REAL).items}
    assert real_ids.isdisjoint(it.short_id for it in ran)  # the profile changes what is made


def _preset_of(item) -> str:
    return PRESET if item.request.prompt.startswith("professional studio headshot") else "polaroid"


def test_profile_is_one_small_immutable_object():
    assert {f.name for f in dataclasses.fields(RunProfile)} == {"demo"}
    assert RunProfile(demo=True) == DEMO and hash(DEMO) != hash(REAL)
