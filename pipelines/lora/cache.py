"""What the training loop trains on: each crop's latents and each caption's
text conditioning, computed once before the first step.

Speed and memory: the VAE encodes every crop once (in float32: SDXL's VAE
overflows in fp16) and the text encoders encode every distinct caption once;
both then go back to the CPU, so only the UNet (and, with `text_encoder`
training, the two text encoders) stays on the device while the loop runs.

Invariants:
- A `CachedSample` is fully on the CPU in float32; the loop moves one sample to
  the device per step.
- Captions are sorted before they are numbered, so a sample's caption index is
  the same on every process and in a resumed run.
- With text-encoder training, the table keeps token ids instead of embeddings
  (the encoders change while training, so their outputs cannot be cached).
- `encode_text` is SDXL's conditioning as the diffusers pipeline builds it:
  penultimate hidden states of both encoders, concatenated, and the second
  encoder's pooled projection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .dataset import TrainingSet


@dataclass
class CachedSample:
    latents: Any  # (1, 4, h, w) float32, CPU
    text: int  # index into the caption table
    time_ids: Any  # (1, 6) float32


@dataclass
class TextTable:
    """Per caption: cached (embeds, pooled), or token ids when the text encoders train."""

    embeds: list = field(default_factory=list)
    pooled: list = field(default_factory=list)
    ids: list = field(default_factory=list)  # [(ids_te1, ids_te2)]


def tokenize(tokenizer, captions: list[str]):
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def encode_text(tokenizers, text_encoders, ids_list=None, captions=None):
    """SDXL text conditioning: penultimate hidden states of both encoders
    concatenated, and the second encoder's pooled projection (as the pipeline
    does). Gives (embeds (B, 77, D), pooled (B, P))."""
    import torch

    if ids_list is None:
        ids_list = [tokenize(tok, captions) for tok in tokenizers]
    states, pooled = [], None
    for enc, ids in zip(text_encoders, ids_list):
        out = enc(ids.to(next(enc.parameters()).device), output_hidden_states=True)
        pooled = out[0]
        states.append(out.hidden_states[-2])
    return torch.cat(states, dim=-1), pooled


def cache_training_set(pipe, tset: TrainingSet, device, keep_text: bool) -> tuple[list[CachedSample], TextTable]:
    """The latents of every crop of `tset` and its caption table, computed with
    `pipe`'s VAE and text encoders on `device` (`keep_text`: the text encoders
    train, so only token ids are kept)."""
    import numpy as np
    import torch

    captions = sorted({s.caption for s in tset.samples})
    texts = TextTable()
    tokenizers = (pipe.tokenizer, pipe.tokenizer_2)
    encoders = (pipe.text_encoder, pipe.text_encoder_2)
    with torch.no_grad():
        for cap in captions:
            ids = [tokenize(tok, [cap]) for tok in tokenizers]
            texts.ids.append(ids)
            if not keep_text:
                for enc in encoders:
                    enc.to(device)
                emb, pooled = encode_text(tokenizers, encoders, ids_list=ids)
                texts.embeds.append(emb.float().cpu())
                texts.pooled.append(pooled.float().cpu())
        if not keep_text:
            for enc in encoders:
                enc.to("cpu")
        vae = pipe.vae.to(device, torch.float32)  # SDXL's VAE overflows in fp16
        data = []
        for s in tset.samples:
            pix = torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
            lat = vae.encode(pix.to(device)).latent_dist.mode() * vae.config.scaling_factor
            w, h = s.size
            time_ids = torch.tensor([[s.original_size[0], s.original_size[1], 0, 0, h, w]], dtype=torch.float32)
            data.append(CachedSample(lat.float().cpu(), captions.index(s.caption), time_ids))
        vae.to("cpu")
    return data, texts
