"""LoRA training and use on the tiny SDXL (demo mode): dataset filtering, the
trainer (loss, checkpoints, exact resume), the kohya file (keys, metadata,
diffusers `load_lora_weights` reproduces the trained adapter), the manager
(safe names, pickle refusal, incompatible files leave the pipeline unchanged),
the engine (`--lora` alone and with FaceID) and a 2-process accelerate run."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import fast_request

from pipelines.errors import BadInput, Cancelled, UnsafePath
from pipelines.profile import DEMO, REAL
from pipelines.stores import open_store

REPO = Path(__file__).resolve().parents[1]
TRAIN_ARGS = ["--steps", "4", "--lr", "0.01", "--checkpoint-every", "2"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tiny_models_dir, photos_dir):
    root = tmp_path_factory.mktemp("lora")
    photos = root / "photos"
    photos.mkdir()
    for name in ("astronaut.png", "t1.jpg", "chelsea.png"):
        shutil.copy(photos_dir / name, photos / name)
    return {"models": tiny_models_dir, "loras": root / "loras", "outputs": root / "outputs", "photos": photos,
            "root": root}


@pytest.fixture(scope="module")
def settings(dirs):
    from pipelines.settings import load_settings

    return load_settings(models_dir=dirs["models"], loras_dir=dirs["loras"], outputs_dir=dirs["outputs"],
                         device="cpu", dtype="float32", demo=True)


def cli(dirs, *args: str) -> tuple[int, str, str]:
    from cli.main import run

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = run(["--demo", "--device", "cpu", "--dtype", "float32", "--models-dir", str(dirs["models"]),
                  "--loras-dir", str(dirs["loras"]), "--outputs-dir", str(dirs["outputs"]), *args])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def trained(dirs):
    """The issue's done-when: train on a folder holding one usable photo, a
    group photo and a cat photo."""
    rc, out, err = cli(dirs, "train", "--photos", str(dirs["photos"]), "--name", "me", *TRAIN_ARGS)
    assert rc == 0, err
    return {"path": Path(out.strip().splitlines()[-1]), "stderr": err}


@pytest.fixture(scope="module")
def engine(settings):
    from pipelines.engine import Engine

    return Engine(settings)


def tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def generate(engine, **kw):
    from pipelines.requests import GenerateRequest

    data = fast_request(prompt="photo of lkns person", method="none")
    data.update(kw)
    res = engine.generate(GenerateRequest(**data))
    return np.asarray(res.images[0].image).astype(np.int16), res.images[0].recipe


# ------------------------------------------------------------------ dataset
def test_cli_train_leaves_out_group_and_cat_and_writes_kohya_lora(trained, dirs, settings):
    from pipelines.lora import kohya
    from pipelines.outputs import model_hash
    from pipelines.stores import open_store

    err = trained["stderr"]
    assert f"left out {dirs['photos'] / 't1.jpg'}: group photo: 6 faces" in err
    assert f"left out {dirs['photos'] / 'chelsea.png'}: no face found" in err
    assert "training on 1 photo(s)" in err and "astronaut.png" in err
    assert "only 1 usable photo" in err  # fewer than 3: a warning, not an error
    path = trained["path"]
    assert path == dirs["loras"] / "me.safetensors" and path.is_file()
    assert (dirs["loras"] / "me.preview.png").is_file()
    assert not (dirs["loras"] / ".training").exists()  # checkpoints removed after success
    sd = tensors(path)
    assert sd and all(k.startswith("lora_unet_") for k in sd)
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in sd)
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight" in sd
    assert "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_out_0.lora_up.weight" in sd
    assert sd["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight"].shape[0] == 4
    assert all(float(v) == 32.0 for k, v in sd.items() if k.endswith(".alpha"))
    assert any(float(v.abs().max()) > 0 for k, v in sd.items() if k.endswith("lora_up.weight"))  # it learned
    meta = kohya.read_metadata(path)
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4"
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["ss_num_train_images"] == "1" and meta["ss_max_train_steps"] == "4"
    assert meta["ss_output_name"] == "me" and kohya.trigger_words(meta) == ["lkns"]
    assert meta["ss_new_sd_model_hash"] == model_hash(open_store(settings), "sdxl-base")


def test_dataset_reports_blur_tiny_unreadable_and_crops_upright(dirs, settings, tmp_path):
    import cv2
    from PIL import Image

    from pipelines.faces.detectors import DetectedFace
    from pipelines.lora.dataset import DatasetOptions, upright_crop
    from pipelines.lora.train import LoraTrainer

    astro = np.asarray(Image.open(dirs["photos"] / "astronaut.png").convert("RGB"))
    Image.fromarray(cv2.GaussianBlur(astro, (0, 0), 3)).save(tmp_path / "blurred.png")
    Image.fromarray(cv2.resize(astro, (240, 240), interpolation=cv2.INTER_AREA)).save(tmp_path / "tiny.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    trainer = LoraTrainer(settings, open_store(settings))
    with pytest.raises(BadInput) as exc:
        trainer.prepare([tmp_path], DatasetOptions(profile=DEMO))
    msg = str(exc.value)
    assert "none of the 3 photos is usable" in msg
    assert "blurred.png: face is blurred: sharpness" in msg and "minimum 35" in msg
    assert "tiny.png: face is" in msg and "smaller than the minimum 64 px" in msg
    assert "broken.jpg:" in msg
    # upright: eyes drawn 20 px apart in height come out level in the crop
    img = np.full((400, 400, 3), 255, np.uint8)
    left, right = (170, 180), (230, 200)
    for (x, y) in (left, right):
        cv2.circle(img, (x, y), 6, (0, 0, 0), -1)
    face = DetectedFace(bbox=np.array([150, 150, 250, 270], np.float32),
                        kps=np.array([left, right, (200, 220), (180, 250), (220, 255)], np.float32), det_score=1.0)
    crop, orig = upright_crop(img, face, "close-up", (128, 128))
    assert crop.shape == (128, 128, 3) and orig[0] == orig[1]
    ys, xs = np.nonzero(crop.min(axis=2) < 100)
    left_y = ys[xs < 64].mean()
    right_y = ys[xs >= 64].mean()
    assert abs(left_y - right_y) < 1.5, (left_y, right_y)


# ------------------------------------------------------------------ trainer
def test_resume_after_crash_and_cancel_equals_uninterrupted(trained, dirs, settings, monkeypatch):
    import torch

    from pipelines.lora.dataset import DatasetOptions
    from pipelines.lora.train import LoraTrainer, TrainConfig

    trainer = LoraTrainer(settings, open_store(settings))
    tset = trainer.prepare([dirs["photos"] / "astronaut.png"], DatasetOptions(profile=DEMO))
    config = dict(name="again", steps=4, lr=0.01, checkpoint_every=2)
    events: list[dict] = []

    def crash_at_3(info):
        events.append(info)
        if info.get("phase") == "train" and info["step"] == 3:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.train(tset, TrainConfig(**config), callback=crash_at_3, progress=False)
    ckpt_root = dirs["loras"] / ".training" / "again"
    assert [p.name for p in ckpt_root.iterdir() if not p.name.startswith(".")] == ["step-000002"]
    steps = [e for e in events if e.get("phase") == "train"]
    assert all(np.isfinite(e["loss"]) and e["steps"] == 4 and e["eta_s"] >= 0 for e in steps)
    assert not (dirs["loras"] / "again.safetensors").exists()

    # other settings: the checkpoint is refused before any model is loaded
    with pytest.raises(BadInput, match="other photos or settings"):
        trainer.train(tset, TrainConfig(**{**config, "lr": 0.02}, resume=True), progress=False)

    cancel = threading.Event()

    def cancel_at_3(info):
        if info.get("phase") == "train" and info["step"] == 3:
            cancel.set()

    with pytest.raises(Cancelled, match="--resume"):
        trainer.train(tset, TrainConfig(**config, resume=True), callback=cancel_at_3, cancel=cancel, progress=False)
    assert (ckpt_root / "step-000003").is_dir() and not (ckpt_root / "step-000002").exists()

    # the last step first runs out of (GPU) memory: automatic gradient
    # checkpointing turns on and the same step is redone
    from diffusers import UNet2DConditionModel

    forward = UNet2DConditionModel.forward
    calls = []

    def oom_once(self, *a, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(self, *a, **kw)

    monkeypatch.setattr(UNet2DConditionModel, "forward", oom_once)
    result = trainer.train(tset, TrainConfig(**config, resume=True), progress=False)
    monkeypatch.undo()
    assert result.resumed_from == 3 and len(result.losses) == 1
    assert result.gradient_checkpointing and len(calls) >= 2
    ref, got = tensors(trained["path"]), tensors(result.path)
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)  # bit-identical to the uninterrupted run


def test_text_encoder_lora_trains_and_loads(dirs, settings, engine):
    from pipelines.lora.dataset import DatasetOptions
    from pipelines.lora.train import LoraTrainer, TrainConfig

    trainer = LoraTrainer(settings, open_store(settings))
    tset = trainer.prepare([dirs["photos"] / "astronaut.png"], DatasetOptions(profile=DEMO, framings=("close-up",)))
    result = trainer.train(tset, TrainConfig(name="te", steps=1, lr=0.01, text_encoder=True), progress=False)
    sd = tensors(result.path)
    assert any(k.startswith("lora_te1_text_model_encoder_layers_0_self_attn_q_proj") for k in sd)
    assert any(k.startswith("lora_te2_text_model_encoder_layers_4_self_attn_out_proj") for k in sd)
    assert float(sd["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"].abs().max()) > 0
    base, _ = generate(engine)
    with_te, _ = generate(engine, loras=[{"name": "te"}])
    pipe = engine.pipeline()
    assert "user_te" in pipe.text_encoder.peft_config and "user_te" in pipe.text_encoder_2.peft_config
    assert (with_te != base).any()
    again, _ = generate(engine)
    assert (again == base).all()


def test_kohya_file_loads_in_diffusers_and_reproduces_the_adapter(settings, tmp_path):
    """Our peft -> kohya conversion, read back by plain diffusers
    `load_lora_weights` (UNet) and by the manager (text encoders), gives exactly
    the outputs of the peft adapters it was converted from."""
    import copy

    import torch
    from peft.utils import get_peft_model_state_dict

    from pipelines.lora import kohya
    from pipelines.lora.manager import LoraManager
    from pipelines.lora.train import TEXT_TARGETS, UNET_TARGETS, add_lora, load_base
    from pipelines.stores import open_store

    pipe = load_base(open_store(settings), "sdxl-base", torch.float32)
    pipe.set_progress_bar_config(disable=True)

    def run():
        return pipe(prompt="a photo", num_inference_steps=2, width=64, height=64, output_type="np",
                    generator=torch.Generator().manual_seed(1)).images[0]

    base = run()
    originals = (pipe.unet, pipe.text_encoder, pipe.text_encoder_2)
    trained = [copy.deepcopy(m) for m in originals]
    for i, model in enumerate(trained):
        add_lora(model, 4, 8.0, UNET_TARGETS if i == 0 else TEXT_TARGETS, seed=i)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(n)))
    pipe.unet, pipe.text_encoder, pipe.text_encoder_2 = trained
    want = run()
    pipe.unet, pipe.text_encoder, pipe.text_encoder_2 = originals
    sd = kohya.peft_to_kohya(get_peft_model_state_dict(trained[0]), layers_per_block=pipe.unet.config.layers_per_block,
                             alpha=8.0, te1_state=get_peft_model_state_dict(trained[1], adapter_name="default"),
                             te2_state=get_peft_model_state_dict(trained[2], adapter_name="default"))
    unet_only = {k: v for k, v in sd.items() if k.startswith("lora_unet_")}
    kohya.write_lora(tmp_path / "unet.safetensors", unet_only, {"ss_network_dim": "4"})
    pipe.load_lora_weights(str(tmp_path / "unet.safetensors"), adapter_name="plain")  # diffusers itself
    got_unet = run()
    pipe.delete_adapters(["plain"])
    assert abs(run() - base).max() == 0
    pipe.unet = trained[0]
    want_unet_only = run()
    pipe.unet = originals[0]
    assert np.abs(got_unet - want_unet_only).max() < 1e-5 and np.abs(got_unet - base).max() > 1e-3

    loras = tmp_path / "loras"
    kohya.write_lora(loras / "full.safetensors", sd, {"likeness_trigger_word": "zq"})
    from types import SimpleNamespace

    manager = LoraManager(SimpleNamespace(loras_dir=loras))
    applied = manager.apply(pipe, [("full", 1.0)])
    assert applied.triggers == ["zq"] and applied.weights == {"full": 1.0}
    assert np.abs(run() - want).max() < 1e-5
    manager.apply(pipe, [])
    assert abs(run() - base).max() == 0


# ------------------------------------------------------------------ manager
def test_names_are_checked_and_pickles_refused(settings, dirs):
    from pipelines.lora.manager import LoraManager, normalize_name

    for bad in ("../x", "a/b", "x\x00y", "x" * 300, "", ".hidden"):
        with pytest.raises(UnsafePath):
            normalize_name(bad)
    assert normalize_name("me.safetensors") == "me"
    loras = Path(settings.loras_dir)
    loras.mkdir(parents=True, exist_ok=True)
    (loras / "evil.ckpt").write_bytes(b"PK\x03\x04 pickle")
    manager = LoraManager(settings)
    with pytest.raises(BadInput, match="unsafe pickle"):
        manager.path("evil")
    for name in ("evil.ckpt", "x.pt", "x.bin", "x.pth"):
        with pytest.raises(BadInput, match="unsafe pickle"):
            normalize_name(name)
    with pytest.raises(BadInput, match="not found"):
        manager.path("nobody")
    rc, out, err = cli(dirs, "train", "--photos", str(dirs["photos"]), "--name", "../escape", "--steps", "1")
    assert rc == 2 and "not allowed" in err and out == ""
    assert not (dirs["loras"].parent / "escape.safetensors").exists()
    rc, _, err = cli(dirs, "train", "--photos", str(dirs["photos"]), "--name", "x" * 300, "--steps", "1")
    assert rc == 2 and "300 characters" in err


def test_incompatible_lora_is_refused_and_pipeline_unchanged(engine, trained, settings):
    import torch

    from pipelines.lora.kohya import write_lora
    from pipelines.lora.manager import LoraManager

    loras = Path(settings.loras_dir)
    good = tensors(trained["path"])
    sd15 = {  # an SD1.5 LoRA: its first down block has attention, SDXL's does not
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(4, 320),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.zeros(320, 4),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha": torch.tensor(4.0),
    }
    write_lora(loras / "sd15.safetensors", sd15, {})
    write_lora(loras / "unknown.safetensors", {"model.diffusion_model.foo.weight": torch.zeros(3, 3)}, {})
    bad_shape = {k: (torch.zeros(4, 7) if k.endswith("lora_down.weight") else v) for k, v in good.items()}
    write_lora(loras / "shape.safetensors", bad_shape, {})
    raw = trained["path"].read_bytes()
    (loras / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
    (loras / "lfs.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")

    base, _ = generate(engine)
    pipe = engine.pipeline()
    adapters = pipe.get_list_adapters()
    manager = LoraManager(settings)
    expect = {"sd15": "does not have", "unknown": "no part of an SDXL pipeline", "shape": "takes 64 inputs",
              "cut": "truncated", "lfs": "git-lfs pointer"}
    for name, why in expect.items():
        with pytest.raises(BadInput) as exc:
            manager.apply(pipe, [(name, 1.0)])
        assert str(loras / f"{name}.safetensors") in str(exc.value) and why in str(exc.value), str(exc.value)
        assert pipe.get_list_adapters() == adapters
    # through the engine: a clear error, and the next image is the base one
    with pytest.raises(BadInput, match="sd15.safetensors"):
        generate(engine, loras=[{"name": "sd15"}])
    after, _ = generate(engine)
    assert (after == base).all()


# ------------------------------------------------------------------ engine
def test_generate_with_lora_alone_and_with_faceid(engine, trained, dirs):
    from pipelines.lora.manager import _current_weight

    base, _ = generate(engine)
    with_lora, recipe = generate(engine, loras=[{"name": "me"}], prompt="a portrait")
    assert recipe["prompt"] == "a portrait, lkns"  # the trigger word is added
    assert recipe["method_details"]["loras"][0]["name"] == "me"
    assert recipe["method_details"]["loras"][0]["sha256"]
    plain_prompt, _ = generate(engine, prompt="a portrait, lkns")
    assert (with_lora != plain_prompt).any()  # same prompt, the LoRA changes the pixels
    assert (generate(engine)[0] == base).all()  # no LoRA asked: the base exactly

    photo = str(dirs["photos"] / "astronaut.png")
    faceid, _ = generate(engine, method="faceid", photos=[photo])
    # a user LoRA at weight 0 beside FaceID: FaceID's own LoRA keeps its weight
    zero, _ = generate(engine, method="faceid", photos=[photo], loras=[{"name": "me", "weight": 0.0}])
    assert (zero == faceid).all()
    both, recipe = generate(engine, method="faceid", photos=[photo], loras=[{"name": "me"}], scale=0.4)
    pipe = engine.pipeline()
    assert _current_weight(pipe.unet, "faceid_0") == pytest.approx(0.5)  # scale 0.4 / default 0.8
    assert _current_weight(pipe.unet, "user_me") == pytest.approx(1.0)
    assert recipe["method"] == "faceid" and "lkns" in recipe["prompt"]
    assert recipe["method_details"]["loras"][0]["name"] == "me"
    only_scale, _ = generate(engine, method="faceid", photos=[photo], scale=0.4)
    assert (both != only_scale).any()
    assert (generate(engine, method="faceid", photos=[photo])[0] == faceid).all()

    rc, out, err = cli(dirs, "generate", "--method", "none", "--prompt", "a portrait", "--seed", "1", "--steps", "2",
                       "--width", "64", "--height", "64", "--lora", "me:0.8")
    assert rc == 0, err
    from pipelines.metadata import read_recipe

    rec = read_recipe(out.strip().splitlines()[-1])
    assert rec["method_details"]["loras"] == [{"name": "me", "weight": 0.8, "sha256": rec["method_details"]["loras"][0]["sha256"]}]
    assert rec["prompt"].endswith("lkns")
    rc, _, err = cli(dirs, "generate", "--method", "none", "--prompt", "x", "--steps", "1", "--lora", "me:heavy")
    assert rc == 2 and "--lora" in err


# ------------------------------------------------------------------ multi-process
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_accelerate_run(dirs, settings, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo): data-parallel training
    completes and one LoRA is written. (`accelerate launch --cpu` starts a single
    process; --multi_gpu with no GPU gives torchrun's 2 CPU processes.)"""
    from pipelines.lora import kohya
    from pipelines.stores import open_store

    store = open_store(settings)
    for name in ("sdxl-base", "buffalo_l"):  # built once here, not raced by the two processes
        store.ensure(name)

    loras = tmp_path / "loras"
    accelerate = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(REPO / "launch.py"), "--demo", "--device", "cpu", "--dtype", "float32",
           "--models-dir", str(dirs["models"]), "--loras-dir", str(loras), "--outputs-dir", str(tmp_path / "out"),
           "train", "--photos", str(dirs["photos"] / "astronaut.png"), "--name", "dp", "--steps", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines() == [str(loras / "dp.safetensors")]  # printed once, by rank 0
    meta = kohya.read_metadata(loras / "dp.safetensors")
    assert meta["ss_num_processes"] == "2" and meta["ss_max_train_steps"] == "2"
    assert all(k.startswith("lora_unet_") for k in tensors(loras / "dp.safetensors"))


