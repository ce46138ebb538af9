"""Tiny identity-adapter packs in the published key layouts (as diffusers' loaders/ip_adapter.py reads them), sized for
the tiny SDXL of `pipelines.tiny.sdxl`:

- `faceid-plusv2-sdxl`: h94/IP-Adapter-FaceID `ip-adapter-faceid-plusv2_sdxl.bin`,
  a float16 torch pickle `{"image_proj": ..., "ip_adapter": ...}`;
- `clip-vision`: h94/IP-Adapter `models/image_encoder` (a tiny stand-in for OpenCLIP
  ViT-H/14; same image size and patch size, float32 like the published file);
- `instantid`: InstantX/InstantID `ip-adapter.bin` (float32 pickle) and the
  IdentityNet `ControlNetModel/` (float16).

The state dicts are written key by key from the published architectures (ProjPlusModel
with its FacePerceiverResampler, the InstantID Resampler, per-processor IP/LoRA
weights), not through diffusers' classes, so loading them exercises diffusers'
converters exactly as the real files do. What stays at published size: the 512-d
insightface embedding input, 4 FaceID tokens, 16 InstantID queries, resampler depth
4, head size 64, feed-forward ratio 4, the FaceID id-projection ratio 2. Every
attention has at least two heads (diffusers reads a resampler's head count as
rows(to_q)/64, so both resamplers are 128 wide: 2 heads), so a head-order bug shows.
"""

from __future__ import annotations

from pathlib import Path

from . import pack
from .controlnet import SEED_IDENTITYNET, write_controlnet
from .sdxl import CROSS_ATTENTION_DIM, build_unet

FACEID_FILE = "ip-adapter-faceid-plusv2_sdxl.bin"
INSTANTID_FILE = "ip-adapter.bin"
IMAGE_ENCODER_DIR = "models/image_encoder"
IDENTITYNET_DIR = "ControlNetModel"

SEED_FACEID = 20
SEED_CLIP_VISION = 21
SEED_INSTANTID = 22

ID_EMBED_DIM = 512  # insightface embedding, as published
HEAD_DIM = 64  # diffusers infers resampler heads as rows / 64
RESAMPLER_DEPTH = 4
FF_MULT = 4
FACEID_TOKENS = 4
FACEID_ID_MULT = 2  # proj.0 is (512*2, 512)
FACEID_LORA_RANK = 4  # 128 in the published file
INSTANTID_QUERIES = 16
INSTANTID_DIM = 128  # Resampler width: 1280 (20 heads of 64) published, 2 heads here
CLIP_VISION_WIDTH = 32  # the resampler's proj_in input = CLIP hidden_states[-2] width


class _Weights:
    """Seeded tensors with the usual init scales (1/sqrt(fan_in) for linear layers,
    identity LayerNorms), so random adapters keep activations near unit size."""

    def __init__(self, seed: int, dtype):
        import torch

        self.torch = torch
        self.gen = torch.Generator().manual_seed(seed)
        self.dtype = dtype

    def randn(self, *shape, std: float = 1.0):
        return (self.torch.randn(shape, generator=self.gen) * std).to(self.dtype)

    def linear(self, sd: dict, key: str, out_f: int, in_f: int, bias: bool = True, gain: float = 1.0) -> None:
        sd[f"{key}.weight"] = self.randn(out_f, in_f, std=gain / in_f**0.5)
        if bias:
            sd[f"{key}.bias"] = self.randn(out_f, std=0.01)

    def layer_norm(self, sd: dict, key: str, dim: int) -> None:
        sd[f"{key}.weight"] = self.torch.ones(dim, dtype=self.dtype)
        sd[f"{key}.bias"] = self.torch.zeros(dim, dtype=self.dtype)


