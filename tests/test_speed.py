"""Speed modes (quality/fast/turbo), few-step samplers, previews and the GPU-path
wiring, on the tiny packs (CPU). No timings are asserted."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import BENCH_GENERATE_FAST, fast_request, run_bench

from pipelines.profile import DEMO

# the speed mode fills in the steps, sampler and cfg a request leaves unset
FAST = fast_request(without=("steps", "cfg", "sampler", "prompt"))

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
def settings(make_settings):
    return make_settings("speed", accept_research_licenses=True)


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
    # ... and inactive: no LoRA layer computes anything in quality mode
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in engine.pipeline().unet.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and all(list(m.active_adapters) == [] for m in layers)
    turbo_again, _ = generate(engine, speed="turbo")
    assert (turbo_again == img).all()  # and active again when asked


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

    from cli.generate import register, request_from_args
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
    req = request_from_ui(values, DEMO)
    assert (req.speed, req.steps, req.sampler, req.cfg) == ("turbo", 4, "euler_trailing", 1.0)
    assert speed_widget_values("quality") == {"sampler": "dpmpp_2m_karras", "steps": 30, "cfg": 5.0}
    # a method with its own few-step mode (Arc2Face: LCM-LoRA SD1.5, 2 steps, cfg 1) fills its values
    from pipelines.speed import mode_for

    own = mode_for("turbo", "arc2face")
    assert speed_widget_values("turbo", "arc2face") == {"sampler": own.sampler, "steps": own.steps, "cfg": own.cfg}
    assert own.sampler == "lcm" and own.steps == 2
    assert ui_from_fields({"speed": "fast"}, DEMO)["speed"] == "fast"  # recipe reuse sets the radio


def test_every_sdxl_feature_runs_in_turbo_and_fast(engine, photos_dir, settings):
    """InstantID + pose, restore, and a user LoRA in the few-step modes."""
    from safetensors.torch import save_file

    from pipelines.tiny.speed_loras import tiny_speed_lora

    photo = str(photos_dir / "astronaut.png")
    img, recipe = generate(engine, method="instantid", photos=[photo], speed="turbo", pose="front-headshot")
    assert recipe["steps"] == 4 and recipe["method_details"]["pose"]["pose"] == "front-headshot"
    assert recipe["method_details"]["speed"]["mode"] == "turbo"
    img, recipe = generate(engine, method="faceid", photos=[photo], speed="fast", restore="gfpgan")
    assert recipe["restore"]["model"] == "gfpgan" and recipe["likeness"]["recognizer"]
    settings.loras_dir.mkdir(parents=True, exist_ok=True)
    save_file(tiny_speed_lora(7), str(settings.loras_dir / "style.safetensors"))
    with_lora, recipe = generate(engine, speed="turbo", loras=[{"name": "style", "weight": 0.7}])
    assert recipe["method_details"]["loras"][0]["name"] == "style"
    plain, _ = generate(engine, speed="turbo")
    assert (with_lora != plain).any()


def test_turbo_image_replays_exactly_from_its_recipe(engine, settings):
    from cli.generate import recipe_request
    from pipelines.requests import GenerateRequest

    res = engine.generate(GenerateRequest(prompt="a portrait", method="none", speed="turbo", count=2, **FAST))
    second = res.images[1]
    data = recipe_request(second.path, settings)
    assert data["speed"] == "turbo" and data["seed"] == second.seed
    again = engine.generate(GenerateRequest(**data))
    assert (np.asarray(again.images[0].image) == np.asarray(second.image)).all()


# ---------------------------------------------------------------- GPU path
@pytest.mark.parametrize("method", ["none", "faceid"])
def test_batched_n_keeps_each_images_seed(engine, photos_dir, method):
    """-n as one pipeline call with one generator per image: image k equals its
    seed alone (up to batched-kernel rounding)."""
    from pipelines.requests import GenerateRequest

    extra = {"photos": [str(photos_dir / "astronaut.png")]} if method == "faceid" else {}
    req = GenerateRequest(prompt="a portrait", method=method, count=3, steps=3, cfg=5.0, sampler="euler_a",
                          **extra, **FAST)
    engine.batch_images = "on"
    try:
        batched = engine.generate(req)
        assert engine.last_batched
    finally:
        engine.batch_images = "auto"
    assert [g.seed for g in batched.images] == [3, 4, 5]
    for g in batched.images:
        alone = engine.generate(req.model_copy(update={"count": 1, "seed": g.seed}))
        assert not engine.last_batched  # auto on a CPU: one call per image
        a = np.asarray(alone.images[0].image).astype(np.int16)
        b = np.asarray(g.image).astype(np.int16)
        assert np.abs(a - b).max() <= 2, g.seed
    # the images differ from each other: each had its own generator
    assert (np.asarray(batched.images[0].image) != np.asarray(batched.images[1].image)).any()


def test_likeness_score_of_image_k_does_not_hold_up_image_k_plus_1(engine, photos_dir, monkeypatch):
    """The score runs on a worker thread: image 1 starts denoising while image 0's
    (deliberately slow) score is still running. Ordering, not timing, is asserted."""
    import threading
    import time

    from pipelines import scoring
    from pipelines.requests import GenerateRequest

    events, real = [], scoring.prepare_scorer

    def slow_prepare(engine_, identity, method):
        score = real(engine_, identity, method)

        def slow(image):
            events.append(("score-start", threading.current_thread().name))
            time.sleep(1.5)
            result = score(image)
            events.append(("score-end", threading.current_thread().name))
            return result

        return slow

    monkeypatch.setattr(scoring, "prepare_scorer", slow_prepare)

    def on_step(info):
        if info["step"] == 1:
            events.append((f"denoise-{info['image_index']}", threading.current_thread().name))

    res = engine.generate(GenerateRequest(prompt="a portrait", method="faceid", count=2, steps=2,
                                          photos=[str(photos_dir / "astronaut.png")], **FAST), on_step=on_step)
    names = [e[0] for e in events]
    assert names.index("denoise-1") < names.index("score-end")  # image 1 began before score 0 ended
    assert all(r.recipe["likeness"]["recognizer"] for r in res.images)
    score_threads = {t for n, t in events if n.startswith("score")}
    assert score_threads and all(t.startswith("likeness-score") for t in score_threads)


def test_vram_policy_tiers_and_user_setting():
    from types import SimpleNamespace

    from pipelines.vram import choose_placement

    auto = SimpleNamespace(offload="auto", vae_tiling=False)
    assert choose_placement(auto, "cuda", "sdxl", free_gb=70).offload == "none"
    p = choose_placement(auto, "cuda", "sdxl", free_gb=11)
    assert (p.offload, p.vae_tiling) == ("none", True)
    p = choose_placement(auto, "cuda", "sdxl", free_gb=8)  # an 8-12 GB card
    assert (p.offload, p.vae_tiling) == ("model", True)
    assert choose_placement(auto, "cuda", "sdxl", free_gb=3).offload == "sequential"
    assert choose_placement(auto, "cuda", "sd15", free_gb=8).offload == "none"
    assert choose_placement(auto, "cpu", "sdxl").offload == "none"
    user = SimpleNamespace(offload="sequential", vae_tiling=True)
    p = choose_placement(user, "cuda", "sdxl", free_gb=70)
    assert (p.offload, p.vae_tiling) == ("sequential", True)


def test_out_of_memory_is_retried_once_with_model_offload_then_one_line(settings, monkeypatch):
    from pipelines.engine import Engine
    from pipelines.errors import ModelError
    from pipelines.requests import GenerateRequest

    eng = Engine(settings)
    calls = []

    def oom_once(req, on_step=None, cancel=None):
        calls.append(eng._offload_override)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "ok"

    monkeypatch.setattr(eng, "_generate", oom_once)
    eng.device = "cuda"  # the retry path; nothing touches a GPU here
    assert eng.generate(GenerateRequest(prompt="x", method="none")) == "ok"
    assert calls == [None, "model"]

    def oom_always(req, on_step=None, cancel=None):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(eng, "_generate", oom_always)
    with pytest.raises(ModelError, match=r"^out of GPU memory even with model offload .*LIKENESS_OFFLOAD=model"):
        eng.generate(GenerateRequest(prompt="x", method="none"))
    cpu = Engine(settings)
    monkeypatch.setattr(cpu, "_generate", oom_always)
    with pytest.raises(ModelError, match="LIKENESS_OFFLOAD=model"):
        cpu.generate(GenerateRequest(prompt="x", method="none"))


def test_live_preview_is_the_taesd_decode(engine):
    from app.progress import step_preview
    from pipelines.requests import GenerateRequest

    infos = []
    engine.generate(GenerateRequest(prompt="a portrait", method="none", steps=2, **FAST), on_step=infos.append)
    decode = infos[-1]["decode_preview"]
    img = decode()
    assert img.size == (64, 64)  # TAESDXL: 8x upsampling of the 8x8 latent
    # it is AutoencoderTiny's decode of that step's latents
    import torch

    model = engine._previews.model("sdxl")
    with torch.inference_mode():
        ref = model.decode(infos[-1]["latents"][:1].float()).sample[0].clamp(-1, 1)
    ref = ((ref.permute(1, 2, 0).numpy() + 1) * 127.5 + 0.5).astype(np.uint8)
    assert (np.asarray(img) == ref).all()
    assert step_preview(infos[-1], "sdxl", side=128).size == (128, 128)
    fallback = step_preview({"latents": infos[-1]["latents"], "decode_preview": lambda: None}, "sdxl", side=128)
    assert fallback.size == (128, 128)


# -------------------------------------------------------------------- bench
@pytest.mark.slow
def test_bench_reports_every_speed_against_plain_diffusers(tiny_models_dir, tmp_path):
    """bench/generate.py: each speed mode vs plain diffusers running that mode,
    the score cost, -n batching and the device report. Numbers are checked for
    consistency, never against a time."""
    import statistics

    r, stderr = run_bench("generate.py", [*BENCH_GENERATE_FAST, "--methods", "none,faceid", "--speeds",
                                          "quality,fast,turbo", "--batch", "2", "--device-report"],
                          tiny_models_dir, tmp_path)
    assert r["speeds_timed"] == ["quality", "fast", "turbo"]
    expect = {"quality": (2, "euler"), "fast": (8, "lcm"), "turbo": (4, "euler_trailing")}
    for s, (steps, sampler) in expect.items():
        row = r["speeds"][s]
        assert (row["steps"], row["sampler"]) == (steps, sampler)
        for m in ("none", "faceid"):
            e, b = row["engine_seconds"][m], row["baseline_seconds"][m]
            assert e > 0 and b > 0
            assert abs(row["ratio_vs_baseline"][m] - e / b) <= 1e-3 * e / b + 1e-4
            assert abs(statistics.median(row["samples"]["engine"][m]) - e) < 1e-5
        assert row["baseline_seconds"]["none"] == row["plain_seconds"]
    assert r["speeds"]["turbo"]["lora"] == "sdxl-lightning-4step-lora"
    assert r["engine_seconds"] == r["speeds"]["quality"]["engine_seconds"]
    assert r["score_seconds_per_image"]["faceid"] > 0
    for m in ("none", "faceid"):
        b = r["batch"][m]
        assert b["loop_seconds_per_image"] > 0 and b["batched_seconds_per_image"] > 0
        assert b["auto_batches"] is False  # a CPU never batches on its own
    rows = r["device_report"]["rows"]
    assert {(x["speed"], x["method"]) for x in rows} == {(s, m) for s in expect for m in ("none", "faceid")}
    assert "s/1024² img" in stderr


def test_a_missing_speed_lora_is_named_before_anything_loads(tmp_path):
    from pipelines.bundles import require_for_request
    from pipelines.errors import LikenessError
    from pipelines.requests import GenerateRequest
    from pipelines.settings import load_settings
    from pipelines.stores import open_store

    s = load_settings(models_dir=tmp_path / "m", loras_dir=tmp_path / "l", outputs_dir=tmp_path / "o", device="cpu")
    with pytest.raises(LikenessError, match="sdxl-lightning-4step-lora"):
        require_for_request(GenerateRequest(prompt="x", method="none", speed="turbo"), s, open_store(s))


def test_a_method_on_a_distilled_unet_refuses_a_speed_lora():
    from pipelines.errors import BadInput
    from pipelines.identity import get_method_class
    from pipelines.speed import apply_speed_defaults, check_speed

    cls = get_method_class("pulid-v1")
    req = apply_speed_defaults(_req(speed="turbo", method="pulid-v1", photos=["me.jpg"]))
    with pytest.raises(BadInput, match="speed 'turbo': method 'pulid-v1' already runs a few-step distilled UNet"):
        check_speed(req, "sdxl", cls)
    check_speed(req, "sdxl", get_method_class("faceid"))  # an adapter on the base UNet takes it


def test_face_analysis_and_scoring_pick_the_cuda_provider_when_onnxruntime_has_it(monkeypatch):
    """With onnxruntime-gpu (installed by make on a CUDA machine) the insightface
    sessions run on CUDA; without it, or on --device cpu, on the CPU."""
    import onnxruntime

    from pipelines.faces.analysis import _onnx_providers

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert _onnx_providers("auto") == (["CUDAExecutionProvider", "CPUExecutionProvider"], 0)
    assert _onnx_providers("cuda")[0][0] == "CUDAExecutionProvider"
    assert _onnx_providers("cpu") == (["CPUExecutionProvider"], -1)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert _onnx_providers("cuda") == (["CPUExecutionProvider"], -1)


def test_make_installs_onnxruntime_gpu_only_where_nvidia_smi_works():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "nvidia-smi -L" in text and '"onnxruntime-gpu>=1.18"' in text
    assert "pip uninstall -q -y onnxruntime" in text  # the CPU wheel would shadow the GPU one


@pytest.mark.slow
def test_compiled_unet_is_reused_across_method_and_speed_switches(settings, photos_dir, monkeypatch):
    """torch.compile (LIKENESS_COMPILE=1): each new configuration (method,
    resident adapters) compiles once; coming back to one compiles nothing. Dynamo's
    guards and graph cache are the same whatever the backend, so the cheap "eager"
    backend stands in for inductor here."""
    import diffusers
    import torch
    from torch._dynamo.utils import counters

    from pipelines.engine import COMPILED_VARIANTS, Engine
    from pipelines.requests import GenerateRequest

    real = torch.nn.Module.compile
    monkeypatch.setattr(diffusers.UNet2DConditionModel, "compile", lambda self, **kw: real(self, backend="eager"))
    torch._dynamo.reset()
    eng = Engine(settings.model_copy(update={"compile": True}))
    photo = str(photos_dir / "astronaut.png")

    def graphs_added(speed, method):
        before = counters["stats"]["unique_graphs"]
        tuned = dict(steps=2, sampler="euler", cfg=5.0) if speed == "quality" else {}
        eng.generate(GenerateRequest(prompt="x", method=method, speed=speed, photos=[photo] if method != "none" else [],
                                     **tuned, **FAST))
        return counters["stats"]["unique_graphs"] - before

    plan = [("quality", "none"), ("quality", "faceid"), ("turbo", "faceid"), ("turbo", "none")]
    # a configuration is the method plus the set of resident adapters: the first pass
    # loads the turbo LoRA, so the second pass meets new configurations once more
    first = [graphs_added(*step) for step in plan * 2]
    assert sum(first) >= 1  # it does compile
    again = [graphs_added(*step) for step in plan]
    assert again == [0] * len(again)  # no recompile per request once a configuration was seen
    cfg = torch._dynamo.config
    assert getattr(cfg, "recompile_limit", getattr(cfg, "cache_size_limit", 0)) >= COMPILED_VARIANTS
    torch._dynamo.reset()
