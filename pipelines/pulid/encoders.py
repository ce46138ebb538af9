"""PuLID's ID encoders, with the published key names (`id_adapter.*` in the
checkpoints) and the widths as parameters (the reference hard-codes 1280 = 512
ArcFace + 768 EVA-CLIP, and 1024 for the ViT width and the mapping MLPs; the
tiny packs need them smaller).

`IDFormer` (v1.1, ToTheBeginning/PuLID `pulid/encoders_transformer.py`): 32
learned queries + 5 ID tokens per photo from the ID embedding; for each of the
5 EVA-CLIP hidden states (all tokens, CLS included) `mapping_i` makes context
tokens, and `depth / 5` perceiver layers attend over [ID tokens, context,
latents] with q and k each scaled by dim_head^-1/4 and the softmax in float32;
the first 32 latents times `proj_out` are the output.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

N_VIT_SCALES = 5  # EVA hidden states consumed (before blocks 4, 8, 12, 16, 20)


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """Linear, LN, LeakyReLU, Linear, LN, LeakyReLU, Linear: keys .0 .1 .3 .4 .6."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.LayerNorm(d_hidden), nn.LeakyReLU(),
                         nn.Linear(d_hidden, d_hidden), nn.LayerNorm(d_hidden), nn.LeakyReLU(),
                         nn.Linear(d_hidden, d_out))


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    """LN, Linear (no bias), GELU, Linear (no bias): keys .0 .1 .3."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


class PerceiverAttention(nn.Module):
    """Latents attend over cat(norm1(context), norm2(latents))."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        inner = dim_head * heads
        self.dim_head, self.heads = dim_head, heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, context: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        context = self.norm1(context)
        latents = self.norm2(latents)
        b, n, _ = latents.shape
        q = self._heads(self.to_q(latents))
        k, v = self.to_kv(torch.cat((context, latents), dim=-2)).chunk(2, dim=-1)
        k, v = self._heads(k), self._heads(v)
        s = 1 / math.sqrt(math.sqrt(self.dim_head))
        w = (q * s) @ (k * s).transpose(-2, -1)
        w = torch.softmax(w.float(), dim=-1).type(w.dtype)
        return self.to_out((w @ v).permute(0, 2, 1, 3).reshape(b, n, -1))


class IDFormer(nn.Module):
    def __init__(self, dim: int = 1024, depth: int = 10, dim_head: int = 64, heads: int = 16,
                 num_id_token: int = 5, num_queries: int = 32, output_dim: int = 2048, ff_mult: int = 4,
                 id_dim: int = 1280, vit_dim: int = 1024, map_dim: int = 1024):
        super().__init__()
        if depth % N_VIT_SCALES:
            raise ValueError(f"IDFormer depth {depth} must be a multiple of {N_VIT_SCALES}")
        self.dim, self.num_id_token, self.num_queries = dim, num_id_token, num_queries
        self.per_scale = depth // N_VIT_SCALES
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) * dim ** -0.5)
        self.proj_out = nn.Parameter(torch.randn(dim, output_dim) * dim ** -0.5)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), _feed_forward(dim, ff_mult)])
            for _ in range(depth))
        for i in range(N_VIT_SCALES):
            setattr(self, f"mapping_{i}", _mlp(vit_dim, map_dim, dim))
        self.id_embedding_mapping = _mlp(id_dim, map_dim, dim * num_id_token)

    def forward(self, id_cond: torch.Tensor, vit_hidden: list[torch.Tensor]) -> torch.Tensor:
        """`id_cond` [B, id_dim] (one photo) or [B, n, id_dim] (n photos); `vit_hidden`
        5 x [B, tokens, vit_dim]. Returns [B, num_queries, output_dim]."""
        latents = self.latents.repeat(id_cond.shape[0], 1, 1)
        photos = id_cond.shape[1] if id_cond.ndim == 3 else 1
        x = self.id_embedding_mapping(id_cond).reshape(-1, self.num_id_token * photos, self.dim)
        latents = torch.cat((latents, x), dim=1)
        for i in range(N_VIT_SCALES):
            context = torch.cat((x, getattr(self, f"mapping_{i}")(vit_hidden[i])), dim=1)
            for layer in self.layers[i * self.per_scale:(i + 1) * self.per_scale]:
                attn, ff = cast(nn.ModuleList, layer)  # ModuleList([attn, ff]); torch types its items as Module
                latents = attn(context, latents) + latents
                latents = ff(latents) + latents
        return latents[:, :self.num_queries] @ self.proj_out


