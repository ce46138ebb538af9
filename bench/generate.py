#!/usr/bin/env python
"""Generation speed: the Likeness engine against plain diffusers, same models, steps
and size, in one run. Prints ONE JSON object on stdout (everything else goes to
stderr).

Measured, warm (after one warm-up call; median of --repeats calls, baseline and
engine calls interleaved so clock drift hits both alike):

- `plain_seconds`: a plain diffusers `StableDiffusionXLPipeline.from_pretrained` of
  the same folder (no Likeness code in its path), one image per call;
- `engine_seconds[m]`: `Engine.generate` with method m (none, faceid, instantid), one
  image per call, everything it does included (conditioning, the pipeline, the PNG
  with its recipe, the likeness score);
- `ratio[m]` = engine / plain;
- `baseline_seconds[m]`: the fair baseline for m, written by hand with diffusers'
  public API: none = the plain pipeline; faceid = the plain pipeline +
  `load_ip_adapter` (FaceID Plus v2 with its LoRA) + the CLIP ViT-H image encoder run
  on a face crop per image, `ip_adapter_image_embeds`; instantid =
  `StableDiffusionXLControlNetPipeline` with the IdentityNet +
  `load_ip_adapter` (InstantID Resampler), the 16 face tokens fed to the IdentityNet
  by a forward pre-hook; pulid (opt-in, `--methods ...,pulid`) = the plain
  pipeline with PuLID's ID attention processors installed into its UNet
  (`pipelines/pulid/attention.install`, the port of the reference's
  `pulid/attention_processor.py`: diffusers has no PuLID API) and, per image, the
  EVA02-CLIP visual tower on a 336 px face image + the IDFormer (as the reference
  pipeline computes the ID embedding per call), the result as
  `cross_attention_kwargs`; arc2face (opt-in) = `StableDiffusionPipeline` of the
  SD1.5 folder with Arc2Face's UNet and text encoder passed in, and per image the
  embedding written into the "id" token row of "photo of a id person"
  (`project_face_embs`) as `prompt_embeds`. Arc2Face runs `turbo` as its README's
  LCM-LoRA mode (lcm-lora-sdv1-5, LCM, 2 steps, cfg 1) and has no `fast` (skipped);
 = engine / baseline; the target is <= 1.05 (`meets_target`);
- `cold_start_seconds`: `Engine(settings, store)` + its first image (models already
  built on disk); `plain_cold_start_seconds`: from_pretrained + first image.

Speed modes (`--speeds`, default all three): each mode is timed against plain
diffusers running the same mode by hand: `load_lora_weights` of the same distilled
LoRA (beside FaceID's own adapter), the mode's scheduler class and config, steps and
cfg (`speeds[s]`). Quality uses --steps/--cfg and Euler on both sides.

Also measured: `score_seconds_per_image` (the likeness score alone; in the engine
it runs on a worker thread, overlapping the next image's denoising),
`batch` (-n N as one batched call vs one call per image, seconds per image; on a
CPU batching is off by default and shown for reference), `--compile` (torch.compile
of the UNet: the first call, then calls that switch method and speed, and how many
times dynamo compiled a new graph during them), and `--device-report`: GPU name,
dtype, peak VRAM and seconds per 1024² image per mode and method (a table on
stderr, the same numbers under `device_report`).

Models: tiny demo packs (random weights, CPU-friendly), or with `--full-size`
full-size SDXL + IdentityNet + FaceID Plus v2 / InstantID adapters + CLIP ViT-H with
random weights in the published layouts (`bench/fullsize.py`): the compute of the
real models, for a GPU. `--full-size --dry-run` only counts parameters (meta device).

    python bench/generate.py --steps 4 --width 128 --height 128
    python bench/generate.py --full-size --steps 30 --width 1024 --height 1024
    python bench/generate.py --full-size --device-report     # unattended on a GPU, < 10 min
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

METHODS = ("none", "faceid", "instantid")  # the default set
ALL_METHODS = (*METHODS, "pulid", "arc2face")  # pulid, arc2face: opt-in with --methods
SPEEDS = ("quality", "fast", "turbo")
TINY_LABEL = "tiny demo models: random weights"
PROMPT = "a portrait photo of a person, studio lighting, sharp focus"
SEED = 1234
SAMPLER = "euler"  # the base scheduler of SDXL (EulerDiscreteScheduler), for both sides
SCALE = 0.8  # identity adapter scale (the methods' default)
IDENTITYNET_SCALE = 0.8
TARGET = 1.05

# compute-relevant settings forced for the engine so it runs like the plain pipeline
ENGINE_SETTINGS = dict(offload="none", vae_tiling=False, attention="sdpa", compile=False)


# ------------------------------------------------------------------- arguments
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/generate.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, help="denoising steps (default 4 tiny, 30 full-size)")
    p.add_argument("--width", type=int, help="image width, multiple of 8 (default 128 tiny, 1024 full-size)")
    p.add_argument("--height", type=int, help="image height, multiple of 8 (default 128 tiny, 1024 full-size)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per configuration after the warm-up (median)")
    p.add_argument("--device", choices=["auto", "cuda", "mps", "cpu"], default="auto")
    p.add_argument("--dtype", choices=["auto", "float16", "bfloat16", "float32"], default="auto")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated engine methods to time (none, faceid, instantid; also pulid, "
                        "arc2face)")
    p.add_argument("--cfg", type=float, default=5.0, help="guidance scale (both sides)")
    p.add_argument("--full-size", action="store_true", help="full-size random-weight models (GPU)")
    p.add_argument("--dry-run", action="store_true",
                   help="with --full-size: build the configs on the meta device and print parameter counts only")
    p.add_argument("--models-dir", type=Path,
                   help="models dir (default $LIKENESS_MODELS_DIR, else a temp dir); "
                        "full-size packs go to <dir>/bench-fullsize")
    p.add_argument("--photo", type=Path, help="a photo with one face (default: skimage's astronaut)")
    p.add_argument("--threads", type=int, help="torch CPU threads (torch.set_num_threads)")
    p.add_argument("--speeds", default=",".join(SPEEDS), help="comma-separated speed modes (quality, fast, turbo)")
    p.add_argument("--batch", type=int, default=4, help="images for the -n batching measurement (0: skip)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the UNet across switches")
    p.add_argument("--step-costs", action=argparse.BooleanOptionalAction, default=True,
                   help="time upscale, face detail, template and two people against plain diffusers (bench/steps.py)")
    p.add_argument("--device-report", action="store_true",
                   help="print GPU name, dtype, peak VRAM and s per 1024² image per mode and method (stderr)")
    args = p.parse_args(argv)
    speeds = [s.strip() for s in args.speeds.split(",") if s.strip()]
    if not speeds or any(s not in SPEEDS for s in speeds):
        p.error(f"--speeds: choose from {', '.join(SPEEDS)}")
    args.speeds = list(dict.fromkeys(speeds))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad or not methods:
        p.error(f"--methods: {', '.join(bad) or '(empty)'} unknown; choose from {', '.join(ALL_METHODS)}")
    if args.full_size and {"pulid", "arc2face"} & set(methods):
        p.error("--methods pulid/arc2face: --full-size has no full-size random-weight packs for them yet; "
                "time them with the tiny packs or real weights (--models-dir)")
    args.methods = list(dict.fromkeys(methods))
    if args.dry_run and not args.full_size:
        p.error("--dry-run counts the full-size models' parameters; use it with --full-size")
    full = args.full_size
    args.steps = args.steps or (30 if full else 4)
    args.width = args.width or (1024 if full else 128)
    args.height = args.height or (1024 if full else 128)
    for name in ("width", "height"):
        v = getattr(args, name)
        if v < 64 or v % 8:
            p.error(f"--{name} {v}: use a multiple of 8, at least 64")
    if args.steps < 1 or args.repeats < 1:
        p.error("--steps and --repeats must be at least 1")
    return args


# ---------------------------------------------------------------------- timing
def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def timed(fn, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


@contextlib.contextmanager
def stdout_to_stderr():
    """Send everything written to stdout (Python prints and C libraries alike) to
    stderr, so the JSON report is the only thing on stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


