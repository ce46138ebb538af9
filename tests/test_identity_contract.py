"""The contract every identity method keeps (as diffusers' `IPAdapterTesterMixin`
in tests/pipelines/test_pipelines_common.py does for IP-Adapters), run for every
method in the registry (`pipelines.identity.method_names()`), so a new method is
checked as soon as it is registered:

- load, then unload, leaves the base pipeline's pixels exactly as before;
- scale 0 gives the base model's image;
- with -n > 1 every image equals the same seed generated alone, and each UNet
  call gets the classifier-free-guidance batch [uncond, cond] in every input;
- without CFG (cfg <= 1) the method still conditions, with batch-1 inputs;
- the unconditional inputs are the reference implementation's. These are method
  facts, declared below in `UNCOND_REFERENCES`; a registered method missing there
  fails the test until its reference is written down.

The inputs are observed where the models receive them (forward hooks on the UNet,
the image projection and any ControlNet the method adds), not read from the
method's own bookkeeping. Also here: the tiny packs have at least two attention
heads wherever the published models have several, so a head-order bug shows.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from conftest import fast_request

from pipelines.identity import method_names
from pipelines.requests import GenerateRequest

METHODS = method_names()
FAST = fast_request(prompt="a portrait photo", seed=7)
# request fields that switch a method off besides `scale` (InstantID's IdentityNet has its own)
OFF = {"instantid": {"identitynet_scale": 0.0}}


@pytest.fixture(scope="module")
def engine(make_engine):
    return make_engine("contract-out")


def gen(engine, photos_dir, method: str, **kw):
    data = dict(FAST, method=method, photos=[] if method == "none" else [str(photos_dir / "astronaut.png")])
    data.update(kw)
    res = engine.generate(GenerateRequest(**data))
    return [np.asarray(i.image).astype(np.int16) for i in res.images]


def base_of(engine, photos_dir, method: str, **kw):
    """The base model's image for the same request without the identity method: same
    base, and the settings the method would default to (its `recipe_defaults`, e.g.
    W+'s VAE and FreeU) set explicitly."""
    from pipelines.engine import Engine
    from pipelines.identity import get_method_class

    defaults = getattr(get_method_class(method), "recipe_defaults", None) or {}
    same = {k: v for k, v in defaults.items() if k not in FAST and k not in kw}
    return gen(engine, photos_dir, "none", base_model=Engine.default_base(method), **same, **kw)


# ---------------------------------------------------------------- observing
@dataclass
class Seen:
    """What the models received during one generation."""

    pipe: object = None  # the pipeline the method conditioned
    method: object = None  # the method object that conditioned it
    unet: list[dict] = field(default_factory=list)  # per UNet call
    projection_in: list[torch.Tensor] = field(default_factory=list)  # image projection inputs
    projection_out: list[torch.Tensor] = field(default_factory=list)
    projection_attrs: list[dict] = field(default_factory=list)  # tensors set on the projection (FaceID clip_embeds)
    controlnet: list[dict] = field(default_factory=list)  # per ControlNet call the method added


def _batch(x) -> int:
    return int(x.shape[0])


def _tensors(kwargs: dict) -> list:
    """The tensors among a call's cross-attention kwargs (e.g. PuLID's id_embedding)."""
    return [v for v in kwargs.values() if isinstance(v, torch.Tensor)]


@contextlib.contextmanager
def observe(engine, method_name: str):
    """Hooks on what the models receive while `engine.generate` runs `method_name`.
    The method's `conditioning` is wrapped so the hooks go on after it has set up the
    pipeline (the image projection exists once loaded; ControlNets come with the
    conditioning); hooks registered later than the method's own see what it passes on."""
    from pipelines.engine import Engine

    method = engine.use_method(method_name, engine.pipeline(Engine.default_base(method_name)))
    seen = Seen(method=method)
    handles: list = []
    original = method.conditioning

    def unet_hook(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        states = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        added = kwargs.get("added_cond_kwargs") or {}
        seen.unet.append({"sample": _batch(sample), "states": _batch(states),
                          "image_embeds": [_batch(e) for e in added.get("image_embeds") or []],
                          "text": states.detach().clone(),
                          "attention_kwargs": dict(kwargs.get("cross_attention_kwargs") or {})})

    def proj_pre(module, args):
        seen.projection_in.append(args[0].detach().clone())
        attrs = {k: v.detach().clone() for k, v in vars(module).items() if isinstance(v, torch.Tensor)}
        seen.projection_attrs.append(attrs)

    def proj_post(module, args, out):
        seen.projection_out.append(out.detach().clone())

    def cn_hook(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        seen.controlnet.append({"sample": _batch(sample),
                                "states": kwargs["encoder_hidden_states"].detach().clone()})

    def wrapped(pipe_, identity, request, width, height):
        cond = original(pipe_, identity, request, width, height)
        seen.pipe = pipe_
        if not handles:
            handles.append(pipe_.unet.register_forward_pre_hook(unet_hook, with_kwargs=True))
            hid = pipe_.unet.encoder_hid_proj
            for layer in getattr(hid, "image_projection_layers", []):
                handles.append(layer.register_forward_pre_hook(proj_pre))
                handles.append(layer.register_forward_hook(proj_post))
            for unit in cond.controlnets:
                handles.append(unit.model.register_forward_pre_hook(cn_hook, with_kwargs=True))
        return cond

    method.conditioning = wrapped
    try:
        yield seen
    finally:
        del method.conditioning  # back to the class's method
        for h in handles:
            h.remove()


# ----------------------------------------------------------- the contract
@pytest.mark.parametrize("method", METHODS)
def test_load_then_unload_gives_the_base_pixels(engine, photos_dir, method):
    before = base_of(engine, photos_dir, method)
    with_method = gen(engine, photos_dir, method)
    after = base_of(engine, photos_dir, method)  # "none" unloads the method
    assert np.array_equal(before[0], after[0])
    assert not np.array_equal(with_method[0], before[0])  # the method did change the image


@pytest.mark.parametrize("method", METHODS)
def test_scale_zero_equals_the_base(engine, photos_dir, method):
    zero = gen(engine, photos_dir, method, scale=0.0, **OFF.get(method, {}))
    base = base_of(engine, photos_dir, method)
    assert np.array_equal(zero[0], base[0])


@pytest.mark.parametrize("method", METHODS)
def test_several_images_each_equal_their_seed_alone_with_the_cfg_batch(engine, photos_dir, method):
    with observe(engine, method) as seen:
        many = gen(engine, photos_dir, method, count=3, seed=21)
    alone = [gen(engine, photos_dir, method, count=1, seed=21 + i)[0] for i in range(3)]
    for i in range(3):
        assert np.array_equal(many[i], alone[i]), f"image {i} of -n 3 differs from seed {21 + i} alone"
    assert not np.array_equal(many[0], many[1])
    # every UNet call: [uncond, cond] in the latents, the text and the identity inputs alike
    assert seen.unet and all(c["sample"] % 2 == 0 for c in seen.unet)
    for call in seen.unet:
        assert call["states"] == call["sample"] and all(b == call["sample"] for b in call["image_embeds"])
        assert all(t.shape[0] == call["sample"] for t in _tensors(call["attention_kwargs"]))
    for call in seen.controlnet:
        assert call["states"].shape[0] == call["sample"]


@pytest.mark.parametrize("method", METHODS)
def test_without_cfg_the_method_conditions_with_batch_one(engine, photos_dir, method):
    with observe(engine, method) as seen:
        plain = gen(engine, photos_dir, method, cfg=1.0)
    base = base_of(engine, photos_dir, method, cfg=1.0)
    assert not np.array_equal(plain[0], base[0])  # conditioned without CFG too
    assert seen.unet and all(c["sample"] == 1 and c["states"] == 1 for c in seen.unet)
    assert all(b == 1 for c in seen.unet for b in c["image_embeds"])
    assert all(t.shape[0] == 1 for c in seen.unet for t in _tensors(c["attention_kwargs"]))
    assert all(x.shape[0] == 1 for x in seen.projection_in)
    for attrs in seen.projection_attrs:  # e.g. FaceID's CLIP features: cond only
        assert all(t.shape[0] == 1 for t in attrs.values())
    for call in seen.controlnet:
        assert call["sample"] == 1 and call["states"].shape[0] == 1


# ------------------------------------------- unconditional inputs, per method
def _faceid_uncond(engine, pipe, seen: Seen) -> None:
    """IP-Adapter FaceID Plus (tencent-ailab/IP-Adapter ip_adapter_faceid.py,
    IPAdapterFaceIDPlusXL.get_image_embeds; diffusers encode_image): the uncond ID
    embedding is zeros, the uncond CLIP input is the image encoder's penultimate
    hidden states of an all-zero pixel tensor."""
    from transformers import CLIPVisionModelWithProjection

    from pipelines.identity.faceid import ENCODER

    folder = engine.store.ensure(ENCODER) / "models" / "image_encoder"
    enc = CLIPVisionModelWithProjection.from_pretrained(folder, torch_dtype=torch.float32, local_files_only=True)
    size = enc.config.image_size
    with torch.no_grad():
        ref = enc(torch.zeros(1, 3, size, size), output_hidden_states=True).hidden_states[-2]
    for id_embeds, attrs in zip(seen.projection_in, seen.projection_attrs):
        half = id_embeds.shape[0] // 2
        assert torch.count_nonzero(id_embeds[:half]) == 0 and torch.count_nonzero(id_embeds[half:]) > 0
        clip = attrs["clip_embeds"]
        assert clip.shape[0] == 2 * half
        uncond = clip[:half].reshape(-1, *ref.shape[1:])
        torch.testing.assert_close(uncond, ref.expand_as(uncond).to(uncond.dtype), atol=1e-4, rtol=1e-4)


def assert_uncond_half_is(ref: torch.Tensor, batches: list[torch.Tensor]) -> None:
    """Each classifier-free-guidance batch (uncond half first): its uncond half is
    `ref` (1, tokens, dim) for every image, and its cond half differs from it."""
    for x in batches:
        half = x.shape[0] // 2
        torch.testing.assert_close(x[:half], ref.expand(half, -1, -1).to(x.dtype), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(x[half:], x[:half])


def _instantid_uncond(engine, pipe, seen: Seen) -> None:
    """InstantID (InstantX/InstantID pipeline_stable_diffusion_xl_instantid.py,
    _encode_prompt_image_emb): the uncond face embedding is zeros, and the uncond
    face tokens, which both the UNet's decoupled attention and IdentityNet get, are
    the Resampler applied to zeros."""
    resampler = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    for emb in seen.projection_in:
        half = emb.shape[0] // 2
        assert torch.count_nonzero(emb[:half]) == 0 and torch.count_nonzero(emb[half:]) > 0
    with torch.no_grad():
        ref = resampler(torch.zeros(1, 1, seen.projection_in[0].shape[-1]))
    assert seen.controlnet
    assert_uncond_half_is(ref, [call["states"] for call in seen.controlnet])


def _wplus_uncond(engine, pipe, seen: Seen) -> None:
    """W+ adapter (csxmli2016/w-plus-adapter): the uncond tokens are w_proj(zeros)."""
    w_proj = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    for w, tokens in zip(seen.projection_in, seen.projection_out):
        half = w.shape[0] // 2
        assert torch.count_nonzero(w[:half]) == 0 and torch.count_nonzero(w[half:]) > 0
        with torch.no_grad():
            ref = w_proj(torch.zeros(1, *w.shape[1:]))
        torch.testing.assert_close(tokens[:half], ref.expand_as(tokens[:half]), atol=1e-5, rtol=1e-5)


def _arc2face_uncond(engine, pipe, seen: Seen) -> None:
    """Arc2Face (foivospar/Arc2Face README, gradio_demo/app.py): the pipeline gets
    only `prompt_embeds`, so its unconditional text is "" encoded by the Arc2Face
    text encoder (diffusers `encode_prompt`), and the conditional text is the
    face prompt, not the request's."""
    tok = pipe.tokenizer
    ids = tok("", padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        ref = pipe.text_encoder(ids)[0]
    assert pipe.text_encoder.config.hidden_size > 512  # the swapped-in Arc2Face encoder
    assert_uncond_half_is(ref, [call["text"] for call in seen.unet])


def _pulid_uncond(engine, pipe, seen: Seen) -> None:
    """PuLID (ToTheBeginning/PuLID pipeline_v1_1.py get_id_embedding): the uncond ID
    tokens are the ID encoder applied to a zero ID vector and zero EVA-CLIP hidden
    states, not zero tokens; the cond tokens differ from them."""
    enc, eva = seen.method.id_encoder, seen.method.eva
    first = enc.id_embedding_mapping[0] if hasattr(enc, "id_embedding_mapping") else enc.body[0]  # IDFormer / v1
    id_dim = first.in_features
    zeros = [torch.zeros(1, eva.pos_embed.shape[1], eva.embed_dim) for _ in range(5)]
    with torch.no_grad():
        ref = enc(torch.zeros(1, id_dim), zeros)
    assert seen.unet
    for call in seen.unet:
        emb = call["attention_kwargs"]["id_embedding"]
        half = emb.shape[0] // 2
        torch.testing.assert_close(emb[:half], ref.expand(half, -1, -1).to(emb.dtype), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(emb[half:], emb[:half])
        assert call["attention_kwargs"]["id_scale"] > 0


UNCOND_REFERENCES = {"faceid": _faceid_uncond, "instantid": _instantid_uncond, "wplus": _wplus_uncond,
                     "arc2face": _arc2face_uncond, "pulid": _pulid_uncond, "pulid-v1": _pulid_uncond}
# methods whose identity input reaches the UNet without an image projection
NO_PROJECTION = {"arc2face", "pulid", "pulid-v1"}


@pytest.mark.parametrize("method", METHODS)
def test_unconditional_inputs_are_the_references(engine, photos_dir, method):
    check = UNCOND_REFERENCES.get(method)
    assert check is not None, (
        f"identity method {method!r} is registered but its reference unconditional inputs are not "
        "declared in UNCOND_REFERENCES (tests/test_identity_contract.py)"
    )
    with observe(engine, method) as seen:
        gen(engine, photos_dir, method)
    assert seen.projection_in or method in NO_PROJECTION, f"{method}: no image projection input was seen"
    check(engine, seen.pipe, seen)


# -------------------------------------------------- attention heads >= 2
def _attention_heads(module) -> list[tuple[str, int, int]]:
    """(name, heads, to_q rows) of every diffusers Attention inside `module`."""
    from diffusers.models.attention_processor import Attention

    return [(n, m.heads, m.to_q.out_features) for n, m in module.named_modules() if isinstance(m, Attention)]


@pytest.mark.parametrize("method", METHODS)
def test_tiny_packs_have_at_least_two_attention_heads(engine, method):
    """Every attention the published models split into several heads has at least
    two in the tiny packs: the base UNet and text encoders, each method's
    resampler (diffusers reads its head count as rows(to_q)/64, as the published
    files need), the CLIP image encoder and IdentityNet."""
    from pipelines.engine import Engine

    pipe = engine.pipeline(Engine.default_base(method))
    m = engine.use_method(method, pipe)
    try:
        unet = _attention_heads(pipe.unet)
        assert unet and min(h for _, h, _ in unet) >= 2, [a for a in unet if a[1] < 2]
        for te in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)):
            if te is not None:
                assert te.config.num_attention_heads >= 2
        hid = pipe.unet.encoder_hid_proj
        proj = _attention_heads(hid) if hid is not None else []
        if method in ("faceid", "instantid"):  # perceiver resamplers with heads of 64
            assert proj and all(h >= 2 and rows == 64 * h for _, h, rows in proj), proj
        if method == "faceid":
            from transformers import CLIPVisionConfig

            from pipelines.identity.faceid import ENCODER

            folder = engine.store.ensure(ENCODER) / "models" / "image_encoder"
            assert CLIPVisionConfig.from_pretrained(folder, local_files_only=True).num_attention_heads >= 2
        if method == "instantid":
            net = _attention_heads(m.identitynet)
            assert net and min(h for _, h, _ in net) >= 2
        if method.startswith("pulid"):  # its ID attention runs with the UNet's heads, its encoders have >= 2
            procs = [p for p in pipe.unet.attn_processors.values() if type(p).__name__ == "IDAttnProcessor"]
            assert procs
            if hasattr(m.id_encoder, "layers"):  # v1.1's IDFormer (v1's IDEncoder is an MLP)
                assert min(layer[0].heads for layer in m.id_encoder.layers) >= 2
            assert m.eva.blocks[0].attn.num_heads >= 2 and len(m.eva.blocks) >= 21
        if method == "wplus":  # its processors attend with the UNet's heads
            procs = [p for p in pipe.unet.attn_processors.values() if type(p).__name__ == "WPlusAttnProcessor"]
            assert procs
    finally:
        engine.use_method("none", pipe)


def test_other_tiny_packs_have_at_least_two_attention_heads():
    """The packs no identity method loads: the pose ControlNet, the likeness
    scorer's OpenCLIP and CodeFormer's transformer."""
    from pipelines.tiny.controlnet import SEED_OPENPOSE, build_controlnet
    from pipelines.tiny.openclip import TINY_MODEL_CFG
    from pipelines.tiny.restore import CODEFORMER_TINY

    pose = _attention_heads(build_controlnet(SEED_OPENPOSE))
    assert pose and min(h for _, h, _ in pose) >= 2
    vision, text = TINY_MODEL_CFG["vision_cfg"], TINY_MODEL_CFG["text_cfg"]
    assert vision["width"] // vision["head_width"] >= 2 and text["heads"] >= 2
    assert CODEFORMER_TINY["n_head"] >= 2
