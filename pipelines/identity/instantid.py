"""InstantID on SDXL, built from diffusers' public building blocks.

Two parts (ANCHORS §2):
- the Resampler IP-adapter (`ip-adapter.bin`), which diffusers loads as an
  IP-Adapter Plus projection producing 16 face tokens from the raw antelopev2
  embedding, injected through decoupled cross-attention;
- IdentityNet, a stock SDXL `ControlNetModel` whose spatial input is an image of
  the 5 face keypoints and whose cross-attention input is those 16 face tokens
  instead of the text. The pipeline calls the ControlNet inline, so the tokens go
  in through a forward pre-hook on the IdentityNet instance; the hook is removed
  on unload (`unload_ip_adapter` does not touch the ControlNet).

Output size is always the request's bucket — never InstantID's ~2000 px default.
"""

from __future__ import annotations

import numpy as np

from .base import Conditioning, ControlUnit, IdentityMethod

MODEL = "instantid"
ADAPTER = "ip-adapter.bin"


class InstantID(IdentityMethod):
    name = "instantid"
    base = "sdxl"
    required_models = (MODEL,)
    recognizer = "antelopev2"
    default_scale = 0.8

    def __init__(self, store, device, dtype):
        super().__init__(store, device, dtype)
        self.identitynet = None
        self._hook = None
        self._tokens = None  # (uncond, cond) face tokens for the current request

    # ------------------------------------------------------------------ life
    def load(self, pipe) -> None:
        if self.loaded:
            return
        from diffusers import ControlNetModel

        folder = self.store.ensure(MODEL)
        weights = self.store.file_path(MODEL, ADAPTER)
        pipe.load_ip_adapter(str(folder), subfolder="", weight_name=weights.name, image_encoder_folder=None)
        if self.identitynet is None:  # resident across loads
            self.identitynet = ControlNetModel.from_pretrained(
                folder / "ControlNetModel", torch_dtype=self.dtype, local_files_only=True
            ).to(self.device).eval()
        self._hook = self.identitynet.register_forward_pre_hook(self._inject_tokens, with_kwargs=True)
        self.loaded = True

    def unload(self, pipe) -> None:
        if not self.loaded:
            return
        pipe.unload_ip_adapter()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._tokens = None
        self.loaded = False

    # ----------------------------------------------------------------- hook
    def _inject_tokens(self, module, args, kwargs):
        """Swap the ControlNet's text states for the face tokens, matching its batch.

        With CFG the batch is [uncond..., cond...]; in guess mode only the cond half
        is passed; num_images_per_prompt multiplies both halves."""
        import torch

        if self._tokens is None:
            return args, kwargs
        states = kwargs.get("encoder_hidden_states")
        batch = states.shape[0] if states is not None else args[0].shape[0]
        uncond, cond = self._tokens
        if batch % 2 == 0 and uncond is not None and batch >= 2:
            half = batch // 2
            tokens = torch.cat([uncond.expand(half, -1, -1), cond.expand(half, -1, -1)])
        else:
            tokens = cond.expand(batch, -1, -1)
        kwargs["encoder_hidden_states"] = tokens.to(device=module.device, dtype=module.dtype)
        return args, kwargs

    # ---------------------------------------------------------- conditioning
    def face_tokens(self, pipe, embedding):
        import torch

        proj = pipe.unet.encoder_hid_proj.image_projection_layers[0]
        emb = torch.as_tensor(np.asarray(embedding), dtype=self.dtype, device=self.device).reshape(1, 1, -1)
        with torch.no_grad():
            cond = proj(emb)
            uncond = proj(torch.zeros_like(emb))
        return uncond, cond

    def conditioning(self, pipe, identity, request, width, height) -> Conditioning:
        import torch

        from ..pose.render import render_face_keypoints

        raw = self.embedding_for(identity, raw=True)
        scale = self.scale_for(request)
        pipe.set_ip_adapter_scale(scale)
        do_cfg = request.cfg > 1.0
        uncond, cond = self.face_tokens(pipe, raw)
        self._tokens = (uncond if do_cfg else None, cond)
        pos = torch.as_tensor(np.asarray(raw), dtype=self.dtype).reshape(1, 1, 1, -1)
        embeds = torch.cat([torch.zeros_like(pos), pos]) if do_cfg else pos
        kps = fit_keypoints(np.asarray(identity.kps, dtype=np.float32), identity.image_size, (width, height))
        kps_image = render_face_keypoints(kps, width, height)
        unit = ControlUnit("identitynet", self.identitynet, kps_image, scale=request.identitynet_scale)
        return Conditioning(
            call_kwargs={"ip_adapter_image_embeds": [embeds.to(self.device)]},
            controlnets=[unit],
            recipe={"scale": scale, "identitynet_scale": request.identitynet_scale, "recognizer": self.recognizer},
        )


def fit_keypoints(kps: np.ndarray, src_size, dst_size) -> np.ndarray:
    """Map keypoints from the reference photo (w, h) into the output canvas, scaling
    the photo to cover the canvas and centring it (as a centre-crop resize would)."""
    sw, sh = src_size
    dw, dh = dst_size
    s = max(dw / sw, dh / sh)
    ox, oy = (dw - sw * s) / 2, (dh - sh * s) / 2
    out = kps.copy()
    out[:, 0] = kps[:, 0] * s + ox
    out[:, 1] = kps[:, 1] * s + oy
    return out
