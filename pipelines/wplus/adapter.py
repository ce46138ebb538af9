"""The W+ adapter on a diffusers UNet: `WProjModel` (W+ 18x512 -> 4 tokens) and
the residual cross-attention processors, in the published `wplus_adapter.bin`
layout:

    w_proj:        proj_0/1/2.weight [cad, 4*512], proj_3.weight [cad, 6*512], norm.{weight,bias} [cad]
    wplus_adapter: {i}.to_k_wplus.weight [h, cad], {i}.to_v_wplus.weight [h, cad],
                   {i}.to_q_wplus.weight [h, h]

where i is the position of a cross-attention processor in `unet.attn_processors`
(odd 1..31 for SD1.5; odd 1..139 for SDXL) and cad the UNet's cross-attention
dim (768 SD1.5, 2048 SDXL). Indices are computed from the UNet, never hard-coded.

How the tokens reach the processors: the same route diffusers uses for
IP-Adapter. `install_wplus` puts the `WProjModel` in `unet.encoder_hid_proj`
(a `MultiIPAdapterImageProjection`) and sets `encoder_hid_dim_type =
"ip_image_proj"`, so the pipeline's `ip_adapter_image_embeds=[w]` (w: (2, 1, 18,
512) = [zeros, W+] with CFG) is projected inside the UNet and each processor
receives `(text_states, [w_tokens])`. This equals the published model, which
appends the 4 tokens to the prompt embeddings and splits them off again in the
processor ("the last 4 tokens"), but keeps them out of any ControlNet and lets
the pipeline handle CFG and `num_images_per_prompt`. The unconditional tokens
are `w_proj(zeros)`, as published.

Processor maths (residual cross-attention): h = softmax(q k_text) v_text (before
`to_out`); h_w = attention(to_q_wplus(h), to_k_wplus(w), to_v_wplus(w)) with the
same heads; h = h + scale * h_w; then `to_out`. At scale 0 the W branch is not
computed, so the output is the base UNet's exactly.

`remove_wplus` puts back the very processor objects and projection that were
there before, so the UNet is exactly as before `install_wplus`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import output, text_attention
from ..errors import ModelError
from .weights import load_strict

W_ROWS, W_DIM = 18, 512
GROUPS = ((0, 4), (4, 8), (8, 12), (12, 18))  # W+ rows per token (coarse -> fine)
NUM_TOKENS = len(GROUPS)
DEFAULT_DELAY = 0.2  # start_embed_step_ratio 20 (%) of the published demo (delayed conditioning)
START_STEP_CAP = 30  # the published pipeline caps start_embed_step at 30


class WProjModel(nn.Module):
    """W+ (B, 18, 512) -> (B, 4, cross_attention_dim): each row group flattened and
    projected by its own bias-free linear layer, then one shared LayerNorm."""

    def __init__(self, cross_attention_dim: int = 768, w_dim: int = W_DIM):
        super().__init__()
        self.cross_attention_dim = cross_attention_dim
        for k, (a, b) in enumerate(GROUPS):
            self.add_module(f"proj_{k}", nn.Linear(w_dim * (b - a), cross_attention_dim, bias=False))
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if w.ndim != 3 or w.shape[1] != W_ROWS:
            raise ValueError(f"W+ latents must be (batch, 18, 512), got {tuple(w.shape)}")
        tokens = [getattr(self, f"proj_{k}")(w[:, a:b].reshape(w.shape[0], -1)) for k, (a, b) in enumerate(GROUPS)]
        return self.norm(torch.stack(tokens, dim=1))


class WPlusAttnProcessor(nn.Module):
    """Residual cross-attention processor (published `WPlusAttnProcessor2_0`).

    Expects `encoder_hidden_states = (text_states, [w_tokens])` as produced by the
    UNet's `encoder_hid_proj`; `w_tokens` is (B, 4, cad) or (B, 1, 4, cad)."""

    def __init__(self, hidden_size: int, cross_attention_dim: int, scale: float = 1.0, num_tokens: int = NUM_TOKENS):
        super().__init__()
        self.hidden_size = hidden_size
        self.cross_attention_dim = cross_attention_dim
        self.scale = scale
        self.num_tokens = num_tokens
        self.to_k_wplus = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_wplus = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_q_wplus = nn.Linear(hidden_size, hidden_size, bias=False)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if not isinstance(encoder_hidden_states, tuple):
            raise ValueError(
                "the W+ adapter is installed but no W+ latent was passed: call the pipeline with "
                "ip_adapter_image_embeds=wplus_embeds(...)"
            )
        text_states, extra = encoder_hidden_states
        w_tokens = extra[0] if isinstance(extra, (list, tuple)) else extra

        # the text cross-attention, exactly as diffusers' AttnProcessor2_0 (pipelines/attention.py)
        text = text_attention(attn, hidden_states, text_states, attention_mask, temb)
        hidden = text.hidden
        # the W+ branch: queries come from the text-attention output
        if self.scale != 0:
            batch_size, head_dim = text.batch_size, text.head_dim
            w = w_tokens.reshape(batch_size, -1, w_tokens.shape[-1]).to(hidden.dtype)
            wq = self.to_q_wplus(hidden).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            wk = self.to_k_wplus(w).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            wv = self.to_v_wplus(w).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            h_w = F.scaled_dot_product_attention(wq, wk, wv, dropout_p=0.0, is_causal=False)
            h_w = h_w.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(text.query.dtype)
            hidden = hidden + self.scale * h_w
        return output(attn, text, hidden)


