"""InstantID's "enhance non-face region" in the UNet's attention: the face mask
of the current request (`FaceRegion`) and the IP-Adapter attention processors
that apply it (`install_region_processors`). The method that owns the region and
sets its box per request is pipelines/identity/instantid.py.

The reference is `region_control` in InstantX/InstantID
`ip_adapter/attention_processor.py`: the face IP-attention output is multiplied by
a 0/1 mask of the face box (the demo's int-truncated box, `clip_box`), sampled
nearest at each attention layer's token grid, so outside the face the output is
the text attention alone. IdentityNet's residuals use the same mask, bilinear to
each residual's size (`FaceRegion.residual_weight`).

Invariants:
- With the region inactive (no box set) a region processor is diffusers' own
  processor call, untouched.
- The region processors share the loaded `to_k_ip`/`to_v_ip` modules (no weight
  copy) and subclass diffusers' processors, so `unload_ip_adapter` recognises
  them and puts the defaults back.
- A box edge left of or above the canvas is clipped to 0 (the demo's numpy slice
  would wrap a negative index round to the other side).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BadInput

if TYPE_CHECKING:
    import torch


def clip_box(box, width: int, height: int) -> tuple[int, int, int, int]:
    """The demo's int-truncated face box, clipped to the canvas (x1, y1, x2, y2)."""
    x1, y1, x2, y2 = (int(v) for v in np.asarray(box, np.float64).reshape(4))
    return max(x1, 0), max(y1, 0), min(max(x2, 0), width), min(max(y2, 0), height)


class FaceRegion:
    """The current request's face mask (canvas size, 1 inside the face box, 0
    outside) and its resized copies for IdentityNet residuals and IP attention.
    Owned by the InstantID method; read by its hooks and attention processors."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None  # (H, W)
        self._cache: dict = {}

    @property
    def active(self) -> bool:
        return self.mask is not None

    def clear(self) -> None:
        self.mask = None
        self._cache = {}

    def set_box(self, box, width: int, height: int, device, dtype) -> None:
        import torch

        x1, y1, x2, y2 = clip_box(box, width, height)
        mask = torch.zeros((height, width), dtype=dtype, device=device)
        mask[y1:y2, x1:x2] = 1.0
        self.mask = mask
        self._cache = {}

    def residual_weight(self, residual):
        """The mask bilinear-resized to a residual's (h, w), in its dtype/device."""
        import torch.nn.functional as F

        key = ("res", tuple(residual.shape[-2:]), residual.dtype, residual.device)
        if key not in self._cache:
            m = self.mask[None, None].to(device=residual.device, dtype=residual.dtype)
            self._cache[key] = F.interpolate(m, size=tuple(residual.shape[-2:]), mode="bilinear")
        return self._cache[key]

    def attention_mask(self, n_queries: int, device, dtype):
        """The mask at an attention layer's token grid, flattened (1, n, 1): nearest
        sampling at the ratio sqrt(H*W / n), as the reference `region_control`."""
        import torch.nn.functional as F

        key = ("attn", n_queries, dtype, device)
        if key not in self._cache:
            mask = self.mask
            assert mask is not None  # read only while the region is active
            h, w = mask.shape
            m = mask[None, None].to(device=device, dtype=dtype)
            ratio = (h * w / n_queries) ** 0.5
            grid = F.interpolate(m, scale_factor=1 / ratio, mode="nearest")
            if grid.numel() != n_queries:  # a canvas whose grid rounds differently
                grid = F.interpolate(m, size=_token_grid(h, w, n_queries), mode="nearest")
            self._cache[key] = grid.reshape(1, -1, 1)
        return self._cache[key]


