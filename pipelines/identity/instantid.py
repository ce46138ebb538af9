"""InstantID on SDXL, built from diffusers' public building blocks.

Two parts (InstantX/InstantID `pipeline_stable_diffusion_xl_instantid.py`):
- the Resampler IP-adapter (`ip-adapter.bin`), which diffusers loads as an
  IP-Adapter Plus projection producing 16 face tokens from the raw antelopev2
  embedding, injected through decoupled cross-attention;
- IdentityNet, a stock SDXL `ControlNetModel` whose spatial input is an image of
  the 5 face keypoints and whose cross-attention input is those 16 face tokens
  instead of the text. The pipeline calls the ControlNet inline, so the tokens go
  in through a forward pre-hook on the IdentityNet instance; the hook is removed
  on unload (`unload_ip_adapter` does not touch the ControlNet).

The keypoint image is the reference `draw_kps` drawing, pixel for pixel
(`pipelines.pose.render.render_face_keypoints`).

Where the face goes (`place_face`). The reference resizes the whole photo and
generates at the photo's aspect; here the output is an SDXL bucket. Without an
explicit width/height the engine picks the bucket nearest the reference photo's
aspect (`follows_photo_aspect`), so the photo fills it with the least cropping.
The photo is scaled to cover the canvas (as a resize + crop would) and the crop
window is centred, then shifted just enough to keep the whole face box inside.
Only when the face box is larger than the canvas at that scale (a tight size was
requested) is it scaled down to fit; that, and any keypoint a pose template
puts off the canvas, is a warning in the recipe and on the command line, never
a silent all-black IdentityNet input.

"Enhance non-face region" (`enhance_face_region`, default on as in the official
demo `gradio_demo/app.py`): a 0/1 mask of the face box (int-truncated box, as
the demo builds it) multiplies IdentityNet's down and mid residuals (bilinear to
each residual's size, as `pipeline_stable_diffusion_xl_instantid_full.py` does
for its 1/8, 1/16, 1/32 list) and the face IP-attention output (nearest to each
attention layer's token grid, as `region_control` in `ip_adapter/attention_processor.py`;
the mask and those attention processors are pipelines/instantid/region.py).
Outside the face the image then follows the prompt alone. The demo takes the box
from the photo or pose image it detects on; with a pose template here, the
photo's face box is carried along by the similarity transform that maps the
photo's 5 keypoints onto the template's. One deliberate difference: a box edge
left of or above the canvas is clipped to 0 (the demo's numpy slice would wrap
a negative index round to the other side).

Off (`enhance_face_region=False`) gives the reference `infer.py`/README
behaviour: no masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..instantid.region import (
    FaceRegion,
    _region_class,  # noqa: F401  (re-exported)
    clip_box,
    install_region_processors,
)
from .base import Conditioning, ControlUnit, IdentityMethod

MODEL = "instantid"
ADAPTER = "ip-adapter.bin"
FIT_MARGIN = 0.9  # a face scaled down to fit keeps 5 % of the canvas free on each side


def with_face_tokens(tokens, module, args, kwargs):
    """IdentityNet's forward pre-hook: its text states swapped for the face tokens
    `tokens` = (uncond or None, cond), matching the call's batch. With CFG the
    batch is [uncond..., cond...]; in guess mode only the cond half is passed;
    num_images_per_prompt multiplies both halves. Also the two-person views'
    hook (pipelines/multi_person.py), each with its own person's tokens."""
    import torch

    states = kwargs.get("encoder_hidden_states")
    batch = states.shape[0] if states is not None else args[0].shape[0]
    uncond, cond = tokens
    if batch % 2 == 0 and uncond is not None and batch >= 2:
        half = batch // 2
        tokens = torch.cat([uncond.expand(half, -1, -1), cond.expand(half, -1, -1)])
    else:
        tokens = cond.expand(batch, -1, -1)
    kwargs["encoder_hidden_states"] = tokens.to(device=module.device, dtype=module.dtype)
    return args, kwargs


