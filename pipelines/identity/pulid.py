"""PuLID v1.1 for SDXL (ToTheBeginning/PuLID `pulid/pipeline_v1_1.py`,
`app_v1_1.py`, `pulid/encoders_transformer.py`, `pulid/attention_processor.py`).

Conditioning, as the reference computes it:
- ID embedding: antelopev2's raw (not normed) embedding of the face;
- face features: the photo (long side <= 1024, Lanczos) aligned to facexlib's
  512 FFHQ crop, BiSeNet-parsed, background white and face grey, resized to the
  EVA input without antialias, through EVA02-CLIP-L-14-336's visual tower: the
  normed CLS embedding and the hidden states before blocks 4, 8, 12, 16, 20
  (`pipelines/pulid/preprocess.py`, `eva.py`);
- `IDFormer(cat(raw 512, EVA 768), hidden states)` -> 32 ID tokens; the
  unconditional tokens are the IDFormer on zeros (not zero tokens);
- the ID attention processors on every attn2 with id_scale, 20 zero tokens and
  ortho "v2" (the v1.1 demo's defaults; request `pulid_num_zero`, `pulid_ortho`,
  `--pulid-num-zero`, `--pulid-ortho`), passed per call in
  `cross_attention_kwargs` (`pipelines/pulid/attention.py`); without CFG only
  the conditional tokens go in;
- encoders and ID projections in float32, as the reference.

Deviations, and how to get the reference behaviour:
- landmarks: facexlib's RetinaFace-R50 on the photo, the face nearest the
  centre, as the reference (`pipelines/pulid/retinaface.py`); but in a photo
  with several faces the detection nearest the identity's chosen face is used
  (the reference may crop another person than the one it embeds), and where
  RetinaFace finds no face the identity's own landmarks are used with a
  warning (the reference stops). A one-face photo gives the reference's crop.
- sampler: no deviation. The default, `kdpmpp_2m_karras` (`pipelines/kdiffusion.py`),
  computes the reference's k-diffusion DPM++ 2M Karras port step for step
  (sigmas, integer timesteps, input scaling, initial noise, update).
  diffusers' `dpmpp_2m_karras` stays selectable; it maps timesteps differently
  (max 0.15 on a fake model over 25 steps). The reference calls the UNet twice
  (positive, negative); the engine's one batched CFG call is the same up to
  float rounding. With fp16 latents the reference rounds sigma to fp16 before
  the timestep map (which can move t by one); the scheduler does so when it is
  made with the pipeline's dtype (`make_scheduler(..., dtype=torch.float16)`).
- several photos: only the first photo's face features are used (v1.1 stacks
  all photos' tokens).
- PuLID v1 (IDEncoder on the SDXL-Lightning 4-step UNet) is `PuLIDV1` below
  (method "pulid-v1"); its supplementary-photo "ID mix" is not offered.

Licence: Apache-2.0 code and weights; insightface antelopev2 makes it research-only.
"""

from __future__ import annotations

from typing import ClassVar

from ..errors import BadInput, ModelError
from .base import Conditioning, IdentityMethod

WEIGHTS, WEIGHTS_FILE = "pulid-v1.1", "pulid_v1.1.safetensors"
EVA, EVA_FILE = "eva02-clip-l-336", "EVA02_CLIP_L_336_psz14_s6B.pt"
PARSER, PARSER_FILE = "facexlib-bisenet", "parsing_bisenet.pth"
DETECTOR, DETECTOR_FILE = "facexlib-retinaface", "detection_Resnet50_Final.pth"
MAX_SIDE = 1024  # app_v1_1.py resize_numpy_image_long(image, 1024)
# app_v1_1.py DEFAULT_NEGATIVE_PROMPT, character for character (two pieces join without a space)
REFERENCE_NEGATIVE = (
    "flaws in the eyes, flaws in the face, flaws, lowres, non-HDRi, low quality, worst quality,"
    "artifacts noise, text, watermark, glitch, deformed, mutated, ugly, disfigured, hands, "
    "low resolution, partially rendered objects,  deformed or partially rendered eyes, "
    "deformed, deformed eyeballs, cross-eyed,blurry"
)


