"""IP-Adapter FaceID Plus v2 for SDXL, through diffusers `load_ip_adapter`.

Conditioning = the buffalo_l normed ArcFace embedding (4 ID tokens through the
projection MLP) + CLIP ViT-H penultimate features of the aligned face (perceiver
resampler), with `shortcut` and `s_scale` (face-structure weight) set on the
projection layer. The .bin also carries a LoRA on attention that diffusers loads as
the peft adapter `faceid_0`; `unload` deletes it (diffusers' `unload_ip_adapter`
does not), so the base pipeline is left exactly as before.

What the reference computes (tencent-ailab/IP-Adapter `ip_adapter/ip_adapter_faceid.py`,
`IPAdapterFaceIDPlusXL.get_image_embeds`), and this file does too: the
unconditional ID embedding is zeros, and the unconditional CLIP input is the
image encoder run on an all-zero *pixel tensor* (`torch.zeros_like` of the
processed face), which is also what diffusers' `encode_image` does -- not the
processor applied to a black picture (that normalises to about -1.8, not 0).

Two deliberate differences, each with a way back to the reference:
- The attention LoRA's weight fades with the adapter scale below the default
  0.8 (weight = scale / 0.8, capped at 1), so scale 0 is exactly the base model
  and a low scale weakens the whole adapter, not only its tokens. The reference
  keeps the LoRA at 1.0 whatever the scale. Reference: `faceid_lora_weight=1.0`
  (`--faceid-lora-weight 1`); any fixed weight can be given.
- The aligned face crop goes to the CLIP image encoder in RGB. The model card's
  example passes insightface's BGR crop (a cv2 image) to the RGB processor;
  tencent-ailab/IP-Adapter#430 reports that as a bug, and CLIP was trained on
  RGB. Reference card behaviour: `faceid_crop_channels="bgr"`
  (`--faceid-crop-channels bgr`).
"""

from __future__ import annotations

import numpy as np

from ..lora.adapters import delete_adapter, peft_adapters, set_adapter_weights
from .base import Conditioning, IdentityMethod

MODEL = "ip-adapter-faceid-plusv2-sdxl"
ENCODER = "clip-vit-h-image-encoder"
WEIGHTS = "ip-adapter-faceid-plusv2_sdxl.bin"
LORA_NAME = "faceid_0"


