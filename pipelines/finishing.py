"""The finishing steps of one generated image, after denoising:

1. face-detail pass (`face_detail`, pipelines/detail.py): each face re-generated
   at a higher resolution and pasted back; before face restore and the likeness
   score, as ADetailer runs before the final image is saved;
2. face restore (the engine's restore stage);
3. upscale (`upscale`, pipelines/upscale.py), then the optional hires pass.

`FinishingSteps` holds what the steps re-use from the generation (the running
pipeline, the identity conditioning, the ControlNet units, the identity); the
engine makes one per `generate` call. Each step writes what it did into the
image's recipe, and every setting is a request field, so the recipe's request
replays the same steps with the same seeds.

The steps are given the engine as `EngineServices` (pipelines/types.py) and
import nothing of `engine.py`; the step modules import each other downwards only
(finishing -> detail, upscale, multi_person; multi_person -> detail), so the
face-detail pass scores two people through `people_likeness` here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import BadInput
from .types import EngineServices


@dataclass
class FinishingSteps:
    engine: EngineServices
    run: Any  # the pipeline that denoised (base, or a ControlNet view over it)
    pipe: Any  # the resident base pipeline
    method: Any  # the loaded IdentityMethod, or None
    cond: Any  # its Conditioning for this request
    units: list
    identity: Any
    width: int
    height: int
    cancel: Any = None
    people: Any = None  # pipelines/multi_person.People: the likeness is scored per person

    @classmethod
    def for_request(cls, engine: EngineServices, req, run, pipe, method, cond, units, identity, width: int, height: int,
                    cancel=None, people=None) -> FinishingSteps | None:
        """The steps of `req`, or None when it asks for none. Sizes are checked here,
        before any denoising (an upscale over the pixel cap is a BadInput)."""
        if req.face_detail:
            check_denoise_steps(req.steps, req.face_detail_strength, "face_detail_strength")
        if req.hires:
            check_denoise_steps(req.steps, req.hires_strength, "hires_strength")
        if not (req.face_detail or req.upscale != 1 or people is not None):
            return None
        if req.upscale != 1:
            from .bundles import missing_error, missing_models
            from .upscale import check_upscale, upscaler_spec

            check_upscale(width, height, req.upscale, engine.settings.max_image_pixels)
            missing = missing_models(engine.store, [upscaler_spec(req.upscaler).model])
            if missing:  # one error naming the download, before any denoising
                raise missing_error(engine.store, missing)
        return cls(engine, run, pipe, method, cond, units, identity, width, height, cancel, people)

    def before_restore(self, image, req, recipe: dict):
        if not req.face_detail:
            return image
        from .detail import face_detail_pass

        return face_detail_pass(self, image, req, recipe)

    def after_restore(self, image, req, recipe: dict):
        image = self._upscale(image, req, recipe)
        if self.people is not None:
            recipe["likeness_people"] = self.people_likeness(image, req.method)
        return image

    def people_likeness(self, image, method: str) -> list[dict]:
        """Likeness per person of a two-person image (`multi_person.score_people`)."""
        from .multi_person import score_people

        return score_people(self.engine, image, self.people, method)

    def _upscale(self, image, req, recipe: dict):
        if req.upscale == 1:
            return image
        from .upscale import get_upscaler, hires_pass

        w0, h0 = image.size
        image = get_upscaler(self.engine, req.upscaler).upscale(image, req.upscale)
        entry = {"upscaler": req.upscaler, "factor": req.upscale, "from": [w0, h0], "to": list(image.size),
                 "model_sha256": _model_sha(self.engine, req.upscaler)}
        if req.hires:
            image = hires_pass(self.engine, self, image, req, int(recipe["seed"]))
            entry["hires"] = {"strength": req.hires_strength, "seed": int(recipe["seed"]),
                              "steps_run": int(req.steps * req.hires_strength)}
        recipe["upscale"] = entry
        return image


def check_denoise_steps(steps: int, strength: float, field: str) -> None:
    """An img2img/inpaint pass runs int(steps x strength) steps (diffusers `get_timesteps`);
    zero would be diffusers' ValueError mid-run, so it is refused up front."""
    if int(steps * strength) < 1:
        raise BadInput(f"{field} {strength:g} with steps {steps} runs no denoising step "
                       f"(int(steps x strength) = 0); raise steps or {field}.")


def _model_sha(engine: EngineServices, name: str) -> str | None:
    from .outputs import model_hash
    from .upscale import upscaler_spec

    return model_hash(engine.store, upscaler_spec(name).model)
