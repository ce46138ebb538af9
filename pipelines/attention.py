"""diffusers' `AttnProcessor2_0` (diffusers `models/attention_processor.py`), split
in two so that an identity adapter's attention processor can add its branch
between them: `text_attention` (everything up to the heads being merged) and
`output` (`to_out`, the 4-D reshape, the residual, the rescale).

Rules:
- `output(attn, text_attention(attn, ...), hidden)` with `hidden` the first
  part's own output is `AttnProcessor2_0()(attn, ...)` operation for operation,
  so an adapter at scale 0 computes exactly what diffusers does; PuLID's and the
  W+ adapter's processors (pipelines/pulid/attention.py, pipelines/wplus/adapter.py)
  are both built on it.
- Nothing here reads the adapters' weights or kwargs: what an adapter adds to
  `hidden` is the adapter's own code. `branch_attention` is the one shared step
  of such a branch (the text queries over the adapter's own tokens, with the
  adapter's key/value projections passed in).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TextAttention:
    """The attention's output before `to_out` (`hidden`, heads merged: [B, N, heads x
    head_dim]) and what an adapter branch and `output` need of the call."""

    hidden: torch.Tensor
    query: torch.Tensor  # [B, heads, N, head_dim], after norm_q
    batch_size: int
    head_dim: int
    residual: torch.Tensor
    input_shape: tuple[int, ...]  # the hidden states' shape as given (4-D for a conv block's input)


def text_attention(attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                   temb=None) -> TextAttention:
    """`AttnProcessor2_0.__call__` up to and including the merge of the heads
    (self-attention when `encoder_hidden_states` is None)."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_shape = tuple(hidden_states.shape)
    if hidden_states.ndim == 4:
        batch_size, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
    batch_size, sequence_length, _ = (
        hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
    )
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    key = attn.to_k(encoder_hidden_states)
    value = attn.to_v(encoder_hidden_states)
    inner_dim = key.shape[-1]
    head_dim = inner_dim // attn.heads
    query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    hidden = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                            is_causal=False)
    hidden = hidden.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
    hidden = hidden.to(query.dtype)
    return TextAttention(hidden, query, batch_size, head_dim, residual, input_shape)


def output(attn, text: TextAttention, hidden: torch.Tensor) -> torch.Tensor:
    """The rest of `AttnProcessor2_0.__call__` on `hidden` (the text attention's
    output plus any adapter branch): `to_out`, back to 4-D, residual, rescale."""
    hidden = attn.to_out[0](hidden)
    hidden = attn.to_out[1](hidden)
    if len(text.input_shape) == 4:
        hidden = hidden.transpose(-1, -2).reshape(*text.input_shape)
    if attn.residual_connection:
        hidden = hidden + text.residual
    return hidden / attn.rescale_output_factor


def branch_attention(attn, text: TextAttention, tokens: torch.Tensor, to_k, to_v) -> torch.Tensor:
    """The text attention's queries attending over an adapter's `tokens` ([B, ..., dim];
    any middle axes are flattened into the token axis) through the adapter's
    `to_k`/`to_v`, heads merged as `hidden`, in the query's dtype: the IP part of
    diffusers' `IPAdapterAttnProcessor2_0` (`models/attention_processor.py`), operation
    for operation. `text.query` is taken after `norm_q`; diffusers' IP processors
    apply neither `norm_q` nor `norm_k`, so a layer with either is not this branch."""
    batch_size, heads, head_dim = text.batch_size, attn.heads, text.head_dim
    key = to_k(tokens).view(batch_size, -1, heads, head_dim).transpose(1, 2)
    value = to_v(tokens).view(batch_size, -1, heads, head_dim).transpose(1, 2)
    hidden = F.scaled_dot_product_attention(text.query, key, value, attn_mask=None, dropout_p=0.0,
                                            is_causal=False)
    hidden = hidden.transpose(1, 2).reshape(batch_size, -1, heads * head_dim)
    return hidden.to(text.query.dtype)
