"""Tiny diffusion packs (SDXL, fp16-fix VAE, FaceID Plus v2, CLIP vision, InstantID,
OpenPose ControlNet): published layouts, determinism, and the real diffusers /
transformers loaders running on them offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipelines.models.catalog import load_catalog
from pipelines.tiny import MARKER, build_pack

PACKS = ("sdxl", "sdxl-vae", "faceid-plusv2-sdxl", "clip-vision", "instantid", "controlnet-openpose-sdxl")
PROMPT = "a photo of a smiling woman"


@pytest.fixture(scope="module")
def packs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diffusion-packs")
    return {name: build_pack(name, root / name) for name in PACKS}


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


def _pipe(packs):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(packs["sdxl"], variant="fp16", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe, prompt=PROMPT, **kw):
    return pipe(
        prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np", **kw
    ).images


@pytest.mark.parametrize("name", PACKS)
def test_pack_writes_exactly_the_catalog_files(packs, name):
    entries = [e for e in load_catalog() if e.demo_pack == name]
    assert len(entries) == 1, f"one catalog entry must use demo pack {name!r}"
    assert set(_files(packs[name])) == {f.path for f in entries[0].files}


def test_builds_are_byte_identical(packs, tmp_path):
    for name in PACKS:
        again = build_pack(name, tmp_path / name)
        assert _files(again) == _files(packs[name]), name


def test_weights_use_the_published_dtypes(packs):
    from safetensors import safe_open

    def dtypes(path: Path) -> set:
        with safe_open(path, "pt") as f:
            return {f.get_slice(k).get_dtype() for k in f.keys()}

    sdxl = packs["sdxl"]
    for rel in (
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "text_encoder/model.fp16.safetensors",
        "text_encoder_2/model.fp16.safetensors",
    ):
        assert dtypes(sdxl / rel) == {"F16"}, rel
    assert dtypes(packs["instantid"] / "ControlNetModel/diffusion_pytorch_model.safetensors") == {"F16"}
    assert dtypes(packs["controlnet-openpose-sdxl"] / "diffusion_pytorch_model.safetensors") == {"F16"}
    assert dtypes(packs["sdxl-vae"] / "diffusion_pytorch_model.safetensors") == {"F32"}
    assert dtypes(packs["clip-vision"] / "models/image_encoder/model.safetensors") == {"F32"}


def test_clip_tokenizers_load_and_tokenize_english(packs):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(packs["sdxl"] / "tokenizer")
    tok2 = CLIPTokenizer.from_pretrained(packs["sdxl"] / "tokenizer_2")
    assert tok.model_max_length == tok2.model_max_length == 77
    assert tok.pad_token == "<|endoftext|>" and tok2.pad_token == "!"
    ids = tok(PROMPT).input_ids
    assert ids[0] == tok.convert_tokens_to_ids("<|startoftext|>")
    assert ids[-1] == tok.convert_tokens_to_ids("<|endoftext|>") == max(tok.get_vocab().values())
    # learnt merges make common prompt words single tokens
    assert tok.convert_ids_to_tokens(ids[1:-1]) == ["a</w>", "photo</w>", "of</w>", "a</w>", "smiling</w>", "woman</w>"]
    # any other text still round-trips through byte-level BPE
    odd = "zebra café 42 Ωmega"
    assert tok.decode(tok(odd).input_ids, skip_special_tokens=True).replace(" ", "") == odd.lower().replace(" ", "")
    # ids stay inside both text encoders' embedding tables
    for sub in ("text_encoder", "text_encoder_2"):
        cfg = json.loads((packs["sdxl"] / sub / "config.json").read_text())
        assert len(tok.get_vocab()) == cfg["vocab_size"]
        assert cfg["eos_token_id"] == ids[-1]


def test_sdxl_generates_64px_and_is_seeded(packs):
    from pipelines.tiny.sdxl import tiny_unet_config

    pipe = _pipe(packs)
    assert pipe.unet.dtype == torch.float32
    assert pipe.unet.config.cross_attention_dim == tiny_unet_config()["cross_attention_dim"] == 128
    assert pipe.vae_scale_factor == 8
    a = _generate(pipe, height=64, width=64)
    b = _generate(pipe, height=64, width=64)
    assert a.shape == (1, 64, 64, 3)
    assert (a == b).all()
    assert torch.isfinite(torch.from_numpy(a)).all() and a.std() > 0.01
    c = _generate(pipe, "a portrait of an old man", height=64, width=64)
    assert abs(c - a).mean() > 1e-4  # the prompt conditions the image


def test_fp16_fix_vae_swaps_in(packs):
    from diffusers import AutoencoderKL

    pipe = _pipe(packs)
    fix = AutoencoderKL.from_pretrained(packs["sdxl-vae"])
    for key in ("block_out_channels", "latent_channels", "down_block_types", "up_block_types", "scaling_factor"):
        assert fix.config[key] == pipe.vae.config[key], key
    assert fix.config.force_upcast is False
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base, fixed = pipe.vae.decode(z).sample, fix.decode(z).sample
    assert 0 < (base - fixed).abs().mean() < 0.1 * base.abs().mean()  # a fine-tune, not a new model


def test_faceid_plusv2_loads_and_conditions(packs):
    from diffusers.models.embeddings import IPAdapterFaceIDPlusImageProjection
    from transformers import CLIPVisionModelWithProjection

    path = packs["faceid-plusv2-sdxl"] / "ip-adapter-faceid-plusv2_sdxl.bin"
    sd = torch.load(path, weights_only=True)
    assert set(sd) == {"image_proj", "ip_adapter"}
    assert {t.dtype for part in sd.values() for t in part.values()} == {torch.float16}

    pipe = _pipe(packs)
    base = _generate(pipe)
    n_procs = len(pipe.unet.attn_processors)
    pipe.load_ip_adapter(packs["faceid-plusv2-sdxl"], subfolder="", weight_name=path.name, image_encoder_folder=None)
    assert "faceid_0" in pipe.unet.peft_config
    proj = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    assert isinstance(proj, IPAdapterFaceIDPlusImageProjection)

    # every processor's LoRA and every cross-attention's IP weights landed where the keys say
    modules = dict(pipe.unet.named_modules())
    ip = sd["ip_adapter"]
    for i, name in enumerate(list(pipe.unet.attn_processors)[:n_procs]):
        attn = modules[name.removesuffix(".processor")]
        for key, linear in (("to_q", attn.to_q), ("to_k", attn.to_k), ("to_v", attn.to_v), ("to_out", attn.to_out[0])):
            assert torch.equal(linear.lora_A["faceid_0"].weight, ip[f"{i}.{key}_lora.down.weight"].float())
            assert torch.equal(linear.lora_B["faceid_0"].weight, ip[f"{i}.{key}_lora.up.weight"].float())
        if name.endswith("attn2.processor"):
            assert torch.equal(attn.processor.to_k_ip[0].weight, ip[f"{i}.to_k_ip.weight"].float())
        else:
            assert f"{i}.to_k_ip.weight" not in ip

    # FaceID Plus feeds CLIP hidden_states[-2] of the face crop into the resampler
    encoder = CLIPVisionModelWithProjection.from_pretrained(packs["clip-vision"] / "models/image_encoder")
    face = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        pos = encoder(face, output_hidden_states=True).hidden_states[-2]
        neg = encoder(torch.zeros_like(face), output_hidden_states=True).hidden_states[-2]
    assert pos.shape[-1] == proj.proj_in.in_features
    proj.clip_embeds = torch.stack([neg, pos])  # (2, 1, 257, width): CFG halves
    proj.shortcut = True  # Plus v2
    id_embed = torch.randn(1, 1, 1, 512, generator=torch.Generator().manual_seed(3))
    out = _generate(pipe, ip_adapter_image_embeds=[torch.cat([torch.zeros_like(id_embed), id_embed])])
    assert out.shape == base.shape and abs(out - base).mean() > 1e-3

    other = torch.randn(1, 1, 1, 512, generator=torch.Generator().manual_seed(4))
    out2 = _generate(pipe, ip_adapter_image_embeds=[torch.cat([torch.zeros_like(other), other])])
    assert abs(out2 - out).mean() > 1e-4  # the identity embedding conditions the image


def test_instantid_adapter_is_a_16_token_resampler(packs):
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    sd = torch.load(packs["instantid"] / "ip-adapter.bin", weights_only=True)
    assert sd["image_proj"]["latents"].shape[:2] == (1, 16)
    assert sd["image_proj"]["proj_in.weight"].shape[1] == 512
    assert {t.dtype for part in sd.values() for t in part.values()} == {torch.float32}

    pipe = _pipe(packs)
    base = _generate(pipe)
    cross = [i for i, n in enumerate(pipe.unet.attn_processors) if n.endswith("attn2.processor")]
    assert {k.split(".")[0] for k in sd["ip_adapter"]} == {str(i) for i in cross}
    assert all(i % 2 == 1 for i in cross)

    pipe.load_ip_adapter(packs["instantid"], subfolder="", weight_name="ip-adapter.bin", image_encoder_folder=None)
    proj = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    assert isinstance(proj, IPAdapterPlusImageProjection)
    with torch.no_grad():
        tokens = proj(torch.randn(1, 1, 512))
    assert tokens.shape == (1, 16, pipe.unet.config.cross_attention_dim)
    face = torch.randn(1, 1, 1, 512, generator=torch.Generator().manual_seed(5))
    out = _generate(pipe, ip_adapter_image_embeds=[torch.cat([torch.zeros_like(face), face])])
    assert abs(out - base).mean() > 1e-3


@pytest.mark.parametrize("where", ["instantid/ControlNetModel", "controlnet-openpose-sdxl"])
def test_controlnets_load_and_follow_their_image(packs, where):
    from diffusers import ControlNetModel

    name, _, sub = where.partition("/")
    net = ControlNetModel.from_pretrained(packs[name] / sub, torch_dtype=torch.float32)
    g = torch.Generator().manual_seed(6)
    kw = dict(
        sample=torch.randn(1, 4, 8, 8, generator=g),
        timestep=torch.tensor([500]),
        encoder_hidden_states=torch.randn(1, 16, net.config.cross_attention_dim, generator=g),
        added_cond_kwargs={
            "text_embeds": torch.randn(1, 32, generator=g),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]),
        },
        return_dict=False,
    )
    with torch.no_grad():
        down, mid = net(controlnet_cond=torch.rand(1, 3, 64, 64, generator=g), **kw)
        down2, mid2 = net(controlnet_cond=torch.rand(1, 3, 64, 64, generator=g), **kw)
    assert all(r.abs().mean() > 0 for r in down) and mid.abs().mean() > 0
    assert (mid - mid2).abs().mean() > 0  # the control image changes the residuals
