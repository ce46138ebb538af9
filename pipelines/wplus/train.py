"""Train a W+ adapter for a base that has no published weights (SDXL), or
retrain one for SD1.5, on a folder of face photos.

Only the adapter learns (the W projection and the to_{k,v,q}_wplus layers); the
base UNet, VAE and text encoders stay frozen. Recipe as published (stage 1):
processors start from the UNet's own attn2 to_k/to_v/to_q, AdamW lr 1e-4 weight
decay 0.01, epsilon-prediction MSE, captions from "a photo of a face"-style
templates, and 5 % of samples drop the W+ latent (zeros -> w_proj(0), the
unconditional tokens), 5 % drop the text, 5 % drop both, so classifier-free
guidance works at inference.

Each face's W+ latent is computed from the face as the published pipeline
prepares it (`script/ProcessWildImage.py`: 512² FFHQ crop, background and
clothes whitened by the ParseNet face parser, 256² to e4e), the same
preparation the W+ method applies at inference.

Everything that does not change during training is computed once up front: the
W+ latent and VAE latent of every face and the text embedding of every caption;
then the VAE, text encoders and e4e are released and only the UNet runs.

The result is a .safetensors with the flat published keys (`w_proj.*`,
`wplus_adapter.{i}.*`), written atomically; `install_wplus` loads it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInput, Cancelled, LikenessError
from ..models.bases import DEFAULT_BASE
from ..profile import profile_of
from .align import MIN_FACE_PX, align_face
from .parsing import PARSE_SIZE

BASES = DEFAULT_BASE  # family -> the catalog base trained on
E4E_MODEL, E4E_FILE = "e4e-ffhq", "e4e_ffhq_encode.pt"
PARSER_MODEL, PARSER_FILE = "parsenet-psfrgan", "parse_multi_iter_90000.pth"
PHOTO_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
TEMPLATES = (
    "{}", "a {}", "a photo of a {}", "a cropped photo of a {}", "the photo of a {}",
    "a close-up photo of a {}", "a good photo of a {}", "a photography of a {}",
)
DROP_W, DROP_TEXT, DROP_BOTH = 0.05, 0.05, 0.05
DEFAULT_RESOLUTION = {"sd15": 512, "sdxl": 1024}


@dataclass
class TrainResult:
    path: Path
    steps: int
    losses: list[float]
    used: list[str]
    excluded: list[dict] = field(default_factory=list)


def _photo_files(faces_dir: Path) -> list[Path]:
    if not faces_dir.is_dir():
        raise BadInput(f"faces folder {faces_dir} does not exist or is not a folder.")
    files = sorted(p for p in faces_dir.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
    if not files:
        raise BadInput(f"faces folder {faces_dir} has no photos ({', '.join(sorted(PHOTO_SUFFIXES))}).")
    return files


def collect_faces(faces_dir: Path | str, settings, analyzer=None, aligned: bool = False,
                  min_face_px: float = MIN_FACE_PX) -> tuple[list[tuple[str, np.ndarray]], list[dict]]:
    """FFHQ-aligned 512² crops of the usable photos in `faces_dir`, plus the
    excluded ones with their reasons. `aligned=True`: the photos already are
    FFHQ-aligned face crops (no detection; resized to 512² bilinearly, as the
    published script does). Otherwise `analyzer.detect` finds
    the face; photos with no face, several faces or a face under `min_face_px`
    are excluded."""
    from ..imageio import load_photo_array

    used: list[tuple[str, np.ndarray]] = []
    excluded: list[dict] = []
    for path in _photo_files(Path(faces_dir)):
        src = str(path)
        try:
            rgb = load_photo_array(path, max_pixels=settings.max_image_pixels, max_side=settings.max_photo_side)
        except BadInput as exc:
            excluded.append({"file": src, "reason": str(exc)})
            continue
        if aligned:
            from PIL import Image

            size = (PARSE_SIZE, PARSE_SIZE)
            used.append((src, np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))))
            continue
        faces = analyzer.detect(rgb, src)
        if not faces:
            excluded.append({"file": src, "reason": "no face found"})
            continue
        if len(faces) > 1:
            excluded.append({"file": src, "reason": f"{len(faces)} faces found; use photos of one person"})
            continue
        crop = align_face(rgb, faces[0].kps, size=PARSE_SIZE, min_face_px=min_face_px)
        if crop.too_small:
            reason = f"face is {crop.face_px:.0f} px wide; at least {min_face_px:.0f} px needed"
            excluded.append({"file": src, "reason": reason})
            continue
        used.append((src, crop.image))
    if not used:
        why = "; ".join(f"{e['file']}: {e['reason']}" for e in excluded[:3])
        raise BadInput(f"faces folder {faces_dir} has no usable face photo ({why}).")
    return used, excluded


def _load_base(store, base: str, dtype, device):
    from ..models.bases import load_base_pipeline

    return load_base_pipeline(store, BASES[base], dtype, family=base, purpose="W+ training").to(device)


def _encode_texts(pipe, base: str, prompts: list[str], device):
    """{prompt: (text states (1, 77, cad), extra added_cond_kwargs)}"""
    import torch

    out = {}
    with torch.no_grad():
        for p in prompts:
            if base == "sdxl":
                pe, _, pooled, _ = pipe.encode_prompt(p, device=device, num_images_per_prompt=1,
                                                      do_classifier_free_guidance=False)
                out[p] = (pe, {"text_embeds": pooled})
            else:
                pe, _ = pipe.encode_prompt(p, device, 1, False)
                out[p] = (pe, {})
    return out


def _encode_latents(pipe, crops: list[np.ndarray], resolution: int, device, seed: int):
    import cv2
    import torch

    vae = pipe.vae
    upcast = vae.dtype != torch.float32 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae = vae.to(torch.float32)
    gen = torch.Generator("cpu").manual_seed(seed)
    latents = []
    with torch.no_grad():
        for crop in crops:
            img = cv2.resize(crop, (resolution, resolution), interpolation=cv2.INTER_CUBIC)
            x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1.0
            dist = vae.encode(x.to(device, vae.dtype)).latent_dist
            noise = torch.randn(dist.mean.shape, generator=gen).to(device, dist.mean.dtype)
            z = (dist.mean + dist.std * noise) * vae.config.scaling_factor
            latents.append(z.float())
    if upcast:
        pipe.vae.to(pipe.unet.dtype)
    return torch.cat(latents)


def _encode_wplus(store, crops: list[np.ndarray], device):
    """W+ of each 512² aligned crop, whitened first (see the module docstring)."""
    import torch

    from .e4e import encode_normalized, load_e4e
    from .parsing import load_parsenet, prepare_face

    store.ensure(PARSER_MODEL)
    parser = load_parsenet(store.file_path(PARSER_MODEL, PARSER_FILE), device=device)
    x = torch.cat([prepare_face(c, parser).tensor for c in crops])
    del parser
    store.ensure(E4E_MODEL)
    encoder, avg = load_e4e(store.file_path(E4E_MODEL, E4E_FILE), device=device)
    w = encode_normalized(encoder, x, avg)
    del encoder
    return w.to(torch.float32)


def train_wplus(faces_dir: Path | str, base: str, steps: int, out_path: Path | str, store, settings, *,
                analyzer=None, aligned: bool = False, resolution: int | None = None, batch_size: int = 1,
                lr: float = 1e-4, weight_decay: float = 0.01, seed: int = 0, min_face_px: float = MIN_FACE_PX,
                progress: Callable[[dict], None] | None = None, cancel=None) -> TrainResult:
    """Train a W+ adapter on the faces in `faces_dir` for `base` ("sd15" or
    "sdxl") for `steps` optimiser steps; save it to `out_path` (.safetensors)."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from ..paths import atomic_path
    from .adapter import install_wplus, remove_wplus

    if base not in BASES:
        raise BadInput(f"base {base!r} is not supported for W+ training; choose sd15 or sdxl.")
    if not isinstance(steps, int) or not 1 <= steps <= 1_000_000:
        raise BadInput(f"steps {steps!r} is out of range; use 1 to 1000000.")
    if not 1 <= batch_size <= 64:
        raise BadInput(f"batch_size {batch_size} is out of range; use 1 to 64.")
    out_path = Path(out_path)
    if out_path.suffix != ".safetensors":
        raise BadInput(f"output {out_path} must end in .safetensors.")
    if resolution is None:
        resolution = profile_of(settings).train_resolution(DEFAULT_RESOLUTION[base])
    if resolution % 8 or not 64 <= resolution <= 2048:
        raise BadInput(f"resolution {resolution} must be a multiple of 8 from 64 to 2048.")

    device = settings.resolve_device()
    dtype = settings.resolve_dtype(device)
    if not aligned and analyzer is None:
        from ..faces.analysis import FaceAnalyzer

        analyzer = FaceAnalyzer(store, settings, "buffalo_l")
    faces, excluded = collect_faces(faces_dir, settings, analyzer, aligned, min_face_px)
    crops = [c for _, c in faces]

    rng = random.Random(seed)
    torch.manual_seed(seed)
    w_all = _encode_wplus(store, crops, device)  # (N, 18, 512) float32
    pipe = _load_base(store, base, dtype, device)
    prompts = [t.format("face") for t in TEMPLATES] + [""]
    texts = _encode_texts(pipe, base, prompts, device)
    latents = _encode_latents(pipe, crops, resolution, device, seed)
    unet = pipe.unet
    time_ids = None
    if base == "sdxl":
        te2_dim = pipe.text_encoder_2.config.projection_dim
        time_ids = pipe._get_add_time_ids((resolution, resolution), (0, 0), (resolution, resolution),
                                          dtype=torch.float32, text_encoder_projection_dim=te2_dim).to(device)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    # only the UNet is needed from here on
    pipe.vae = pipe.text_encoder = None
    if base == "sdxl":
        pipe.text_encoder_2 = None
    del pipe

    unet.requires_grad_(False)
    unet.train()  # no dropout in SD UNets; keeps gradient checkpointing active
    if device == "cuda":
        unet.enable_gradient_checkpointing()
    handle = install_wplus(unet, None, scale=1.0, source="new W+ adapter", init_from_unet=True)
    # the adapter learns in float32 whatever the base dtype (autocast below)
    handle.w_proj.float()
    for proc in handle.processors.values():
        proc.float()
    params = list(handle.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    autocast = torch.autocast(device_type="cuda" if device == "cuda" else "cpu", dtype=dtype,
                              enabled=dtype != torch.float32)
    losses: list[float] = []
    n = len(crops)
    t_max = scheduler.config.num_train_timesteps
    try:
        for step in range(steps):
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"W+ training cancelled after {step} of {steps} steps; nothing was saved.")
            idx = [rng.randrange(n) for _ in range(batch_size)]
            z0 = latents[idx]
            w = w_all[idx].clone().to(device)
            text_states, extras = [], []
            for b in range(batch_size):
                prompt = rng.choice(prompts[:-1])
                r = rng.random()
                if r < DROP_W:
                    w[b].zero_()
                elif r < DROP_W + DROP_TEXT:
                    prompt = ""
                elif r < DROP_W + DROP_TEXT + DROP_BOTH:
                    prompt = ""
                    w[b].zero_()
                text_states.append(texts[prompt][0])
                extras.append(texts[prompt][1])
            enc = torch.cat(text_states)
            noise = torch.randn_like(z0)
            t = torch.randint(0, t_max, (batch_size,), device=device)
            noisy = scheduler.add_noise(z0, noise, t)
            added: dict[str, Any] = {"image_embeds": [w[:, None]]}
            if time_ids is not None:
                added["text_embeds"] = torch.cat([e["text_embeds"] for e in extras])
                added["time_ids"] = time_ids.repeat(batch_size, 1)
            with autocast:
                pred = unet(noisy.to(unet.dtype), t, encoder_hidden_states=enc.to(unet.dtype),
                            added_cond_kwargs=added).sample
            loss = F.mse_loss(pred.float(), noise.float())
            if not torch.isfinite(loss):
                raise LikenessError(
                    f"W+ training diverged at step {step + 1} (loss {loss.item()}); lower the learning rate."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.item()))
            if progress is not None:
                progress({"step": step + 1, "steps": steps, "loss": losses[-1]})

        state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in handle.state_dict().items()}
        meta = {
            "format": "pt",
            "likeness.kind": "wplus-adapter",
            "likeness.base": base,
            "likeness.train": json.dumps({"steps": steps, "lr": lr, "weight_decay": weight_decay,
                                          "resolution": resolution, "batch_size": batch_size,
                                          "faces": len(crops), "seed": seed}),
        }
        from safetensors.torch import save_file

        with atomic_path(out_path, suffix=".safetensors") as tmp:
            save_file(state, str(tmp), metadata=meta)
    finally:
        remove_wplus(unet, handle)
        unet.eval()
        if device == "cuda":
            unet.disable_gradient_checkpointing()
    return TrainResult(path=out_path, steps=steps, losses=losses, used=[s for s, _ in faces], excluded=excluded)