class InstantID(IdentityMethod):
    name = "instantid"
    label = title = "InstantID"
    help = "face tokens + IdentityNet keypoint ControlNet (SDXL)"
    base = "sdxl"
    required_models = (MODEL,)
    recognizer = "antelopev2"
    default_scale = 0.8
    #: without an explicit size, the engine picks the bucket nearest the photo's aspect
    follows_photo_aspect = True

    def __init__(self, store, device, dtype):
        super().__init__(store, device, dtype)
        self.identitynet = None
        self._hooks: list = []
        self._tokens = None  # (uncond, cond) face tokens for the current request
        self.region = FaceRegion()  # the face mask of the current request (or none)

    # ------------------------------------------------------------------ life
    def load(self, pipe) -> None:
        if self.loaded:
            return
        from diffusers import ControlNetModel

        folder = self.store.ensure(MODEL)
        weights = self.store.file_path(MODEL, ADAPTER)
        pipe.load_ip_adapter(str(folder), subfolder="", weight_name=weights.name, image_encoder_folder=None)
        install_region_processors(pipe.unet, self.region)
        if self.identitynet is None:  # resident across loads
            self.identitynet = ControlNetModel.from_pretrained(
                folder / "ControlNetModel", torch_dtype=self.dtype, local_files_only=True
            ).to(self.device).eval()
        self._hooks = [
            self.identitynet.register_forward_pre_hook(self._inject_tokens, with_kwargs=True),
            self.identitynet.register_forward_hook(self._mask_residuals),
        ]
        self.loaded = True

    def unload(self, pipe) -> None:
        if not self.loaded:
            return
        pipe.unload_ip_adapter()  # also puts back the default attention processors
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._tokens = None
        self.region.clear()
        self.loaded = False

    # ----------------------------------------------------------------- hooks
    def _inject_tokens(self, module, args, kwargs):
        """Swap the ControlNet's text states for the face tokens (`with_face_tokens`)."""
        if self._tokens is None:
            return args, kwargs
        return with_face_tokens(self._tokens, module, args, kwargs)

    def _mask_residuals(self, module, args, output):
        """With the face region on, IdentityNet's residuals outside the face are
        multiplied away (both CFG halves), as the reference pipeline does."""
        if not self.region.active:
            return output
        if isinstance(output, tuple):
            down, mid = output
            return ([r * self.region.residual_weight(r) for r in down], mid * self.region.residual_weight(mid))
        weight = self.region.residual_weight
        output.down_block_res_samples = tuple(r * weight(r) for r in output.down_block_res_samples)
        output.mid_block_res_sample = output.mid_block_res_sample * weight(output.mid_block_res_sample)
        return output

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

        raw = self.embedding_for(identity, raw=True)
        scale = self.scale_for(request)
        pipe.set_ip_adapter_scale(scale)
        do_cfg = request.cfg > 1.0
        uncond, cond = self.face_tokens(pipe, raw)
        self._tokens = (uncond if do_cfg else None, cond)
        pos = torch.as_tensor(np.asarray(raw), dtype=self.dtype).reshape(1, 1, 1, -1)
        embeds = torch.cat([torch.zeros_like(pos), pos]) if do_cfg else pos
        placement = place_face(np.asarray(identity.kps, dtype=np.float32), np.asarray(identity.bbox, np.float32),
                               identity.image_size, (width, height))
        enhance = bool(getattr(request, "enhance_face_region", True))
        recipe = {"scale": scale, "identitynet_scale": request.identitynet_scale, "recognizer": self.recognizer,
                  "enhance_face_region": enhance}
        unit = IdentityNetUnit("identitynet", self.identitynet, None,
                               scale=request.identitynet_scale, method=self, recipe=recipe, enhance=enhance,
                               photo_kps=np.asarray(identity.kps, np.float32),
                               photo_box=np.asarray(identity.bbox, np.float32))
        unit.place(placement, width, height)
        return Conditioning(
            call_kwargs={"ip_adapter_image_embeds": [embeds.to(self.device)]},
            controlnets=[unit],
            recipe=recipe,
        )


# ------------------------------------------------------------------------- the unit
@dataclass
class IdentityNetUnit(ControlUnit):
    """The IdentityNet ControlNet unit of one request. It knows the reference
    face (keypoints and box in photo pixels) so a pose template can move the
    face (`move_face`) and the keypoint image, the face mask and the recipe all
    follow."""

    method: InstantID | None = None
    recipe: dict = field(default_factory=dict)
    enhance: bool = True
    photo_kps: np.ndarray | None = None
    photo_box: np.ndarray | None = None

    def place(self, placement: FacePlacement, width: int, height: int) -> None:
        from ..pose.render import render_face_keypoints

        self.image = render_face_keypoints(placement.kps, width, height)
        self.recipe["face_placement"] = placement.describe()
        warnings = [w for w in self.recipe.get("warnings", []) if not w.startswith("InstantID:")]
        if placement.warning:
            warnings.append(placement.warning)
        if warnings:
            self.recipe["warnings"] = warnings
        else:
            self.recipe.pop("warnings", None)
        if self.method is not None:
            if self.enhance:
                self.method.region.set_box(placement.box, width, height, self.method.device, self.method.dtype)
            else:
                self.method.region.clear()
        if self.enhance:
            self.recipe["face_region"] = [int(v) for v in clip_box(placement.box, width, height)]
        else:
            self.recipe.pop("face_region", None)

    def move_face(self, kps: np.ndarray, width: int, height: int) -> None:
        """Put the face at `kps` (canvas pixels, e.g. a pose template's face points):
        the photo's face box is carried by the similarity that maps the photo's
        keypoints onto `kps`."""
        kps = np.asarray(kps, dtype=np.float64)
        if self.photo_kps is not None and self.photo_box is not None:
            box = map_box(similarity(self.photo_kps, kps), self.photo_box)
        else:
            box = np.array([*kps.min(0), *kps.max(0)])
        off = [i for i, (x, y) in enumerate(kps) if not (0 <= x < width and 0 <= y < height)]
        warning = None
        if off:
            warning = (f"InstantID: the pose puts {len(off)} of the 5 face keypoints outside the {width}x{height} "
                       "canvas; IdentityNet sees only the ones inside. Choose a size with the pose's aspect.")
        self.place(FacePlacement(kps=kps, box=box, scale=None, offset=None, shrunk=False, warning=warning,
                                 source="pose"), width, height)