# ------------------------------------------------------------------ layout
def cross_attention_layers(unet) -> list[tuple[int, str, Any]]:
    """(index in `attn_processors` order, processor name, Attention module) for
    every cross-attention layer of `unet`."""
    out = []
    for i, name in enumerate(unet.attn_processors.keys()):
        module = unet.get_submodule(name[: -len(".processor")])
        if getattr(module, "is_cross_attention", False):
            out.append((i, name, module))
    return out


def split_state_dict(state_dict: dict, source: str = "W+ adapter") -> tuple[dict, dict]:
    """Accept the published nested layout {"w_proj": {...}, "wplus_adapter": {...}}
    or the flat safetensors layout {"w_proj.*", "wplus_adapter.*"}."""
    if "w_proj" in state_dict and "wplus_adapter" in state_dict:
        return dict(state_dict["w_proj"]), dict(state_dict["wplus_adapter"])
    proj, layers = {}, {}
    for key, t in state_dict.items():
        if key.startswith("w_proj."):
            proj[key[len("w_proj."):]] = t
        elif key.startswith("wplus_adapter."):
            layers[key[len("wplus_adapter."):]] = t
        else:
            raise ModelError(f"{source} has an unexpected key {key!r}; expected only w_proj.* and wplus_adapter.*.")
    if not proj or not layers:
        raise ModelError(f"{source} lacks {'w_proj' if not proj else 'wplus_adapter'} weights; it is not a W+ adapter.")
    return proj, layers


def flat_state_dict(w_proj: nn.Module, processors: Mapping[int, nn.Module]) -> dict[str, torch.Tensor]:
    """The published key layout, flattened for safetensors."""
    out = {f"w_proj.{k}": v for k, v in w_proj.state_dict().items()}
    for i, proc in sorted(processors.items()):
        for k, v in proc.state_dict().items():
            out[f"wplus_adapter.{i}.{k}"] = v
    return out


def load_adapter_file(path) -> dict[str, torch.Tensor]:
    """Read a W+ adapter .safetensors (flat keys) with a clear error for a bad file."""
    from pathlib import Path

    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"W+ adapter file {path} does not exist.")
    try:
        return load_file(str(path))
    except Exception as exc:
        raise ModelError(f"cannot read W+ adapter file {path}: {exc} (corrupt or truncated?).") from exc