def test_option_and_checkpoint_errors_are_clear(tmp_path):
    from pipelines.lora.dataset import DatasetOptions
    from pipelines.lora.train import Checkpoints, TrainConfig, default_steps, make_plan

    with pytest.raises(BadInput, match="trigger"):
        DatasetOptions(trigger="a, b")
    with pytest.raises(BadInput, match="framings"):
        DatasetOptions(framings=("full-body",))
    assert DatasetOptions(class_word="a woman").caption == "photo of lkns person, a woman"
    broken = tmp_path / "step-000002"
    broken.mkdir()
    (broken / "lora.safetensors").write_bytes(b"\x00" * 16)
    (broken / "state.pt").write_bytes(b"junk")
    assert Checkpoints(tmp_path).latest() == broken
    with pytest.raises(BadInput, match="without --resume"):
        Checkpoints.load(broken)
    # FaceChain's schedule scaled by photo count; demo mode trains shorter
    assert [default_steps(n) for n in (1, 3, 10)] == [200, 600, 800]
    assert default_steps(3, DEMO) == 30
    plan = make_plan(TrainConfig(name="x"), photos=5, profile=REAL)
    assert (plan.steps, plan.rank, plan.alpha, plan.lr, plan.checkpoint_every) == (800, 4, 32.0, 1.5e-4, 100)