# --------------------------------------------------------------------- placement
@dataclass(frozen=True)
class FacePlacement:
    kps: np.ndarray  # (5, 2) canvas pixels
    box: np.ndarray  # (4,) x1, y1, x2, y2 canvas pixels (not clipped)
    scale: float | None  # photo pixels -> canvas pixels
    offset: tuple[float, float] | None  # canvas position of the photo's (0, 0)
    shrunk: bool = False  # the face was scaled below the cover scale to fit
    warning: str | None = None
    source: str = "photo"

    def describe(self) -> dict:
        out: dict = {"from": self.source, "box": [round(float(v), 1) for v in self.box]}
        if self.scale is not None:
            out["scale"] = round(float(self.scale), 5)
            assert self.offset is not None  # set together with scale
            out["offset"] = [round(float(v), 2) for v in self.offset]
        if self.shrunk:
            out["shrunk_to_fit"] = True
        return out


def place_face(kps: np.ndarray, box: np.ndarray, src_size, dst_size) -> FacePlacement:
    """Map the reference photo's face (5 keypoints and the detector's box, photo
    pixels) into a dst_size canvas.

    The photo is scaled to cover the canvas and the window is centred, then
    moved (per axis, the least) so that the face box and the keypoints are
    inside. If the face is larger than the canvas at the cover scale, it is
    scaled down to fit (with a margin) and the placement carries a warning."""
    sw, sh = (float(v) for v in src_size)
    dw, dh = (float(v) for v in dst_size)
    kps = np.asarray(kps, dtype=np.float32)
    box = np.asarray(box, dtype=np.float64).reshape(4)
    lo = np.minimum(box[:2], kps.min(0))  # the face: its box and its keypoints
    hi = np.maximum(box[2:], kps.max(0))
    s = max(dw / sw, dh / sh)
    extent = hi - lo
    fit = FIT_MARGIN * min(dw / extent[0] if extent[0] > 0 else np.inf, dh / extent[1] if extent[1] > 0 else np.inf)
    shrunk = fit < s
    warning = None
    if shrunk:
        warning = (f"InstantID: the face ({extent[0]:.0f}x{extent[1]:.0f} px in the photo) does not fit a "
                   f"{int(dw)}x{int(dh)} canvas at the photo's scale; it was scaled down {s / fit:.2f}x so the "
                   "whole face stays inside. Leave width/height unset to use the photo's aspect.")
        s = fit
    offset = []
    for axis, d, full in ((0, dw, sw), (1, dh, sh)):
        centred = (d - full * s) / 2.0  # a centre crop (within [d - full*s, 0] at the cover scale)
        face_lo, face_hi = -lo[axis] * s, d - hi[axis] * s  # offsets that keep the face inside
        offset.append(min(max(centred, face_lo), face_hi) if face_lo <= face_hi else (face_lo + face_hi) / 2.0)
    ox, oy = offset
    out = kps.copy()
    out[:, 0] = kps[:, 0] * np.float32(s) + np.float32(ox)
    out[:, 1] = kps[:, 1] * np.float32(s) + np.float32(oy)
    mapped_box = np.array([box[0] * s + ox, box[1] * s + oy, box[2] * s + ox, box[3] * s + oy])
    return FacePlacement(kps=out, box=mapped_box, scale=s, offset=(ox, oy), shrunk=shrunk, warning=warning)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares similarity (rotation, uniform scale, translation) taking
    the points `src` onto `dst`, as a 2x3 matrix (Umeyama's closed form)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    var = (a**2).sum()
    if var <= 0:
        return np.array([[1.0, 0.0, md[0] - ms[0]], [0.0, 1.0, md[1] - ms[1]]])
    # complex form: dst ~ z * src with z = sum(conj(a) * b) / sum(|a|^2)
    za, zb = a[:, 0] + 1j * a[:, 1], b[:, 0] + 1j * b[:, 1]
    z = (np.conj(za) * zb).sum() / var
    rot = np.array([[z.real, -z.imag], [z.imag, z.real]])
    t = md - rot @ ms
    return np.hstack([rot, t[:, None]])


def map_box(m: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The axis-aligned bounds of `box` (x1, y1, x2, y2) after the 2x3 transform `m`."""
    x1, y1, x2, y2 = np.asarray(box, np.float64).reshape(4)
    corners = np.array([[x1, y1], [x2, y1], [x1, y2], [x2, y2]])
    pts = corners @ m[:, :2].T + m[:, 2]
    return np.array([*pts.min(0), *pts.max(0)])
