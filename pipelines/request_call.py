"""From a generate request to the diffusers call: the request completed and
checked before any loading (`apply_method_defaults`, `check_family_options`),
its canvas size (`resolve_size`), FreeU on the call's pipeline (`set_freeu`)
and the keyword arguments of one pipeline call (`call_kwargs`).

Invariants:
- The completed request is what runs and what the recipe records, so a replay
  of the recipe is exact.
- Each image's call has its own CPU generator seeded with the image's seed, so
  pixels are reproducible from the recipe alone.
- Nothing here loads or holds a model; the engine (pipelines/engine.py) owns
  what is resident and calls these in the order of a generate call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import BadInput
from .samplers import SAMPLER_CALL_KWARGS, SD15_BUCKETS, SDXL_BUCKETS, nearest_bucket

if TYPE_CHECKING:
    from .identity.base import Conditioning
    from .requests import GenerateRequest

# csxmli2016/w-plus-adapter w_plus_adapter.py generate_idnoise(use_freeu=True)
FREEU_SD15 = {"s1": 0.6, "s2": 0.4, "b1": 1.1, "b2": 1.2}


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


def resolve_size(req: GenerateRequest, family: str, profile,
                 photo_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """The request's width/height; a missing one comes from the family's default
    bucket, or, given `photo_size` (w, h), from the bucket nearest the photo's
    aspect, as the run profile (`pipelines.profile`) sizes it."""
    buckets = SDXL_BUCKETS if family == "sdxl" else SD15_BUCKETS
    w, h = req.width, req.height
    if w is None or h is None:
        bw, bh = nearest_bucket(*photo_size, buckets) if photo_size else buckets[0]
        bw, bh = profile.size(bw, bh)
        w, h = w or bw, h or bh
    return w, h


def set_freeu(pipe, req: GenerateRequest, cond: Conditioning) -> None:
    """FreeU on or off for this call (the UNet is shared, so it is set every time)."""
    if req.freeu:
        pipe.enable_freeu(**FREEU_SD15)
        cond.recipe["freeu"] = dict(FREEU_SD15)
    else:
        pipe.disable_freeu()


def call_kwargs(req: GenerateRequest, cond: Conditioning, units, width: int, height: int, seed: int,
                on_step: Callable[[dict], None] | None, cancel, index: int,
                preview: Callable[[Any], Any]) -> dict[str, Any]:
    """The keyword arguments of one pipeline call for image `index`: the prompt (or
    the method's or the prompt weighting's embeddings), the sampler's extras, the
    method's own arguments, the ControlNet units, and a step-end callback that runs
    the method's callbacks, reports each step to `on_step` (with `preview(latents)`,
    the preview decoder) and interrupts the pipeline once `cancel` is set."""
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
                     "decode_preview": preview(latents)})
        if cancel is not None and cancel.is_set():
            pipe._interrupt = True
        return cb_kwargs

    kwargs["callback_on_step_end"] = _on_step_end
    kwargs["callback_on_step_end_tensor_inputs"] = ["latents"]
    return kwargs
