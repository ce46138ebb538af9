"""Catalog and wiring gaps: the SDXL inpainting model entry and its tiny pack,
upscalers in the model bundles and a request's missing-models check, Arc2Face's
LCM-LoRA speed mode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import BENCH_GENERATE_FAST, fast_request, real_settings, run_bench

from pipelines.models.catalog import load_catalog
from pipelines.tiny import MARKER, build_pack

INPAINT_REV = "115134f363124c53c7d878647567d04daf26e41e"


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MARKER}


# ---- SDXL inpainting in the catalog ---------------------------------------------------------------
def test_inpainting_entry_pins_and_licence():
    e = load_catalog().get("sdxl-inpainting")
    assert e.kind == "sdxl-inpaint"
    assert (e.source, e.repo, e.revision, e.variant) == (
        "hf", "diffusers/stable-diffusion-xl-1.0-inpainting-0.1", INPAINT_REV, "fp16")
    assert "RAIL++" in e.license and not e.research_only
    files = {f.path: f for f in e.files}
    unet = files["unet/diffusion_pytorch_model.fp16.safetensors"]
    vae = files["vae/diffusion_pytorch_model.fp16.safetensors"]
    assert (unet.size, unet.sha256) == (5135178560, "6470840731e98cc16713ddf3ac7ee458c9fdbcb881a98c6727cd4a938f227d3f")
    assert (vae.size, vae.sha256) == (167335338, "4ad62825e5c8b31eefb77355ba6693785619bf7d669d9b1a6fd9f19dec6d65b3")
    # every other file is either exactly pinned or carries an estimate (pinned on first download)
    assert all(f.size is not None or f.approx_size is not None for f in e.files)
    assert e.planned_size[0] > 6_000_000_000 and e.planned_size[1] is False


def test_inpainting_is_not_a_text_to_image_base(tmp_path):
    from pipelines.errors import BadInput
    from pipelines.models.bases import base_family
    from pipelines.stores import open_store

    store = open_store(real_settings(tmp_path, demo=False))
    with pytest.raises(BadInput, match="sdxl-inpainting"):
        base_family(store, "sdxl-inpainting")


@pytest.fixture(scope="module")
def inpaint_pack(tmp_path_factory) -> Path:
    return build_pack("sdxl-inpainting", tmp_path_factory.mktemp("inpaint") / "sdxl-inpainting")


def test_inpainting_pack_has_the_catalog_files_and_a_9_channel_unet(inpaint_pack):
    from diffusers import StableDiffusionXLInpaintPipeline
    from PIL import Image

    assert _files(inpaint_pack) == {f.path for f in load_catalog().get("sdxl-inpainting").files}
    pipe = StableDiffusionXLInpaintPipeline.from_pretrained(inpaint_pack, variant="fp16", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.in_channels == 9
    image = Image.new("RGB", (64, 64), (200, 120, 90))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))

    def run(m):
        return pipe("a face", image=image, mask_image=m, num_inference_steps=2, strength=0.99, height=64,
                    width=64, generator=torch.Generator().manual_seed(0), output_type="np").images[0]

    out = run(mask)
    assert out.shape == (64, 64, 3) and float(out.std()) > 0
    # the 9-channel UNet sees the mask: another mask gives another image
    other = Image.new("L", (64, 64), 0)
    other.paste(255, (0, 0, 32, 32))
    assert not torch.allclose(torch.from_numpy(out), torch.from_numpy(run(other)))


# ---- upscalers in the bundles and the request's missing-models check ---------------------------------
def test_upscale_bundle_holds_every_upscaler_and_needs_acceptance(tmp_path):
    import shlex

    from cli.main import build_parser
    from cli.models import resolve_download
    from pipelines import bundles
    from pipelines.stores import open_store
    from pipelines.upscale import UPSCALERS

    settings, cat = real_settings(tmp_path), load_catalog()
    assert "upscale" in bundles.bundle_choices()
    assert bundles.choice_models(["upscale"], settings, cat) == [s.model for s in UPSCALERS.values()]
    assert set(bundles.choice_models(["all"], settings, cat)) >= {"realesrgan-x4plus", "4x-ultrasharp"}
    cmd = bundles.choice_command(["upscale"], settings, cat)
    assert "--accept-license" in cmd  # 4x-UltraSharp is CC BY-NC-SA
    args = build_parser().parse_args(shlex.split(cmd)[2:])
    assert set(resolve_download(args, settings, open_store(settings))) == {"realesrgan-x4plus", "4x-ultrasharp"}


def test_request_models_name_the_requested_upscaler(tmp_path):
    from pipelines import bundles
    from pipelines.requests import GenerateRequest
    from pipelines.stores import open_store

    settings = real_settings(tmp_path)
    store = open_store(settings)
    plain = bundles.request_models(GenerateRequest(prompt="p", method="none"), settings, store)
    assert not {"realesrgan-x4plus", "4x-ultrasharp"} & set(plain)
    for upscaler in ("realesrgan-x4plus", "4x-ultrasharp"):
        names = bundles.request_models(GenerateRequest(prompt="p", method="none", upscale=2, upscaler=upscaler),
                                       settings, store)
        assert names == [*plain, upscaler]


def test_generate_with_upscale_without_models_names_the_upscaler_once(tmp_path, capsys):
    from cli.main import run

    code = run(["generate", "--prompt", "a portrait", "--method", "none", "--upscale", "2", "--upscaler",
                "4x-ultrasharp", "--models-dir", str(tmp_path / "m"), "--device", "cpu", "--dtype", "float32",
                "--outputs-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "sdxl-base" in err and "4x-ultrasharp" in err and "--accept-license" in err


# ---- Arc2Face's LCM-LoRA mode (speed turbo) ------------------------------------------------------------
# the turbo mode fills in the steps, sampler and cfg a request leaves unset
A2F = fast_request(seed=5, without=("steps", "cfg", "sampler"))


def test_lcm_lora_sd15_entry_and_pack():
    e = load_catalog().get("lcm-lora-sdv1-5")
    assert (e.kind, e.source, e.repo) == ("lora", "hf", "latent-consistency/lcm-lora-sdv1-5")
    assert "RAIL++" in e.license and not e.research_only
    assert [f.path for f in e.files] == ["pytorch_lora_weights.safetensors"]
    assert e.files[0].approx_size and e.files[0].sha256 is None  # pinned on the first verified download


def test_arc2face_turbo_is_the_readme_lcm_mode_and_other_modes_are_refused(tmp_path):
    from pipelines import bundles
    from pipelines.errors import BadInput
    from pipelines.requests import GenerateRequest
    from pipelines.speed import apply_speed_defaults, check_speed, mode_for
    from pipelines.stores import open_store

    req = apply_speed_defaults(GenerateRequest(prompt="p", method="arc2face", photos=["x.png"], speed="turbo"))
    assert (req.sampler, req.steps, req.cfg) == ("lcm", 2, 1.0)
    assert mode_for("turbo", "arc2face").lora == "lcm-lora-sdv1-5"
    assert mode_for("turbo", "faceid").lora == "sdxl-lightning-4step-lora"  # other methods keep the SDXL mode
    check_speed(req, "sd15")
    with pytest.raises(BadInput, match="speed 'fast' uses an SDXL LoRA"):
        check_speed(apply_speed_defaults(req.model_copy(update={"speed": "fast"})), "sd15")
    with pytest.raises(BadInput, match="field sampler: speed 'turbo'.*'lcm'"):
        check_speed(req.model_copy(update={"sampler": "euler_trailing"}), "sd15")
    settings = real_settings(tmp_path)
    names = bundles.request_models(req, settings, open_store(settings))
    assert "lcm-lora-sdv1-5" in names and "sdxl-lightning-4step-lora" not in names


@pytest.fixture(scope="module")
def a2f_engine(make_engine):
    return make_engine("a2f-turbo")


def _gen(engine, photos_dir, **kw):
    import numpy as np

    from pipelines.requests import GenerateRequest

    data = dict(A2F, prompt="a portrait", photos=[str(photos_dir / "astronaut.png")], method="arc2face")
    data.update(kw)
    res = engine.generate(GenerateRequest(**data))
    return np.asarray(res.images[0].image).astype(np.int16), res.images[0].recipe


def _weight(unet, adapter: str) -> float | None:
    for m in unet.modules():
        scaling = getattr(m, "scaling", None)
        if isinstance(scaling, dict) and adapter in scaling:
            active = adapter in (m.active_adapters if hasattr(m, "active_adapters") else [])
            return float(scaling[adapter]) / (m.lora_alpha[adapter] / m.r[adapter]) if active else 0.0
    return None


def test_arc2face_turbo_runs_lcm_with_the_lora_and_unload_restores_the_base(a2f_engine, photos_dir):
    import numpy as np
    from diffusers import LCMScheduler

    from pipelines.requests import GenerateRequest
    from pipelines.speed import mode_for

    engine = a2f_engine
    adapter = mode_for("turbo", "arc2face").adapter
    pipe = engine.pipeline("sd15-base")
    base_unet = pipe.unet
    plain = dict(A2F, prompt="a portrait", method="none", base_model="sd15-base", steps=2, sampler="euler")
    base_before = np.asarray(engine.generate(GenerateRequest(**plain)).images[0].image)

    # the same LCM schedule without the LoRA (quality mode), then with it (turbo)
    quality, _ = _gen(engine, photos_dir, steps=2, sampler="lcm", cfg=1.0)
    turbo, recipe = _gen(engine, photos_dir, speed="turbo")
    assert isinstance(pipe.scheduler, LCMScheduler)
    assert [int(t) for t in pipe.scheduler.timesteps] == [999, 499]  # LCM, 2 of 50 origin steps
    assert (recipe["request"]["sampler"], recipe["request"]["steps"], recipe["request"]["cfg"]) == ("lcm", 2, 1.0)
    assert recipe["method_details"]["speed"]["lora"] == "lcm-lora-sdv1-5"
    assert recipe["method_details"]["speed"]["sha256"]
    assert pipe.unet is not base_unet and adapter in pipe.unet.peft_config  # on Arc2Face's UNet
    assert _weight(pipe.unet, adapter) == pytest.approx(1.0)
    assert np.abs(turbo - quality).max() > 0  # the LoRA acts
    again, _ = _gen(engine, photos_dir, steps=2, sampler="lcm", cfg=1.0)
    assert np.array_equal(again, quality)  # back in quality mode it adds exactly nothing

    engine.use_method("none", pipe)
    assert pipe.unet is base_unet and adapter not in (getattr(base_unet, "peft_config", None) or {})
    base_after = np.asarray(engine.generate(GenerateRequest(**plain)).images[0].image)
    assert np.array_equal(base_before, base_after)


# ---- bench/generate.py: PuLID and Arc2Face against their hand-built diffusers baselines -------------------
def test_bench_offers_pulid_and_arc2face_with_their_own_baselines(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from bench import generate as bench

    args = bench.parse_args(["--methods", "none,pulid,arc2face"])
    assert args.methods == ["none", "pulid", "arc2face"]
    assert bench.BASELINES["pulid"] is bench.PuLIDBaseline and bench.BASELINES["arc2face"] is bench.Arc2FaceBaseline
    assert bench.METHODS == ("none", "faceid", "instantid")  # the default run is unchanged
    with pytest.raises(SystemExit):
        bench.parse_args(["--full-size", "--methods", "pulid"])
    assert "no full-size random-weight packs" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_reports_pulid_and_arc2face(tiny_models_dir, tmp_path):
    r, _ = run_bench("generate.py", [*BENCH_GENERATE_FAST, "--speeds", "quality,fast,turbo", "--batch", "0",
                                     "--no-step-costs", "--methods", "none,pulid,arc2face"], tiny_models_dir, tmp_path)
    assert set(r["baselines"]) == {"none", "pulid", "arc2face"}
    for s in ("quality", "turbo"):
        v = r["speeds"][s]
        for m in ("pulid", "arc2face"):
            assert v["engine_seconds"][m] > 0 and v["baseline_seconds"][m] > 0
            assert v["ratio_vs_baseline"][m] == pytest.approx(v["engine_seconds"][m] / v["baseline_seconds"][m],
                                                              rel=2e-3, abs=2e-3)
    assert r["speeds"]["turbo"]["method_modes"]["arc2face"] == {"lora": "lcm-lora-sdv1-5", "sampler": "lcm",
                                                                "steps": 2, "cfg": 1.0}
    assert "arc2face" not in r["speeds"]["fast"]["engine_seconds"]
    assert any(x.startswith("fast/arc2face") for x in r["skipped"])
