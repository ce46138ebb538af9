"""InstantID's face-region attention processor ("enhance face region"), layer by layer
on random weights: the one-pass processor gives what the old two-call composition
gave (text attention outside the face, text + scale * ip inside), with one text and
one IP attention per call; with the region off it is diffusers' own
`IPAdapterAttnProcessor2_0`, bit for bit; the xformers/pre-2.0 variants keep the
two-call path."""

from __future__ import annotations

import pytest
import torch

from pipelines.identity.instantid import FaceRegion, _region_class

CANVAS = (96, 64)  # width, height in pixels: an 8x12 token grid at 1/8
TOKENS = 12 * 8
BOX = (13.7, 9.2, 41.5, 37.9)  # x1, y1, x2, y2 pixels: not on the 8-pixel grid
DIM, TEXT_DIM, IP_TOKENS = 32, 24, 4


def _layer(four_d: bool):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    if four_d:  # a conv block's input: [B, C, h, w], group norm, residual, rescale
        return Attention(query_dim=DIM, cross_attention_dim=TEXT_DIM, heads=2, dim_head=16, norm_num_groups=4,
                         residual_connection=True, rescale_output_factor=2.0).eval()
    return Attention(query_dim=DIM, cross_attention_dim=TEXT_DIM, heads=2, dim_head=16).eval()


def _processors(base_name: str = "IPAdapterAttnProcessor2_0", scale=0.8):
    """diffusers' processor with random IP projections and the face-region one sharing them."""
    from diffusers.models import attention_processor

    base = getattr(attention_processor, base_name)
    torch.manual_seed(1)
    plain = base(DIM, TEXT_DIM, (IP_TOKENS,), scale)
    region_proc = _region_class(base)(DIM, TEXT_DIM, (IP_TOKENS,), scale)
    region_proc.to_k_ip, region_proc.to_v_ip = plain.to_k_ip, plain.to_v_ip
    region = FaceRegion()
    region.set_box(BOX, *CANVAS, "cpu", torch.float32)
    region_proc.face_region = region
    return plain, region_proc, region