# ------------------------------------------------------------------ bad photos, overwrites, full disks
def test_one_bad_photo_is_left_out_not_an_abort(dirs, settings, tmp_path):
    from PIL import Image

    from pipelines.lora.dataset import DatasetOptions
    from pipelines.lora.train import LoraTrainer

    shutil.copy(dirs["photos"] / "astronaut.png", tmp_path / "astronaut.png")
    Image.new("RGB", (1, 1), (120, 90, 80)).save(tmp_path / "dot.png")
    Image.new("RGB", (30000, 10), (120, 90, 80)).save(tmp_path / "strip.png")
    tset = LoraTrainer(settings, open_store(settings)).prepare([tmp_path], DatasetOptions(profile=DEMO))
    assert [Path(r.file).name for r in tset.used] == ["astronaut.png"]
    reasons = {Path(r.file).name: r.reason for r in tset.excluded}
    assert set(reasons) == {"dot.png", "strip.png"}
    assert "1x1 px" in reasons["dot.png"] and "30000x10" in reasons["strip.png"]


def _lines(err: str) -> list[str]:
    """stderr without the demo banner."""
    return [line for line in err.strip().splitlines() if not line.startswith("[demo")]


def _train_cli(dirs, loras: Path, *args: str) -> tuple[int, str, str]:
    from cli.main import run

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = run(["--demo", "--device", "cpu", "--dtype", "float32", "--models-dir", str(dirs["models"]),
                  "--loras-dir", str(loras), "--outputs-dir", str(dirs["outputs"]), "train",
                  "--photos", str(dirs["photos"] / "astronaut.png"), *args])
    return rc, out.getvalue(), err.getvalue()


