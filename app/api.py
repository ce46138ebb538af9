"""Named API endpoints for `gradio_client`, with parameter names of their own
(the UI's events take many more inputs):

    client.predict(photos=[handle_file("me.jpg")], prompt="a man", preset="studio-headshot",
                   method="", seed=7, count=1, api_name="/generate")

`prompt` describes the person when a preset is given (it fills {subject}),
else it is the whole prompt; `method` "" keeps the preset's (or the default);
`seed` -1 is random. Every other field of the typed request (steps, size,
sampler, negative, scale, pose, restore, loras, keep, ...) is a parameter with
the request's default; a value left at its default lets the preset or the
method's recipe fill it. Returns the images (a gallery: paths and captions) and
a results list (seed, likeness, face found, file name per image).
`submit()` reports progress: step, total and ETA (`job.status().progress_data`).

`presets`, `poses`, `models` and `loras` list what the other parameters accept.

`job.cancel()` in gradio_client, or a dropped connection, stops the engine
within a step: the endpoint is a generator that yields an empty update per step,
where gradio can close it (see `app.generate_loop`)."""

from __future__ import annotations

import gradio as gr

from pipelines.errors import BadInput, LikenessError
from pipelines.requests import GenerateRequest, validate_request
from pipelines.settings import Settings

from .generate_loop import Step, session_job
from .jobs import CancelRegistry, EngineHolder
from .portrait import GPU, session_of, user_error
from .requests_map import api_field_specs, api_overrides, caption, photo_paths


def api_request(settings: Settings, photos, prompt, preset, method, seed, count,
                fields: dict | None = None) -> GenerateRequest:
    from pipelines.presets import apply_preset, user_presets_dir

    data: dict = {}
    preset = (preset or "").strip()
    prompt = (prompt or "").strip()
    if preset:
        data.update(apply_preset(preset, settings.profile, subject=prompt, user_dir=user_presets_dir(settings)))
    elif prompt:
        data["prompt"] = prompt
    else:
        raise BadInput("prompt is empty: describe the portrait, or give a preset.")
    if (method or "").strip():
        data["method"] = method.strip()
    paths = photo_paths(photos)
    if paths:
        data["photos"] = paths
    if seed is not None and int(seed) >= 0:
        data["seed"] = int(seed)
    data["count"] = int(count if count is not None else 1)
    data.update(api_overrides(fields or {}))
    return validate_request(GenerateRequest, data, "generate")


def api_results(images) -> list[dict]:
    """The result fields of each image: seed, likeness (mean ArcFace similarity;
    None when not scored or no face), whether a face was found, the file name."""
    out = []
    for g in images:
        s = g.recipe.get("likeness") if isinstance(g.recipe, dict) else None
        found = bool(s.get("face_found")) if isinstance(s, dict) else None
        out.append({"seed": g.seed, "likeness": float(s["mean"]) if found else None,
                    "face_found": found, "file": g.path.name})
    return out


def _field_component(name: str, kind: str, default):
    if kind == "bool":
        return gr.Checkbox(value=default, label=name)
    if kind in ("int", "float"):
        return gr.Number(value=default, precision=0 if kind == "int" else None, label=name)
    if kind == "json":
        return gr.JSON(value=default, label=name)
    return gr.Textbox(value=default, label=name)


def generate_endpoint(settings: Settings, holder: EngineHolder, cancels: CancelRegistry, specs):
    """The `/generate` endpoint's function: `(photos, prompt, preset, method, seed,
    count, *fields, request, progress)` -> yields an empty update per step, then
    (gallery, results). The request's fields after `count` follow `specs`."""

    def generate(*values):
        photos, prompt, preset, method, seed, count, *extra, request, progress = values

        try:
            req = api_request(settings, photos, prompt, preset, method, seed, count,
                              {name: v for (name, _, _), v in zip(specs, extra)})
        except LikenessError as exc:
            raise user_error(exc) from exc
        with session_job(holder, cancels, session_of(request), req, progress) as updates:
            for update in updates:
                if isinstance(update, Step):
                    yield gr.skip(), gr.skip()  # here gradio can close a cancelled call
                elif update.error is not None:
                    raise user_error(update.error)
                else:
                    images = update.result.images
                    yield [(str(g.path), caption(g.recipe)) for g in images], api_results(images)

    _api_signature(generate, specs)
    return generate


def build_api(settings: Settings, holder: EngineHolder, cancels: CancelRegistry) -> None:
    """Hidden components + the `generate` endpoint (call inside the Blocks)."""

    specs = api_field_specs()
    generate = generate_endpoint(settings, holder, cancels, specs)

    with gr.Group(visible=False):
        photos = gr.File(file_count="multiple", type="filepath", label="photos")
        prompt = gr.Textbox(label="prompt")
        preset = gr.Textbox(label="preset")
        method = gr.Textbox(label="method")
        seed = gr.Number(value=-1, precision=0, label="seed")
        count = gr.Number(value=1, precision=0, label="count")
        extra = [_field_component(name, kind, default) for name, kind, default in specs]
        images = gr.Gallery(label="images", format="png")
        results = gr.JSON(label="results")
        trigger = gr.Button("generate (API)")
    trigger.click(generate, [photos, prompt, preset, method, seed, count, *extra], [images, results],
                  api_name="generate", concurrency_id=GPU, concurrency_limit=1)
    build_list_endpoints(settings)


def _api_signature(fn, specs) -> None:
    """Give `fn(*values)` the signature gradio reads for `view_api`: one named
    parameter per input with its default (so optional fields show as optional),
    then the request and the progress tracker, which gradio passes last."""
    import inspect

    P = inspect.Parameter
    basic = [("photos", None), ("prompt", ""), ("preset", ""), ("method", ""), ("seed", -1), ("count", 1)]
    params = [P(n, P.POSITIONAL_OR_KEYWORD, default=d) for n, d in basic]
    params += [P(n, P.POSITIONAL_OR_KEYWORD, default=d) for n, _, d in specs]
    params += [P("request", P.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request),
               P("progress", P.POSITIONAL_OR_KEYWORD, default=gr.Progress())]
    fn.__signature__ = inspect.Signature(params)
    fn.__annotations__ = {"request": gr.Request}


def build_list_endpoints(settings: Settings) -> None:
    """`presets`, `poses`, `models` (with their state here) and `loras`: JSON lists."""
    from .http_api import list_loras_data, list_models_data, list_poses_data, list_presets_data

    lists = {"presets": lambda: list_presets_data(settings), "poses": lambda: list_poses_data(settings),
             "models": lambda: list_models_data(settings), "loras": lambda: list_loras_data(settings)}
    with gr.Group(visible=False):
        for name, fn in lists.items():
            out = gr.JSON(label=name)
            gr.Button(f"{name} (API)").click(_listing(fn), None, out, api_name=name, queue=False)


def _listing(fn):
    def listing():
        try:
            return fn()
        except LikenessError as exc:
            raise user_error(exc) from exc
    return listing