def _token_grid(height: int, width: int, n: int) -> tuple[int, int]:
    """The (h, w) of a UNet token grid with n tokens: the latent (1/8) halved
    (rounding up, as a stride-2 conv does) until it has n cells."""
    h, w = -(-height // 8), -(-width // 8)
    while h * w > n and (h > 1 or w > 1):
        h, w = -(-h // 2), -(-w // 2)
    if h * w != n:
        raise BadInput(f"width/height {width}x{height}: InstantID's face region finds no token grid of {n} cells; "
                       "use a multiple of 64 or enhance_face_region off.")
    return h, w


@functools.cache
def _region_class(base):
    """A subclass of a diffusers IP-Adapter attention processor that applies the
    face region to the IP part of its output.

    Region off: the processor's own call, untouched. Region on, on
    `IPAdapterAttnProcessor2_0`: one pass, as the reference `IPAttnProcessor2_0`
    with `region_control` (InstantID `ip_adapter/attention_processor.py`): the
    text attention once, each IP attention once, `scale * ip * mask` added before
    `to_out` (`_region_one_pass`). The mask is 0/1, so outside the face the output
    is the text attention alone and inside it is the processor's own output."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    one_pass = issubclass(base, IPAdapterAttnProcessor2_0)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 scale=1.0, ip_adapter_masks=None):
        call = super(cls, self).__call__
        region = self.face_region
        if region is None or not region.active:
            return call(attn, hidden_states, encoder_hidden_states, attention_mask, temb, scale, ip_adapter_masks)
        if one_pass and _one_pass_fits(attn, encoder_hidden_states):
            return _region_one_pass(self, region, attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                                    ip_adapter_masks)
        return _region_two_calls(self, call, region, attn, hidden_states, encoder_hidden_states, attention_mask,
                                 temb, scale, ip_adapter_masks)

    cls = type(f"FaceRegion{base.__name__}", (base,), {"__call__": __call__, "face_region": None})
    return cls


def _one_pass_fits(attn, encoder_hidden_states) -> bool:
    """Whether the one-pass path computes what `IPAdapterAttnProcessor2_0` does on this
    call: the (text, ip tokens) tuple the pipeline passes, and a layer without the q/k
    norms that `pipelines.attention.text_attention` applies and diffusers' IP processor
    does not (SDXL's UNet has none)."""
    return isinstance(encoder_hidden_states, tuple) and attn.norm_q is None and attn.norm_k is None


def _region_one_pass(proc, region: FaceRegion, attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                     ip_adapter_masks):
    """`IPAdapterAttnProcessor2_0.__call__` with each IP term multiplied by the face
    region at the layer's token grid (`FaceRegion.attention_mask`), in one pass:
    text attention once (`pipelines.attention.text_attention`), each adapter image's
    IP attention once (`branch_attention`), then `to_out` (`output`). The IP terms are
    diffusers' own, in its order, including its `ip_adapter_masks` weighting."""
    from diffusers.image_processor import IPAdapterMaskProcessor

    from ..attention import branch_attention, output, text_attention

    text_states, ip_states = encoder_hidden_states
    text = text_attention(attn, hidden_states, text_states, attention_mask, temb)
    hidden = text.hidden
    inside = region.attention_mask(hidden.shape[1], hidden.device, hidden.dtype)  # (1, n, 1), 0/1
    masks = _checked_ip_masks(ip_adapter_masks, proc.scale, ip_states)
    for states, scale, to_k, to_v, mask in zip(ip_states, proc.scale, proc.to_k_ip, proc.to_v_ip, masks):
        if all(s == 0 for s in (scale if isinstance(scale, list) else [scale])):
            continue  # as diffusers: an adapter at scale 0 is not computed
        if mask is None:
            ip = branch_attention(attn, text, states, to_k, to_v)
            hidden = hidden + scale * ip * inside
            continue
        scales = scale if isinstance(scale, list) else [scale] * mask.shape[1]
        for i in range(mask.shape[1]):
            ip = branch_attention(attn, text, states[:, i, :, :], to_k, to_v)
            weight = IPAdapterMaskProcessor.downsample(mask[:, i, :, :], text.batch_size, ip.shape[1], ip.shape[2])
            weight = weight.to(dtype=text.query.dtype, device=text.query.device)
            hidden = hidden + scales[i] * (ip * weight) * inside
    return output(attn, text, hidden)


def _checked_ip_masks(ip_adapter_masks, scales, ip_states) -> list:
    """diffusers' `ip_adapter_masks` handling in `IPAdapterAttnProcessor2_0.__call__`:
    one mask (or None) per adapter, each [1, images, H, W], with the same ValueErrors."""
    import torch

    if ip_adapter_masks is None:
        return [None] * len(scales)
    if not isinstance(ip_adapter_masks, list):  # diffusers' older form: [adapters, 1, H, W]
        ip_adapter_masks = list(ip_adapter_masks.unsqueeze(1))
    if not (len(ip_adapter_masks) == len(scales) == len(ip_states)):
        raise ValueError(f"Length of ip_adapter_masks array ({len(ip_adapter_masks)}) must match length of "
                         f"self.scale array ({len(scales)}) and number of ip_hidden_states ({len(ip_states)})")
    for index, (mask, scale, states) in enumerate(zip(ip_adapter_masks, scales, ip_states)):
        if mask is None:
            continue
        if not isinstance(mask, torch.Tensor) or mask.ndim != 4:
            raise ValueError("Each element of the ip_adapter_masks array should be a tensor with shape "
                             "[1, num_images_for_ip_adapter, height, width]. Please use `IPAdapterMaskProcessor` "
                             "to preprocess your mask")
        if mask.shape[1] != states.shape[1]:
            raise ValueError(f"Number of masks ({mask.shape[1]}) does not match number of ip images "
                             f"({states.shape[1]}) at index {index}")
        if isinstance(scale, list) and len(scale) != mask.shape[1]:
            raise ValueError(f"Number of masks ({mask.shape[1]}) does not match number of scales ({len(scale)}) "
                             f"at index {index}")
    return ip_adapter_masks


def _region_two_calls(proc, call, region: FaceRegion, attn, hidden_states, encoder_hidden_states, attention_mask,
                      temb, scale, ip_adapter_masks):
    """The face region from two calls of the processor's own `__call__`: with the face
    tokens, and with the IP scale at 0 (text only), picked per token. The xformers and
    pre-2.0 variants (`IPAdapterXFormersAttnProcessor`, `IPAdapterAttnProcessor`) take
    this path because their text attention is not `text_attention`'s
    `scaled_dot_product_attention`, and so does a call `_one_pass_fits` refuses; it
    costs one extra text attention per layer."""
    import torch

    args = (attn, hidden_states, encoder_hidden_states, attention_mask, temb, scale, ip_adapter_masks)
    full = call(*args)
    saved = proc.scale
    proc.scale = [0.0] * len(saved) if isinstance(saved, list) else 0.0
    try:
        text_only = call(*args)
    finally:
        proc.scale = saved
    if hidden_states.ndim == 4:
        n = hidden_states.shape[-2] * hidden_states.shape[-1]
        inside = region.attention_mask(n, full.device, full.dtype).reshape(1, 1, *hidden_states.shape[-2:])
    else:
        inside = region.attention_mask(hidden_states.shape[1], full.device, full.dtype)
    return torch.where(inside > 0, full, text_only)


def install_region_processors(unet, region: FaceRegion) -> None:
    """Replace the UNet's IP-Adapter attention processors with face-region aware
    ones of the same class family that share the loaded `to_k_ip`/`to_v_ip`
    modules (no weight copy, so device placement and offload hooks on them stay
    as they are). diffusers' `unload_ip_adapter` still recognises them (they are
    subclasses) and puts the defaults back."""
    import torch
    from diffusers.models.attention_processor import (
        IPAdapterAttnProcessor,
        IPAdapterAttnProcessor2_0,
        IPAdapterXFormersAttnProcessor,
    )

    procs = {}
    for name, proc in unet.attn_processors.items():
        if isinstance(proc, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0, IPAdapterXFormersAttnProcessor)):
            base = next(c for c in type(proc).__mro__ if c.__module__.startswith("diffusers."))
            with torch.device("meta"):  # its own projections are replaced by the loaded ones below
                new = _region_class(base)(proc.hidden_size, proc.cross_attention_dim, proc.num_tokens, proc.scale)
            new.to_k_ip, new.to_v_ip = proc.to_k_ip, proc.to_v_ip
            if hasattr(proc, "attention_op"):  # the xformers variant
                new.attention_op = proc.attention_op
            new.face_region = region
            procs[name] = new
        else:
            procs[name] = proc
    unet.set_attn_processor(procs)
