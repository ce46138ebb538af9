"""PuLID's ID attention (ToTheBeginning/PuLID `pulid/attention_processor.py`
`IDAttnProcessor2_0`), with its settings passed per call instead of the
reference's module globals `NUM_ZERO`, `ORTHO`, `ORTHO_v2` (not thread-safe).

Per cross-attention layer, after the text attention `h = SDPA(q, k_text, v_text)`
(diffusers' `AttnProcessor2_0`, unchanged):

- the ID tokens `e` get `num_zero` zero tokens appended; `id_to_k`/`id_to_v` have
  no bias, so these are zero keys (logit 0) and zero values: they dilute the
  attention on purpose;
- `i = SDPA(q, id_to_k(e), id_to_v(e))` with the layer's own heads;
- ortho "off": `h + s·i`;
- ortho "v1" (float32): `proj = (Σ_N h·i / Σ_N h·h)·h`, sums over the spatial
  tokens (dim -2) per channel; `h + s·(i − proj)`;
- ortho "v2" (float32): `w = mean over heads of softmax(q·k_idᵀ)` with unscaled
  logits over all ID tokens (zero ones included), `α = Σ of w over the first 5
  tokens`; `h + s·(i + (α − 1)·proj)`.

One deviation: where a channel of the text attention is zero at every spatial
token, the reference's projection is 0/0 (a NaN image); here it is zero.

The ID embedding must have the UNet call's batch (PuLID's batch-1 quirk, where
a [2, T, C] embedding is silently viewed as one long sequence at guidance <= 1,
is refused instead). Without an embedding, or at scale 0, the layer is exactly
diffusers' `AttnProcessor2_0`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import output, text_attention

ORTHO_MODES = ("off", "v1", "v2")


class SelfAttnProcessor:
    """attn1: diffusers' `AttnProcessor2_0`, tolerating (and ignoring) PuLID's
    cross-attention kwargs, so diffusers neither warns nor drops them per call."""

    def __init__(self):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self._plain = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 id_embedding=None, id_scale=1.0, num_zero=0, ortho="off"):
        return self._plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class IDAttnProcessor(nn.Module):
    """attn2 with the ID branch; `id_to_k`/`id_to_v` are the published
    `id_adapter_attn_layers.<i>.id_to_{k,v}.weight` (no bias)."""

    def __init__(self, hidden_size: int, cross_attention_dim: int):
        super().__init__()
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.id_to_k = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.id_to_v = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self._plain = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 id_embedding=None, id_scale=1.0, num_zero=0, ortho="off"):
        if id_embedding is None or id_scale == 0:
            return self._plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if ortho not in ORTHO_MODES:
            raise ValueError(f"ortho {ortho!r}: one of {', '.join(ORTHO_MODES)}")
        batch_size = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape[0]
        if id_embedding.shape[0] != batch_size:
            raise ValueError(f"PuLID id_embedding has batch {id_embedding.shape[0]}, the UNet call {batch_size}")
        text = text_attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        hidden = text.hidden + self._id_branch(text.query, text.hidden, id_embedding, float(id_scale),
                                               int(num_zero), ortho, attn.heads, text.head_dim)
        return output(attn, text, hidden)

    def _id_branch(self, query, text_hidden, id_embedding, scale, num_zero, ortho, heads, head_dim):
        """What the ID tokens add to the text attention's output (before to_out)."""
        b = query.shape[0]
        emb = id_embedding.to(self.id_to_k.weight.dtype)
        if num_zero > 0:
            emb = torch.cat([emb, emb.new_zeros(b, num_zero, emb.shape[-1])], dim=1)
        id_key = self.id_to_k(emb).to(query.dtype).view(b, -1, heads, head_dim).transpose(1, 2)
        id_value = self.id_to_v(emb).to(query.dtype).view(b, -1, heads, head_dim).transpose(1, 2)
        id_hidden = F.scaled_dot_product_attention(query, id_key, id_value, attn_mask=None, dropout_p=0.0,
                                                   is_causal=False)
        id_hidden = id_hidden.transpose(1, 2).reshape(b, -1, heads * head_dim).to(query.dtype)
        if ortho == "off":
            return scale * id_hidden
        h32, i32 = text_hidden.to(torch.float32), id_hidden.to(torch.float32)
        den = (h32 * h32).sum(dim=-2, keepdim=True)
        # a channel the text attention leaves at zero everywhere (SDXL's all-zero embedding of an
        # empty negative prompt gives such rows) makes the reference divide 0 by 0 (NaN
        # image); its projection is zero instead
        ratio = torch.where(den > 0, (h32 * i32).sum(dim=-2, keepdim=True) / den.clamp_min(1e-30), 0.0)
        proj = ratio * h32
        if ortho == "v1":
            return (scale * (i32 - proj)).to(text_hidden.dtype)
        logits = query.to(torch.float32) @ id_key.to(torch.float32).transpose(-2, -1)  # unscaled, as the reference
        alpha = logits.softmax(dim=-1).mean(dim=1)[:, :, :5].sum(dim=-1, keepdim=True)
        return (scale * (i32 + (alpha - 1.0) * proj)).to(text_hidden.dtype)


def install(unet, state: dict[str, torch.Tensor], source: str = "PuLID weights") -> dict:
    """Replace every processor of `unet`: attn1 -> `SelfAttnProcessor`, the rest ->
    `IDAttnProcessor` loaded from `id_adapter_attn_layers.<i>.id_to_{k,v}.weight`,
    `<i>` being the processor's position in `unet.attn_processors` (PuLID's
    `nn.ModuleList(unet.attn_processors.values())`). Returns the previous
    processors, for `remove`. Missing, extra or misshapen keys are errors."""
    saved = dict(unet.attn_processors)
    cross = int(unet.config.cross_attention_dim)
    procs: dict[str, SelfAttnProcessor | IDAttnProcessor] = {}
    used: set[str] = set()
    for i, name in enumerate(saved):
        if name.endswith("attn1.processor"):
            procs[name] = SelfAttnProcessor()
            continue
        attn = unet.get_submodule(name.removesuffix(".processor"))
        proc = IDAttnProcessor(attn.to_q.out_features, cross)
        for part in ("id_to_k", "id_to_v"):
            key = f"id_adapter_attn_layers.{i}.{part}.weight"
            if key not in state:
                raise KeyError(f"{source} has no {key} (for {name})")
            weight = state[key]
            if tuple(weight.shape) != tuple(getattr(proc, part).weight.shape):
                raise ValueError(f"{source}: {key} is {tuple(weight.shape)}, this UNet needs "
                                 f"{tuple(getattr(proc, part).weight.shape)}")
            getattr(proc, part).weight.data.copy_(weight)
            used.add(key)
        procs[name] = proc.to(device=unet.device)  # float32, as the reference's id processors
    extra = sorted(k for k in state if k.startswith("id_adapter_attn_layers.") and k not in used)
    if extra:
        raise ValueError(f"{source} has ID attention weights this UNet has no layer for: {', '.join(extra[:3])}")
    unet.set_attn_processor(procs)
    return saved


def remove(unet, saved: dict) -> None:
    unet.set_attn_processor(saved)
