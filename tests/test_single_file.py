"""A user's own single-file SDXL checkpoint (Stability/LDM key layout) loads through
`ModelStore.register_checkpoint` + `Engine` (`from_single_file` with the SDXL
configs beside it) and gives the same image as the same weights in diffusers
layout. The checkpoint is written from the tiny SDXL pack by
`pipelines.tiny.single_file`."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from conftest import fast_request

from pipelines.requests import GenerateRequest

REQ = fast_request(method="none")


def _diffusers_state(folder):
    from safetensors.torch import load_file

    return load_file(str(next(folder.glob("*.fp16.safetensors"))))


def test_single_file_round_trips_through_diffusers_converters(make_settings, tmp_path):
    """Every tensor of the LDM file converts back (with diffusers' own LDM->diffusers
    rules) to exactly the pack's diffusers tensor, and the file has the published
    top-level layout."""
    import json

    from diffusers.loaders import single_file_utils as sfu
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from pipelines.stores import open_store
    from pipelines.tiny.single_file import write_sdxl_single_file

    store = open_store(make_settings("single-file"))
    src = store.ensure("sdxl-base")
    ck = load_file(str(write_sdxl_single_file(src, tmp_path / "mine.safetensors")))

    prefixes = {k.split(".")[0] if not k.startswith("conditioner.") else ".".join(k.split(".")[:3]) for k in ck}
    assert prefixes == {"model", "first_stage_model", "conditioner.embedders.0", "conditioner.embedders.1"}
    assert "model.diffusion_model.label_emb.0.0.weight" in ck
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in ck
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in ck

    def same(got, ref):
        assert set(got) == set(ref)
        for k, v in ref.items():
            assert got[k].shape == v.shape and torch.equal(got[k], v), k

    def cfg(sub):
        return json.loads((src / sub / "config.json").read_text())

    same(sfu.convert_ldm_unet_checkpoint(ck, cfg("unet")), _diffusers_state(src / "unet"))
    same(sfu.convert_ldm_vae_checkpoint(ck, cfg("vae")), _diffusers_state(src / "vae"))
    clip_l = sfu.convert_ldm_clip_checkpoint(ck)
    ref_l = _diffusers_state(src / "text_encoder")
    same({k if k in ref_l else k.removeprefix("text_model."): v for k, v in clip_l.items()}, ref_l)
    te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(src / "text_encoder_2"))
    same(sfu.convert_open_clip_checkpoint(te2, ck, prefix="conditioner.embedders.1.model."),
         _diffusers_state(src / "text_encoder_2"))


def test_registered_checkpoint_generates_like_the_diffusers_base(make_settings, tmp_path):
    from pipelines.engine import Engine
    from pipelines.stores import open_store
    from pipelines.tiny.single_file import write_sdxl_single_file

    settings = make_settings("single-file-out", models_dir=tmp_path / "models")
    store = open_store(settings)
    path = write_sdxl_single_file(store.ensure("sdxl-base"), tmp_path / "user" / "myModelXL_v2.safetensors")
    name = store.register_checkpoint(path)
    assert name == "myModelXL_v2" and name not in {e.name for e in store.catalog}
    assert store.user_checkpoints()[name] == path.resolve()

    engine = Engine(settings, store=store)
    mine = engine.generate(GenerateRequest(base_model=name, **REQ)).images[0]
    ref = engine.generate(GenerateRequest(base_model="sdxl-base", **REQ)).images[0]
    a = np.asarray(mine.image).astype(np.int16)
    b = np.asarray(ref.image).astype(np.int16)
    assert a.shape == b.shape == (64, 64, 3)
    assert np.abs(a - b).max() <= 2
    assert a.std() > 1  # a real image, not a constant

    # the recipe names the user's checkpoint by the file's content
    assert mine.recipe["models"][name] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert engine.load_count == 2

    # a different checkpoint (one UNet tensor changed) gives a different image
    from safetensors.torch import load_file, save_file

    sd = load_file(str(path))
    sd["model.diffusion_model.out.2.bias"] = sd["model.diffusion_model.out.2.bias"] + 0.5
    other = tmp_path / "user" / "tweaked.safetensors"
    save_file(sd, str(other))
    c = np.asarray(engine.generate(GenerateRequest(base_model=store.register_checkpoint(other), **REQ))
                   .images[0].image).astype(np.int16)
    assert np.abs(c - a).mean() > 0.5


def test_lora_trains_on_a_registered_checkpoint_without_the_sdxl_base(make_settings, photos_dir, tmp_path):
    """A LoRA trained on a user's single-file checkpoint needs only the SDXL
    configs beside it (`sdxl-base-config`), never the full `sdxl-base`, and its
    metadata names the checkpoint by name and content hash."""
    from pipelines.lora import kohya
    from pipelines.lora.dataset import DatasetOptions
    from pipelines.lora.train import LoraTrainer, TrainConfig
    from pipelines.stores import open_store
    from pipelines.tiny.single_file import write_sdxl_single_file

    source = open_store(make_settings("single-file-src")).ensure("sdxl-base")
    path = write_sdxl_single_file(source, tmp_path / "user" / "myModelXL.safetensors")

    settings = make_settings("single-file-out", models_dir=tmp_path / "models")  # a models folder without sdxl-base
    store = open_store(settings)
    name = store.register_checkpoint(path)
    asked: list[str] = []
    ensure = store.ensure

    def recording_ensure(model):
        asked.append(model)
        return ensure(model)

    store.ensure = recording_ensure
    trainer = LoraTrainer(settings, store)
    tset = trainer.prepare([photos_dir / "astronaut.png"], DatasetOptions(profile=settings.profile, framings=("close-up",)))
    result = trainer.train(tset, TrainConfig(name="mine", steps=2, lr=0.01, base_model=name), progress=False)

    assert "sdxl-base" not in asked and "sdxl-base-config" in asked
    assert not store.folder("sdxl-base").exists()
    assert result.steps == 2 and len(result.losses) == 2
    from safetensors.torch import load_file

    sd = load_file(str(result.path))
    ups = [v for k, v in sd.items() if k.startswith("lora_unet_") and k.endswith("lora_up.weight")]
    assert ups and max(float(v.abs().max()) for v in ups) > 0  # it learned something
    meta = kohya.read_metadata(result.path)
    assert meta["ss_sd_model_name"] == name
    assert meta["ss_sd_model_hash"] == hashlib.sha256(path.read_bytes()).hexdigest()[:10]
