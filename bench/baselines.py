"""The hand-built diffusers baselines of bench/generate.py: for each method, the
pipeline a diffusers user would write with the public API to get the same
conditioning, timed against `Engine.generate` with that method.

- none: `StableDiffusionXLPipeline.from_pretrained` of the same folder;
- faceid: the plain pipeline + `load_ip_adapter` (FaceID Plus v2 with its LoRA)
  + the CLIP ViT-H image encoder run on a face crop per image,
  `ip_adapter_image_embeds`;
- instantid: `StableDiffusionXLControlNetPipeline` with the IdentityNet +
  `load_ip_adapter` (InstantID Resampler), the 16 face tokens fed to the
  IdentityNet by a forward pre-hook;
- pulid: the plain pipeline with PuLID's ID attention processors installed into
  its UNet (`pipelines/pulid/attention.install`, the port of the reference's
  `pulid/attention_processor.py`: diffusers has no PuLID API) and, per image, the
  EVA02-CLIP visual tower on a 336 px face image + the IDFormer, the result as
  `cross_attention_kwargs`;
- arc2face: `StableDiffusionPipeline` of the SD1.5 folder with Arc2Face's UNet and
  text encoder passed in, and per image the embedding written into the "id"
  token row of "photo of a id person" (`project_face_embs`, the port of the
  reference's `arc2face/utils.py`) as `prompt_embeds`.

Invariants:

- a baseline loads only from the folders in `Ctx` (the files the engine reads),
  with `local_files_only=True`, and calls the pipeline with `Ctx.call_kwargs()`;
- per-image work the engine does per image (an image encoder, an ID encoder,
  face tokens) runs inside `__call__`, so both sides pay for it;
- the face embedding is a fixed unit vector (`id_embedding`): its values do not
  change the compute, so no face analysis runs here.
"""

from __future__ import annotations

from bench.calls import IDENTITYNET_SCALE, SAMPLER, SCALE, SEED, Ctx


def from_folder(cls, folder, ctx: Ctx, **extra):
    """A diffusers model or pipeline from a local folder in the run's dtype."""
    return cls.from_pretrained(folder, torch_dtype=ctx.dtype, local_files_only=True, **extra)