# ------------------------------------------------------------ install/remove
@dataclass
class WPlusHandle:
    """What `install_wplus` changed, so `remove_wplus` can put it back exactly."""

    w_proj: WProjModel
    processors: dict[int, WPlusAttnProcessor]  # by attn_processors index
    original_processors: dict[str, Any]
    original_hid_proj: Any
    had_hid_type_attr: bool
    original_hid_type: Any
    scale: float = 1.0
    installed: bool = True
    extras: dict = field(default_factory=dict)

    def set_scale(self, scale: float) -> None:
        self.scale = float(scale)
        for proc in self.processors.values():
            proc.scale = self.scale

    def parameters(self):
        """The trainable adapter parameters (W projection + processors)."""
        yield from self.w_proj.parameters()
        for proc in self.processors.values():
            yield from proc.parameters()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return flat_state_dict(self.w_proj, self.processors)


def _check_free(unet, source: str) -> None:
    if getattr(unet, "encoder_hid_proj", None) is not None:
        raise ModelError(
            f"cannot install {source}: the UNet already has an image projection "
            f"({type(unet.encoder_hid_proj).__name__}); unload the other adapter first."
        )


def install_wplus(unet, state_dict: dict | None, scale: float = 1.0, source: str = "W+ adapter",
                  init_from_unet: bool = False) -> WPlusHandle:
    """Install the W+ adapter on `unet`. `state_dict`: published nested or flat
    layout. With `state_dict=None` and `init_from_unet=True`, the processors start
    from the UNet's own attn2 to_k/to_v/to_q and the projection is freshly
    initialised (the published training recipe)."""
    from diffusers.models.embeddings import MultiIPAdapterImageProjection

    _check_free(unet, source)
    cad = int(unet.config.cross_attention_dim)
    layers = cross_attention_layers(unet)
    if not layers:
        raise ModelError(f"cannot install {source}: the UNet has no cross-attention layers.")
    ref = layers[0][2].to_q.weight
    w_proj = WProjModel(cad)
    procs: dict[int, WPlusAttnProcessor] = {}
    for i, _name, attn in layers:
        inner = attn.to_q.out_features
        if attn.to_k.in_features != cad:
            raise ModelError(
                f"cannot install {source}: layer {_name} takes {attn.to_k.in_features}-d context, not {cad}."
            )
        procs[i] = WPlusAttnProcessor(inner, cad, scale=scale)

    if state_dict is not None:
        proj_sd, layer_sd = split_state_dict(state_dict, source)
        norm = proj_sd.get("norm.weight")
        if norm is None or norm.shape[0] != cad:
            got = "no norm.weight" if norm is None else f"cross-attention dim {norm.shape[0]}"
            raise ModelError(
                f"{source} was made for a different base ({got}); this UNet has cross-attention dim {cad} "
                "(SD1.5: 768, SDXL: 2048)."
            )
        load_strict(w_proj, proj_sd, f"{source} w_proj")
        wanted = {str(i) for i in procs}
        present = {k.split(".", 1)[0] for k in layer_sd}
        if present != wanted:
            raise ModelError(
                f"{source} has weights for {len(present)} attention layers, this UNet has {len(wanted)} "
                f"cross-attention layers (indices {_span(wanted)}); it was made for a different base."
            )
        for i, proc in procs.items():
            sub = {k.split(".", 1)[1]: v for k, v in layer_sd.items() if k.split(".", 1)[0] == str(i)}
            load_strict(proc, sub, f"{source} layer {i}")
    elif init_from_unet:
        with torch.no_grad():
            for i, _name, attn in layers:
                procs[i].to_k_wplus.weight.copy_(attn.to_k.weight)
                procs[i].to_v_wplus.weight.copy_(attn.to_v.weight)
                procs[i].to_q_wplus.weight.copy_(attn.to_q.weight)
    else:
        raise ValueError("install_wplus needs a state_dict or init_from_unet=True")

    w_proj.to(ref.device, ref.dtype)
    for proc in procs.values():
        proc.to(ref.device, ref.dtype)

    original = dict(unet.attn_processors)
    had_attr = "encoder_hid_dim_type" in vars(unet.config)
    handle = WPlusHandle(
        w_proj=w_proj,
        processors=procs,
        original_processors=original,
        original_hid_proj=unet.encoder_hid_proj,
        had_hid_type_attr=had_attr,
        original_hid_type=vars(unet.config).get("encoder_hid_dim_type"),
        scale=float(scale),
    )
    new = dict(original)
    names = list(original)
    for i, proc in procs.items():
        new[names[i]] = proc
    unet.set_attn_processor(new)
    unet.encoder_hid_proj = MultiIPAdapterImageProjection([w_proj])
    # diffusers' own IP-Adapter loader switches the UNet this way
    unet.config.encoder_hid_dim_type = "ip_image_proj"
    return handle


