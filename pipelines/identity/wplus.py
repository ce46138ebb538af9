"""The W+ adapter identity method (SD1.5, the published weights).

Face -> FFHQ alignment (insightface 5 points) -> e4e W+ latent (18x512) ->
attribute edits along direction vectors (age, smile, ...) -> 4 tokens
(`WProjModel`) -> residual cross-attention, with delayed conditioning (scale 0 for
the first ~20 % of the steps). The tokens travel as `ip_adapter_image_embeds`, so
they never reach a ControlNet and CFG is handled by the pipeline.

Licence: NTU S-Lab 1.0 (non-commercial); the store asks for acceptance first.
"""

from __future__ import annotations

from ..errors import BadInput
from .base import Conditioning, IdentityMethod

ADAPTER = "wplus-adapter"
ENCODER = "e4e-ffhq"
DIRECTIONS = "wplus-directions"


class WPlusAdapter(IdentityMethod):
    name = "wplus"
    base = "sd15"
    required_models = (ADAPTER, ENCODER, DIRECTIONS)
    recognizer = "buffalo_l"  # only its keypoints are used, for the FFHQ alignment
    default_scale = 1.0

    def __init__(self, store, device, dtype):
        super().__init__(store, device, dtype)
        self.handle = None
        self._encoder = None
        self._latent_avg = None
        self._directions = None

    def load(self, pipe) -> None:
        if self.loaded:
            return
        from ..wplus.adapter import install_wplus, load_adapter_file

        self.store.ensure(ADAPTER)
        state = load_adapter_file(self.store.file_path(ADAPTER, "wplus_adapter.bin"))
        self.handle = install_wplus(pipe.unet, state, scale=self.default_scale,
                                    source=str(self.store.file_path(ADAPTER, "wplus_adapter.bin")))
        self._ensure_encoder()
        self.loaded = True

    def unload(self, pipe) -> None:
        if not self.loaded:
            return
        from ..wplus.adapter import remove_wplus

        remove_wplus(pipe.unet, self.handle)
        self.handle = None
        self.loaded = False

    def _ensure_encoder(self):
        if self._encoder is None:
            from ..wplus.e4e import load_e4e
            from ..wplus.edits import load_directions

            self.store.ensure(ENCODER)
            self._encoder, self._latent_avg = load_e4e(self.store.file_path(ENCODER, "e4e_ffhq_encode.pt"),
                                                       device="cpu")
            self._directions = load_directions(self.store.ensure(DIRECTIONS))
        return self._encoder

    def directions(self) -> dict:
        self._ensure_encoder()
        return self._directions

    def wplus_latent(self, identity):
        """The identity's W+ latent from its reference photo (cached on the identity)."""
        from ..imageio import load_photo_array
        from ..wplus.align import align_face
        from ..wplus.e4e import encode

        cached = identity.__dict__.get("_wplus")
        if cached is not None:
            return cached
        if not identity.used:
            raise BadInput("method 'wplus' needs the person's photos (this identity card holds no photo).")
        source = identity.used[0]
        try:
            rgb = load_photo_array(source)
        except BadInput as exc:
            raise BadInput(f"method 'wplus' re-reads the reference photo: {exc}") from None
        if (rgb.shape[1], rgb.shape[0]) != tuple(identity.image_size):
            import cv2

            rgb = cv2.resize(rgb, tuple(int(v) for v in identity.image_size), interpolation=cv2.INTER_AREA)
        aligned = align_face(rgb, identity.kps)
        w = encode(self._ensure_encoder(), aligned.image, self._latent_avg)
        identity.__dict__["_wplus"] = (w, aligned)
        return w, aligned

    def conditioning(self, pipe, identity, request, width, height) -> Conditioning:
        from ..wplus.adapter import DelayedScale, wplus_embeds
        from ..wplus.edits import apply_edits, parse_edits

        if identity is None:
            raise BadInput("method 'wplus' needs photos of the person.")
        w, aligned = self.wplus_latent(identity)
        dirs = self.directions()
        edits = parse_edits(request.edits, dirs.keys()) if request.edits else []
        w_edit = apply_edits(w, edits, dirs) if edits else w
        scale = self.scale_for(request)
        schedule = DelayedScale(self.handle, scale, request.steps)
        recipe = {"scale": scale, "edits": [f"{n}={s:+g}" for n, s in edits],
                  "face_px": round(float(aligned.face_px), 1), "delay": schedule.delay}
        if aligned.too_small:
            recipe["warning"] = (f"the face is {aligned.face_px:.0f} px, under the 160 px the W+ encoder "
                                 "was trained on; likeness may suffer")
        return Conditioning(
            call_kwargs={"ip_adapter_image_embeds": wplus_embeds(w_edit, request.cfg > 1.0, pipe.dtype, pipe.device)},
            callbacks=[schedule],
            recipe=recipe,
        )
