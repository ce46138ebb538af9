"""Named API endpoints for `gradio_client`, with parameter names of their own
(the UI's events take many more inputs):

    client.predict(photos=[handle_file("me.jpg")], prompt="a man", preset="studio-headshot",
                   method="", seed=7, count=1, api_name="/generate")

`prompt` describes the person when a preset is given (it fills {subject}),
else it is the whole prompt; `method` "" keeps the preset's (or the default);
`seed` -1 is random. Returns the images (a gallery: paths and captions).

`job.cancel()` in gradio_client, or a dropped connection, stops the engine
within a step: the endpoint is a generator that yields an empty update per step,
where gradio can close it (see `app.jobs`)."""

from __future__ import annotations

import gradio as gr

from pipelines.errors import BadInput, LikenessError
from pipelines.requests import GenerateRequest, validate_request
from pipelines.settings import Settings

from .jobs import CancelRegistry, EngineHolder, run_job
from .portrait import GPU, session_of, user_error
from .requests_map import caption, photo_paths


def api_request(settings: Settings, photos, prompt, preset, method, seed, count) -> GenerateRequest:
    from pipelines.presets import load_preset

    data: dict = {}
    preset = (preset or "").strip()
    prompt = (prompt or "").strip()
    if preset:
        data.update(load_preset(preset, subject=prompt, demo=settings.demo))
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
    return validate_request(GenerateRequest, data, "generate")


def build_api(settings: Settings, holder: EngineHolder, cancels: CancelRegistry) -> None:
    """Hidden components + the `generate` endpoint (call inside the Blocks)."""

    def generate(photos, prompt, preset, method, seed, count, request: gr.Request):
        try:
            req = api_request(settings, photos, prompt, preset, method, seed, count)
        except LikenessError as exc:
            raise user_error(exc) from None
        session = session_of(request)
        cancel = cancels.begin(session)
        try:
            for ev in run_job(lambda on_step, c: holder.get().generate(req, on_step=on_step, cancel=c), cancel):
                if ev.kind == "error":
                    raise user_error(ev.data)
                if ev.kind == "done":
                    yield [(str(g.path), caption(g.recipe)) for g in ev.data.images]
                    return
                yield gr.skip()  # a step: nothing to show, but here gradio can close a cancelled call
        finally:
            cancels.end(session, cancel)
        raise gr.Error("the job ended without a result.")

    with gr.Group(visible=False):
        photos = gr.File(file_count="multiple", type="filepath", label="photos")
        prompt = gr.Textbox(label="prompt")
        preset = gr.Textbox(label="preset")
        method = gr.Textbox(label="method")
        seed = gr.Number(value=-1, precision=0, label="seed")
        count = gr.Number(value=1, precision=0, label="count")
        images = gr.Gallery(label="images", format="png")
        trigger = gr.Button("generate (API)")
    trigger.click(generate, [photos, prompt, preset, method, seed, count], images, api_name="generate",
                  concurrency_id=GPU, concurrency_limit=1)
