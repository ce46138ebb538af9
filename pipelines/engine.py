"""The Engine: one facade that owns loaded models and keeps them resident between
requests (base pipeline, identity methods and their extra models, face analysers,
identities). Front doors (CLI, UI, batch) only build requests and call it.

Invariants:
- One base pipeline is resident; identity methods are swapped on it without
  reloading it, and a method's `unload` leaves it exactly as it was.
- ControlNet pipelines are views over the resident components (no copies).
- Each image has its own seed and a CPU generator, so pixels are reproducible
  from the recipe alone.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BadInput, ModelError
from .identity import get_method_class, method_family
from .identity.base import Conditioning, ControlUnit, IdentityMethod
from .memory import free_memory
from .models.bases import DEFAULT_BASE, base_family, dtype_kwargs, load_base_pipeline
from .requests import GenerateRequest
from .samplers import SAMPLER_CALL_KWARGS, SD15_BUCKETS, SDXL_BUCKETS, make_scheduler, nearest_bucket
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
SD15_FT_MSE_VAE = "sd-vae-ft-mse"
# csxmli2016/w-plus-adapter w_plus_adapter.py generate_idnoise(use_freeu=True)
FREEU_SD15 = {"s1": 0.6, "s2": 0.4, "b1": 1.1, "b2": 1.2}


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
        import diffusers
        import torch

        family = self.base_family(base_name)
        pipe = load_base_pipeline(self.store, base_name, self.dtype)
        if vae == "ft-mse":  # stabilityai/sd-vae-ft-mse, the W+ adapter demo's VAE (SD1.5)
            ft = diffusers.AutoencoderKL.from_pretrained(
                self.store.ensure(SD15_FT_MSE_VAE), local_files_only=True, **dtype_kwargs(self.dtype)
            )
            pipe.register_modules(vae=ft)
        use_fix = vae == "fp16-fix" or (vae == "auto" and family == "sdxl" and self.dtype == torch.float16)
        if use_fix:
            fix = diffusers.AutoencoderKL.from_pretrained(
                self.store.ensure("sdxl-vae-fp16-fix"), local_files_only=True, **dtype_kwargs(self.dtype)
            )
            pipe.register_modules(vae=fix)
        self._place(pipe)
        return pipe

    def _place(self, pipe) -> None:
        from .vram import Placement, choose_placement

        s = self.settings
        on_accel = self.device in ("cuda", "mps")
        family = "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd15"
        placement = choose_placement(s, self.device, family)  # from the free VRAM now, unless set
        if self._offload_override is not None:
            placement = Placement(self._offload_override, True, placement.free_gb, "retry after out of memory")
        self.placement = placement
        if placement.offload == "model" and on_accel:
            pipe.enable_model_cpu_offload(device=self.device)
        elif placement.offload == "sequential" and on_accel:
            pipe.enable_sequential_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        if placement.vae_tiling:
            pipe.vae.enable_tiling()
        if s.attention == "xformers" and self.device == "cuda":
            try:
                pipe.enable_xformers_memory_efficient_attention()
            except Exception as exc:  # optional: SDPA stays the default
                raise ModelError(f"xformers could not be enabled ({exc}); unset LIKENESS_ATTENTION.") from exc
        if s.compile:
            _allow_compiled_variants()
            pipe.unet.compile()

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
        import diffusers

        if task == "txt2img" and not units:
            return pipe
        key = (task, *(id(u.model) for u in units))
        with self._lock:
            if key not in self._views:
                sdxl = isinstance(pipe, diffusers.StableDiffusionXLPipeline)
                cls = getattr(diffusers, _VIEW_CLASSES[task, sdxl, bool(units)])
                comps = {k: v for k, v in pipe.components.items() if k in _init_params(cls)}
                if units:
                    models = [u.model for u in units]
                    comps["controlnet"] = models[0] if len(models) == 1 else models  # a list: MultiControlNetModel
                view = cls(**comps)
                view.set_progress_bar_config(disable=True)
                self._views[key] = view
            return self._views[key]

    # ---------------------------------------------------------------- generate
    def resolve_size(self, req: GenerateRequest, family: str,
                     photo_size: tuple[int, int] | None = None) -> tuple[int, int]:
        """The request's width/height; a missing one comes from the default bucket,
        or, given `photo_size` (w, h), from the bucket nearest the photo's aspect."""
        buckets = SDXL_BUCKETS if family == "sdxl" else SD15_BUCKETS
        w, h = req.width, req.height
        if w is None or h is None:
            bw, bh = nearest_bucket(*photo_size, buckets) if photo_size else buckets[0]
            bw, bh = self.settings.profile.size(bw, bh)
            w, h = w or bw, h or bh
        return w, h

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
        import torch

        from .prompts import pipeline_prompt

        kwargs: dict[str, Any] = dict(
            prompt=pipeline_prompt(req, cond),
            negative_prompt=req.negative or None,
            num_inference_steps=req.steps,
            guidance_scale=req.cfg,
            width=width,
            height=height,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="pil",
        )
        kwargs.update(SAMPLER_CALL_KWARGS.get(req.sampler, {}))
        kwargs.update(cond.call_kwargs)
        if cond.prompt_embeds is not None:  # the method's conditioning is the whole prompt
            del kwargs["prompt"]
            kwargs.update(prompt_embeds=cond.prompt_embeds, negative_prompt=None)
        elif "prompt_embeds" in kwargs:  # a weighted or long prompt, encoded by pipelines/prompts.py
            kwargs.pop("prompt")
            kwargs.pop("negative_prompt")
        if cond.cross_attention_kwargs:
            kwargs["cross_attention_kwargs"] = dict(cond.cross_attention_kwargs)
        if units:
            if len(units) == 1:
                u = units[0]
                kwargs.update(image=u.image, controlnet_conditioning_scale=u.scale,
                              control_guidance_start=u.start, control_guidance_end=u.end)
            else:
                kwargs.update(image=[u.image for u in units],
                              controlnet_conditioning_scale=[u.scale for u in units],
                              control_guidance_start=[u.start for u in units],
                              control_guidance_end=[u.end for u in units])
        steps = req.steps

        chain = list(cond.callbacks)

        def _on_step_end(pipe, step, timestep, cb_kwargs):
            for cb in chain:
                cb_kwargs = cb(pipe, step, timestep, cb_kwargs)
            if on_step is not None:
                latents = cb_kwargs.get("latents")
                on_step({"image_index": index, "step": step + 1, "steps": steps, "latents": latents,
                         "decode_preview": self._preview_decoder(latents)})
            if cancel is not None and cancel.is_set():
                pipe._interrupt = True
            return cb_kwargs

        kwargs["callback_on_step_end"] = _on_step_end
        kwargs["callback_on_step_end_tensor_inputs"] = ["latents"]
        return kwargs