def test_existing_lora_is_not_overwritten_without_overwrite(trained, dirs, tmp_path):
    path = trained["path"]
    before = path.read_bytes()
    rc, out, err = cli(dirs, "train", "--photos", str(dirs["photos"]), "--name", "me", "--steps", "1")
    assert rc == 2 and out == "" and len(_lines(err)) == 1
    assert "already exists" in err and "--overwrite" in err and "training on" not in err  # refused before any work
    assert path.read_bytes() == before and not (dirs["loras"] / ".training").exists()
    loras = tmp_path / "loras"
    loras.mkdir()
    shutil.copy(path, loras / "me.safetensors")
    rc, out, err = _train_cli(dirs, loras, "--name", "me", "--steps", "1", "--overwrite")
    assert rc == 0, err
    assert Path(out.strip()) == loras / "me.safetensors" and (loras / "me.safetensors").read_bytes() != before


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str, read_only: bool = False):
    """A tmpfs of `size` at `where` (root only): a real full or read-only disk."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for a full or read-only disk needs root")
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_read_only_or_small_lora_folder_is_refused_before_training(dirs, tmp_path):
    with small_tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        rc, out, err = _train_cli(dirs, ro / "loras", "--name", "me", "--steps", "2")
        assert rc == 2 and out == "" and len(_lines(err)) == 1
        assert "not writable" in err and "--loras-dir" in err and "unexpected" not in err
    with small_tmpfs(tmp_path / "tiny", "256k") as tiny:
        rc, out, err = _train_cli(dirs, tiny, "--name", "me", "--steps", "2")
        assert rc == 2 and "not enough space" in err and "unexpected" not in err, err
        assert not (tiny / "me.safetensors").exists() and not list(tiny.rglob("step-*"))


def _fill(folder: Path) -> Path:
    """Write until the disk is full; the filler file is returned for removal."""
    filler = folder / "filler.bin"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    return filler


def _disk_full_run(trainer, tset, config, fill_at: int, fill):
    from pipelines.lora.train import TrainConfig

    def callback(info):
        if info.get("phase") == "train" and info["step"] == fill_at:
            fill()

    with pytest.raises(BadInput) as exc:
        trainer.train(tset, TrainConfig(**config), callback=callback, progress=False)
    return str(exc.value)


def test_disk_full_mid_run_keeps_the_last_checkpoint_and_resumes(dirs, tmp_path):
    """A real full disk (tmpfs) between checkpoints: the failed save leaves the
    step-2 checkpoint and no partial one, the error says to resume, and the resumed
    run finishes."""
    from pipelines.lora.dataset import DatasetOptions
    from pipelines.lora.train import LoraTrainer, TrainConfig
    from pipelines.settings import load_settings

    with small_tmpfs(tmp_path / "disk", "8m") as disk:
        settings = load_settings(models_dir=dirs["models"], loras_dir=disk, outputs_dir=dirs["outputs"],
                                 device="cpu", dtype="float32", demo=True)
        trainer = LoraTrainer(settings, open_store(settings))
        tset = trainer.prepare([dirs["photos"] / "astronaut.png"], DatasetOptions(profile=DEMO))
        config = dict(name="full", steps=6, lr=0.01, checkpoint_every=2)
        filler: list[Path] = []
        msg = _disk_full_run(trainer, tset, config, 3, lambda: filler.append(_fill(disk)))
        assert "could not write the checkpoint of full at step 4" in msg and "last good checkpoint is step 2" in msg
        assert "--resume" in msg and "\n" not in msg
        root = disk / ".training" / "full"
        assert sorted(p.name for p in root.iterdir()) == ["step-000002"]  # no half-written step 4
        assert not (disk / "full.safetensors").exists()
        filler[0].unlink()
        result = trainer.train(tset, TrainConfig(**config, resume=True), progress=False)
        assert result.resumed_from == 2 and (disk / "full.safetensors").is_file()
        assert not (disk / ".training").exists()


def test_failed_checkpoint_or_lora_write_is_one_clear_line(dirs, settings, monkeypatch):
    """The same handling without root: the write fails with ENOSPC."""
    import errno

    from pipelines.lora import kohya
    from pipelines.lora.checkpoints import Checkpoints
    from pipelines.lora.dataset import DatasetOptions
    from pipelines.lora.train import LoraTrainer

    trainer = LoraTrainer(settings, open_store(settings))
    tset = trainer.prepare([dirs["photos"] / "astronaut.png"], DatasetOptions(profile=DEMO, framings=("close-up",)))
    save = Checkpoints.save

    def save_fails_at_4(self, step, *a, **kw):
        if step == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(self, step, *a, **kw)

    monkeypatch.setattr(Checkpoints, "save", save_fails_at_4)
    msg = _disk_full_run(trainer, tset, dict(name="nospace", steps=6, lr=0.01, checkpoint_every=2), 0, None)
    assert "No space left on device" in msg and "last good checkpoint is step 2" in msg and "--resume" in msg
    monkeypatch.undo()

    def write_fails(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(kohya, "write_lora", write_fails)
    msg = _disk_full_run(trainer, tset, dict(name="nospace", steps=6, lr=0.01, checkpoint_every=2, resume=True),
                         0, None)
    assert f"could not write {settings.loras_dir / 'nospace.safetensors'}" in msg
    assert "last good checkpoint is step 4" in msg and "--resume" in msg
    assert not (settings.loras_dir / "nospace.safetensors").exists()


def test_cancel_before_the_first_step_stops_between_phases(dirs, settings):
    """A cancel that arrives while the photos are prepared stops before the
    base model is loaded (a client that went away must not wait for a load)."""
    from pipelines.lora.dataset import DatasetOptions
    from pipelines.lora.train import TrainConfig, train_lora

    cancel = threading.Event()
    seen: list[str] = []

    def callback(info):
        seen.append(info.get("phase"))
        if info.get("phase") == "dataset":
            cancel.set()

    with pytest.raises(Cancelled, match="after preparing the photos"):
        train_lora(settings, [dirs["photos"] / "astronaut.png"], TrainConfig(name="early", steps=2),
                   DatasetOptions(profile=DEMO), store=open_store(settings), callback=callback, cancel=cancel,
                   progress=False)
    assert seen == ["dataset"] and not (dirs["loras"] / "early.safetensors").exists()
