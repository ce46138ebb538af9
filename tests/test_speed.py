"""Speed modes (quality/fast/turbo), few-step samplers, previews and the GPU-path
wiring, on the tiny packs (CPU). No timings are asserted."""

from __future__ import annotations

import json

import numpy as np
import pytest

FAST = dict(width=64, height=64, seed=3)

# SDXL base's scheduler_config.json (stabilityai/stable-diffusion-xl-base-1.0): the
# config every sampler is built from
SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "interpolation_type": "linear", "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False,
}


# ----------------------------------------------------------------- samplers
@pytest.mark.parametrize("name, steps, expected", [
    ("lcm", 4, [999, 759, 499, 259]),
    ("lcm", 5, [999, 799, 599, 399, 199]),
    ("euler_trailing", 4, [999, 749, 499, 249]),
    ("ddim_trailing", 4, [999, 749, 499, 249]),
    ("dpmpp_2m_trailing", 4, [999, 749, 499, 249]),
    ("tcd", 4, [999, 759, 499, 259]),
    ("euler", 4, [751, 501, 251, 1]),  # the SDXL default "leading": wrong for Lightning
])
def test_few_step_samplers_have_the_authors_timesteps(name, steps, expected):
    from pipelines.samplers import make_scheduler

    sched = make_scheduler(name, SDXL_SCHEDULER)
    sched.set_timesteps(steps)
    assert [int(t) for t in sched.timesteps] == expected


def test_pulid_dpm_trailing_ends_at_sigma_min_like_diffusers_0_25():
    """PuLID v1 pins diffusers 0.25, whose trailing DPM++ 2M ends at the smallest
    trained sigma, not at 0 (0.42's default)."""
    from pipelines.samplers import make_scheduler

    sched = make_scheduler("dpmpp_2m_trailing", SDXL_SCHEDULER)
    sched.set_timesteps(4)
    alphas = sched.alphas_cumprod
    sigma_min = float(((1 - alphas[0]) / alphas[0]) ** 0.5)
    assert float(sched.sigmas[-1]) == pytest.approx(sigma_min, rel=1e-4)
    assert float(sched.sigmas[-1]) == pytest.approx(0.0292, abs=1e-4)


def test_tcd_gets_its_eta_in_the_call():
    from pipelines.samplers import SAMPLER_CALL_KWARGS

    assert SAMPLER_CALL_KWARGS["tcd"] == {"eta": 0.3}


# ------------------------------------------------------------- speed rules
def _req(**kw):
    from pipelines.requests import GenerateRequest

    return GenerateRequest(**{"prompt": "x", "method": "none", **kw})


def test_modes_fill_only_unset_fields_and_check_ranges():
    from pipelines.errors import BadInput
    from pipelines.speed import SPEED_MODES, apply_speed_defaults, check_speed

    quality = apply_speed_defaults(_req())
    assert (quality.steps, quality.sampler, quality.cfg) == (30, "dpmpp_2m_karras", 5.0)
    turbo = apply_speed_defaults(_req(speed="turbo"))
    assert (turbo.steps, turbo.sampler, turbo.cfg) == (4, "euler_trailing", 1.0)
    fast = apply_speed_defaults(_req(speed="fast"))
    assert (fast.steps, fast.sampler, fast.cfg) == (8, "lcm", 1.5)
    own = apply_speed_defaults(_req(speed="turbo", steps=6, cfg=1.2))
    assert (own.steps, own.cfg, own.sampler) == (6, 1.2, "euler_trailing")
    check_speed(own, "sdxl")
    for mode in SPEED_MODES.values():  # each mode's own defaults are inside its ranges
        if mode.lora:
            check_speed(apply_speed_defaults(_req(speed=mode.name)), "sdxl")
    with pytest.raises(BadInput, match="field sampler: speed 'turbo'.*'euler_trailing'"):
        check_speed(apply_speed_defaults(_req(speed="turbo", sampler="dpmpp_2m_karras")), "sdxl")
    with pytest.raises(BadInput, match="field cfg: speed 'fast' needs cfg from 1 to 2"):
        check_speed(apply_speed_defaults(_req(speed="fast", cfg=7)), "sdxl")
    with pytest.raises(BadInput, match="field steps: speed 'turbo' runs 2 to 8 steps, not 30"):
        check_speed(apply_speed_defaults(_req(speed="turbo", steps=30)), "sdxl")
    with pytest.raises(BadInput, match="SDXL LoRA.*use speed 'quality'"):
        check_speed(apply_speed_defaults(_req(speed="turbo")), "sd15")
    with pytest.raises(BadInput, match="field speed"):
        from pipelines.requests import GenerateRequest, validate_request

        validate_request(GenerateRequest, {"prompt": "x", "method": "none", "speed": "ludicrous"})