def remove_wplus(unet, handle: WPlusHandle) -> None:
    """Restore exactly what `install_wplus` replaced (idempotent)."""
    if not handle.installed:
        return
    unet.set_attn_processor(dict(handle.original_processors))
    unet.encoder_hid_proj = handle.original_hid_proj
    if handle.had_hid_type_attr:
        unet.config.encoder_hid_dim_type = handle.original_hid_type
    else:
        vars(unet.config).pop("encoder_hid_dim_type", None)
    handle.installed = False


def set_scale(handle: WPlusHandle, scale: float) -> None:
    handle.set_scale(scale)


def _span(indices) -> str:
    nums = sorted(int(i) for i in indices)
    return f"{nums[0]}..{nums[-1]}" if nums else "none"


# --------------------------------------------------------------- requests
def wplus_embeds(wplus: torch.Tensor, do_cfg: bool, dtype=None, device=None) -> list[torch.Tensor]:
    """`ip_adapter_image_embeds` for a pipeline call: [(2, 1, 18, 512)] = [zeros,
    W+] with classifier-free guidance (the unconditional tokens are w_proj(0)),
    [(1, 1, 18, 512)] without."""
    w = wplus.reshape(1, 1, W_ROWS, W_DIM)
    if do_cfg:
        w = torch.cat([torch.zeros_like(w), w])
    return [w.to(device=device, dtype=dtype)]


class DelayedScale:
    """Delayed conditioning as a `callback_on_step_end`, as the published
    pipeline does it (csxmli2016/w-plus-adapter `w_plus_adapter.py`
    `generate_idnoise` and `wplus_pipeline.py`): with `start_embed_step =
    min(int(ratio / 100 * N), 30)` (ratio 20 by default), the adapter runs at
    scale 0 while the step index i <= start_embed_step and at `scale` after.
    So the first int(0.2 N) + 1 steps are unconditioned: 7 of 30, 1 of 4, and
    the single step of N = 1. (The published code prints one step fewer than it
    runs; the code is what counts. Its cap of 30 steps is kept too.)

    The published pipeline switches before each UNet call; a step-end callback
    sets the scale for the *next* step, so `start()` (called when the request is
    built) sets the scale of step 0, and the callback after the last step
    restores that starting state, so repeated calls (several images per request)
    each get the same schedule. `then` chains another callback."""

    def __init__(self, handle: WPlusHandle, scale: float, steps: int, delay: float = DEFAULT_DELAY, then=None):
        self.handle = handle
        self.scale = float(scale)
        self.steps = int(steps)
        self.delay = float(delay)
        self.then = then
        self.start()

    def delayed_steps(self, total: int) -> int:
        """How many steps run at scale 0 (i <= start_embed_step)."""
        ratio = round(self.delay * 100, 6)  # the published percentage, e.g. 20
        start_embed_step = min(int(float(ratio) / 100 * total), START_STEP_CAP)
        return start_embed_step + 1

    def scale_at(self, step: int, total: int) -> float:
        return 0.0 if step < self.delayed_steps(total) else self.scale

    def start(self) -> None:
        self.handle.set_scale(self.scale_at(0, self.steps))

    def __call__(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        total = int(getattr(pipe, "num_timesteps", None) or self.steps)
        nxt = step + 1
        self.handle.set_scale(self.scale_at(nxt if nxt < total else 0, total))
        if self.then is not None:
            callback_kwargs = self.then(pipe, step, timestep, callback_kwargs)
        return callback_kwargs
