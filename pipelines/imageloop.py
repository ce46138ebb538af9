"""The per-image part of a generation: denoise, restore, score, write.

Order of a run with `-n N`:
1. Denoise. Image k gets seed `seed0 + k` and its own CPU generator, so it
   replays alone from its recipe. With batching (below) all N are denoised in
   one pipeline call with a list of N generators: diffusers draws each image's
   initial latents (and, for ancestral/LCM samplers, each step's noise) from
   its own generator, so image k is image k of a batch of one, up to the float
   rounding of batched kernels.
2. Restore (face restore models and the face detector, on this thread).
3. Score and write on one worker thread: the likeness score of image k runs
   while image k+1 denoises (the score only runs ONNX Runtime sessions; see
   `scoring.prepare_scorer`). Before image k+1 is restored, image k's score is
   waited for, because restore and score share the face detector, whose Python
   side is not thread-safe.
4. The images come back in seed order; a worker error is raised here.

Batching is used only where it is faster and fits: on CUDA (on a CPU a batch is
no faster than a loop), with no model offload, when the method supports a batch
(`supports_batch`; its `prepare_batch(pipe, n)` repeats what diffusers does not
repeat itself), and when the free VRAM covers the estimate below.
`Engine.batch_images` = "on"/"off" forces it (tests, the bench).

The loop is given the engine as `EngineServices` (pipelines/types.py) and
imports nothing of `engine.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .errors import Cancelled
from .types import EngineServices, GeneratedImage

# activations per 1024² SDXL image per CFG branch, float16, with an adapter: a
# conservative estimate for the batch decision, not a measurement
GB_PER_MEGAPIXEL_BRANCH = 1.2


def batch_fits(engine: EngineServices, req, width: int, height: int, free_gb: float | None) -> bool:
    if free_gb is None:
        return False
    branches = 2 if req.cfg > 1 else 1
    need = GB_PER_MEGAPIXEL_BRANCH * branches * req.count * (width * height) / 1024**2
    return free_gb >= need + 2.0  # and a margin for the VAE decode and fragmentation


def should_batch(engine: EngineServices, req, method, width: int, height: int) -> bool:
    mode = engine.batch_images
    if req.count < 2 or mode == "off":
        return False
    supported = method is None or getattr(method, "supports_batch", False)
    two_people = bool(getattr(req, "photos_2", None) or getattr(req, "identity_card_2", None))
    if not supported or two_people:  # a second person's conditioning is not repeated per image
        return False
    if mode == "on":
        return True
    if engine.device != "cuda" or engine.placement is None or engine.placement.offload != "none":
        return False
    from .vram import free_vram_gb

    return batch_fits(engine, req, width, height, free_vram_gb(engine.device))


def run_images(engine: EngineServices, run, pipe, method, req, cond, units, identity, width: int, height: int,
               seed0: int, on_step: Callable | None, cancel, batched: bool = False) -> list[GeneratedImage]:
    """Denoise, restore, score and write `req.count` images; `GeneratedImage`s in seed
    order. `batched` (the engine's `should_batch`): all in one pipeline call."""
    from .outputs import RecipeContext, build_recipe

    seeds = [(seed0 + i) % 2**32 for i in range(req.count)]
    scorer = None
    if identity is not None:
        from .scoring import prepare_scorer

        scorer = prepare_scorer(engine, identity, req.method)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="likeness-score")
    pending: list[Future] = []
    try:
        for index, seed, image in _denoised(engine, run, pipe, method, req, cond, units, width, height, seeds,
                                            batched, on_step, cancel):
            if pending:
                pending[-1].result()  # restore below shares the face detector with the score
            recipe = build_recipe(RecipeContext(engine.settings, engine.store, engine.device, engine.dtype),
                                  method, req, cond, identity, seed, width, height)
            image = engine.finish_image(image, req, recipe)
            pending.append(pool.submit(_finish, engine, req, image, recipe, scorer, seed, index))
        return [f.result() for f in pending]
    finally:
        pool.shutdown(wait=True)


def _finish(engine: EngineServices, req, image, recipe: dict, scorer, seed: int, index: int) -> GeneratedImage:
    from .outputs import write_image

    if scorer is not None:
        recipe["likeness"] = scorer(image)
    path = write_image(engine.settings, req, image, recipe, index=index)
    return GeneratedImage(path=path, seed=seed, image=image, recipe=recipe)


def _denoised(engine, run, pipe, method, req, cond, units, width, height, seeds, batched, on_step, cancel):
    """(index, seed, PIL image) for each seed: one call per image, or one batched call."""
    import torch

    if not batched:
        for i, seed in enumerate(seeds):
            kwargs = engine.call_kwargs(req, cond, units, width, height, seed, on_step, cancel, i)
            out = run(**kwargs)
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"cancelled after {i} of {req.count} images.")
            yield i, seed, out.images[0]
        return
    kwargs: dict[str, Any] = engine.call_kwargs(req, cond, units, width, height, seeds[0], on_step, cancel, 0)
    kwargs["generator"] = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    kwargs["num_images_per_prompt"] = len(seeds)
    prepare = getattr(method, "prepare_batch", None)
    if prepare is not None:
        prepare(pipe, len(seeds))
    try:
        out = run(**kwargs)
    finally:
        if prepare is not None:
            prepare(pipe, 1)
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"cancelled after 0 of {req.count} images.")
    for i, (seed, image) in enumerate(zip(seeds, out.images)):
        yield i, seed, image