def _perceiver_layers(w: _Weights, sd: dict, prefix: str, dim: int) -> None:
    """`layers.{i}.0` = PerceiverAttention (norm1 on the features, norm2 on the
    latents, bias-free to_q / to_kv / to_out), `layers.{i}.1` = LayerNorm, Linear,
    GELU, Linear (bias-free)."""
    heads = max(1, dim // HEAD_DIM)
    inner = heads * HEAD_DIM
    for i in range(RESAMPLER_DEPTH):
        p = f"{prefix}layers.{i}"
        w.layer_norm(sd, f"{p}.0.norm1", dim)
        w.layer_norm(sd, f"{p}.0.norm2", dim)
        w.linear(sd, f"{p}.0.to_q", inner, dim, bias=False)
        w.linear(sd, f"{p}.0.to_kv", 2 * inner, dim, bias=False)
        w.linear(sd, f"{p}.0.to_out", dim, inner, bias=False)
        w.layer_norm(sd, f"{p}.1.0", dim)
        w.linear(sd, f"{p}.1.1", dim * FF_MULT, dim, bias=False)
        w.linear(sd, f"{p}.1.3", dim, dim * FF_MULT, bias=False)


def attention_processor_layout(unet=None) -> list[dict]:
    """For each entry of `unet.attn_processors`, in order (its index is the key
    prefix of published IP-Adapter files): name, hidden size, key/value input width,
    and whether it is cross-attention (attn2)."""
    unet = unet if unet is not None else build_unet()
    modules = dict(unet.named_modules())
    layout = []
    for i, name in enumerate(unet.attn_processors):
        attn = modules[name.removesuffix(".processor")]
        layout.append(
            {
                "index": i,
                "name": name,
                "hidden": attn.to_q.in_features,
                "kv_in": attn.to_k.in_features,
                "cross": name.endswith("attn2.processor"),
            }
        )
    return layout


def _ip_kv(w: _Weights, sd: dict, i: int, hidden: int, cad: int) -> None:
    w.linear(sd, f"{i}.to_k_ip", hidden, cad, bias=False)
    w.linear(sd, f"{i}.to_v_ip", hidden, cad, bias=False)


def faceid_plusv2_state_dict(*, weights=None, layout=None, cad: int = CROSS_ATTENTION_DIM,
                             clip_width: int = CLIP_VISION_WIDTH, lora_rank: int = FACEID_LORA_RANK) -> dict:
    """`{"image_proj", "ip_adapter"}` of IP-Adapter FaceID Plus v2 SDXL, float16.
    Tiny sizes by default; the full-size benchmark passes the published ones."""
    import torch

    w = weights if weights is not None else _Weights(SEED_FACEID, torch.float16)
    proj: dict = {}
    w.linear(proj, "proj.0", ID_EMBED_DIM * FACEID_ID_MULT, ID_EMBED_DIM)
    w.linear(proj, "proj.2", cad * FACEID_TOKENS, ID_EMBED_DIM * FACEID_ID_MULT)
    w.layer_norm(proj, "norm", cad)
    r = "perceiver_resampler."
    w.linear(proj, f"{r}proj_in", cad, clip_width)
    w.linear(proj, f"{r}proj_out", cad, cad)
    w.layer_norm(proj, f"{r}norm_out", cad)
    _perceiver_layers(w, proj, r, cad)

    ip: dict = {}
    rank = lora_rank
    for a in (layout if layout is not None else attention_processor_layout()):
        i, h = a["index"], a["hidden"]
        # LoRALinearLayer: down (rank, in), up (out, rank); small ups, like a trained LoRA
        for name, in_f in (("to_q", h), ("to_k", a["kv_in"]), ("to_v", a["kv_in"]), ("to_out", h)):
            w.linear(ip, f"{i}.{name}_lora.down", rank, in_f, bias=False)
            w.linear(ip, f"{i}.{name}_lora.up", h, rank, bias=False, gain=0.2)
        if a["cross"]:
            _ip_kv(w, ip, i, h, cad)
    return {"image_proj": proj, "ip_adapter": ip}


def instantid_state_dict(*, weights=None, layout=None, cad: int = CROSS_ATTENTION_DIM,
                         dim: int = INSTANTID_DIM) -> dict:
    """`{"image_proj", "ip_adapter"}` of InstantID's ip-adapter.bin, float32:
    the face Resampler (16 queries over the 512-d antelopev2 embedding) and the
    to_k_ip / to_v_ip of every cross-attention processor (odd indices)."""
    import torch

    w = weights if weights is not None else _Weights(SEED_INSTANTID, torch.float32)
    proj: dict = {"latents": w.randn(1, INSTANTID_QUERIES, dim, std=dim**-0.5)}
    w.linear(proj, "proj_in", dim, ID_EMBED_DIM)
    w.linear(proj, "proj_out", cad, dim)
    w.layer_norm(proj, "norm_out", cad)
    _perceiver_layers(w, proj, "", dim)

    ip: dict = {}
    for a in (layout if layout is not None else attention_processor_layout()):
        if a["cross"]:
            _ip_kv(w, ip, a["index"], a["hidden"], cad)
    return {"image_proj": proj, "ip_adapter": ip}


def _torch_save(obj, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)


def clip_vision_config() -> dict:
    """CLIPVisionConfig kwargs: ViT-H/14's image and patch size, tiny width/depth."""
    return {
        "hidden_size": CLIP_VISION_WIDTH,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 3,
        "image_size": 224,
        "patch_size": 14,
        "projection_dim": 32,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
    }


def build_clip_vision():
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(SEED_CLIP_VISION)
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_vision_config())).eval()


@pack("faceid-plusv2-sdxl", version=2)
def build_faceid_plusv2(dest: Path) -> None:
    _torch_save(faceid_plusv2_state_dict(), Path(dest) / FACEID_FILE)


@pack("clip-vision", version=1)
def build_clip_vision_pack(dest: Path) -> None:
    build_clip_vision().save_pretrained(Path(dest) / IMAGE_ENCODER_DIR, safe_serialization=True)


@pack("instantid", version=3)
def build_instantid(dest: Path) -> None:
    dest = Path(dest)
    _torch_save(instantid_state_dict(), dest / INSTANTID_FILE)
    write_controlnet(dest / IDENTITYNET_DIR, SEED_IDENTITYNET)