class FaceIDPlusV2(IdentityMethod):
    name = "faceid"
    label, title = "FaceID Plus v2", "IP-Adapter FaceID Plus v2"
    help = "ArcFace embedding + CLIP face features through IP-Adapter (SDXL)"
    base = "sdxl"
    required_models = (MODEL, ENCODER)
    recognizer = "buffalo_l"
    default_scale = 0.8
    supports_batch = True  # -n as one call: see prepare_batch

    def __init__(self, store, device, dtype):
        super().__init__(store, device, dtype)
        self._encoder = None
        self._processor = None
        self._user_lora_weights: dict[str, float] = {}  # the user LoRAs active beside faceid_0

    # ------------------------------------------------------------------ life
    def load(self, pipe) -> None:
        if self.loaded:
            return
        folder = self.store.ensure(MODEL)
        weights = self.store.file_path(MODEL, WEIGHTS)  # the converted .safetensors
        pipe.load_ip_adapter(str(folder), subfolder="", weight_name=weights.name, image_encoder_folder=None)
        self._ensure_encoder()
        self.loaded = True

    def unload(self, pipe) -> None:
        if not self.loaded:
            return
        pipe.unload_ip_adapter()
        delete_adapter([pipe.unet], LORA_NAME)  # unload_ip_adapter leaves the LoRA in place
        self._user_lora_weights = {}
        self.loaded = False

    def _ensure_encoder(self):
        if self._encoder is None:
            from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

            folder = self.store.ensure(ENCODER) / "models" / "image_encoder"
            self._encoder = CLIPVisionModelWithProjection.from_pretrained(
                folder, torch_dtype=self.dtype, local_files_only=True
            ).to(self.device).eval()
            size = self._encoder.config.image_size
            self._processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        return self._encoder

    def prepare_batch(self, pipe, n: int) -> None:
        """Before a call making `n` images: diffusers repeats the ID embeddings per
        image ([uncond] * n + [cond] * n) but not the CLIP features the projection
        holds, so they are repeated here the same way (n = 1 puts them back)."""
        clip = getattr(self, "_clip", None)
        if clip is None:
            return
        proj = pipe.unet.encoder_hid_proj.image_projection_layers[0]
        if clip.shape[0] == 2:  # [uncond, cond]
            proj.clip_embeds = clip.repeat_interleave(n, dim=0)
        else:
            proj.clip_embeds = clip.repeat(n, *([1] * (clip.ndim - 1)))

    def set_lora_weight(self, pipe, weight: float) -> None:
        """Weight of the FaceID attention LoRA; the active user LoRAs (as last
        given to `refresh_adapters`) keep theirs."""
        self._lora_weight = float(weight)
        set_adapter_weights(pipe, {LORA_NAME: float(weight), **self._user_lora_weights})

    def refresh_adapters(self, pipe, user_lora_weights: dict[str, float]) -> None:
        """Re-apply the FaceID LoRA weight after the user LoRAs changed, so both
        the FaceID LoRA and the user LoRAs are active."""
        self._user_lora_weights = dict(user_lora_weights)
        if self.loaded and LORA_NAME in peft_adapters(pipe.unet):
            self.set_lora_weight(pipe, getattr(self, "_lora_weight", 1.0))

    # ---------------------------------------------------------- conditioning
    def lora_weight_for(self, request, scale: float) -> float:
        """The attention LoRA's weight: the request's `faceid_lora_weight` if set
        (1.0 = the reference), else full at the default scale and fading to 0
        with it, so scale 0 is exactly the base model (a deliberate choice; see
        the module docstring)."""
        fixed = getattr(request, "faceid_lora_weight", None)
        if fixed is not None:
            return float(fixed)
        return min(scale / self.default_scale, 1.0)

    def clip_features(self, crops: list[np.ndarray], channels: str = "rgb"):
        """(uncond, cond): penultimate CLIP hidden states of the image encoder on an
        all-zero pixel tensor (the reference's unconditional input), and of the
        aligned face crops averaged over photos. `channels="bgr"` reverses the
        crops' channels first (the model card's input; see the module docstring)."""
        import torch

        enc = self._ensure_encoder()
        if channels == "bgr":
            crops = [np.ascontiguousarray(c[..., ::-1]) for c in crops]
        with torch.no_grad():
            pix = self._processor(images=list(crops), return_tensors="pt").pixel_values.to(self.device, self.dtype)
            cond = enc(pix, output_hidden_states=True).hidden_states[-2].mean(dim=0, keepdim=True)
            uncond = enc(torch.zeros_like(pix[:1]), output_hidden_states=True).hidden_states[-2]
        return uncond, cond

    def conditioning(self, pipe, identity, request, width, height) -> Conditioning:
        import torch

        emb = self.embedding_for(identity)
        scale = self.scale_for(request)
        pipe.set_ip_adapter_scale(scale)
        lora_weight = self.lora_weight_for(request, scale)
        self.set_lora_weight(pipe, lora_weight)
        id_pos = torch.as_tensor(np.asarray(emb), dtype=self.dtype).reshape(1, 1, 1, -1)
        channels = getattr(request, "faceid_crop_channels", "rgb")
        uncond_clip, cond_clip = self.clip_features(list(identity.crops), channels)
        do_cfg = request.cfg > 1.0
        proj = pipe.unet.encoder_hid_proj.image_projection_layers[0]
        if do_cfg:
            embeds = torch.cat([torch.zeros_like(id_pos), id_pos])
            clip = torch.cat([uncond_clip, cond_clip]).unsqueeze(1)
        else:
            embeds = id_pos
            clip = cond_clip.unsqueeze(1)
        proj.clip_embeds = clip.to(self.device, self.dtype)
        self._clip = proj.clip_embeds
        proj.shortcut = bool(request.shortcut)
        proj.shortcut_scale = float(request.s_scale)
        return Conditioning(
            call_kwargs={"ip_adapter_image_embeds": [embeds.to(self.device)]},
            recipe={"scale": scale, "lora_weight": round(lora_weight, 4), "s_scale": request.s_scale, "shortcut": request.shortcut,
                    "recognizer": self.recognizer, "crop_channels": channels},
        )


