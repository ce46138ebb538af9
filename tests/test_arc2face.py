"""Arc2Face (foivospar/Arc2Face) on the tiny packs: the published layout loads
through the store (pickle -> safetensors) with its transformers-4 key names, the
face embedding becomes `prompt_embeds` as `project_face_embs` computes it
(checked against a plain-torch restatement of the CLIP text transformer), the
request's prompt is ignored, combinations that cannot work are refused, and the
recogniser pack is Arc2Face's own, scored by an independent one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import fast_request, generate_on_astronaut

from pipelines.errors import BadInput
from pipelines.requests import GenerateRequest

FAST = fast_request(method="arc2face", cfg=3.0, prompt="a portrait photo")


@pytest.fixture(scope="module")
def engine(make_engine):
    return make_engine("arc2face-out")


@pytest.fixture(scope="module")
def pipe(engine):
    return engine.pipeline("sd15-base")


def gen(engine, photos_dir, **kw):
    res = generate_on_astronaut(engine, photos_dir, FAST, **kw)
    return [np.asarray(i.image).astype(np.int16) for i in res.images], res


# ------------------------------------------------------------------ the pack
def test_pack_has_the_published_layout_and_loads_exactly(engine):
    from transformers import CLIPTextModel

    from pipelines.tiny.arc2face import build_encoder

    folder = engine.store.ensure("arc2face")
    cfg = json.loads((folder / "encoder" / "config.json").read_text())
    assert cfg["architectures"] == ["CLIPTextModelWrapper"]
    assert cfg["hidden_size"] > 512 and cfg["num_attention_heads"] >= 2
    unet_cfg = json.loads((folder / "arc2face" / "config.json").read_text())
    assert unet_cfg["cross_attention_dim"] == cfg["hidden_size"]
    # the pickle became safetensors once; its keys are transformers-4's text_model.*
    from safetensors.torch import load_file

    converted = engine.store.file_path("arc2face", "encoder/pytorch_model.bin")
    assert converted.suffix == ".safetensors"
    keys = list(load_file(converted))
    assert keys and all(k.startswith("text_model.") for k in keys)
    # ... and load into transformers 5's CLIPTextModel with every weight in place
    loaded = CLIPTextModel.from_pretrained(folder / "encoder", local_files_only=True, use_safetensors=True)
    built = build_encoder().state_dict()
    got = loaded.state_dict()
    assert set(got) == set(built)
    for k in built:
        assert torch.equal(got[k], built[k]), k


def test_id_is_one_token_at_the_reference_position(pipe):
    from pipelines.identity.arc2face import PROMPT, id_token

    tok = pipe.tokenizer
    assert len(tok.encode("id", add_special_tokens=False)) == 1
    ids = tok(PROMPT).input_ids
    # real SD1.5 tokenizer: [49406, 1125, 539, 320, 1014, 2533, 49407] -> "id" at position 4
    assert len(ids) == 7 and ids.index(id_token(tok)) == 4


def test_a_tokenizer_splitting_id_is_refused():
    from pipelines.errors import ModelError
    from pipelines.identity.arc2face import id_token

    class Splitting:
        def encode(self, text, add_special_tokens=False):
            return [5, 6]

    with pytest.raises(ModelError, match="splits 'id'"):
        id_token(Splitting())


# ------------------------------------------------- face -> prompt_embeds
def _reference_prompt_embeds(encoder, ids, id_tok, face):
    """Plain-torch restatement of Arc2Face's CLIPTextModelWrapper forward with
    input_token_embs: token embeddings with the "id" rows replaced by the padded
    face, + position embeddings, pre-LN causal transformer (quick_gelu MLP),
    final LayerNorm."""
    import torch.nn.functional as F

    sd = {k.removeprefix("text_model."): v.float() for k, v in encoder.state_dict().items()}
    cfg = encoder.config
    hidden, heads = cfg.hidden_size, cfg.num_attention_heads
    tok = sd["embeddings.token_embedding.weight"][ids[0]].clone()
    tok[ids[0] == id_tok] = F.pad(face, (0, hidden - face.shape[-1]))
    x = tok + sd["embeddings.position_embedding.weight"][: ids.shape[1]]
    n = x.shape[0]
    causal = torch.full((n, n), float("-inf")).triu(1)
    eps = cfg.layer_norm_eps
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layers.{i}."
        h = F.layer_norm(x, (hidden,), sd[p + "layer_norm1.weight"], sd[p + "layer_norm1.bias"], eps)

        def proj(name, h=h, p=p):
            return (h @ sd[p + f"self_attn.{name}.weight"].T + sd[p + f"self_attn.{name}.bias"]).view(
                n, heads, -1).transpose(0, 1)

        q, k, v = proj("q_proj"), proj("k_proj"), proj("v_proj")
        att = torch.softmax(q @ k.transpose(-1, -2) / (hidden // heads) ** 0.5 + causal, dim=-1) @ v
        att = att.transpose(0, 1).reshape(n, hidden)
        x = x + att @ sd[p + "self_attn.out_proj.weight"].T + sd[p + "self_attn.out_proj.bias"]
        h = F.layer_norm(x, (hidden,), sd[p + "layer_norm2.weight"], sd[p + "layer_norm2.bias"], eps)
        h = h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"]
        h = h * torch.sigmoid(1.702 * h)  # quick_gelu
        x = x + h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    return F.layer_norm(x, (hidden,), sd["final_layer_norm.weight"], sd["final_layer_norm.bias"], eps)[None]


def test_prompt_embeds_are_project_face_embs(engine, pipe):
    from pipelines.identity.arc2face import PROMPT, id_token, project_face_embs

    engine.use_method("arc2face", pipe)
    try:
        tok, enc = pipe.tokenizer, pipe.text_encoder
        assert enc.config.hidden_size > 512  # Arc2Face's encoder is in place
        g = torch.Generator().manual_seed(0)
        faces = torch.nn.functional.normalize(torch.randn(2, 512, generator=g), dim=-1)
        a = project_face_embs(tok, enc, faces[:1])
        b = project_face_embs(tok, enc, faces[1:])
        assert a.shape == (1, tok.model_max_length, enc.config.hidden_size)
        ids = tok(PROMPT, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
        ref = _reference_prompt_embeds(enc, ids, id_token(tok), faces[0])
        torch.testing.assert_close(a, ref, atol=2e-5, rtol=1e-5)
        # causal: the tokens before "id" do not see the face; from "id" on they do
        assert torch.equal(a[:, :4], b[:, :4])
        assert (a[:, 4:] - b[:, 4:]).abs().amax(-1).min() > 0
    finally:
        engine.use_method("none", pipe)


# ------------------------------------------------------------- the engine
def test_the_prompt_is_ignored_and_the_recipe_says_so(engine, photos_dir):
    one, res = gen(engine, photos_dir, prompt="a portrait photo")
    two, _ = gen(engine, photos_dir, prompt="an astronaut on the moon, oil painting")
    assert np.array_equal(one[0], two[0])
    details = res.images[0].recipe["method_details"]
    assert details["prompt"] == "photo of a id person"
    assert any("prompt is ignored" in w for w in details["warnings"])  # printed by the CLI and the UI


def test_reference_defaults_apply_when_unset(engine):
    from pipelines.engine import apply_method_defaults
    from pipelines.identity import get_method_class

    req = GenerateRequest(method="arc2face", photos=["x.png"], prompt="p")
    got = apply_method_defaults(req, get_method_class("arc2face"))
    assert (got.sampler, got.steps, got.cfg) == ("dpmpp_2m", 25, 3.0)
    mine = GenerateRequest(method="arc2face", photos=["x.png"], prompt="p", steps=4)
    assert apply_method_defaults(mine, get_method_class("arc2face")).steps == 4


def test_unload_restores_the_base_modules(engine, pipe):
    engine.use_method("none", pipe)
    unet, te = pipe.unet, pipe.text_encoder
    engine.use_method("arc2face", pipe)
    assert pipe.unet is not unet and pipe.text_encoder is not te
    engine.use_method("none", pipe)
    assert pipe.unet is unet and pipe.text_encoder is te


@pytest.mark.parametrize("field, value, match", [
    ("negative", "blurry", "negative"),
    ("scale", 0.5, "no strength"),
])
def test_combinations_that_cannot_work_are_refused(engine, photos_dir, field, value, match):
    with pytest.raises(BadInput, match=match):
        gen(engine, photos_dir, **{field: value})


def test_loras_are_refused(engine, photos_dir, tmp_path):
    # the check comes before any LoRA file is read: the name need not exist
    with pytest.raises(BadInput, match="loras cannot be used with method 'arc2face'"):
        gen(engine, photos_dir, loras=[{"name": "me", "weight": 0.8}])


# ------------------------------------------------ recogniser and scoring
def test_recogniser_pack_is_its_own_and_scored_independently(engine):
    from pipelines.models.catalog import load_catalog
    from pipelines.scoring import scorer_pack

    cat = load_catalog()
    own = {f.path: f for f in cat.get("arc2face-arcface").files}
    ante = {f.path: f for f in cat.get("antelopev2").files}
    assert own["arcface.onnx"].sha256 != ante["glintr100.onnx"].sha256
    assert own["scrfd_10g_bnkps.onnx"].sha256 == ante["scrfd_10g_bnkps.onnx"].sha256
    assert scorer_pack("arc2face") == "antelopev2" != "arc2face-arcface"
    # the tiny recognisers are different networks too
    a = engine.analyzer("arc2face-arcface").recognizer
    b = engine.analyzer("antelopev2").recognizer
    crop = np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8)
    assert not np.allclose(a.embed_crop(crop), b.embed_crop(crop))


# ------------------------------------------------------- front doors, eval
def test_cli_needs_no_prompt_and_says_it_is_ignored(tiny_models_dir, photos_dir, tmp_path, capsys):
    from cli.main import run

    rc = run(["--demo", "--models-dir", str(tiny_models_dir), "--outputs-dir", str(tmp_path / "out"),
              "--device", "cpu", "--dtype", "float32", "generate", "--photo", str(photos_dir / "astronaut.png"),
              "--method", "arc2face", "--steps", "2", "--width", "64", "--height", "64", "--seed", "1"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "warning: the prompt is ignored" in cap.err
    assert len(list((tmp_path / "out").rglob("*.png"))) == 1


def test_eval_runs_arc2face_beside_another_method(run_demo_eval):
    rows = run_demo_eval("wplus,arc2face")
    assert {r["method"] for r in rows} == {"wplus", "arc2face"}
    assert {r["recognizer"] for r in rows if r["method"] == "arc2face"} == {"antelopev2"}