def load_sdxl(ctx: Ctx, cls=None, **extra):
    """`from_pretrained` of the SDXL folder, exactly as a diffusers user would."""
    import diffusers

    cls = cls or diffusers.StableDiffusionXLPipeline
    kw = dict(variant=ctx.variant, use_safetensors=True)
    if ctx.vae_folder is not None:
        kw["vae"] = from_folder(diffusers.AutoencoderKL, ctx.vae_folder, ctx)
    pipe = from_folder(cls, ctx.sdxl_folder, ctx, **kw, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(ctx.device)


def id_embedding(ctx: Ctx):
    """A unit 512-d face embedding (its values do not change the compute)."""
    import numpy as np
    import torch

    v = np.random.default_rng(SEED).standard_normal(512).astype(np.float32)
    return torch.as_tensor(v / np.linalg.norm(v), dtype=ctx.dtype).reshape(1, 1, 1, -1)


def _ip_adapter_embeds(ctx: Ctx, id_pos):
    """`ip_adapter_image_embeds` for classifier-free guidance: [uncond (zeros), cond]."""
    import torch

    return [torch.cat([torch.zeros_like(id_pos), id_pos]).to(ctx.device)]


class Baseline:
    """A hand-built diffusers pipeline for one method. `load` builds `pipe` (a speed
    mode is applied to it afterwards, bench/speed_setup.py); a call makes one image
    with the shared call settings updated by `conditioning()`, the per-image work
    of the method."""

    label = ""

    def __init__(self, ctx: Ctx):
        self.ctx = ctx
        self.pipe = self.load(ctx)

    def load(self, ctx: Ctx):
        return load_sdxl(ctx)

    def conditioning(self) -> dict:
        return {}

    def __call__(self):
        return self.pipe(**{**self.ctx.call_kwargs(), **self.conditioning()}).images[0]


class PlainSDXL(Baseline):
    label = "diffusers StableDiffusionXLPipeline.from_pretrained (same folder), one image per call"


class FaceIDBaseline(Baseline):
    label = ("diffusers StableDiffusionXLPipeline + load_ip_adapter(FaceID Plus v2 SDXL, LoRA at 1.0, scale 0.8) "
             "+ CLIP ViT-H image encoder on a face crop per image (ip_adapter_image_embeds, clip_embeds, shortcut)")

    def load(self, ctx: Ctx):
        import numpy as np
        from PIL import Image
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        folder, weights = ctx.folders["faceid"], ctx.folders["faceid_weights"]
        pipe = load_sdxl(ctx)
        pipe.load_ip_adapter(str(folder), subfolder="", weight_name=weights.name, image_encoder_folder=None)
        pipe.set_ip_adapter_scale(SCALE)
        self.encoder = CLIPVisionModelWithProjection.from_pretrained(
            ctx.folders["image_encoder"], torch_dtype=ctx.dtype, local_files_only=True).to(ctx.device).eval()
        size = self.encoder.config.image_size
        self.processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        arr = np.asarray(Image.open(ctx.photo).convert("RGB"))
        s = min(arr.shape[:2])
        self.face = np.ascontiguousarray(arr[:s, (arr.shape[1] - s) // 2:(arr.shape[1] - s) // 2 + s])
        self.blank = np.zeros((size, size, 3), dtype=np.uint8)
        self.id_pos = id_embedding(ctx)
        return pipe

    def conditioning(self) -> dict:
        import torch

        ctx = self.ctx
        with torch.no_grad():
            pix = self.processor(images=[self.face, self.blank], return_tensors="pt").pixel_values
            hs = self.encoder(pix.to(ctx.device, ctx.dtype), output_hidden_states=True).hidden_states[-2]
        proj = self.pipe.unet.encoder_hid_proj.image_projection_layers[0]
        proj.clip_embeds = torch.cat([hs[1:], hs[:1]]).unsqueeze(1)  # [uncond, cond]
        proj.shortcut = True
        proj.shortcut_scale = 1.0
        return {"ip_adapter_image_embeds": _ip_adapter_embeds(ctx, self.id_pos)}


class InstantIDBaseline(Baseline):
    label = ("diffusers StableDiffusionXLControlNetPipeline with the IdentityNet (scale 0.8) + "
             "load_ip_adapter(InstantID Resampler, scale 0.8); the 16 face tokens go to the IdentityNet "
             "through a forward pre-hook; a 5-keypoint control image")

    def load(self, ctx: Ctx):
        import diffusers

        folder = ctx.folders["instantid"]
        cn = from_folder(diffusers.ControlNetModel, folder / "ControlNetModel", ctx)
        pipe = load_sdxl(ctx, cls=diffusers.StableDiffusionXLControlNetPipeline, controlnet=cn)
        pipe.load_ip_adapter(str(folder), subfolder="", weight_name=ctx.folders["instantid_weights"].name,
                             image_encoder_folder=None)
        pipe.set_ip_adapter_scale(SCALE)
        self.tokens = None
        pipe.controlnet.register_forward_pre_hook(self._face_tokens, with_kwargs=True)
        self.kps = keypoint_image(ctx.width, ctx.height)
        self.id_pos = id_embedding(ctx)
        return pipe

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

    def conditioning(self) -> dict:
        import torch

        ctx = self.ctx
        proj = self.pipe.unet.encoder_hid_proj.image_projection_layers[0]
        emb = self.id_pos.to(ctx.device).reshape(1, 1, -1)
        with torch.no_grad():
            self.tokens = (proj(torch.zeros_like(emb)), proj(emb))
        return {"image": self.kps, "controlnet_conditioning_scale": IDENTITYNET_SCALE,
                "ip_adapter_image_embeds": _ip_adapter_embeds(ctx, self.id_pos)}


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


class PuLIDBaseline(Baseline):
    label = ("diffusers StableDiffusionXLPipeline + PuLID v1.1's ID attention processors installed into its UNet "
             "(the reference's attention_processor, ported) + per image EVA02-CLIP-L-336 visual tower on a face "
             "image and the IDFormer, cross_attention_kwargs id_embedding (scale 0.8, the reference negative)")

    def load(self, ctx: Ctx):
        from safetensors.torch import load_file

        from pipelines.identity.pulid import REFERENCE_NEGATIVE
        from pipelines.pulid.attention import install
        from pipelines.pulid.encoders import id_encoder_from_state
        from pipelines.pulid.eva import load_eva_visual

        self.negative = REFERENCE_NEGATIVE
        state = load_file(str(ctx.folders["pulid_weights"]))
        pipe = load_sdxl(ctx)
        install(pipe.unet, state)
        self.id_encoder = id_encoder_from_state(state).eval().to(ctx.device)  # float32, as the reference
        self.eva = load_eva_visual(load_file(str(ctx.folders["eva_weights"]))).to(ctx.device)
        self.id_pos = id_embedding(ctx).reshape(1, -1).float().to(ctx.device)
        return pipe

    def conditioning(self) -> dict:
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
        return {"negative_prompt": self.negative,
                "cross_attention_kwargs": {"id_embedding": emb, "id_scale": SCALE, "num_zero": 0, "ortho": "off"}}


class Arc2FaceBaseline(Baseline):
    label = ("diffusers StableDiffusionPipeline.from_pretrained(SD1.5 folder, unet=Arc2Face UNet, "
             "text_encoder=Arc2Face CLIPTextModel); per image the embedding in the 'id' token row of "
             "'photo of a id person' through the encoder (project_face_embs) as prompt_embeds")

    def load(self, ctx: Ctx):
        import diffusers
        from transformers import CLIPTextModel

        from pipelines.samplers import SAMPLERS, scheduler_class

        folder = ctx.folders["arc2face"]
        unet = from_folder(diffusers.UNet2DConditionModel, folder / "arc2face", ctx)
        encoder = CLIPTextModel.from_pretrained(folder / "encoder", dtype=ctx.dtype, local_files_only=True,
                                                use_safetensors=True)
        pipe = from_folder(diffusers.StableDiffusionPipeline, ctx.folders["sd15"], ctx, unet=unet,
                           text_encoder=encoder, variant=ctx.sd15_variant, use_safetensors=True,
                           safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        cls_name, extra = SAMPLERS[SAMPLER]  # the engine's sampler in quality mode (a speed mode replaces it)
        pipe.scheduler = scheduler_class(cls_name).from_config(pipe.scheduler.config, **extra)
        pipe.set_progress_bar_config(disable=True)
        self.id_pos = id_embedding(ctx).reshape(1, -1).float()
        return pipe.to(ctx.device)

    def conditioning(self) -> dict:
        from pipelines.identity.arc2face import project_face_embs

        # the embedding is the whole prompt: no text prompt beside prompt_embeds
        return {"prompt": None,
                "prompt_embeds": project_face_embs(self.pipe.tokenizer, self.pipe.text_encoder, self.id_pos)}


BASELINES = {"none": PlainSDXL, "faceid": FaceIDBaseline, "instantid": InstantIDBaseline, "pulid": PuLIDBaseline,
             "arc2face": Arc2FaceBaseline}
