"""The W+ adapter identity method (SD1.5, the published weights).

Face -> FFHQ alignment (insightface 5 points) at 512² -> face parsing (PSFRGAN
ParseNet) -> background and clothes whitened, 256² -> e4e W+ latent (18x512) ->
attribute edits along direction vectors (age, smile, lipstick, ...) -> 4 tokens
(`WProjModel`) -> residual cross-attention, with delayed conditioning (scale 0
for the first int(0.2 N) + 1 steps). The tokens travel as
`ip_adapter_image_embeds`, so they never reach a ControlNet and CFG is handled
by the pipeline.

This follows csxmli2016/w-plus-adapter: `script/ProcessWildImage.py` (face
preparation), `w_plus_adapter.py` / `wplus_pipeline.py` (start step) and
`test_demo.ipynb` (the recipe: Euler, cfg 7.5, its negative prompt, FreeU
s1 0.6 s2 0.4 b1 1.1 b2 1.2, the sd-vae-ft-mse VAE). Each recipe part is only a
default: a request that sets sampler, cfg, negative, freeu or vae keeps its
own value.

Deviations, and how to get the reference behaviour:
- alignment uses insightface's 5 points, not dlib's 68, and pads the FFHQ
  way where the W+ copy of the script leaves black (see `wplus/align.py`);
  there is no switch for dlib: the app has no dlib detector.
- no blind face restoration (the script's optional `-s` PSFRGAN pass); its
  default is off too.

Licence: NTU S-Lab 1.0 (non-commercial); the store asks for acceptance first.
"""

from __future__ import annotations

from ..errors import BadInput
from .base import Conditioning, IdentityMethod

ADAPTER = "wplus-adapter"
ENCODER = "e4e-ffhq"
DIRECTIONS = "wplus-directions"
PARSER, PARSER_FILE = "parsenet-psfrgan", "parse_multi_iter_90000.pth"
VAE = "sd-vae-ft-mse"  # the demo recipe's VAE (request vae "ft-mse", the W+ default)
# w_plus_adapter.py generate_idnoise: the negative prompt used when none is given
REFERENCE_NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"


class WPlusAdapter(IdentityMethod):
    name = "wplus"
    label, title = "W+ adapter (SD1.5)", "W+ adapter"
    help = "e4e W+ latent with attribute edits (SD1.5)"
    base = "sd15"
    required_models = (ADAPTER, ENCODER, DIRECTIONS, PARSER, VAE)
    recognizer = "buffalo_l"  # only its keypoints are used, for the FFHQ alignment
    default_scale = 1.0
    recipe_defaults = {"sampler": "euler", "cfg": 7.5, "negative": REFERENCE_NEGATIVE, "freeu": True,
                       "vae": "ft-mse"}

    def __init__(self, store, device, dtype):
        super().__init__(store, device, dtype)
        self.handle = None
        self._encoder = None
        self._latent_avg = None
        self._directions = None
        self._parser = None

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
        if self._parser is None:
            from ..wplus.parsing import load_parsenet

            self.store.ensure(PARSER)
            self._parser = load_parsenet(self.store.file_path(PARSER, PARSER_FILE))
        return self._encoder

    def directions(self) -> dict:
        self._ensure_encoder()
        return self._directions

    def wplus_latent(self, identity):
        """The identity's W+ latent from its reference photo, prepared as the
        reference does (512² FFHQ crop, background and clothes whitened, 256² to
        e4e); cached on the identity. Returns (w, aligned, prepared)."""
        from ..imageio import load_photo_array
        from ..wplus.align import align_face
        from ..wplus.e4e import encode_normalized
        from ..wplus.parsing import PARSE_SIZE, prepare_face

        cached = identity.__dict__.get("_wplus")
        if cached is not None:
            return cached
        if not identity.used:
            raise BadInput("method 'wplus' needs the person's photos (this identity card holds no photo).")
        source = identity.used[0]
        try:
            rgb = load_photo_array(source)
        except BadInput as exc:
            raise BadInput(f"method 'wplus' re-reads the reference photo: {exc}") from exc
        if (rgb.shape[1], rgb.shape[0]) != tuple(identity.image_size):
            import cv2

            rgb = cv2.resize(rgb, tuple(int(v) for v in identity.image_size), interpolation=cv2.INTER_AREA)
        encoder = self._ensure_encoder()
        aligned = align_face(rgb, identity.kps, size=PARSE_SIZE)
        prepared = prepare_face(aligned.image, self._parser)
        w = encode_normalized(encoder, prepared.tensor, self._latent_avg)[0]
        identity.__dict__["_wplus"] = (w, aligned, prepared)
        return w, aligned, prepared

    def conditioning(self, pipe, identity, request, width, height) -> Conditioning:
        from ..wplus.adapter import DelayedScale, wplus_embeds
        from ..wplus.edits import apply_edits, parse_edits

        if identity is None:
            raise BadInput("method 'wplus' needs photos of the person.")
        w, aligned, prepared = self.wplus_latent(identity)
        dirs = self.directions()
        edits = parse_edits(request.edits, dirs.keys()) if request.edits else []
        w_edit = apply_edits(w, edits, dirs) if edits else w
        scale = self.scale_for(request)
        schedule = DelayedScale(self.handle, scale, request.steps)
        recipe = {"scale": scale, "edits": [f"{n}={s:+g}" for n, s in edits],
                  "face_px": round(float(aligned.face_px), 1), "delay": schedule.delay,
                  "unconditioned_steps": schedule.delayed_steps(request.steps),
                  "whitened": round(prepared.whitened_fraction, 4), "parser": PARSER}
        if aligned.too_small:
            recipe["warning"] = (f"the face is {aligned.face_px:.0f} px, under the 160 px the W+ encoder "
                                 "was trained on; likeness may suffer")
        return Conditioning(
            call_kwargs={"ip_adapter_image_embeds": wplus_embeds(w_edit, request.cfg > 1.0, pipe.dtype, pipe.device)},
            callbacks=[schedule],
            recipe=recipe,
        )
