"""A1111-style prompts: (word:1.2) weighting and long prompts through compel,
<lora:name:weight> tags, LoRAs in subfolders, `Lora hashes` in the infotext."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import fast_request

from pipelines.errors import BadInput, UnsafePath

FAST = fast_request(method="none", without=("sampler", "prompt"))  # the request's default sampler


def test_attention_syntax_follows_a1111():
    from pipelines.prompts import parse_attention

    assert dict(parse_attention("a (b:1.5) c"))["b"] == pytest.approx(1.5)
    frags = parse_attention("x [c] (d) ((e)) \\(f\\)")
    weights = {t.strip(): w for t, w in frags if t.strip()}
    assert weights["c"] == pytest.approx(1 / 1.1)
    assert weights["d"] == pytest.approx(1.1)
    assert weights["e"] == pytest.approx(1.21)
    assert weights["x"] == 1.0 and "(f)" in "".join(t for t, _ in frags)  # escaped brackets are text
    assert parse_attention("(g:0.5") == [("g:0.5", pytest.approx(1.1))]  # unclosed: closed at the end, as A1111


def test_lora_tags_are_split_and_merged():
    from pipelines.prompts import merged_loras, split_lora_tags
    from pipelines.requests import LoraSpec

    text, specs = split_lora_tags("photo of me, <lora:style:0.6>, soft light <LORA:me>")
    assert text == "photo of me, soft light"
    assert [(s.name, s.weight) for s in specs] == [("style", 0.6), ("me", 1.0)]
    merged = merged_loras("a <lora:style:0.6>", [LoraSpec(name="me", weight=0.8)])
    assert sorted((s.name, s.weight) for s in merged) == [("me", 0.8), ("style", 0.6)]
    with pytest.raises(BadInput, match="'style' is named in the prompt with weight 0.6 and in loras with weight 1"):
        merged_loras("a <lora:style:0.6>", [LoraSpec(name="style")])
    with pytest.raises(BadInput, match="<lora:a:1:2>"):
        split_lora_tags("x <lora:a:1:2>")
    with pytest.raises(BadInput, match="not a number"):
        split_lora_tags("x <lora:a:lots>")


def test_loras_in_subfolders_are_found_listed_and_confined(tmp_path):
    from pipelines.lora.manager import list_loras, lora_path

    root = tmp_path / "loras"
    (root / "people").mkdir(parents=True)
    (root / "styles" / "old").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for rel in ("top.safetensors", "people/me.safetensors", "styles/old/film.safetensors",
                "styles/me.safetensors", ".hidden/x.safetensors"):
        (root / rel).write_bytes(b"x")
    assert list_loras(root) == ["top", "people/me", "styles/me", "styles/old/film"]
    assert lora_path(root, "film") == (root / "styles/old/film.safetensors").resolve()
    assert lora_path(root, "people/me") == (root / "people/me.safetensors").resolve()
    with pytest.raises(BadInput, match=r"'me' is in several folders \(people/me, styles/me\)"):
        lora_path(root, "me")
    with pytest.raises(UnsafePath):
        lora_path(root, "../outside")
    with pytest.raises(BadInput, match="not found"):
        lora_path(root, "x")  # hidden folders are not searched


def test_lora_hashes_infotext_value():
    from pipelines.metadata import a1111_parameters, lora_hashes

    value = lora_hashes([{"name": "people/me", "weight": 0.8, "sha256": "ab" * 32},
                         {"name": "st:y,le", "weight": 1, "sha256": "cd" * 32}])
    assert value == f"me: {'ab' * 6}, style: {'cd' * 6}"
    text = a1111_parameters("p", "", 2, "Euler", 5, 1, 64, 64, "m", "h", extra={"Lora hashes": value})
    assert f'Lora hashes: "me: {"ab" * 6}, style: {"cd" * 6}"' in text
    assert lora_hashes([]) is None


@pytest.fixture(scope="module")
def sdxl(make_settings):
    import torch

    from pipelines.lora.train import load_base
    from pipelines.stores import open_store

    settings = make_settings("p", accept_research_licenses=True)
    pipe = load_base(open_store(settings), "sdxl-base", torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return settings, pipe


def test_compel_plain_prompt_equals_diffusers_and_weights_change_it(sdxl):
    import torch

    from pipelines.prompts import encode_prompts, needs_encoding

    _, pipe = sdxl
    assert not needs_encoding(pipe, "a photo of a person", "")
    assert needs_encoding(pipe, "a (photo:1.3) of a person", "")
    ref = pipe.encode_prompt("a photo", device="cpu", num_images_per_prompt=1,
                             do_classifier_free_guidance=True, negative_prompt="blurry")
    ours = encode_prompts(pipe, "a photo", "blurry")
    torch.testing.assert_close(ours["prompt_embeds"], ref[0])
    torch.testing.assert_close(ours["negative_prompt_embeds"], ref[1])
    torch.testing.assert_close(ours["pooled_prompt_embeds"], ref[2])
    zero = encode_prompts(pipe, "a photo", "")  # SDXL: empty negative is zeros, as diffusers
    assert not zero["negative_prompt_embeds"].any() and not zero["negative_pooled_prompt_embeds"].any()
    weighted = encode_prompts(pipe, "a (photo:1.5)", "blurry")
    assert not torch.allclose(weighted["prompt_embeds"], ours["prompt_embeds"])
    long = " ".join(["portrait"] * 120)
    assert needs_encoding(pipe, long, "")
    emb = encode_prompts(pipe, long, "")
    assert emb["prompt_embeds"].shape[1] == 2 * 77  # two chunks, nothing truncated
    assert emb["negative_prompt_embeds"].shape == emb["prompt_embeds"].shape


def test_engine_prompt_lora_tag_weighting_and_infotext(sdxl):
    from safetensors.torch import save_file

    from pipelines.engine import Engine
    from pipelines.metadata import PARAMETERS_KEY
    from pipelines.requests import GenerateRequest
    from pipelines.tiny.speed_loras import tiny_speed_lora

    settings, _ = sdxl
    sub = settings.loras_dir / "styles"
    sub.mkdir(parents=True, exist_ok=True)
    save_file(tiny_speed_lora(seed=11), str(sub / "grain.safetensors"))
    engine = Engine(settings)

    def run(prompt, **kw):
        res = engine.generate(GenerateRequest(prompt=prompt, **FAST, **kw))
        return np.asarray(res.images[0].image).astype(np.int16), res.images[0]

    plain, _ = run("a portrait")
    tagged, out = run("a portrait <lora:grain:0.9>")
    assert out.recipe["prompt"] == "a portrait <lora:grain:0.9>"  # as typed
    assert [(x["name"], x["weight"]) for x in out.recipe["method_details"]["loras"]] == [("grain", 0.9)]
    assert (tagged != plain).any()
    flag, _ = run("a portrait", loras=[{"name": "styles/grain", "weight": 0.9}])
    assert (flag == tagged).all()  # the tag is the same as --lora, and the tag text is not encoded
    from PIL import Image

    with Image.open(out.path) as im:
        params = im.info[PARAMETERS_KEY]
    assert f'Lora hashes: "grain: {out.recipe["method_details"]["loras"][0]["sha256"][:12]}"' in params
    weighted, w_out = run("a (portrait:1.4)")
    assert (weighted != plain).any() and w_out.recipe["prompt"] == "a (portrait:1.4)"
    assert "prompt_weighting" in w_out.recipe["method_details"]
    again, _ = run("a portrait")
    assert (again == plain).all()  # no LoRA asked, plain prompt: the base exactly
