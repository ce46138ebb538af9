"""The Engine: one facade that owns loaded models and keeps them resident between
requests (base pipeline, identity methods and their extra models, face analysers,
identities). Front doors (CLI, UI, batch) only build requests and call it.

Invariants:
- One base pipeline is resident; identity methods are swapped on it without
  reloading it, and a method's `unload` leaves it exactly as it was.
- ControlNet pipelines are views over the resident components (no copies).
- Each image has its own seed and a CPU generator, so pixels are reproducible
  from the recipe alone.

Its parts: loading, placing and viewing the base pipeline are in
pipelines/base_pipeline.py; completing and checking a request, its size and one
call's keyword arguments are in pipelines/request_call.py. This module keeps what
is resident and the order of a `generate` call.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base_pipeline import COMPILED_VARIANTS, build_view, load_base, place, placement_for
from .errors import BadInput, ModelError
from .identity import get_method_class, method_family
from .identity.base import Conditioning, ControlUnit, IdentityMethod
from .memory import free_memory
from .models.bases import DEFAULT_BASE, base_family
from .request_call import (
    apply_method_defaults,
    call_kwargs as build_call_kwargs,
    check_family_options,
    resolve_size as size_for_request,
    set_freeu,
)
from .requests import GenerateRequest
from .samplers import make_scheduler
from .settings import DEMO_BANNER, Settings
from .speed import apply_speed_defaults, check_speed, speed_lora, speed_recipe
from .types import GeneratedImage

if TYPE_CHECKING:
    from .finishing import FinishingSteps
    from .lora.manager import LoraManager
    from .pose.control import PoseControl
    from .previews import PreviewDecoder
    from .restore.stage import RestoreStage
    from .scoring import LikenessScorer
    from .vram import Placement

StepCallback = Callable[[dict], None]


@dataclass
class GenerateResult:
    images: list[GeneratedImage]
    identity: Any = None
    excluded: list[dict] = field(default_factory=list)
    seconds: float = 0.0


class Engine:
    """The facade (see the module docstring). It provides `EngineServices`
    (pipelines/types.py), the part of it that its steps are given."""

    def __init__(self, settings: Settings, store=None):
        from .stores import open_store

        self.settings = settings
        self.store = store or open_store(settings)
        self.device = settings.resolve_device()
        self.dtype = settings.resolve_dtype(self.device)
        self._lock = threading.RLock()
        self._base_name: str | None = None
        self._pipe: Any = None  # the resident diffusers pipeline
        self._base_scheduler_config: dict | None = None
        self._method: IdentityMethod | None = None
        self._methods: dict[str, IdentityMethod] = {}
        self._analyzers: dict[str, Any] = {}
        self._identities: dict[str, Any] = {}
        self._views: dict[tuple, Any] = {}
        self._resident: dict[str, dict] = {}  # kind -> key -> what a step keeps resident (see `resident`)
        self.load_count = 0  # how many times a base pipeline was loaded (tests/bench)
        self._loras: LoraManager | None = None  # made on the first request with a LoRA
        self._pose: PoseControl | None = None  # made on the first request with a pose
        self._restore_stage: RestoreStage | None = None  # made on the first request with a face restore
        self._scorer: LikenessScorer | None = None  # made on the first request with an identity
        self._finishing: FinishingSteps | None = None  # the current request's finishing steps (pipelines/finishing.py)
        # GPU path (pipelines/vram.py, pipelines/imageloop.py, pipelines/previews.py)
        self.placement: Placement | None = None  # the offload/VAE-tiling choice of the resident pipeline
        self._offload_override: str | None = None  # "model" after an out-of-memory retry
        self.batch_images = "auto"  # -n as one batched call: auto | on | off
        self.last_batched = False
        self._previews: PreviewDecoder | None = None

    # ----------------------------------------------------------------- models
    def base_family(self, base_name: str) -> str:
        return base_family(self.store, base_name)

    def pipeline(self, base_name: str = DEFAULT_BASE["sdxl"], vae: str = "auto"):
        """The resident base pipeline (loaded once; reloaded only when the base changes)."""
        with self._lock:
            key = f"{base_name}|{vae}"
            if self._pipe is not None and self._base_name == key:
                return self._pipe
            self.release_base()
            self._pipe = self._load_base(base_name, vae)
            self._base_name = key
            self._base_scheduler_config = dict(self._pipe.scheduler.config)
            self.load_count += 1
            return self._pipe

    def _load_base(self, base_name: str, vae: str):
        """Base `base_name` with its VAE, placed (pipelines/base_pipeline.py)."""
        pipe = load_base(self.store, base_name, vae, self.dtype)
        self._place(pipe)
        return pipe

    def _place(self, pipe) -> None:
        # set before placing, so an out-of-memory error while placing is judged by it (see generate)
        self.placement = placement_for(pipe, self.settings, self.device, self._offload_override)
        place(pipe, self.placement, self.settings, self.device)

    def release_base(self) -> None:
        with self._lock:
            if self._pipe is not None and self._method is not None:
                self._method.unload(self._pipe)
            self._method = None
            if self._pipe is not None and self._loras is not None:
                self._loras.forget(self._pipe)
            self._pipe = None
            self._base_name = None
            self._views.clear()
            free_memory()

    @staticmethod
    def default_base(method: str) -> str:
        """The base model a method runs on when the request names none."""
        return DEFAULT_BASE[method_family(method)]

    # --------------------------------------------------------------- identity
    def analyzer(self, pack: str):
        from .faces.analysis import FaceAnalyzer

        with self._lock:
            if pack not in self._analyzers:
                self._analyzers[pack] = FaceAnalyzer(self.store, self.settings, pack)
            return self._analyzers[pack]

    def identity(self, photos: list[str] | None = None, card: str | None = None, packs: tuple[str, ...] = (),
                 faces: dict[str, int] | None = None):
        """An identity from photos (analysed once, cached by content and face choice)
        or a saved card. `faces`: photo -> face number to use (1 = the largest)."""
        from .faces.person import build_identity, load_card
        from .imageio import load_photo_array

        if card:
            from .faces.person import card_path
            from .imageio import regular_file

            regular_file(card_path(card), f"identity card {card_path(card)}")  # no FIFO/device: never a hang
            return load_card(card)
        if not photos:
            raise BadInput("photos: give at least one photo of the person.")
        h = hashlib.sha256()
        for p in photos:
            h.update(_file_digest(p).encode())
        chosen = [(faces or {}).get(str(p)) for p in photos]
        key = h.hexdigest() + "|" + ",".join(sorted(packs)) + "|" + ",".join(str(k or 1) for k in chosen)
        with self._lock:
            if key in self._identities:
                return self._identities[key]
        loaded, failed, loaded_faces = [], [], []
        for p, k in zip(photos, chosen):
            try:
                rgb = load_photo_array(p, max_pixels=self.settings.max_image_pixels,
                                       max_side=self.settings.max_photo_side)
            except BadInput as exc:
                failed.append({"file": str(p), "reason": str(exc)})
                continue
            loaded.append((str(p), rgb))
            loaded_faces.append(k)
        if not loaded:
            raise BadInput(failed[0]["reason"] if len(failed) == 1 else
                           "no usable photo: " + "; ".join(f["reason"] for f in failed))
        analyzers = {pk: self.analyzer(pk) for pk in packs}
        identity = build_identity(loaded, analyzers, faces=loaded_faces).identity
        identity.excluded.extend((f["file"], f["reason"]) for f in failed)
        with self._lock:
            self._identities[key] = identity
        return identity

    # ----------------------------------------------------------------- methods
    def use_method(self, name: str, pipe) -> IdentityMethod | None:
        """Make `name` the loaded identity method on `pipe` (unloading the previous)."""
        with self._lock:
            if self._method is not None and self._method.name == name:
                return self._method
            if self._method is not None:
                self._method.unload(pipe)
                self._method = None
                self._views.clear()
            if name == "none":
                return None
            if name not in self._methods:
                self._methods[name] = get_method_class(name)(self.store, self.device, self.dtype)
            method = self._methods[name]
            method.load(pipe)
            self._method = method
            return method

    def _controlnet_pipe(self, pipe, units: list[ControlUnit]):
        return self.view(pipe, "txt2img", units)

    def view(self, pipe, task: str, units: Sequence[ControlUnit] = ()):
        """A diffusers pipeline for `task` ("txt2img", "img2img", "inpaint") over the
        resident components of `pipe`, with `units`' ControlNets when there are any.
        Views hold no weight copies; they are cached per (task, ControlNets) and
        dropped whenever the base or the identity method changes, so a view never
        outlives the components it was built from."""
        if task == "txt2img" and not units:
            return pipe
        key = (task, *(id(u.model) for u in units))
        with self._lock:
            if key not in self._views:
                self._views[key] = build_view(pipe, task, units)
            return self._views[key]

    # ---------------------------------------------------------------- generate
    def resolve_size(self, req: GenerateRequest, family: str,
                     photo_size: tuple[int, int] | None = None) -> tuple[int, int]:
        """The request's width/height; a missing one comes from the default bucket,
        or, given `photo_size` (w, h), from the bucket nearest the photo's aspect."""
        return size_for_request(req, family, self.settings.profile, photo_size)

    def generate(self, req: GenerateRequest, on_step: StepCallback | None = None,
                 cancel: threading.Event | None = None) -> GenerateResult:
        """Generate `req.count` images. An out-of-memory error on the GPU is retried
        once with the base reloaded under model offload; a second one (or one on
        another device) is a one-line `ModelError` naming the setting that helps."""
        from .memory import is_oom
        from .vram import oom_message

        try:
            return self._generate(req, on_step, cancel)
        except Exception as exc:
            if not is_oom(exc):
                raise
            first = exc
        free_memory()
        if self.device != "cuda" or self._offload_override is not None or (
                self.placement is not None and self.placement.offload != "none"):
            raise ModelError(oom_message(first)) from first
        with self._lock:
            self._offload_override = "model"
            self.release_base()  # reloaded with model offload by the retry
        try:
            return self._generate(req, on_step, cancel)
        except Exception as exc:
            if is_oom(exc):
                free_memory()
                raise ModelError(oom_message(exc)) from exc
            raise

    def _generate(self, req: GenerateRequest, on_step: StepCallback | None = None,
                  cancel: threading.Event | None = None) -> GenerateResult:
        import torch

        t0 = time.perf_counter()
        with self._lock:
            method_cls = get_method_class(req.method) if req.method != "none" else None
            # a speed mode fills steps/sampler/cfg first: the method's reference recipe is for its
            # quality mode, and fills only what is still unset
            req = apply_method_defaults(apply_speed_defaults(req), method_cls)
            if req.base_model is None:
                req = req.model_copy(update={"base_model": self.default_base(req.method)})
            assert req.base_model is not None  # set just above when the request left it out
            family = self.base_family(req.base_model)
            check_family_options(req, family)
            check_speed(req, family, method_cls)
            if method_cls is not None and method_cls.base != family:
                raise BadInput(
                    f"method {req.method!r} runs on {method_cls.base.upper()} bases; "
                    f"base_model {req.base_model!r} is {family.upper()}."
                )
            from .bundles import require_for_request

            require_for_request(req, self.settings, self.store)  # one error naming every missing model
            identity = None
            if method_cls is not None:
                packs = (method_cls.recognizer,) if method_cls.recognizer else ()
                identity = self.identity(req.photos or None, req.identity_card, packs, req.face_index)
            pipe = self.pipeline(req.base_model, req.vae)
            method = self.use_method(req.method, pipe)
            # a method that places the photo's face on the canvas (InstantID) gets the
            # bucket nearest the photo's aspect, unless a pose places the face
            follows_photo = identity is not None and getattr(method, "follows_photo_aspect", False)
            posed = bool(req.pose) and req.pose_scale > 0
            photo_size = identity.image_size if identity is not None and follows_photo and not posed else None
            width, height = self.resolve_size(req, family, photo_size)
            template = None
            if req.template:  # "put me in this photo": only the template's face is re-generated
                from .templates import load_template

                template = load_template(self, req)
                width, height = self.resolve_size(req, family, template.image.size)
            people = None
            if req.photos_2 or req.identity_card_2:  # two people, each in a layout box (pipelines/multi_person.py)
                from .multi_person import prepare_people

                people = prepare_people(self, req, packs)
                width, height = self.resolve_size(req, family, people.layout_size)
            seed0 = req.seed if req.seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item())
            cond = method.conditioning(pipe, identity, req, width, height) if method else Conditioning()
            if people is not None:
                people.condition(self, pipe, method, cond, identity, req, width, height)
            self._apply_loras(pipe, req, cond)
            from .prompts import prompt_conditioning

            prompt_conditioning(pipe, req, cond)  # (word:1.2) weighting and long prompts, when used
            units = list(cond.controlnets)
            pose_unit = self._pose_unit(req, family, width, height)
            if pose_unit is not None:
                from .pose.control import align_identitynet

                if req.pose_scale > 0:  # a pose at scale 0 moves nothing, the face either
                    align_identitynet(units, pose_unit.template, width, height)
                units.append(pose_unit)
                cond.recipe["pose"] = {"pose": req.pose, "scale": req.pose_scale,
                                       "start": req.pose_start, "end": req.pose_end}
            run = self._controlnet_pipe(pipe, units) if units else pipe
            run.scheduler = self.scheduler(req.sampler)
            set_freeu(run, req, cond)
            from .finishing import FinishingSteps

            self._finishing = FinishingSteps.for_request(self, req, run, pipe, method, cond, units, identity,
                                                         width, height, cancel, people)
            if template is not None:
                from .templates import template_run

                run = template_run(self, req, run, pipe, method, cond, units, identity, width, height, template,
                                   cancel)
            from .imageloop import run_images, should_batch

            self._preview_family = family
            self.last_batched = should_batch(self, req, method, width, height)
            # denoise (one call per image, or one batched call), restore, and score/write on a
            # worker thread so image k's likeness score overlaps image k+1's denoising
            images = run_images(self, run, pipe, method, req, cond, units, identity, width, height, seed0,
                                on_step, cancel, batched=self.last_batched)
            images = self._keep_best(images, req)
            excluded = [{"file": f, "reason": r} for f, r in (identity.excluded if identity else [])]
            return GenerateResult(images=images, identity=identity, excluded=excluded,
                                  seconds=time.perf_counter() - t0)

    # ------------------------------------------------------- feature hooks
    def _apply_loras(self, pipe, req, cond: Conditioning) -> None:
        """Activate exactly the requested user LoRAs (kohya .safetensors from loras/),
        alongside any adapter LoRA of the identity method; add trigger words."""
        # a speed mode's distilled LoRA is one more named adapter in the same bookkeeping
        # (never disable_lora/enable_lora, which would switch FaceID's attention LoRA off too)
        from .prompts import merged_loras

        speed = speed_lora(self.store, req.speed, req.method)
        loras = merged_loras(req.prompt, req.loras)  # --lora plus the prompt's <lora:name:weight> tags
        if not loras and speed is None and not (self._loras and self._loras.active_weights(pipe)):
            return
        from .lora.manager import LoraManager

        if self._loras is None:
            self._loras = LoraManager(self.settings, self.store)
        store_loras = {speed[1]: (speed[0], 1.0)} if speed is not None else {}
        applied = self._loras.apply(pipe, loras, store_loras)
        if speed is not None:
            cond.recipe["speed"] = speed_recipe(self.store, req.speed, req.method)
        if self._method is not None:
            self._method.refresh_adapters(pipe, self._loras.active_weights(pipe))
        missing = [t for t in applied.triggers if t and t not in req.prompt]
        if missing:
            cond.prompt_suffix += ", " + ", ".join(missing)
        if applied.weights:
            cond.recipe["loras"] = [{"name": n, "weight": w, "sha256": applied.hashes.get(n)}
                                    for n, w in applied.weights.items()]

    def _preview_decoder(self, latents):
        """A callable giving this step's preview (PIL, TAESD/TAESDXL) or None when the
        tiny autoencoder is not on disk; it decodes only when a front door calls it."""
        if latents is None:
            return None
        from .previews import PreviewDecoder

        if self._previews is None:
            self._previews = PreviewDecoder(self.store, self.settings, self.device, self.dtype)
        frozen, family, decoder = latents.detach().clone(), getattr(self, "_preview_family", "sdxl"), self._previews
        return lambda: decoder.decode(frozen, family)

    def scorer(self):
        """The likeness scorer (it caches each identity's reference embeddings)."""
        from .scoring import LikenessScorer

        with self._lock:
            if self._scorer is None:
                self._scorer = LikenessScorer(self.analyzer, self._pack_available)
            return self._scorer

    def _pack_available(self, pack: str) -> bool:
        """Whether face pack `pack` can be loaded (demo packs are built on first use)."""
        return self.settings.profile.builds_models or self.store.status(pack).present

    def restore_stage(self):
        """The face-restore stage (its restorers stay resident)."""
        from .restore.stage import RestoreStage

        with self._lock:
            if self._restore_stage is None:
                self._restore_stage = RestoreStage(self.store, self.device, self.dtype, self.settings.profile,
                                                   self.analyzer)
            return self._restore_stage

    def _pose_unit(self, req, family: str, width: int, height: int):
        if not req.pose:
            return None
        from .pose.control import PoseControl

        if "/" in req.pose or "\\" in req.pose or req.pose.lower().endswith((".json", ".png", ".jpg", ".jpeg")):
            from .imageio import MAX_PHOTO_BYTES, regular_file

            # a pose file named by a request (API, recipe) is read only if it is a regular file
            regular_file(Path(req.pose).expanduser(), f"pose file {req.pose}", max_bytes=MAX_PHOTO_BYTES)

        if self._pose is None:
            self._pose = PoseControl(self.store, self.device, self.dtype, self.settings)
        return self._pose.unit(req, family, width, height)

    def finish_image(self, image, req, recipe: dict):
        """The current request's face-detail pass, face restore, then upscale and hires
        pass (each recorded in the recipe); the image unchanged when it asks for none."""
        finishing = self._finishing
        if finishing is not None:  # face-detail pass (before restore and the likeness score)
            image = finishing.before_restore(image, req, recipe)
        if req.restore != "none":
            image, report = self.restore_stage().restore(image, req)
            recipe["restore"] = {"model": req.restore, "strength": req.restore_strength,
                                 "fidelity": req.codeformer_fidelity if req.restore == "codeformer" else None,
                                 "faces": report}
        if finishing is not None:  # upscale and hires pass
            image = finishing.after_restore(image, req, recipe)
        return image

    def _keep_best(self, images: list[GeneratedImage], req) -> list[GeneratedImage]:
        if req.keep is None or req.keep >= len(images):
            return images
        from .scoring import keep_best

        return keep_best(self.settings, images, req.keep, rejects=req.rejects)

    def scheduler(self, sampler: str):
        """A new scheduler `sampler` from the resident base's own scheduler config."""
        return make_scheduler(sampler, self._base_scheduler_config, dtype=self.dtype)

    def resident(self, kind: str, key, build, fits=None):
        """The resident `kind` object `key` (an upscaler by name, the two-person
        IdentityNet views), built with `build()` the first time and kept by the
        engine; built again when `fits(kept)` is false (the views of an unloaded net)."""
        with self._lock:
            slot = self._resident.setdefault(kind, {})
            if key not in slot or (fits is not None and not fits(slot[key])):
                slot[key] = build()
            return slot[key]

    def call_kwargs(self, req, cond: Conditioning, units, width, height, seed, on_step, cancel, index):
        """The keyword arguments of one pipeline call (built by `_call_kwargs`)."""
        return self._call_kwargs(req, cond, units, width, height, seed, on_step, cancel, index)

    def _call_kwargs(self, req, cond: Conditioning, units, width, height, seed, on_step, cancel, index):
        return build_call_kwargs(req, cond, units, width, height, seed, on_step, cancel, index,
                                 self._preview_decoder)


def _file_digest(path) -> str:
    """Content hash of a photo: regular files only, size-limited (imageio's rules)."""
    from .imageio import hash_user_file

    return hash_user_file(path, f"photo {path}")


__all__ = ["Engine", "GenerateResult", "GeneratedImage", "DEMO_BANNER", "COMPILED_VARIANTS", "apply_method_defaults",
           "check_family_options"]