# ---------------------------------------------------------------- the baselines
@dataclass
class Ctx:
    """What both sides share: device, dtype, folders, call settings, inputs."""

    device: str
    dtype: object
    steps: int
    width: int
    height: int
    cfg: float
    sdxl_folder: Path
    variant: str | None
    vae_folder: Path | None  # the fp16-fix VAE when the engine uses it
    photo: Path
    folders: dict[str, Path] = field(default_factory=dict)
    sd15_variant: str | None = None  # the SD1.5 base's weight variant (Arc2Face's baseline)

    def call_kwargs(self) -> dict:
        import torch

        return dict(prompt=PROMPT, negative_prompt=None, num_inference_steps=self.steps, guidance_scale=self.cfg,
                    width=self.width, height=self.height, output_type="pil",
                    generator=torch.Generator("cpu").manual_seed(SEED))


def load_sdxl(ctx: Ctx, cls=None, **extra):
    """`from_pretrained` of the SDXL folder, exactly as a diffusers user would."""
    import diffusers

    cls = cls or diffusers.StableDiffusionXLPipeline
    kw = dict(variant=ctx.variant, torch_dtype=ctx.dtype, use_safetensors=True, local_files_only=True)
    if ctx.vae_folder is not None:
        kw["vae"] = diffusers.AutoencoderKL.from_pretrained(ctx.vae_folder, torch_dtype=ctx.dtype,
                                                            local_files_only=True)
    pipe = cls.from_pretrained(ctx.sdxl_folder, **kw, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(ctx.device)


def _id_embedding(ctx: Ctx):
    """A unit 512-d face embedding (its values do not change the compute)."""
    import numpy as np
    import torch

    v = np.random.default_rng(SEED).standard_normal(512).astype(np.float32)
    return torch.as_tensor(v / np.linalg.norm(v), dtype=ctx.dtype).reshape(1, 1, 1, -1)


class PlainSDXL:
    label = "diffusers StableDiffusionXLPipeline.from_pretrained (same folder), one image per call"

    def __init__(self, ctx: Ctx):
        self.ctx = ctx
        self.pipe = load_sdxl(ctx)

    def __call__(self):
        return self.pipe(**self.ctx.call_kwargs()).images[0]


class FaceIDBaseline:
    label = ("diffusers StableDiffusionXLPipeline + load_ip_adapter(FaceID Plus v2 SDXL, LoRA at 1.0, scale 0.8) "
             "+ CLIP ViT-H image encoder on a face crop per image (ip_adapter_image_embeds, clip_embeds, shortcut)")

    def __init__(self, ctx: Ctx):
        import numpy as np
        from PIL import Image
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        self.ctx = ctx
        folder, weights = ctx.folders["faceid"], ctx.folders["faceid_weights"]
        self.pipe = load_sdxl(ctx)
        self.pipe.load_ip_adapter(str(folder), subfolder="", weight_name=weights.name, image_encoder_folder=None)
        self.pipe.set_ip_adapter_scale(SCALE)
        self.encoder = CLIPVisionModelWithProjection.from_pretrained(
            ctx.folders["image_encoder"], torch_dtype=ctx.dtype, local_files_only=True).to(ctx.device).eval()
        size = self.encoder.config.image_size
        self.processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        arr = np.asarray(Image.open(ctx.photo).convert("RGB"))
        s = min(arr.shape[:2])
        self.face = np.ascontiguousarray(arr[:s, (arr.shape[1] - s) // 2:(arr.shape[1] - s) // 2 + s])
        self.blank = np.zeros((size, size, 3), dtype=np.uint8)
        self.id_pos = _id_embedding(ctx)

    def __call__(self):
        import torch

        ctx = self.ctx
        with torch.no_grad():
            pix = self.processor(images=[self.face, self.blank], return_tensors="pt").pixel_values
            hs = self.encoder(pix.to(ctx.device, ctx.dtype), output_hidden_states=True).hidden_states[-2]
        proj = self.pipe.unet.encoder_hid_proj.image_projection_layers[0]
        proj.clip_embeds = torch.cat([hs[1:], hs[:1]]).unsqueeze(1)  # [uncond, cond]
        proj.shortcut = True
        proj.shortcut_scale = 1.0
        embeds = torch.cat([torch.zeros_like(self.id_pos), self.id_pos]).to(ctx.device)
        return self.pipe(**ctx.call_kwargs(), ip_adapter_image_embeds=[embeds]).images[0]


class InstantIDBaseline:
    label = ("diffusers StableDiffusionXLControlNetPipeline with the IdentityNet (scale 0.8) + "
             "load_ip_adapter(InstantID Resampler, scale 0.8); the 16 face tokens go to the IdentityNet "
             "through a forward pre-hook; a 5-keypoint control image")

    def __init__(self, ctx: Ctx):
        import diffusers

        self.ctx = ctx
        folder = ctx.folders["instantid"]
        cn = diffusers.ControlNetModel.from_pretrained(folder / "ControlNetModel", torch_dtype=ctx.dtype,
                                                       local_files_only=True)
        self.pipe = load_sdxl(ctx, cls=diffusers.StableDiffusionXLControlNetPipeline, controlnet=cn)
        self.pipe.load_ip_adapter(str(folder), subfolder="", weight_name=ctx.folders["instantid_weights"].name,
                                  image_encoder_folder=None)
        self.pipe.set_ip_adapter_scale(SCALE)
        self.tokens = None
        self.pipe.controlnet.register_forward_pre_hook(self._face_tokens, with_kwargs=True)
        self.kps = keypoint_image(ctx.width, ctx.height)
        self.id_pos = _id_embedding(ctx)

    def _face_tokens(self, module, args, kwargs):
        import torch

        batch = kwargs["encoder_hidden_states"].shape[0]
        uncond, cond = self.tokens
        if batch >= 2 and batch % 2 == 0:
            tokens = torch.cat([uncond.expand(batch // 2, -1, -1), cond.expand(batch // 2, -1, -1)])
        else:
            tokens = cond.expand(batch, -1, -1)
        kwargs["encoder_hidden_states"] = tokens.to(module.device, module.dtype)
        return args, kwargs

    def __call__(self):
        import torch

        ctx = self.ctx
        proj = self.pipe.unet.encoder_hid_proj.image_projection_layers[0]
        emb = self.id_pos.to(ctx.device).reshape(1, 1, -1)
        with torch.no_grad():
            self.tokens = (proj(torch.zeros_like(emb)), proj(emb))
        embeds = torch.cat([torch.zeros_like(self.id_pos), self.id_pos]).to(ctx.device)
        return self.pipe(**ctx.call_kwargs(), image=self.kps, controlnet_conditioning_scale=IDENTITYNET_SCALE,
                         ip_adapter_image_embeds=[embeds]).images[0]


def keypoint_image(width: int, height: int):
    """Five face keypoints joined by lines on black, drawn here (InstantID-style)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height))
    d = ImageDraw.Draw(img)
    pts = [(0.40, 0.42), (0.60, 0.42), (0.50, 0.52), (0.42, 0.62), (0.58, 0.62)]
    pts = [(x * width, y * height) for x, y in pts]
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]
    r = max(1, min(width, height) // 100)
    for a in (0, 1, 3, 4):
        d.line([pts[a], pts[2]], fill=colors[a], width=r)
    for (x, y), c in zip(pts, colors):
        d.ellipse([x - 2 * r, y - 2 * r, x + 2 * r, y + 2 * r], fill=c)
    return img


class PuLIDBaseline:
    label = ("diffusers StableDiffusionXLPipeline + PuLID v1.1's ID attention processors installed into its UNet "
             "(the reference's attention_processor, ported) + per image EVA02-CLIP-L-336 visual tower on a face "
             "image and the IDFormer, cross_attention_kwargs id_embedding (scale 0.8, the reference negative)")

    def __init__(self, ctx: Ctx):
        from safetensors.torch import load_file

        from pipelines.identity.pulid import REFERENCE_NEGATIVE
        from pipelines.pulid.attention import install
        from pipelines.pulid.encoders import id_encoder_from_state
        from pipelines.pulid.eva import load_eva_visual

        self.ctx, self.negative = ctx, REFERENCE_NEGATIVE
        state = load_file(str(ctx.folders["pulid_weights"]))
        self.pipe = load_sdxl(ctx)
        install(self.pipe.unet, state)
        self.id_encoder = id_encoder_from_state(state).eval().to(ctx.device)  # float32, as the reference
        self.eva = load_eva_visual(load_file(str(ctx.folders["eva_weights"]))).to(ctx.device)
        self.id_pos = _id_embedding(ctx).reshape(1, -1).float().to(ctx.device)

    def __call__(self):
        import torch

        from pipelines.pulid.eva import eva_features, eva_input

        ctx = self.ctx
        size = self.eva.patch_embed.img_size[0]
        grey = torch.full((1, 3, size, size), 0.5, device=ctx.device)
        with torch.no_grad():
            vit_cond, hidden = eva_features(self.eva, eva_input(grey, size))
            id_cond = torch.cat([self.id_pos, vit_cond], dim=-1)
            cond = self.id_encoder(id_cond, hidden)
            uncond = self.id_encoder(torch.zeros_like(id_cond), [torch.zeros_like(t) for t in hidden])
        emb = (torch.cat([uncond, cond]) if ctx.cfg > 1.0 else cond).to(ctx.dtype)
        kw = {**ctx.call_kwargs(), "negative_prompt": self.negative}
        return self.pipe(**kw, cross_attention_kwargs={"id_embedding": emb, "id_scale": SCALE, "num_zero": 0,
                                                       "ortho": "off"}).images[0]


class Arc2FaceBaseline:
    label = ("diffusers StableDiffusionPipeline.from_pretrained(SD1.5 folder, unet=Arc2Face UNet, "
             "text_encoder=Arc2Face CLIPTextModel); per image the embedding in the 'id' token row of "
             "'photo of a id person' through the encoder (project_face_embs) as prompt_embeds")

    def __init__(self, ctx: Ctx):
        import diffusers
        from transformers import CLIPTextModel

        self.ctx = ctx
        folder = ctx.folders["arc2face"]
        unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "arc2face", torch_dtype=ctx.dtype,
                                                              local_files_only=True)
        encoder = CLIPTextModel.from_pretrained(folder / "encoder", dtype=ctx.dtype, local_files_only=True,
                                                use_safetensors=True)
        self.pipe = diffusers.StableDiffusionPipeline.from_pretrained(
            ctx.folders["sd15"], unet=unet, text_encoder=encoder, variant=ctx.sd15_variant,
            torch_dtype=ctx.dtype, use_safetensors=True, local_files_only=True, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)
        from pipelines.samplers import SAMPLERS, scheduler_class

        cls_name, extra = SAMPLERS[SAMPLER]  # the engine's sampler in quality mode (a speed mode replaces it)
        self.pipe.scheduler = scheduler_class(cls_name).from_config(self.pipe.scheduler.config, **extra)
        self.pipe.set_progress_bar_config(disable=True)
        self.pipe.to(ctx.device)
        self.id_pos = _id_embedding(ctx).reshape(-1).float()

    def _prompt_embeds(self):
        import torch
        import torch.nn.functional as F

        tok, te = self.pipe.tokenizer, self.pipe.text_encoder
        ids = tok("photo of a id person", padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(te.device)
        row = ids[0] == tok.encode("id", add_special_tokens=False)[0]
        padded = F.pad(self.id_pos, (0, te.config.hidden_size - self.id_pos.numel())).to(te.device)

        def put(module, args, out):
            out = out.clone()
            out[:, row] = padded.to(out.dtype)
            return out

        handle = te.get_input_embeddings().register_forward_hook(put)
        try:
            with torch.no_grad():
                return te(ids)[0]
        finally:
            handle.remove()

    def __call__(self):
        kw = self.ctx.call_kwargs()
        kw.pop("prompt")
        return self.pipe(prompt_embeds=self._prompt_embeds(), **kw).images[0]


BASELINES = {"none": PlainSDXL, "faceid": FaceIDBaseline, "instantid": InstantIDBaseline, "pulid": PuLIDBaseline,
             "arc2face": Arc2FaceBaseline}


# ------------------------------------------------------------------- the run
def _photo(args, work: Path) -> Path:
    if args.photo:
        return args.photo
    from PIL import Image
    from skimage import data

    path = work / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def _round(x: float) -> float:
    return round(float(x), 6)


def _ratio(a: float, b: float) -> float:
    return round(a / b, 4)


def prepare(store, methods: list[str], use_fix_vae: bool, speeds=()) -> list[str]:
    """Build (demo mode) every model both sides load, before anything is timed."""
    from pipelines.identity import get_method_class
    from pipelines.speed import SPEED_MODES, mode_for

    names = ["sdxl-base"] + (["sdxl-vae-fp16-fix"] if use_fix_vae else [])
    names += [SPEED_MODES[s].lora for s in speeds if SPEED_MODES[s].lora]
    for m in methods:
        if m == "none":
            continue
        cls = get_method_class(m)
        names += list(cls.required_models) + [cls.recognizer]
        if cls.base == "sd15":
            names.append("sd15-base")
        names += [mode_for(s, m).lora for s in speeds if mode_for(s, m).lora]
    names += ["buffalo_l", "antelopev2"] if any(m != "none" for m in methods) else []  # likeness scoring
    names = list(dict.fromkeys(names))
    for n in names:
        store.ensure(n)
    return names


def run(args) -> dict:
    import diffusers
    import torch

    from pipelines.engine import Engine
    from pipelines.errors import BadInput
    from pipelines.identity import get_method_class
    from pipelines.requests import GenerateRequest
    from pipelines.settings import load_settings
    from pipelines.speed import SPEED_MODES, mode_for
    from pipelines.stores import open_store

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="likeness-bench-"))
    try:
        given = args.models_dir or (Path(os.environ["LIKENESS_MODELS_DIR"]) if os.environ.get("LIKENESS_MODELS_DIR")
                                    else None)
        if given is None:
            models_dir = work / "models"
        else:
            models_dir = Path(given).expanduser() / "bench-fullsize" if args.full_size else Path(given).expanduser()
        settings = load_settings(models_dir=models_dir, outputs_dir=work / "outputs", loras_dir=work / "loras",
                                 device=args.device, dtype=args.dtype, demo=True, accept_research_licenses=True,
                                 **ENGINE_SETTINGS)
        device = settings.resolve_device()
        dtype = settings.resolve_dtype(device)
        if args.full_size and device == "cpu" and args.device != "cpu":
            raise BadInput("--full-size runs full-size SDXL (and builds ~16 GB of random-weight models): it needs "
                           "a GPU and none was found; use --full-size --dry-run to count parameters, or "
                           "--device cpu to force it.")
        if args.full_size:
            from bench import fullsize

            catalog, label = fullsize.fullsize_catalog(), fullsize.MODELS_LABEL
        else:
            catalog, label = None, TINY_LABEL
        store = open_store(settings, catalog=catalog)
        use_fix = dtype == torch.float16  # the engine's vae="auto" rule for SDXL
        t0 = time.perf_counter()
        prepare(store, args.methods, use_fix, args.speeds)
        build_seconds = time.perf_counter() - t0

        files = {}
        if "faceid" in args.methods:
            from pipelines.identity import faceid as fid

            files.update(faceid=store.ensure(fid.MODEL), faceid_weights=store.file_path(fid.MODEL, fid.WEIGHTS),
                         image_encoder=store.ensure(fid.ENCODER) / "models" / "image_encoder")
        if "instantid" in args.methods:
            from pipelines.identity import instantid as iid

            files.update(instantid=store.ensure(iid.MODEL), instantid_weights=store.file_path(iid.MODEL, iid.ADAPTER))
        if "pulid" in args.methods:
            from pipelines.identity import pulid as pid

            files.update(pulid_weights=store.file_path(pid.WEIGHTS, pid.WEIGHTS_FILE),
                         eva_weights=store.file_path(pid.EVA, pid.EVA_FILE))
        if "arc2face" in args.methods:
            from pipelines.identity import arc2face as a2f

            files.update(arc2face=store.ensure(a2f.MODEL), sd15=store.ensure("sd15-base"))
        ctx = Ctx(device=device, dtype=dtype, steps=args.steps, width=args.width, height=args.height, cfg=args.cfg,
                  sdxl_folder=store.ensure("sdxl-base"), variant=store.entry("sdxl-base").variant,
                  vae_folder=store.ensure("sdxl-vae-fp16-fix") if use_fix else None,
                  photo=_photo(args, work), folders=files,
                  sd15_variant=store.entry("sd15-base").variant if "sd15" in files else None)

        def request(method: str, speed: str = "quality", count: int = 1) -> GenerateRequest:
            tuned = dict(steps=args.steps, cfg=args.cfg, sampler=SAMPLER) if speed == "quality" else {}
            scale = 1.0 if method == "arc2face" else SCALE  # Arc2Face has no strength: 1 = Arc2Face
            return GenerateRequest(photos=[str(ctx.photo)] if method != "none" else [], prompt=PROMPT, method=method,
                                   width=args.width, height=args.height, speed=speed, seed=SEED, count=count,
                                   scale=scale, identitynet_scale=IDENTITYNET_SCALE, **tuned)

        _preload_imports()
        if device == "cuda":  # CUDA context and kernels outside every timed region
            torch.ones(64, 64, device="cuda", dtype=dtype).matmul(torch.ones(64, 64, device="cuda", dtype=dtype))
            torch.cuda.synchronize()

        # cold starts: plain first, then the engine (both read the same files)
        holder: dict = {}
        plain_cold = timed(lambda: holder.setdefault("plain", PlainSDXL(ctx))(), device)
        plain = holder["plain"]
        first = args.methods[0]
        first_call: dict[tuple, float] = {}

        def cold_engine():
            holder["engine"] = Engine(settings, store=store)
            t = time.perf_counter()
            holder["engine"].generate(request(first, args.speeds[0]))
            first_call[(args.speeds[0], first)] = time.perf_counter() - t

        engine_cold = timed(cold_engine, device)
        engine = holder["engine"]

        results: dict[str, dict] = {}
        skipped: list[str] = []
        labels: dict[str, str] = {}
        base_load: dict[tuple, float] = {}
        peaks: dict[str, float | None] = {}
        for s in args.speeds:
            mode = SPEED_MODES[s]
            sctx = speed_ctx(ctx, mode)
            lora = store.file_path(mode.lora, mode.lora_file) if mode.lora else None
            if mode.lora is None:
                plain_here = plain
            else:
                holder.pop("speed_plain", None)
                _free(device)
                holder["speed_plain"] = PlainSDXL(sctx)
                apply_speed(holder["speed_plain"].pipe, mode, lora)
                plain_here = holder["speed_plain"]
                timed(plain_here, device)  # warm-up
            samples_engine: dict[str, list[float]] = {}
            samples_base: dict[str, list[float]] = {}
            own_modes: dict[str, dict] = {}
            for m in args.methods:
                key = f"{s}/{m}"
                # a method's own few-step mode where it has one (Arc2Face turbo: LCM-LoRA SD1.5)
                mmode = mode_for(s, m)
                family = get_method_class(m).base if m != "none" else "sdxl"
                if mmode.lora is not None and mmode.family != family:
                    skipped.append(f"{s}/{m}: no {s} mode for this method (the engine refuses it)")
                    continue
                mctx = speed_ctx(ctx, mmode)
                mlora = store.file_path(mmode.lora, mmode.lora_file) if mmode.lora else None
                if mmode is not mode:
                    own_modes[m] = {"lora": mmode.lora, "sampler": mmode.sampler, "steps": mctx.steps, "cfg": mctx.cfg}
                if m == "none":
                    base = plain_here
                else:
                    holder.pop("base", None)
                    _free(device)

                    def build(m=m, mctx=mctx, mmode=mmode, mlora=mlora):
                        b = BASELINES[m](mctx)
                        apply_speed(b.pipe, mmode, mlora)
                        holder["base"] = b

                    base_load[(s, m)] = timed(build, device)
                    base = holder["base"]
                    timed(base, device)  # warm-up
                labels[m] = BASELINES[m].label
                req = request(m, s)
                if (s, m) not in first_call:
                    first_call[(s, m)] = timed(lambda: engine.generate(req), device)  # warm-up (loads what it needs)
                eng, bas = [], []
                for _ in range(args.repeats):
                    bas.append(timed(base, device))
                    eng.append(timed(lambda: engine.generate(req), device))
                samples_engine[m], samples_base[m] = eng, bas
                _reset_peak(device)
                engine.generate(req)
                peaks[key] = _peak_gb(device)
            holder.pop("base", None)
            samples_plain = samples_base.get("none") or [timed(plain_here, device) for _ in range(args.repeats)]
            holder.pop("speed_plain", None)
            plain_s = statistics.median(samples_plain)
            engine_s = {m: statistics.median(v) for m, v in samples_engine.items()}
            base_s = {m: statistics.median(v) for m, v in samples_base.items()}
            results[s] = {
                "lora": mode.lora,
                "sampler": mode.sampler or SAMPLER,
                "steps": sctx.steps,
                "cfg": sctx.cfg,
                "method_modes": own_modes,  # methods running their own few-step mode here
                "plain_seconds": _round(plain_s),
                "engine_seconds": {m: _round(v) for m, v in engine_s.items()},
                "ratio": {m: _ratio(v, plain_s) for m, v in engine_s.items()},
                "baseline_seconds": {m: _round(v) for m, v in base_s.items()},
                "ratio_vs_baseline": {m: _ratio(engine_s[m], base_s[m]) for m in engine_s},
                "meets_target": {m: engine_s[m] <= TARGET * base_s[m] for m in engine_s},
                "peak_vram_gb": {m: peaks.get(f"{s}/{m}") for m in engine_s},
                "engine_first_call_seconds": {m: _round(v) for (s2, m), v in first_call.items() if s2 == s},
                "baseline_load_seconds": {m: _round(v) for (s2, m), v in base_load.items() if s2 == s},
                "samples": {"plain": [_round(x) for x in samples_plain],
                            "engine": {m: [_round(x) for x in v] for m, v in samples_engine.items()},
                            "baseline": {m: [_round(x) for x in v] for m, v in samples_base.items()}},
            }
        holder.pop("plain", None)
        _free(device)
        extra = {
            "score_seconds_per_image": score_cost(engine, ctx, args, request),
            "batch": batch_gain(engine, args, request) if args.batch > 1 else None,
            "compile": compile_run(settings, store, args, request, device) if args.compile else None,
            "step_costs": _step_costs(engine, ctx, args, request) if args.step_costs else None,
        }
        q = results.get("quality") or results[args.speeds[0]]
        report = {
            "models": label,
            "device": device,
            "device_name": _device_name(device),
            "dtype": str(dtype).replace("torch.", ""),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "steps": args.steps,
            "width": args.width,
            "height": args.height,
            "cfg": args.cfg,
            "sampler": SAMPLER,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            "vae": "sdxl-vae-fp16-fix" if use_fix else "sdxl-base vae",
            "methods": list(args.methods),
            "speeds_timed": list(args.speeds),
            # the first speed's numbers (quality when timed) at the top level, as before
            "plain_seconds": q["plain_seconds"],
            "engine_seconds": q["engine_seconds"],
            "ratio": q["ratio"],
            "baseline_seconds": q["baseline_seconds"],
            "ratio_vs_baseline": q["ratio_vs_baseline"],
            "target": TARGET,
            "meets_target": q["meets_target"],
            "samples": q["samples"],
            "speeds": results,
            **extra,
            "baselines": labels,
            "skipped": skipped,
            "cold_start_seconds": _round(engine_cold),
            "cold_start_method": first,
            "plain_cold_start_seconds": _round(plain_cold),
            "engine_first_call_seconds": q["engine_first_call_seconds"],
            "baseline_load_seconds": q["baseline_load_seconds"],
            "build_seconds": _round(build_seconds),
            "notes": [
                "engine seconds are whole Engine.generate calls (one image): conditioning, the diffusers call, "
                "the PNG with its recipe and the likeness score",
                "speed modes: the baseline loads the same LoRA with load_lora_weights (unfused, as the engine) "
                "and sets the mode's scheduler; resident speed LoRAs of other modes are inactive in the engine",
                "face analysis and likeness scoring use the tiny demo insightface packs in both modes",
                "cold starts read models already built on disk (warm file cache); build_seconds is the pack build",
                "ratios are computed from unrounded medians",
            ],
        }
        if not args.full_size:
            report["notes"].append("tiny models: fixed per-image costs (PNG, scoring) weigh far more than at full "
                                   "size; the 1.05 target is meant for --full-size on a GPU")
        if args.device_report:
            report["device_report"] = device_report(report)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def speed_ctx(ctx: Ctx, mode) -> Ctx:
    """The call settings of a speed mode (quality: the command line's)."""
    import dataclasses

    return ctx if mode.lora is None else dataclasses.replace(ctx, steps=mode.steps, cfg=mode.cfg)


def apply_speed(pipe, mode, lora_path) -> None:
    """Plain diffusers running a speed mode as the LoRA's model card shows:
    `load_lora_weights` (beside an adapter already there, e.g. FaceID's
    `faceid_0`), and the mode's scheduler class and config."""

    from pipelines.samplers import SAMPLERS, scheduler_class

    if mode.lora is None:
        return
    pipe.load_lora_weights(str(lora_path), adapter_name="speed")
    names = list(dict.fromkeys([*pipe.get_active_adapters(), "speed"]))
    pipe.set_adapters(names, adapter_weights=[1.0] * len(names))
    cls_name, extra = SAMPLERS[mode.sampler]
    pipe.scheduler = scheduler_class(cls_name).from_config(pipe.scheduler.config, **extra)


def _reset_peak(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gb(device: str) -> float | None:
    if device != "cuda":
        return None
    import torch

    torch.cuda.synchronize()
    return round(torch.cuda.max_memory_allocated() / 1024**3, 3)


def score_cost(engine, ctx: Ctx, args, request) -> dict | None:
    """Seconds of the likeness score alone per image (median), per identity method."""
    from pipelines.scoring import prepare_scorer

    out = {}
    for m in args.methods:
        if m == "none":
            continue
        res = engine.generate(request(m, args.speeds[-1]))
        scorer = prepare_scorer(engine, res.identity, m)
        image = res.images[0].image
        scorer(image)  # warm-up
        out[m] = _round(statistics.median(time_calls(lambda: scorer(image), args.repeats)))
    return out or None


def _step_costs(engine, ctx: Ctx, args, request) -> dict:
    """Upscale, face detail, template and two people: engine vs plain diffusers (bench/steps.py)."""
    from bench.steps import step_costs

    return step_costs(engine, ctx, args, lambda m: request(m, args.speeds[0]), load_sdxl)


def time_calls(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def batch_gain(engine, args, request) -> dict:
    """-n N as one batched call against one call per image (seconds per image)."""
    from pipelines.imageloop import should_batch

    speed = "turbo" if "turbo" in args.speeds else args.speeds[0]
    out: dict = {"images": args.batch, "speed": speed}
    device = engine.device
    for m in [m for m in ("none", "faceid") if m in args.methods]:
        req = request(m, speed, count=args.batch)
        row: dict = {}
        for mode in ("off", "on"):
            engine.batch_images = mode
            try:
                engine.generate(req)  # warm-up (batched kernels differ)
                row[f"{'loop' if mode == 'off' else 'batched'}_seconds_per_image"] = _round(
                    timed(lambda: engine.generate(req), device) / args.batch)
            except Exception as exc:  # noqa: BLE001 - an out-of-memory batch is a result here
                row[f"{'loop' if mode == 'off' else 'batched'}_error"] = " ".join(str(exc).split())[:200]
            finally:
                engine.batch_images = "auto"
        if "loop_seconds_per_image" in row and "batched_seconds_per_image" in row:
            row["gain"] = _ratio(row["loop_seconds_per_image"], row["batched_seconds_per_image"])
        engine.generate(req.model_copy(update={"count": 1}))  # sets the size the decision sees
        row["auto_batches"] = should_batch(engine, req, engine._method, args.width, args.height)
        out[m] = row
    return out


def compile_run(settings, store, args, request, device: str) -> dict:
    """torch.compile of the UNet (settings.compile): the first call, then calls that
    switch method and speed; `new_graphs` counts graphs dynamo compiled during each."""
    from torch._dynamo.utils import counters

    from pipelines.engine import Engine

    engine = Engine(settings.model_copy(update={"compile": True}), store=store)
    first = [("quality", "none"), *(("quality", m) for m in args.methods if m != "none")][:2]
    other = next((s for s in args.speeds if s != "quality"), None)
    # the first calls, a switch to another speed, then the first calls again: a repeat
    # that compiles new graphs means a recompile per request
    plan = [*first, *([(other, "none")] if other else []), *first]
    calls = []
    for s, m in plan:
        before = counters["stats"]["unique_graphs"]
        seconds = timed(lambda: engine.generate(request(m, s)), device)
        calls.append({"speed": s, "method": m, "seconds": _round(seconds),
                      "new_graphs": counters["stats"]["unique_graphs"] - before})
    again = calls[-len(first):]
    return {"calls": calls, "recompiled_on_repeat": any(c["new_graphs"] for c in again)}


def device_report(report: dict) -> dict:
    """GPU name, dtype, peak VRAM and seconds per 1024² image per mode and method;
    also printed as a table on stderr."""
    scale = 1024 * 1024 / (report["width"] * report["height"])
    rows = []
    for s, r in report["speeds"].items():
        for m, sec in r["engine_seconds"].items():
            rows.append({"speed": s, "method": m, "steps": r["steps"], "seconds_per_image": sec,
                         # linear in pixels from the measured size: exact only when it is 1024x1024
                         "seconds_per_1024_image": round(sec * scale, 4),
                         "plain_seconds_per_1024_image": round(r["baseline_seconds"][m] * scale, 4),
                         "peak_vram_gb": r["peak_vram_gb"].get(m)})
    out = {"device_name": report["device_name"], "dtype": report["dtype"], "models": report["models"],
           "size": f"{report['width']}x{report['height']}", "scaled_to_1024": scale != 1.0, "rows": rows}
    print(f"\n{out['device_name']} · {out['dtype']} · {out['models']} · measured at {out['size']}", file=sys.stderr)
    print(f"{'speed':8} {'method':10} {'steps':>5} {'s/1024² img':>12} {'plain s':>9} {'peak GB':>8}", file=sys.stderr)
    for r in rows:
        peak = "-" if r["peak_vram_gb"] is None else f"{r['peak_vram_gb']:.2f}"
        print(f"{r['speed']:8} {r['method']:10} {r['steps']:>5} {r['seconds_per_1024_image']:>12.4f} "
              f"{r['plain_seconds_per_1024_image']:>9.4f} {peak:>8}", file=sys.stderr)
    return out


def _preload_imports() -> None:
    """Import what either side will use, so no cold start pays for diffusers' lazy
    imports the other one already did."""
    import diffusers
    import transformers

    for name in ("StableDiffusionXLPipeline", "StableDiffusionXLControlNetPipeline", "AutoencoderKL",
                 "ControlNetModel", "UNet2DConditionModel", "EulerDiscreteScheduler"):
        getattr(diffusers, name)
    for name in ("CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionModelWithProjection",
                 "CLIPImageProcessor", "CLIPTokenizer"):
        getattr(transformers, name)
    import pipelines.outputs  # noqa: F401  (the engine's output path)


def _device_name(device: str) -> str:
    import platform

    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    return platform.processor() or platform.machine()


def dry_run() -> dict:
    import diffusers
    import torch

    from bench import fullsize

    report = fullsize.parameter_report()
    return {
        "models": fullsize.MODELS_LABEL,
        "dry_run": True,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "parameters": {k: v["parameters"] for k, v in report.items()},
        "unet_parameters": report["unet"]["parameters"],
        "total_parameters": sum(v["parameters"] for v in report.values()),
        "files": report,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    from pipelines.errors import LikenessError

    try:
        with stdout_to_stderr():
            report = dry_run() if args.dry_run else run(args)
    except LikenessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