def idformer_config_from_state(state: dict[str, torch.Tensor], prefix: str = "id_adapter.") -> dict:
    """IDFormer widths read from a checkpoint's shapes (published or tiny)."""
    g = lambda k: state[prefix + k]  # noqa: E731
    num_queries, dim = g("latents").shape[1:]
    output_dim = g("proj_out").shape[1]
    depth = 1 + max(int(k[len(prefix):].split(".")[1]) for k in state if k.startswith(prefix + "layers."))
    inner = g("layers.0.0.to_q.weight").shape[0]
    map_dim, vit_dim = g("mapping_0.0.weight").shape
    id_dim = g("id_embedding_mapping.0.weight").shape[1]
    num_id_token = g("id_embedding_mapping.6.weight").shape[0] // dim
    ff_mult = g("layers.0.1.1.weight").shape[0] // dim
    return dict(dim=dim, depth=depth, num_queries=num_queries, output_dim=output_dim, map_dim=map_dim,
                vit_dim=vit_dim, id_dim=id_dim, num_id_token=num_id_token, ff_mult=ff_mult,
                dim_head=64, heads=inner // 64)  # heads of 64, as published (16 x 64)


class IDEncoder(nn.Module):
    """PuLID v1's ID encoder (ToTheBeginning/PuLID `pulid/encoders.py`), keys
    `body.*`, `mapping_{i}.*`, `mapping_patch_{i}.*`: `body` makes `num_token`
    tokens from the ID embedding; per ViT scale, the CLS token through `mapping_i`
    plus the mean of the patch tokens through `mapping_patch_i` makes one more.
    Output [B, num_token + 5, context_dim]."""

    def __init__(self, id_dim: int = 1280, context_dim: int = 2048, num_token: int = 5, vit_dim: int = 1024,
                 map_dim: int = 1024):
        super().__init__()
        self.num_token, self.context_dim = num_token, context_dim
        h1 = min(context_dim * num_token // 4, 1024)
        h2 = min(context_dim * num_token // 2, 1024)
        self.body = nn.Sequential(nn.Linear(id_dim, h1), nn.LayerNorm(h1), nn.LeakyReLU(),
                                  nn.Linear(h1, h2), nn.LayerNorm(h2), nn.LeakyReLU(),
                                  nn.Linear(h2, context_dim * num_token))
        for i in range(N_VIT_SCALES):
            setattr(self, f"mapping_{i}", _mlp(vit_dim, map_dim, context_dim))
            setattr(self, f"mapping_patch_{i}", _mlp(vit_dim, map_dim, context_dim))

    def forward(self, id_cond: torch.Tensor, vit_hidden: list[torch.Tensor]) -> torch.Tensor:
        x = self.body(id_cond).reshape(-1, self.num_token, self.context_dim)
        scales = [getattr(self, f"mapping_{i}")(h[:, :1]) + getattr(self, f"mapping_patch_{i}")(h[:, 1:]).mean(
            dim=1, keepdim=True) for i, h in enumerate(vit_hidden)]
        return torch.cat([x, *scales], dim=1)


def id_encoder_from_state(state: dict[str, torch.Tensor], prefix: str = "id_adapter.") -> nn.Module:
    """The checkpoint's ID encoder (IDFormer for v1.1, IDEncoder for v1), sized from
    its shapes and loaded strictly."""
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    net: nn.Module
    if "latents" in own:
        cfg = idformer_config_from_state(state, prefix)
        net = IDFormer(**cfg)
    elif "body.0.weight" in own:
        context_dim = own["mapping_0.6.weight"].shape[0]
        map_dim, vit_dim = own["mapping_0.0.weight"].shape
        net = IDEncoder(id_dim=own["body.0.weight"].shape[1], context_dim=context_dim,
                        num_token=own["body.6.weight"].shape[0] // context_dim, vit_dim=vit_dim, map_dim=map_dim)
    else:
        raise KeyError(f"no {prefix}latents (IDFormer) or {prefix}body.0.weight (IDEncoder)")
    net.load_state_dict(own, strict=True)
    return net.eval()
