"""Live previews decoded by the real tiny autoencoders: TAESDXL for SDXL latents,
TAESD for SD1.5 (madebyollin/taesdxl, madebyollin/taesd, through diffusers
`AutoencoderTiny`).

TAESD decodes the latents the UNet works on (the scaled latents: diffusers runs
it as a pipeline VAE with `scaling_factor` 1.0), and `AutoencoderTiny.decode`
returns pixels in [-1, 1]. A preview costs one small decoder pass, a few ms on a
GPU, and is only computed when a front door asks for it (`decode_preview` in
the step info). Without the model on disk the front door falls back to the
latent -> RGB projection (app/progress.py); nothing is downloaded for a preview.
"""

from __future__ import annotations

import threading

from .profile import profile_of

PREVIEW_MODELS = {"sdxl": "taesdxl", "sd15": "taesd"}


class PreviewDecoder:
    def __init__(self, store, settings, device: str, dtype):
        self.store = store
        self.settings = settings
        self.device = device
        self.dtype = dtype
        self._models: dict[str, object] = {}
        self._lock = threading.Lock()

    def available(self, family: str) -> bool:
        name = PREVIEW_MODELS.get(family)
        if name is None:
            return False
        if profile_of(self.settings).builds_models:
            return True  # the tiny pack is built on first use
        return self.store.status(name).present

    def model(self, family: str):
        """The AutoencoderTiny for `family`, loaded once; None when it is not on disk."""
        with self._lock:
            if family in self._models:
                return self._models[family]
            model = None
            if self.available(family):
                from diffusers import AutoencoderTiny

                folder = self.store.ensure(PREVIEW_MODELS[family])
                model = AutoencoderTiny.from_pretrained(folder, local_files_only=True, torch_dtype=self.dtype)
                model = model.to(self.device).eval()
            self._models[family] = model
            return model

    def decode(self, latents, family: str):
        """(B, 4, h, w) latents -> PIL image of the first one, or None without a model."""
        import numpy as np
        import torch
        from PIL import Image

        model = self.model(family)
        if model is None:
            return None
        with torch.inference_mode():
            x = latents[:1].to(self.device, self.dtype)
            pixels = model.decode(x).sample[0].float().clamp(-1, 1)
        arr = ((pixels.permute(1, 2, 0).cpu().numpy() + 1.0) * 127.5 + 0.5).astype(np.uint8)
        return Image.fromarray(arr)