def test_speed_packs_keep_the_kohya_layout_and_load_in_diffusers(tmp_path):
    from safetensors.torch import load_file

    from pipelines import tiny

    for pack, fname in (("speed-lora-lightning-4step", "sdxl_lightning_4step_lora.safetensors"),
                        ("speed-lora-lcm-sdxl", "pytorch_lora_weights.safetensors")):
        sd = load_file(str(tiny.build_pack(pack, tmp_path / pack) / fname))
        assert all(k.startswith("lora_unet_") for k in sd)
        assert any(".lora_down.weight" in k for k in sd) and any(k.endswith(".alpha") for k in sd)
        assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight" in sd


# ------------------------------------------------------------------- engine
@pytest.fixture(scope="module")
def settings(tmp_path_factory, tiny_models_dir):
    from pipelines.settings import load_settings

    root = tmp_path_factory.mktemp("speed")
    return load_settings(models_dir=tiny_models_dir, loras_dir=root / "loras", outputs_dir=root / "outputs",
                         device="cpu", dtype="float32", demo=True, accept_research_licenses=True)


@pytest.fixture(scope="module")
def engine(settings):
    from pipelines.engine import Engine

    return Engine(settings)


def generate(engine, **kw):
    from pipelines.requests import GenerateRequest

    data = dict(prompt="a portrait", method="none", **FAST)
    data.update(kw)
    res = engine.generate(GenerateRequest(**data))
    return np.asarray(res.images[0].image).astype(np.int16), res.images[0].recipe


def test_turbo_runs_lightning_with_euler_trailing_and_records_it(engine):
    from pipelines.speed import SPEED_MODES

    seen = []
    img, recipe = generate(engine, speed="turbo")
    assert recipe["steps"] == 4 and recipe["sampler"] == "euler_trailing" and recipe["cfg"] == 1.0
    assert recipe["request"]["speed"] == "turbo"
    assert recipe["method_details"]["speed"]["lora"] == SPEED_MODES["turbo"].lora
    assert recipe["method_details"]["speed"]["sha256"]
    assert "loras" not in recipe["method_details"]  # the speed LoRA is not a user LoRA

    # the scheduler really is trailing Euler over the Lightning timesteps
    from pipelines.requests import GenerateRequest

    engine.generate(GenerateRequest(prompt="a portrait", method="none", speed="turbo", **FAST),
                    on_step=lambda info: seen.append(info["step"]))
    assert seen == [1, 2, 3, 4]
    assert [int(t) for t in engine.pipeline().scheduler.timesteps] == [999, 749, 499, 249]

    # the LoRA acts: the same sampler/steps/cfg without it differ
    no_lora, _ = generate(engine, sampler="euler_trailing", steps=4, cfg=1.0)
    assert (img != no_lora).any()
    # back in quality mode the adapter stays resident at weight 0: exactly the base
    base, _ = generate(engine, sampler="euler_trailing", steps=4, cfg=1.0)
    assert (base == no_lora).all()


def test_faceid_attention_lora_stays_active_with_the_speed_lora(engine, photos_dir):
    """disable_lora()/enable_lora() would switch faceid_0 off too; the speed
    LoRA is a named adapter beside it instead."""
    from pipelines.lora.manager import _current_weight

    photo = str(photos_dir / "astronaut.png")
    fast, recipe = generate(engine, method="faceid", photos=[photo], speed="fast")
    pipe = engine.pipeline()
    assert _current_weight(pipe.unet, "faceid_0") == pytest.approx(1.0)
    assert _current_weight(pipe.unet, "speed_fast") == pytest.approx(1.0)
    assert recipe["steps"] == 8 and recipe["sampler"] == "lcm" and recipe["cfg"] == 1.5
    active = set(pipe.unet.active_adapters())
    assert {"faceid_0", "speed_fast"} <= active
    # faceid_0 at 0 changes the picture: it was acting in the fast run
    off, _ = generate(engine, method="faceid", photos=[photo], speed="fast", faceid_lora_weight=0.0)
    assert (off != fast).any()
    # the other speed LoRA is idle at weight 0
    if "speed_turbo" in pipe.unet.peft_config:
        assert _current_weight(pipe.unet, "speed_turbo") == pytest.approx(0.0)


