"""pipelines/attention.py: the two halves of diffusers' AttnProcessor2_0 that the
PuLID and W+ processors wrap their branches in give diffusers' own output, bit
for bit, on the layer shapes a UNet has (cross- and self-attention, a 4-D conv
input with group norm, an attention mask, a residual with rescale)."""

from __future__ import annotations

import pytest
import torch

from pipelines.attention import output, text_attention


def _attention(**kw):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    return Attention(query_dim=32, heads=2, dim_head=16, **kw).eval()


@pytest.mark.parametrize("case", ["cross", "self", "conv-4d", "mask"])
def test_the_halves_are_diffusers_attnprocessor2_0(case):
    from diffusers.models.attention_processor import AttnProcessor2_0

    g = torch.Generator().manual_seed(1)
    text = torch.randn(2, 7, 24, generator=g)
    args: dict = {"encoder_hidden_states": text}
    if case == "cross":
        attn = _attention(cross_attention_dim=24, cross_attention_norm="layer_norm", qk_norm="layer_norm")
        x = torch.randn(2, 16, 32, generator=g)
    elif case == "self":
        attn, x, args = _attention(), torch.randn(2, 16, 32, generator=g), {}
    elif case == "conv-4d":
        attn = _attention(norm_num_groups=4, residual_connection=True, rescale_output_factor=2.0)
        x, args = torch.randn(2, 32, 4, 4, generator=g), {}
    else:
        attn, x = _attention(cross_attention_dim=24), torch.randn(2, 16, 32, generator=g)
        mask = torch.ones(2, 1, 7)
        mask[:, :, 5:] = -10000.0
        args["attention_mask"] = mask
    with torch.no_grad():
        expected = AttnProcessor2_0()(attn, x, **args)
        text_part = text_attention(attn, x, **args)
        got = output(attn, text_part, text_part.hidden)
    assert got.shape == x.shape
    assert torch.equal(got, expected)
    assert text_part.query.shape[:2] == (2, 2) and text_part.head_dim == 16