def _inputs(batch: int, four_d: bool, images: int):
    g = torch.Generator().manual_seed(2)
    width, height = CANVAS
    x = torch.randn(batch, DIM, height // 8, width // 8, generator=g) if four_d else \
        torch.randn(batch, TOKENS, DIM, generator=g)
    text = torch.randn(batch, 7, TEXT_DIM, generator=g)
    ip = torch.randn(batch, images, IP_TOKENS, TEXT_DIM, generator=g)  # [B, images, tokens, dim], as the UNet gives
    return x, (text, [ip])


def _person_masks():
    """`ip_adapter_masks` for one adapter and two images: [1, 2, H, W], left and right halves."""
    width, height = CANVAS
    mask = torch.zeros(1, 2, height, width)
    mask[0, 0, :, : width // 2] = 1.0
    mask[0, 1, :, width // 2:] = 1.0
    return [mask]


def two_call_composition(proc, base, region, attn, x, states, **kw):
    """The processor this one replaces: the diffusers processor called with the face
    tokens and again at IP scale 0, picked per token by the face mask."""
    full = base.__call__(proc, attn, x, states, **kw)
    saved = proc.scale
    proc.scale = [0.0] * len(saved)
    try:
        text_only = base.__call__(proc, attn, x, states, **kw)
    finally:
        proc.scale = saved
    if x.ndim == 4:
        inside = region.attention_mask(x.shape[-2] * x.shape[-1], x.device, x.dtype).reshape(1, 1, *x.shape[-2:])
    else:
        inside = region.attention_mask(x.shape[1], x.device, x.dtype)
    return torch.where(inside > 0, full, text_only)


class _CountSDPA:
    """Counts `torch.nn.functional.scaled_dot_product_attention` calls (diffusers and
    pipelines.attention look it up on the module at call time)."""

    def __init__(self, monkeypatch):
        import torch.nn.functional as F

        self.calls = 0
        real = F.scaled_dot_product_attention

        def counted(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(F, "scaled_dot_product_attention", counted)


@pytest.mark.parametrize("four_d", [False, True], ids=["3d", "4d"])
@pytest.mark.parametrize("batch", [1, 2], ids=["no-cfg", "cfg"])
@pytest.mark.parametrize("people", [False, True], ids=["face", "ip-masks"])
def test_one_pass_equals_the_two_call_composition(four_d, batch, people):
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    attn = _layer(four_d)
    scale = [[0.7, 0.4]] if people else 0.8  # a per-image list with masks, a float without
    plain, proc, region = _processors(scale=scale)
    x, states = _inputs(batch, four_d, images=2 if people else 1)
    kw = {"ip_adapter_masks": _person_masks()} if people else {}
    with torch.no_grad():
        got = proc(attn, x, states, **kw)
        expected = two_call_composition(proc, IPAdapterAttnProcessor2_0, region, attn, x, states, **kw)
        own = plain(attn, x, states, **kw)  # diffusers, no face region
    assert got.shape == x.shape
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    # the region does something: inside the face diffusers' own output, outside not
    flat = (lambda t: t.flatten(2).transpose(1, 2)) if four_d else (lambda t: t)
    inside = region.attention_mask(TOKENS, x.device, x.dtype).reshape(-1) > 0
    assert 0 < inside.sum() < TOKENS
    assert torch.allclose(flat(got)[:, inside], flat(own)[:, inside], atol=1e-6, rtol=0)
    assert (flat(got)[:, ~inside] - flat(own)[:, ~inside]).abs().max() > 1e-4


def test_outside_the_face_is_text_attention_alone():
    from diffusers.models.attention_processor import AttnProcessor2_0

    attn = _layer(False)
    _, proc, region = _processors()
    x, states = _inputs(2, False, images=1)
    with torch.no_grad():
        got = proc(attn, x, states)
        text = AttnProcessor2_0()(attn, x, states[0])
    outside = region.attention_mask(TOKENS, x.device, x.dtype).reshape(-1) == 0
    assert outside.any()
    assert torch.allclose(got[:, outside], text[:, outside], atol=1e-6, rtol=0)


@pytest.mark.parametrize("people", [False, True], ids=["face", "ip-masks"])
def test_one_text_and_one_ip_attention_per_call(monkeypatch, people):
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    attn = _layer(False)
    scale = [[0.7, 0.4]] if people else 0.8
    _, proc, region = _processors(scale=scale)
    images = 2 if people else 1
    x, states = _inputs(2, False, images=images)
    kw = {"ip_adapter_masks": _person_masks()} if people else {}
    count = _CountSDPA(monkeypatch)
    with torch.no_grad():
        proc(attn, x, states, **kw)
        one_pass = count.calls
        count.calls = 0
        two_call_composition(proc, IPAdapterAttnProcessor2_0, region, attn, x, states, **kw)
        old = count.calls
    assert one_pass == 1 + images  # the text attention, then one IP attention per adapter image
    assert old == 2 + images  # what it replaces: a second text attention at IP scale 0


@pytest.mark.parametrize("four_d", [False, True], ids=["3d", "4d"])
def test_region_off_is_diffusers_own_processor_bit_for_bit(four_d):
    attn = _layer(four_d)
    plain, proc, region = _processors()
    x, states = _inputs(2, four_d, images=1)
    with torch.no_grad():
        expected = plain(attn, x, states)
        region.clear()
        cleared = proc(attn, x, states)
        proc.face_region = None
        unset = proc(attn, x, states)
    assert torch.equal(cleared, expected) and torch.equal(unset, expected)


def test_pre_2_0_variant_keeps_the_two_call_composition():
    """`IPAdapterAttnProcessor` (baddbmm attention, not scaled_dot_product_attention) is
    not rewritten: its region output is the two-call composition of its own calls."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor

    attn = _layer(False)
    _, proc, region = _processors("IPAdapterAttnProcessor")
    x, states = _inputs(2, False, images=1)
    with torch.no_grad():
        got = proc(attn, x, states)
        expected = two_call_composition(proc, IPAdapterAttnProcessor, region, attn, x, states)
    assert torch.equal(got, expected)


def test_bad_ip_adapter_masks_are_diffusers_errors():
    attn = _layer(False)
    _, proc, _ = _processors()
    x, states = _inputs(1, False, images=1)
    with pytest.raises(ValueError, match="Number of masks"):
        proc(attn, x, states, ip_adapter_masks=_person_masks())  # two masks, one ip image


def test_the_installed_processors_take_one_pass(make_engine, photos_dir, monkeypatch):
    """A tiny InstantID run with the face region on (the default): every IP layer of the
    UNet goes through the one-pass path, none through the two-call fallback."""
    from conftest import fast_request, generate_on_astronaut

    from pipelines.instantid import region

    calls = {"one": 0}
    one_pass = region._region_one_pass

    def counted(*args, **kwargs):
        calls["one"] += 1
        return one_pass(*args, **kwargs)

    def refused(*args, **kwargs):
        raise AssertionError("the two-call fallback ran on the SDXL UNet")

    monkeypatch.setattr(region, "_region_one_pass", counted)
    monkeypatch.setattr(region, "_region_two_calls", refused)
    engine = make_engine("instantid-region-out")
    res = generate_on_astronaut(engine, photos_dir, fast_request(method="instantid", steps=1, width=128, height=128))
    assert res.images[0].recipe["method_details"]["enhance_face_region"] is True
    layers = [p for p in engine.pipeline().unet.attn_processors.values() if type(p).__name__.startswith("FaceRegion")]
    assert layers and calls["one"] == len(layers)  # one step, CFG in one batch: one call per layer
