"""Two people in one picture: each identity, from its own photos, conditions its
own region of the canvas.

Regions come from a layout: a pose-template-like data file
(`assets/poses/layouts/<name>.json`, or a .json file) with the canvas aspect and,
per person, a box (x1, y1, x2, y2) and the 5 face points (insightface order, as
in pose templates), all normalised to 0..1. Person k of the request (1 = the
`photos` identity, 2 = the `photos_2` one) takes the layout's box k.

FaceID Plus v2 (diffusers' IP-Adapter attention masks): ONE loaded adapter with
the two people as two "images": ID embeddings [CFG, 2, 1, 512], the CLIP
features the FaceID projection holds in the same (batch, image) order, and
`ip_adapter_masks` [1, 2, H, W] (binarised by `IPAdapterMaskProcessor`). With
masks, `IPAdapterAttnProcessor2_0` attends each person's tokens separately and
adds each result only inside that person's mask (resized to the layer's token
grid). The adapter is not loaded twice: `load_ip_adapter` keeps only the last
file's attention LoRA active. The shortcut/s_scale and the attention LoRA are
shared by both and unmasked; self-attention, convolutions and the text prompt
still mix the regions, so expect some bleeding (the public reports of
ComfyUI_InstantID's multi-ID say the same).

InstantID: the IP part as FaceID (raw embeddings [CFG, 2, 1, 512] + masks; the
single-person face-region mask is off, the person masks take its place), and
one IdentityNet pass per person per step: two views of the loaded IdentityNet
that share its weights (built on the meta device, then `load_state_dict(...,
assign=True)`: no copy), each with a forward pre-hook that gives it its
person's face tokens as `encoder_hidden_states` (diffusers passes the text
states to every net of a MultiControlNetModel and no cross_attention_kwargs)
and a forward hook that multiplies its down and mid residuals by its person's
box mask, resized to each residual (the reference pipeline's `control_mask`
mechanism); MultiControlNetModel sums them. Each view's keypoint image is its
person's layout face points drawn on the full canvas. The method's own
IdentityNet and its hooks are not called in a two-person run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import ErrorDetails

from .errors import BadInput
from .pose.templates import ASSETS_POSES, FaceKeypoints
from .types import ControlUnit, EngineServices

ASSETS_LAYOUTS = ASSETS_POSES / "layouts"
DEFAULT_LAYOUT = "two-side-by-side"
MAX_LAYOUT_BYTES = 64 * 1024
TWO_PERSON_METHODS = ("faceid", "instantid")

Coord = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class PersonRegion(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    box: tuple[Coord, Coord, Coord, Coord]
    face: FaceKeypoints | None = None

    @model_validator(mode="after")
    def _ordered(self):
        x1, y1, x2, y2 = self.box
        if not (x2 > x1 and y2 > y1):
            raise ValueError(f"box {list(self.box)} must have x2 > x1 and y2 > y1")
        return self


class Layout(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(default=1, ge=1, le=1)
    name: str = Field(min_length=1, max_length=64)
    title: str = Field(min_length=1, max_length=80)
    description: str = Field(default="", max_length=500)
    aspect: float = Field(ge=0.25, le=4.0, allow_inf_nan=False)
    people: list[PersonRegion] = Field(min_length=1, max_length=4)

    def masks(self, width: int, height: int) -> list[np.ndarray]:
        """One (height, width) float32 0/1 mask per person, from its box."""
        out = []
        for p in self.people:
            x1, y1, x2, y2 = p.box
            m = np.zeros((height, width), np.float32)
            m[int(round(y1 * height)):int(round(y2 * height)), int(round(x1 * width)):int(round(x2 * width))] = 1.0
            out.append(m)
        return out


def list_layouts() -> list[str]:
    return sorted(p.stem for p in ASSETS_LAYOUTS.glob("*.json") if p.is_file())


def load_layout(name: str) -> Layout:
    """A shipped layout by name, or a layout .json file; errors name the file and key."""
    from .datafile import parse_json_model
    from .imageio import regular_file

    if name.endswith(".json") or "/" in name or "\\" in name:
        path = Path(name).expanduser()
    else:
        from .paths import check_name

        check_name(name, "layout")
        path = ASSETS_LAYOUTS / f"{name}.json"
        if not path.is_file():
            raise BadInput(f"layout: no layout named {name!r}; known: {', '.join(list_layouts())}.")
    regular_file(path, f"layout file {path}", max_bytes=MAX_LAYOUT_BYTES)
    return parse_json_model(path.read_bytes(), Layout, f"layout file {path}", "a layout",
                            "with the keys name, title, aspect, people", _describe)


def _describe(err: ErrorDetails) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()))
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"key {loc}: {msg}" if loc else msg


def check_people(layout: Layout, n_people: int, method: str) -> None:
    if n_people > len(layout.people):
        raise BadInput(f"layout {layout.name!r} has room for {len(layout.people)} "
                       f"{'person' if len(layout.people) == 1 else 'people'}; the request names {n_people}. "
                       f"Choose a layout with {n_people} boxes (e.g. {DEFAULT_LAYOUT}).")
    if method not in TWO_PERSON_METHODS:
        raise BadInput(f"two people: method {method!r} cannot condition two regions yet; use method "
                       + " or ".join(repr(m) for m in TWO_PERSON_METHODS) + ".")


@dataclass
class People:
    """The layout and the second identity of one request (person 1's is the
    request's own identity, added by `condition`)."""

    layout: Layout
    identities: list

    @property
    def layout_size(self) -> tuple[int, int]:
        """A (w, h) with the layout's aspect, for the nearest size bucket."""
        return int(round(1000 * self.layout.aspect)), 1000

    def condition(self, engine: EngineServices, pipe, method, cond, identity, req, width: int, height: int) -> None:
        self.identities = [identity, *self.identities[-1:]]
        if req.method == "instantid":
            instantid_two_person(engine, pipe, method, cond, identity, self.identities[1], self.layout, req,
                                 width, height)
        else:
            two_person_conditioning(engine, pipe, method, cond, identity, self.identities[1], self.layout, req,
                                    width, height)


def prepare_people(engine: EngineServices, req, packs) -> People:
    """The request's layout (checked against the number of people and the method)
    and its second identity (photos_2 or identity_card_2)."""
    layout = load_layout(req.layout or DEFAULT_LAYOUT)
    check_people(layout, 2, req.method)
    second = engine.identity(req.photos_2 or None, req.identity_card_2, packs, req.face_index_2)
    return People(layout, [second])


def two_person_conditioning(engine: EngineServices, pipe, method, cond, identity_a, identity_b, layout: Layout, req,
                            width: int, height: int):
    """Turn person 1's `cond` into the two-person conditioning (FaceID Plus v2)."""
    import torch

    proj = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    clip_a = proj.clip_embeds
    emb_a = cond.call_kwargs["ip_adapter_image_embeds"][0]
    cond_b = method.conditioning(pipe, identity_b, req, width, height)
    clip_b = proj.clip_embeds
    emb_b = cond_b.call_kwargs["ip_adapter_image_embeds"][0]
    # (CFG batch, person, tokens, dim): diffusers flattens batch x images in this order
    embeds = torch.cat([emb_a, emb_b], dim=1)
    clip = torch.cat([clip_a, clip_b], dim=1)
    proj.clip_embeds = clip
    method._clip = clip  # what prepare_batch repeats for -n as one batched call
    cond.call_kwargs["ip_adapter_image_embeds"] = [embeds]
    cond.cross_attention_kwargs["ip_adapter_masks"] = [_ip_masks(layout, engine, width, height)]
    cond.recipe["people"] = _people_recipe(engine, layout, identity_b, width, height)
    return cond


def _ip_masks(layout: Layout, engine: EngineServices, width: int, height: int):
    """`ip_adapter_masks` for one adapter and two people: [1, 2, H, W], 0/1."""
    from diffusers.image_processor import IPAdapterMaskProcessor
    from PIL import Image

    pil = [Image.fromarray((m * 255).astype(np.uint8), "L") for m in layout.masks(width, height)[:2]]
    mask = IPAdapterMaskProcessor().preprocess(pil, height=height, width=width)  # [2, 1, H, W]
    return mask.reshape(1, 2, height, width).to(engine.device)


class IdentityNetViews:
    """Two weight-sharing views of the loaded IdentityNet with per-view hooks;
    `state` holds each view's (uncond, cond) face tokens and region mask for the
    current request."""

    def __init__(self, identitynet):
        import torch
        from diffusers import ControlNetModel

        self.source = identitynet
        self.views = []
        self.state: list[dict] = [{}, {}]
        for k in range(2):
            with torch.device("meta"):
                view = ControlNetModel.from_config(identitynet.config)
            view.load_state_dict(identitynet.state_dict(), assign=True)  # the same tensors: no copy
            view.eval()
            view.register_forward_pre_hook(self._tokens_hook(k), with_kwargs=True)
            view.register_forward_hook(self._mask_hook(k))
            self.views.append(view)

    def _tokens_hook(self, k: int):
        from .identity.instantid import with_face_tokens

        def hook(module, args, kwargs):
            return with_face_tokens(self.state[k]["tokens"], module, args, kwargs)

        return hook

    def _mask_hook(self, k: int):
        def hook(module, args, output):
            import torch.nn.functional as F

            mask = self.state[k]["mask"]

            def weigh(r):
                m = mask[None, None].to(device=r.device, dtype=r.dtype)
                return r * F.interpolate(m, size=tuple(r.shape[-2:]), mode="bilinear")

            if isinstance(output, tuple):
                down, mid = output
                return [weigh(r) for r in down], weigh(mid)
            output.down_block_res_samples = tuple(weigh(r) for r in output.down_block_res_samples)
            output.mid_block_res_sample = weigh(output.mid_block_res_sample)
            return output

        return hook


def identitynet_views(engine: EngineServices, method) -> IdentityNetViews:
    """The engine's two views of `method`'s IdentityNet (made once per loaded net; the
    views of a net that was unloaded are replaced, never kept beside the new ones)."""
    net = method.identitynet
    return engine.resident("identitynet-views", "two-person", lambda: IdentityNetViews(net),
                           fits=lambda views: views.source is net)


def instantid_two_person(engine: EngineServices, pipe, method, cond, identity_a, identity_b, layout: Layout, req,
                         width: int, height: int):
    """Turn person 1's InstantID `cond` into the two-person conditioning."""
    import torch

    from .pose.render import render_face_keypoints

    if any(p.face is None for p in layout.people[:2]):
        raise BadInput(f"layout {layout.name!r}: InstantID needs face points for each person's box.")
    tokens_a = method._tokens
    emb_a = cond.call_kwargs["ip_adapter_image_embeds"][0]
    cond_b = method.conditioning(pipe, identity_b, req, width, height)
    tokens_b = method._tokens
    emb_b = cond_b.call_kwargs["ip_adapter_image_embeds"][0]
    method.region.clear()  # the person masks below take the single face region's place
    views = identitynet_views(engine, method)
    masks = layout.masks(width, height)
    units = []
    for k, (tokens, region) in enumerate(zip((tokens_a, tokens_b), layout.people[:2])):
        views.state[k] = {"tokens": tokens, "mask": torch.as_tensor(masks[k], device=engine.device)}
        assert region.face is not None  # checked at the top
        kps = np.asarray(region.face.points(), np.float32) * np.array([width, height], np.float32)
        units.append(ControlUnit(f"identitynet-{k + 1}", views.views[k], render_face_keypoints(kps, width, height),
                                 scale=req.identitynet_scale))
    cond.controlnets = units
    cond.call_kwargs["ip_adapter_image_embeds"] = [torch.cat([emb_a, emb_b], dim=1)]
    cond.cross_attention_kwargs["ip_adapter_masks"] = [_ip_masks(layout, engine, width, height)]
    cond.recipe.pop("face_region", None)
    cond.recipe["people"] = _people_recipe(engine, layout, identity_b, width, height)
    return cond


def _people_recipe(engine: EngineServices, layout: Layout, identity_b, width: int, height: int) -> dict:
    """What the recipe records of two people: the layout, each person's box in
    pixels, and person 2's identity card."""
    return {
        "layout": layout.name,
        "boxes": [[int(round(v * s)) for v, s in zip(p.box, (width, height, width, height))]
                  for p in layout.people[:2]],
        "identity_2": _identity_entry(engine, identity_b),
    }


def _identity_entry(engine: EngineServices, identity) -> dict:
    """Person 2's identity card (saved beside the outputs), by name and sha256, as the
    recipe records person 1's, so a replay finds it again."""
    from .outputs import _stat_sha256, ensure_identity_card

    card = ensure_identity_card(engine.settings, identity)
    return {"hash": identity.hash, "card": card.name, "card_sha256": _stat_sha256(card)}


def score_people(engine: EngineServices, image, people: People, method: str) -> list[dict]:
    """Likeness per person: the output's face whose centre lies in the person's box
    (the largest such), against that person's photos."""
    from .detail import detect_faces
    from .scoring import _unit, reference_embeddings, scorer_pack

    pack = scorer_pack(method)
    if not (engine.settings.profile.builds_models or engine.store.status(pack).present):
        from .identity import method_recognizer

        pack = method_recognizer(method) or pack
    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    faces = detect_faces(engine, image)
    analyzer = engine.analyzer(pack)
    out = []
    for k, (region, ident) in enumerate(zip(people.layout.people, people.identities), start=1):
        x1, y1, x2, y2 = region.box[0] * w, region.box[1] * h, region.box[2] * w, region.box[3] * h
        inside = [f for f in faces if x1 <= (f.bbox[0] + f.bbox[2]) / 2 < x2 and y1 <= (f.bbox[1] + f.bbox[3]) / 2 < y2]
        entry = {"person": k, "recognizer": pack, "face_found": bool(inside), "mean": None, "max": None}
        if inside:
            face = analyzer.embed_detection(rgb, inside[0], "output", n_faces=len(faces))
            refs = reference_embeddings(engine, ident, pack)
            sims = np.clip(refs @ _unit(face.embedding), -1.0, 1.0)
            entry.update(mean=round(float(sims.mean()), 4), max=round(float(sims.max()), 4))
        out.append(entry)
    return out