class PuLID(IdentityMethod):
    name = "pulid"
    label, title = "PuLID v1.1", "PuLID v1.1 (SDXL)"
    help = "ID encoder from ArcFace + EVA-CLIP face features, ID attention with orthogonal mixing (SDXL)"
    base = "sdxl"
    required_models: ClassVar[tuple[str, ...]] = (WEIGHTS, EVA, PARSER, DETECTOR)
    recognizer = "antelopev2"
    default_scale = 0.8
    # app_v1_1.py, its full-step base (Juggernaut-XL-v9): k-diffusion's DPM++ 2M Karras (pulid/utils.py),
    # 25 steps, cfg 7, its negative
    recipe_defaults = {"sampler": "kdpmpp_2m_karras", "steps": 25, "cfg": 7.0, "negative": REFERENCE_NEGATIVE}
    version = "v1.1"
    weights = (WEIGHTS, WEIGHTS_FILE)

    def __init__(self, store, device, dtype):
        super().__init__(store, device, dtype)
        self._saved = None
        self.id_encoder = None
        self.eva = None
        self._parser = None
        self._detector = None
        self._features: dict[tuple, tuple] = {}  # (identity hash, first photo) -> face_features

    # ------------------------------------------------------------ life
    def load(self, pipe) -> None:
        if self.loaded:
            return
        from ..pulid.attention import install

        state = self._weights()
        unet = self._id_unet(pipe)
        try:
            self._saved = install(unet, state, source=str(self.store.file_path(*self.weights)))
        except (KeyError, ValueError) as exc:
            raise ModelError(f"PuLID weights do not fit this UNet: {exc}") from exc
        self._ensure_encoders(state)
        self.loaded = True

    def _id_unet(self, pipe):
        """The UNet the ID attention goes into (v1.1: the base's own)."""
        return pipe.unet

    def unload(self, pipe) -> None:
        if not self.loaded:
            return
        from ..pulid.attention import remove

        remove(self._id_unet(pipe), self._saved)
        self._saved = None
        self.loaded = False

    def _weights(self) -> dict:
        from safetensors.torch import load_file

        self.store.ensure(self.weights[0])
        return load_file(str(self.store.file_path(*self.weights)))

    def _ensure_encoders(self, state: dict | None = None) -> None:
        from safetensors.torch import load_file

        if self.id_encoder is None:
            from ..pulid.encoders import id_encoder_from_state

            state = state if state is not None else self._weights()
            try:
                net = id_encoder_from_state(state)
            except (KeyError, RuntimeError, ValueError) as exc:
                raise ModelError(f"the PuLID ID encoder (id_adapter.*) could not be loaded: {exc}") from exc
            self.id_encoder = net.eval().to(self.device)  # float32, as the reference
        if self.eva is None:
            from ..pulid.eva import load_eva_visual

            self.store.ensure(EVA)
            try:
                self.eva = load_eva_visual(load_file(str(self.store.file_path(EVA, EVA_FILE)))).to(self.device)
            except (KeyError, RuntimeError, ValueError) as exc:
                raise ModelError(f"the EVA-CLIP visual tower could not be loaded: {exc}") from exc
        if self._parser is None:
            from ..pulid.parsing import bisenet_from_state

            self.store.ensure(PARSER)
            try:
                self._parser = bisenet_from_state(load_file(str(self.store.file_path(PARSER, PARSER_FILE))))
            except (KeyError, RuntimeError) as exc:
                raise ModelError(f"the BiSeNet face parser could not be loaded: {exc}") from exc
            self._parser = self._parser.to(self.device)
        if self._detector is None:
            from ..pulid.retinaface import retinaface_from_state

            self.store.ensure(DETECTOR)
            try:
                self._detector = retinaface_from_state(load_file(str(self.store.file_path(DETECTOR, DETECTOR_FILE))))
            except (KeyError, RuntimeError) as exc:
                raise ModelError(f"the RetinaFace detector could not be loaded: {exc}") from exc
            self._detector = self._detector.to(self.device)

    # ---------------------------------------------------------- tokens
    def face_features(self, identity):
        """(aligned 512 crop, whitened grey image, id_cond [1, 512 + embed], EVA
        hidden states, landmark source), cached here per identity (by its
        embeddings' hash and reference photo)."""
        import cv2
        import numpy as np
        import torch

        from ..imageio import load_photo_array
        from ..pulid.eva import eva_features, eva_input
        from ..pulid.preprocess import align_face, parse_labels, whiten_background

        if not identity.used:
            raise BadInput(f"method {self.name!r} needs the person's photos (this identity card holds no photo).")
        key = (identity.hash, str(identity.used[0]))
        if key in self._features:
            return self._features[key]
        try:
            rgb = load_photo_array(identity.used[0])
        except BadInput as exc:
            raise BadInput(f"method {self.name!r} re-reads the reference photo: {exc}") from exc
        w, h = (int(v) for v in identity.image_size)
        kps = np.asarray(identity.kps, np.float32).reshape(5, 2)
        scale = min(1.0, MAX_SIDE / max(w, h))
        size = (max(1, int(w * scale)), max(1, int(h * scale)))
        if (rgb.shape[1], rgb.shape[0]) != size:
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_LANCZOS4)
        kps, source = self._landmarks(identity, rgb, kps * scale)
        aligned = align_face(rgb, kps)
        labels = parse_labels(self._parser, aligned)
        grey = whiten_background(aligned, labels)
        with torch.no_grad():
            x = eva_input(grey.to(self.device), self.eva.patch_embed.img_size[0])
            vit_cond, hidden = eva_features(self.eva, x)
        raw = torch.as_tensor(self.embedding_for(identity, raw=True), dtype=torch.float32, device=self.device)
        id_cond = torch.cat([raw.reshape(1, -1), vit_cond], dim=-1)
        out = (aligned, grey, id_cond, hidden, source)
        self._features[key] = out
        return out

    def _landmarks(self, identity, rgb, fallback):
        """facexlib's landmarks: RetinaFace on the (resized) photo, the face nearest
        the image centre, as the reference. When the photo shows several faces, the
        one nearest the face this identity was built from (so the crop and the
        embedding show the same person; the reference can mix two people). When
        RetinaFace finds none (always with random demo weights), the identity's
        own landmarks, and the recipe says so. Returns (kps, source)."""
        import numpy as np

        from ..pulid.retinaface import center_face_landmarks

        group = any(c.faces > 1 for c in getattr(identity, "faces", [])[:1])
        found = center_face_landmarks(self._detector, rgb, centre=fallback.mean(axis=0) if group else None)
        if found is None:
            return fallback, "identity (RetinaFace found no face)"
        return found.astype(np.float32), "retinaface"

    def id_tokens(self, identity):
        """(cond, uncond) ID tokens [1, 32, 2048]: the IDFormer on the face, and on
        zeros (the reference's unconditional branch)."""
        import torch

        self._ensure_encoders()
        _, _, id_cond, hidden, _ = self.face_features(identity)
        with torch.no_grad():
            cond = self.id_encoder(id_cond, hidden)
            uncond = self.id_encoder(torch.zeros_like(id_cond), [torch.zeros_like(t) for t in hidden])
        return cond, uncond

    def conditioning(self, pipe, identity, request, width, height) -> Conditioning:
        import torch

        if identity is None:
            raise BadInput(f"method {self.name!r} needs photos of the person.")
        scale = self.scale_for(request)
        num_zero, ortho = request.pulid_num_zero, request.pulid_ortho
        recipe = {"scale": scale, "version": self.version, "num_zero": num_zero, "ortho": ortho}
        if scale == 0:
            return Conditioning(recipe=recipe)
        cond, uncond = self.id_tokens(identity)
        source = self.face_features(identity)[4]
        recipe["landmarks"] = source
        if source != "retinaface":
            recipe["warnings"] = ["PuLID's RetinaFace found no face (score > 0.97) in the reference photo; the "
                                  "face crop was aligned on the identity's own landmarks instead"]
        emb = torch.cat([uncond, cond]) if request.cfg > 1.0 else cond
        return Conditioning(
            cross_attention_kwargs={"id_embedding": emb, "id_scale": scale, "num_zero": num_zero, "ortho": ortho},
            recipe=recipe,
        )