def apply_method_defaults(req: GenerateRequest, method_cls) -> GenerateRequest:
    """The method's reference recipe (`recipe_defaults`) for each field the
    request did not set itself (pydantic's `model_fields_set`: the CLI, the batch
    runner and replayed recipes set only what they were given). The returned
    request is what runs and what the recipe records, so a replay is exact."""
    defaults = getattr(method_cls, "recipe_defaults", None) or {}
    unset = {k: v for k, v in defaults.items() if k not in req.model_fields_set}
    return req.model_copy(update=unset) if unset else req


def check_family_options(req: GenerateRequest, family: str) -> None:
    """Options that exist for one base family only, checked before any loading."""
    if req.vae == "ft-mse" and family != "sd15":
        raise BadInput(f"vae 'ft-mse' (sd-vae-ft-mse) is an SD1.5 VAE; base_model {req.base_model!r} is "
                       f"{family.upper()}: use vae 'auto'.")
    if req.freeu and family != "sd15":
        raise BadInput(f"freeu has SD1.5 values only (the W+ demo's); base_model {req.base_model!r} is "
                       f"{family.upper()}: set freeu off.")


def set_freeu(pipe, req: GenerateRequest, cond: Conditioning) -> None:
    """FreeU on or off for this call (the UNet is shared, so it is set every time)."""
    if req.freeu:
        pipe.enable_freeu(**FREEU_SD15)
        cond.recipe["freeu"] = dict(FREEU_SD15)
    else:
        pipe.disable_freeu()


COMPILED_VARIANTS = 64


def _allow_compiled_variants() -> None:
    """Dynamo compiles one UNet graph per configuration it sees (each identity
    method's attention processors, each set of resident LoRA adapters) and reuses
    it when the configuration comes back; past its default limit of 8 it would
    run the UNet uncompiled without a word. The limit is raised so that every
    method x speed combination keeps its graph."""
    import torch._dynamo

    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(getattr(cfg, name), COMPILED_VARIANTS))


# (task, SDXL?, with ControlNets?) -> the diffusers pipeline class of a view
_VIEW_CLASSES = {
    ("txt2img", True, True): "StableDiffusionXLControlNetPipeline",
    ("txt2img", False, True): "StableDiffusionControlNetPipeline",
    ("img2img", True, False): "StableDiffusionXLImg2ImgPipeline",
    ("img2img", False, False): "StableDiffusionImg2ImgPipeline",
    ("img2img", True, True): "StableDiffusionXLControlNetImg2ImgPipeline",
    ("img2img", False, True): "StableDiffusionControlNetImg2ImgPipeline",
    ("inpaint", True, False): "StableDiffusionXLInpaintPipeline",
    ("inpaint", False, False): "StableDiffusionInpaintPipeline",
    ("inpaint", True, True): "StableDiffusionXLControlNetInpaintPipeline",
    ("inpaint", False, True): "StableDiffusionControlNetInpaintPipeline",
}


def _init_params(cls) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def _file_digest(path) -> str:
    """Content hash of a photo: regular files only, size-limited (imageio's rules)."""
    from .imageio import hash_user_file

    return hash_user_file(path, f"photo {path}")


__all__ = ["Engine", "GenerateResult", "GeneratedImage", "DEMO_BANNER"]
