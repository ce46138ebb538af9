"""Tiny W+ packs in the published layouts (csxmli2016/w-plus-adapter and omertov/encoder4editing):

- `wplus-adapter`: csxmli2016/w-plus-adapter `wplus_adapter.bin`, a torch pickle
  `{"w_proj": {proj_0..3.weight, norm.*}, "wplus_adapter": {"{i}.to_{k,v,q}_wplus.weight"}}`
  shaped for the tiny SD1.5 of `pipelines.tiny.sd15` (odd i = 1..31, as published);
- `e4e-ffhq`: `e4e_ffhq_encode.pt`, a torch pickle `{"state_dict": encoder.* (the
  IR-SE50 e4e at 1/16 width, published key names) + a few decoder.* keys,
  "opts": argparse.Namespace(...), "latent_avg": (18, 512)}`;
- `wplus-directions`: the repository's `w_direction/` files: `interfacegan_directions/
  {age,smile}.pt` ((1, 512) float32 unit vectors, torch pickles of a bare tensor),
  `latent_directions/<name>.npy` ((18, 512) float64) for the 21 published names, and
  `gan_space/ffhq_pca.pt` ({mean (1, 512), comp (80, 1, 512), std (80,)}) with
  `gan_space/ganspace_configs.csv` (tab-separated, CRLF, no header: name, pca
  index, layer start, layer end, strength) holding the 42 published names.

The W+ width (18x512) is never shrunk: it is the interface between e4e, the edits
and the adapter.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import pack

SEED_ADAPTER = 40
SEED_E4E = 41
SEED_DIRECTIONS = 42

E4E_WIDTH = 1 / 16  # channels 4/8/16/32 instead of 64/128/256/512
ADAPTER_FILE = "wplus_adapter.bin"
E4E_FILE = "e4e_ffhq_encode.pt"
INTERFACEGAN_DIRECTIONS = ("age", "smile")
LATENT_DIRECTIONS = (
    "age", "angle_horizontal", "angle_pitch", "beauty", "emotion_angry", "emotion_disgust", "emotion_easy",
    "emotion_fear", "emotion_happy", "emotion_sad", "emotion_surprise", "eyes_open", "face_shape", "gender",
    "glasses", "height", "race_black", "race_white", "race_yellow", "smile", "width",
)
# the 42 GANSpace edit names of the published ganspace_configs.csv, in its order;
# the tiny pack gives each a seeded component index and row range
GANSPACE_NAMES = (
    "frizzy_hair", "background_blur", "bald", "big_smile", "caricature_smile", "scary_eyes", "curly_hair",
    "dark_bg_shiny_hair", "dark_hair_and_light_pos", "dark_hair", "disgusted", "displeased", "eye_openness",
    "eye_wrinkles", "eyebrow_thickness", "face_roundness", "fearful_eyes", "hairline", "happy_frizzy_hair",
    "happy_elderly_lady", "head_angle_up", "huge_grin", "in_awe", "wide_smile", "large_jaw", "light_lr",
    "lipstick_and_age", "lipstick", "mascara_vs_beard", "nose_length", "elderly_woman", "overexposed",
    "screaming", "short_face", "show_front_teeth", "smile", "straight_bowl_cut", "sunlight_in_face",
    "trimmed_beard", "white_hair", "wrinkles", "boyishness",
)
PCA_COMPONENTS = 80


def ganspace_rows() -> list[tuple]:
    """(name, pca index, layer start, layer end, strength) per published name;
    the last row reaches row 17, the end of W+."""
    import random

    rng = random.Random(SEED_DIRECTIONS)
    rows = []
    for i, name in enumerate(GANSPACE_NAMES):
        start = rng.randrange(0, 17)
        end = 18 if i == len(GANSPACE_NAMES) - 1 else rng.randrange(start + 1, 19)
        rows.append((name, rng.randrange(PCA_COMPONENTS), start, end, rng.choice((-20, 10, 20))))
    return rows


def tiny_adapter_state() -> dict:
    """The nested published layout for the tiny SD1.5 UNet, random weights
    (std 0.2 on the processors so the W tokens visibly change the output)."""
    import torch

    from ..wplus.adapter import WPlusAttnProcessor, WProjModel, cross_attention_layers
    from .sd15 import CROSS_ATTENTION_DIM, build_unet

    unet = build_unet()
    torch.manual_seed(SEED_ADAPTER)
    proj = WProjModel(CROSS_ATTENTION_DIM)
    adapter = {}
    for i, _name, attn in cross_attention_layers(unet):
        proc = WPlusAttnProcessor(attn.to_q.out_features, CROSS_ATTENTION_DIM)
        for k, v in proc.state_dict().items():
            adapter[f"{i}.{k}"] = torch.randn(v.shape) * 0.2
    return {"w_proj": dict(proj.state_dict()), "wplus_adapter": adapter}


@pack("wplus-adapter", version=1)
def build_wplus_adapter(dest: Path) -> None:
    import torch

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_adapter_state(), dest / ADAPTER_FILE)


def tiny_e4e_checkpoint() -> dict:
    import torch

    from ..wplus.e4e import Encoder4Editing

    torch.manual_seed(SEED_E4E)
    enc = Encoder4Editing(width=E4E_WIDTH)
    # BatchNorm running statistics as a trained network would have them
    gen = torch.Generator().manual_seed(SEED_E4E)
    state = {}
    for k, v in enc.state_dict().items():
        if k.endswith("running_mean"):
            v = torch.randn(v.shape, generator=gen) * 0.1
        elif k.endswith("running_var"):
            v = 1.0 + torch.rand(v.shape, generator=gen) * 0.5
        state[f"encoder.{k}"] = v.clone()
    # a few keys of the StyleGAN2 generator the published file also carries
    state["decoder.style.1.weight"] = torch.randn(8, 512, generator=gen)
    state["decoder.style.1.bias"] = torch.zeros(8)
    state["decoder.input.input"] = torch.randn(1, 8, 4, 4, generator=gen)
    state["decoder.conv1.conv.weight"] = torch.randn(1, 8, 8, 3, 3, generator=gen)
    latent_avg = torch.randn(18, 512, generator=gen) * 0.5
    opts = argparse.Namespace(
        encoder_type="Encoder4Editing",
        stylegan_size=1024,
        start_from_latent_avg=True,
        input_nc=3,
        output_size=1024,
        checkpoint_path=None,
        dataset_type="ffhq_encode",
        tiny_width=E4E_WIDTH,
    )
    return {"state_dict": state, "opts": opts, "latent_avg": latent_avg}


@pack("e4e-ffhq", version=1)
def build_e4e(dest: Path) -> None:
    import torch

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_e4e_checkpoint(), dest / E4E_FILE)


@pack("wplus-directions", version=2)
def build_directions(dest: Path) -> None:
    import numpy as np
    import torch

    dest = Path(dest)
    gen = torch.Generator().manual_seed(SEED_DIRECTIONS)
    (dest / "interfacegan_directions").mkdir(parents=True, exist_ok=True)
    for name in INTERFACEGAN_DIRECTIONS:
        d = torch.randn(1, 512, generator=gen)
        torch.save(d / d.norm(), dest / "interfacegan_directions" / f"{name}.pt")
    (dest / "latent_directions").mkdir(parents=True, exist_ok=True)
    for name in LATENT_DIRECTIONS:
        arr = (torch.randn(18, 512, generator=gen) * 0.1).numpy().astype(np.float64)
        np.save(dest / "latent_directions" / f"{name}.npy", arr)
    (dest / "gan_space").mkdir(parents=True, exist_ok=True)
    comp = torch.randn(PCA_COMPONENTS, 1, 512, generator=gen)
    pca = {"mean": torch.randn(1, 512, generator=gen), "comp": comp / comp.norm(dim=-1, keepdim=True),
           "std": torch.rand(PCA_COMPONENTS, generator=gen) + 0.5}
    torch.save(pca, dest / "gan_space" / "ffhq_pca.pt")
    rows = ["\t".join(str(v) for v in row) for row in ganspace_rows()]
    (dest / "gan_space" / "ganspace_configs.csv").write_bytes(("\r\n".join(rows) + "\r\n").encode())