LIGHTNING, LIGHTNING_FILE = "sdxl-lightning-4step-unet", "sdxl_lightning_4step_unet.safetensors"


class PuLIDV1(PuLID):
    """PuLID v1 (`pulid/pipeline.py`, `app.py`): the IDEncoder (10 tokens) on
    ByteDance's SDXL-Lightning 4-step UNet, which replaces the base's UNet while the
    method is loaded (the reference builds its pipeline on it). Its demo's
    defaults: DPM-Solver++ 2M with trailing timesteps ending at sigma_min (what
    diffusers 0.25, the reference's pin, did), 4 steps, cfg 1.2, "fidelity" mode
    (8 zero tokens, ortho v2; "extremely style" = `--pulid-num-zero 16
    --pulid-ortho v1`), the same negative prompt as v1.1. At scale 0 the base's own
    UNet runs, as for every method (scale 0 is the plain base)."""

    name = "pulid-v1"
    label, title = "PuLID v1 (Lightning)", "PuLID v1 (SDXL-Lightning 4-step)"
    help = "PuLID's first release on the SDXL-Lightning 4-step UNet: 4 steps, cfg 1.2 (SDXL)"
    required_models = ("pulid-v1", LIGHTNING, EVA, PARSER, DETECTOR)
    recipe_defaults = {"sampler": "dpmpp_2m_trailing", "steps": 4, "cfg": 1.2, "negative": REFERENCE_NEGATIVE,
                       "pulid_num_zero": 8, "pulid_ortho": "v2"}
    version = "v1"
    weights = ("pulid-v1", "pulid_v1.bin")
    few_step = True  # its UNet is SDXL-Lightning 4-step already: no speed LoRA on top (pipelines/speed.py)

    def __init__(self, store, device, dtype):
        super().__init__(store, device, dtype)
        self._base_unet = None
        self._lightning = None

    def _id_unet(self, pipe):
        if self._lightning is None:
            from diffusers import UNet2DConditionModel
            from safetensors.torch import load_file

            self.store.ensure(LIGHTNING)
            path = self.store.file_path(LIGHTNING, LIGHTNING_FILE)
            unet = UNet2DConditionModel.from_config(pipe.unet.config)
            try:
                unet.load_state_dict(load_file(str(path)), strict=True)
            except RuntimeError as exc:
                raise ModelError(f"{path} is not an SDXL UNet of this base's shape: {exc}") from exc
            self._lightning = unet.eval().requires_grad_(False).to(pipe.unet.device, pipe.unet.dtype)
        return self._lightning

    def load(self, pipe) -> None:
        if self.loaded:
            return
        self._base_unet = pipe.unet
        super().load(pipe)
        _use_unet(pipe, self._lightning)

    def unload(self, pipe) -> None:
        if not self.loaded:
            return
        super().unload(pipe)
        _use_unet(pipe, self._base_unet)
        self._base_unet = None

    def conditioning(self, pipe, identity, request, width, height) -> Conditioning:
        if request.loras:  # they would go into the swapped-in UNet and stay behind it
            raise BadInput("loras cannot be used with method 'pulid-v1': it runs on the SDXL-Lightning UNet, "
                           "not the base's the LoRAs were trained for; use method 'pulid' (v1.1).")
        cond = super().conditioning(pipe, identity, request, width, height)
        _use_unet(pipe, self._base_unet if self.scale_for(request) == 0 else self._lightning)
        cond.recipe["unet"] = LIGHTNING if self.scale_for(request) else "base"
        return cond


def _use_unet(pipe, unet) -> None:
    """Make `unet` the pipeline's; with model CPU offload the hooks are rebuilt."""
    if pipe.unet is unet:
        return
    pipe.register_modules(unet=unet)
    if getattr(pipe, "_all_hooks", None):
        pipe.enable_model_cpu_offload(device=getattr(pipe, "_offload_device", None))
