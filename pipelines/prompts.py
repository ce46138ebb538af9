"""Prompts as A1111 users type them: `<lora:name:weight>` tags, `(word:1.2)`
weighting and prompts longer than CLIP's 77 tokens.

Rules:
- `<lora:NAME>` / `<lora:NAME:WEIGHT>` tags are taken out of the text the text
  encoders see and merged with the request's `loras`; the recipe and the infotext
  keep the prompt as typed (A1111 does the same), so a replay parses it again.
  A LoRA named both ways with different weights is refused, never guessed.
- Attention syntax follows A1111's `modules/prompt_parser.py::parse_prompt_attention`
  semantics: `(x)` multiplies by 1.1, `[x]` divides by 1.1, `(x:w)` multiplies by
  w, nesting multiplies, `\\(` is a literal bracket. It is parsed here into
  (text, weight) fragments and encoded through compel's embeddings provider
  (damian0815/compel), which weights token embeddings and, without truncation,
  encodes long prompts as consecutive 77-token chunks concatenated (the A1111
  approach). compel's own prompt syntax is not used: it reads `(x:1.2)` as text.
- Only prompts that need it are encoded here (some weight is not 1, or the prompt
  is over 75 tokens): every other prompt goes to diffusers' own `encode_prompt`
  unchanged, so plain prompts give exactly the pipeline's reference embeddings.
- SDXL: both encoders' penultimate hidden states, concatenated, pooled output of
  the second (as `StableDiffusionXLPipeline.encode_prompt`); an empty negative is
  zeros when the pipeline's `force_zeros_for_empty_prompt` is set, as diffusers does.
  The pooled embedding reads the first 77 tokens only (CLIP has one pooled vector).
- A method that supplies its own `prompt_embeds` (the whole prompt is its
  conditioning) skips this step; tags are still removed.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import BadInput

LORA_TAG = re.compile(r"<lora:([^<>]*)>", re.IGNORECASE)
_ATTENTION = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
_ROUND, _SQUARE = 1.1, 1 / 1.1
CLIP_TOKENS = 75  # tokens of one CLIP chunk between its start and end markers


def split_lora_tags(prompt: str) -> tuple[str, list]:
    """(prompt without `<lora:...>` tags, [LoraSpec, ...]) in prompt order."""
    from .requests import LoraSpec

    specs = []
    for m in LORA_TAG.finditer(prompt):
        parts = m.group(1).split(":")
        if len(parts) > 2:
            raise BadInput(f"prompt tag {m.group(0)!r}: use <lora:NAME> or <lora:NAME:WEIGHT> "
                           "(separate text-encoder/UNet weights are not supported).")
        try:
            specs.append(LoraSpec.parse(m.group(1).strip()))
        except Exception as exc:
            raise BadInput(f"prompt tag {m.group(0)!r}: {' '.join(str(exc).split())[:200]}.") from exc
    text = LORA_TAG.sub("", prompt)
    text = re.sub(r"[ \t]*,[ \t]*(?=,|$)", "", text)  # ", <lora:a>," leaves no empty list item
    return re.sub(r"[ \t]{2,}", " ", text).strip(), specs


def merged_loras(prompt: str, loras) -> list:
    """The request's LoRAs plus the prompt's tags; one name with two weights is refused."""
    _, tagged = split_lora_tags(prompt)
    out = {spec.name: spec for spec in loras or []}
    for spec in tagged:
        have = out.get(spec.name)
        if have is not None and have.weight != spec.weight:
            raise BadInput(f"LoRA {spec.name!r} is named in the prompt with weight {spec.weight:g} "
                           f"and in loras with weight {have.weight:g}; name it once.")
        out[spec.name] = spec
    return list(out.values())


def parse_attention(text: str) -> list[tuple[str, float]]:
    """(text, weight) fragments of an A1111-weighted prompt, neighbours of equal
    weight merged. Unbalanced brackets close at the end, as in A1111."""
    out: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, k: float) -> None:
        for item in out[start:]:
            item[1] *= k

    for m in _ATTENTION.finditer(text):
        tok, weight = m.group(0), m.group(1)
        if tok.startswith("\\"):
            out.append([tok[1:] or "\\", 1.0])
        elif tok == "(":
            round_open.append(len(out))
        elif tok == "[":
            square_open.append(len(out))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif tok == ")" and round_open:
            scale(round_open.pop(), _ROUND)
        elif tok == "]" and square_open:
            scale(square_open.pop(), _SQUARE)
        else:
            out.append([tok, 1.0])
    for pos in round_open:
        scale(pos, _ROUND)
    for pos in square_open:
        scale(pos, _SQUARE)
    merged: list[tuple[str, float]] = []
    for t, w in out:
        if merged and abs(merged[-1][1] - w) < 1e-9:
            merged[-1] = (merged[-1][0] + t, w)
        elif t:
            merged.append((t, w))
    return merged or [("", 1.0)]


def _is_weighted(fragments) -> bool:
    return any(abs(w - 1.0) > 1e-9 for _, w in fragments)


def _tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def needs_encoding(pipe, prompt: str, negative: str) -> bool:
    """True when diffusers' own encoding would lose something: a weight other
    than 1, or a prompt over one CLIP chunk (diffusers truncates at 77 tokens)."""
    tok = getattr(pipe, "tokenizer", None)
    if tok is None or getattr(pipe, "text_encoder", None) is None:
        return False
    for text in (prompt, negative):
        if text and (_is_weighted(parse_attention(text)) or _tokens(tok, text) > CLIP_TOKENS):
            return True
    return False


def encode_prompts(pipe, prompt: str, negative: str) -> dict[str, Any]:
    """The pipeline call's prompt_embeds / negative_prompt_embeds (and the pooled
    ones on SDXL) for a weighted or long prompt, through compel."""
    import torch
    from compel import Compel, ReturnedEmbeddingsType

    device = getattr(pipe, "_execution_device", None) or pipe.text_encoder.device
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    kind = (ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED if sdxl
            else ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED)
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if sdxl:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    zero_negative = sdxl and not negative and bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))
    pos_frags, neg_frags = parse_attention(prompt), parse_attention(negative or "")
    pos_parts, neg_parts, pooled = [], [], None
    with torch.no_grad():
        for i, (tok, enc) in enumerate(pairs):
            compel = Compel(tokenizer=tok, text_encoder=enc, returned_embeddings_type=kind,
                            truncate_long_prompts=False, device=device)
            provider = compel.conditioning_provider
            pos = provider.get_embeddings_for_weighted_prompt_fragments(
                [[t for t, _ in pos_frags]], [[w for _, w in pos_frags]], device=device)
            neg = provider.get_embeddings_for_weighted_prompt_fragments(
                [[t for t, _ in neg_frags]], [[w for _, w in neg_frags]], device=device)
            pos, neg = compel.pad_conditioning_tensors_to_same_length([pos, neg])
            pos_parts.append(pos)
            neg_parts.append(torch.zeros_like(neg) if zero_negative else neg)
            if sdxl and i == 1:
                p = provider.get_pooled_embeddings(["".join(t for t, _ in pos_frags)], device=device)
                n = provider.get_pooled_embeddings(["".join(t for t, _ in neg_frags)], device=device)
                pooled = (p, torch.zeros_like(n) if zero_negative else n)
    out: dict[str, Any] = {"prompt_embeds": torch.cat(pos_parts, dim=-1),
                           "negative_prompt_embeds": torch.cat(neg_parts, dim=-1)}
    if pooled is not None:
        out["pooled_prompt_embeds"], out["negative_pooled_prompt_embeds"] = pooled
    return out


def prompt_conditioning(pipe, req, cond) -> None:
    """Put compel's embeddings of a weighted or long prompt into the method's
    call kwargs (after the LoRAs are active: their text-encoder weights count).
    Nothing when the method supplies its own prompt embeddings."""
    if cond.prompt_embeds is not None or "prompt_embeds" in cond.call_kwargs:
        return
    text, _ = split_lora_tags(req.prompt + cond.prompt_suffix)
    if needs_encoding(pipe, text, req.negative):
        cond.call_kwargs.update(encode_prompts(pipe, text, req.negative))
        cond.recipe["prompt_weighting"] = "A1111 attention syntax via compel, 77-token chunks"


def pipeline_prompt(req, cond) -> str:
    """The text the pipeline's text encoders see: the prompt (plus trigger words)
    without `<lora:...>` tags."""
    return split_lora_tags(req.prompt + cond.prompt_suffix)[0]