def test_sd15_method_in_turbo_is_a_clear_error(engine, photos_dir):
    from pipelines.errors import BadInput
    from pipelines.requests import GenerateRequest

    with pytest.raises(BadInput, match="speed 'turbo' uses an SDXL LoRA.*SD15.*use speed 'quality'"):
        engine.generate(GenerateRequest(prompt="x", method="wplus", photos=[str(photos_dir / "astronaut.png")],
                                        speed="turbo", **FAST))


# ------------------------------------------------------------- front doors
def test_cli_speed_over_a_preset_lets_the_mode_fill_steps_sampler_cfg(settings):
    import argparse

    from pipelines.cli.generate import register, request_from_args
    from pipelines.requests import GenerateRequest

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["generate", "--preset", "studio-headshot", "--prompt", "a man", "--speed", "turbo",
                              "--method", "none"])
    data = request_from_args(args, settings)
    assert data["speed"] == "turbo" and not {"steps", "sampler", "cfg"} & set(data)
    args = parser.parse_args(["generate", "--preset", "studio-headshot", "--prompt", "a man", "--speed", "turbo",
                              "--steps", "6", "--method", "none"])
    data = request_from_args(args, settings)
    assert data["steps"] == 6 and "sampler" not in data
    req = GenerateRequest(**data)
    assert req.speed == "turbo" and "steps" in req.model_fields_set and "sampler" not in req.model_fields_set


def test_preset_speed_is_checked_and_shown(tmp_path):
    from pipelines.errors import BadInput
    from pipelines.presets import draw_card, get_preset, parse_preset

    base = get_preset("studio-headshot").model_dump()
    turbo = parse_preset(json.dumps({**base, "speed": "turbo", "sampler": "euler_trailing", "steps": 4, "cfg": 1.0}))
    assert turbo.request_fields()["speed"] == "turbo"
    assert get_preset("studio-headshot").request_fields()["speed"] == "quality"
    with pytest.raises(BadInput, match="speed 'turbo' needs sampler"):
        parse_preset(json.dumps({**base, "speed": "turbo"}))
    # the card's settings line names a non-quality speed (the pixels differ)
    assert (np.asarray(draw_card(turbo)) != np.asarray(draw_card(get_preset("studio-headshot")))).any()


def test_batch_item_speed_override_replaces_the_presets_sampling(tmp_path):
    from pipelines.batch import jobfile as jf

    (tmp_path / "job.yaml").write_text(
        "items:\n"
        "  - preset: studio-headshot\n    method: none\n    seed: 1\n    overrides: {speed: turbo}\n"
        "  - preset: studio-headshot\n    method: none\n    seed: 1\n    overrides: {speed: fast, steps: 6}\n"
        "  - preset: studio-headshot\n    method: none\n    seed: 1\n"
    )
    job = jf.load_job(tmp_path / "job.yaml")
    reqs = [it.request for it in job.items]
    assert [r.speed for r in reqs] == ["turbo", "fast", "quality"]
    assert "steps" not in reqs[0].model_fields_set and "sampler" not in reqs[0].model_fields_set
    assert reqs[1].steps == 6 and "sampler" not in reqs[1].model_fields_set
    assert reqs[2].sampler == "dpmpp_2m_karras" or "sampler" in reqs[2].model_fields_set
    assert len({it.id for it in job.items}) == 3  # the speed is part of an item's id


def test_ui_performance_choice_maps_to_the_request():
    from app.requests_map import request_from_ui, speed_widget_values, ui_from_fields

    values = {"prompt": "a portrait", "method": "none", "speed": "turbo", **speed_widget_values("turbo")}
    req = request_from_ui(values, demo=True)
    assert (req.speed, req.steps, req.sampler, req.cfg) == ("turbo", 4, "euler_trailing", 1.0)
    assert speed_widget_values("quality") == {"sampler": "dpmpp_2m_karras", "steps": 30, "cfg": 5.0}
    assert ui_from_fields({"speed": "fast"}, demo=True)["speed"] == "fast"  # recipe reuse sets the radio
