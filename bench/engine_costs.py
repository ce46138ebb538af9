"""The engine's costs beyond one image per call, measured after the speed tables
of bench/generate.py on the same warm engine:

- `score_cost`: the likeness score alone per image (in the engine it runs on a
  worker thread, overlapping the next image's denoising);
- `batch_gain`: -n N as one batched call against one call per image, and what the
  engine's own "auto" rule decides for that size;
- `compile_run`: torch.compile of the UNet on a fresh engine, across calls that
  switch method and speed, counting the graphs dynamo compiles during each;
- `step_costs`: upscale, face detail, template and two people against plain
  diffusers doing the same step (bench/steps.py).

Each puts the engine back as it found it (`batch_images` returns to "auto").
"""

from __future__ import annotations

import statistics

from bench.timing import ratio, round6, time_calls, timed


def score_cost(engine, args, request) -> dict | None:
    """Seconds of the likeness score alone per image (median), per identity method."""
    from pipelines.scoring import prepare_scorer

    out = {}
    for m in args.methods:
        if m == "none":
            continue
        res = engine.generate(request(m, args.speeds[-1]))
        scorer = prepare_scorer(engine, res.identity, m)
        image = res.images[0].image
        scorer(image)  # warm-up
        out[m] = round6(statistics.median(time_calls(lambda: scorer(image), args.repeats)))
    return out or None


def batch_gain(engine, args, request) -> dict:
    """-n N as one batched call against one call per image (seconds per image)."""
    from pipelines.imageloop import should_batch

    speed = "turbo" if "turbo" in args.speeds else args.speeds[0]
    out: dict = {"images": args.batch, "speed": speed}
    device = engine.device
    for m in [m for m in ("none", "faceid") if m in args.methods]:
        req = request(m, speed, count=args.batch)
        row: dict = {}
        for mode in ("off", "on"):
            name = "loop" if mode == "off" else "batched"
            engine.batch_images = mode
            try:
                engine.generate(req)  # warm-up (batched kernels differ)
                row[f"{name}_seconds_per_image"] = round6(timed(lambda: engine.generate(req), device) / args.batch)
            except Exception as exc:  # noqa: BLE001 - an out-of-memory batch is a result here
                row[f"{name}_error"] = " ".join(str(exc).split())[:200]
            finally:
                engine.batch_images = "auto"
        if "loop_seconds_per_image" in row and "batched_seconds_per_image" in row:
            row["gain"] = ratio(row["loop_seconds_per_image"], row["batched_seconds_per_image"])
        engine.generate(req.model_copy(update={"count": 1}))  # sets the size the decision sees
        row["auto_batches"] = should_batch(engine, req, engine._method, args.width, args.height)
        out[m] = row
    return out


def compile_run(settings, store, args, request, device: str) -> dict:
    """torch.compile of the UNet (settings.compile): the first call, then calls that
    switch method and speed; `new_graphs` counts graphs dynamo compiled during each."""
    from torch._dynamo.utils import counters

    from pipelines.engine import Engine

    engine = Engine(settings.model_copy(update={"compile": True}), store=store)
    first = [("quality", "none"), *(("quality", m) for m in args.methods if m != "none")][:2]
    other = next((s for s in args.speeds if s != "quality"), None)
    # the first calls, a switch to another speed, then the first calls again: a repeat
    # that compiles new graphs means a recompile per request
    plan = [*first, *([(other, "none")] if other else []), *first]
    calls = []
    for s, m in plan:
        before = counters["stats"]["unique_graphs"]
        seconds = timed(lambda: engine.generate(request(m, s)), device)
        calls.append({"speed": s, "method": m, "seconds": round6(seconds),
                      "new_graphs": counters["stats"]["unique_graphs"] - before})
    again = calls[-len(first):]
    return {"calls": calls, "recompiled_on_repeat": any(c["new_graphs"] for c in again)}


def step_costs(engine, ctx, args, request) -> dict:
    """Upscale, face detail, template and two people: engine vs plain diffusers (bench/steps.py)."""
    from bench.baselines import load_sdxl
    from bench.steps import step_costs as measure

    return measure(engine, ctx, args, lambda m: request(m, args.speeds[0]), load_sdxl)
