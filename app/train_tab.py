"""Train tab: a personal LoRA from a few photos (`pipelines.lora`), with step
progress, loss and ETA, and Cancel (a checkpoint is kept: train again with
"resume" to continue).

An existing LoRA of the same name is replaced only when "Overwrite" is ticked
(the API's `overwrite` parameter). Both the tab and the API are generators that
yield at every training step, so a client cancel or a closed tab stops the
trainer within a step (see `app.jobs`)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from pipelines.errors import BadInput, Cancelled, LikenessError
from pipelines.settings import Settings

from .jobs import CancelRegistry, EngineHolder, run_job
from .portrait import GPU, session_of, user_error
from .progress import format_seconds
from .widgets import PHOTO_TYPES

MAX_TRAIN_PHOTOS = 50


def train_inputs(name, steps, rank, trigger, class_word, flip, resume, overwrite, profile):
    """Widget values by name -> (TrainConfig, DatasetOptions), validated; `profile`
    is the settings' run profile (it sizes the training buckets)."""
    from pipelines.lora.dataset import DatasetOptions
    from pipelines.lora.manager import normalize_name
    from pipelines.lora.train import TrainConfig
    from pipelines.requests import validate_request

    normalize_name((name or "").strip(), "LoRA name")
    data = {"name": name.strip(), "rank": int(rank or 4), "resume": bool(resume), "overwrite": bool(overwrite)}
    if steps and int(steps) > 0:
        data["steps"] = int(steps)
    config = validate_request(TrainConfig, data, "train")
    opts = {"profile": profile, "flip": bool(flip)}
    if (trigger or "").strip():
        opts["trigger"] = trigger.strip()
    if (class_word or "").strip():
        opts["class_word"] = class_word.strip()
    return config, DatasetOptions(**opts)


def train_events(settings: Settings, holder: EngineHolder, cancels: CancelRegistry, session: str,
                 photos: list[str], config, options):
    """Run the training in a thread; yields the trainer's info dicts, then
    ("done", (training set, result)). Frees the generation pipeline first: two
    SDXL bases do not fit a consumer GPU together."""
    from pipelines.lora.train import train_lora
    from pipelines.stores import open_store

    def call(on_step, cancel):
        if holder.loaded:  # under the engine lock: no generation is running now
            holder.get().release_base()
        return train_lora(settings, photos, config, options, store=open_store(settings), callback=on_step,
                          cancel=cancel, progress=False)

    cancel = cancels.begin(session)
    try:
        yield from run_job(call, cancel, coalesce=False)
    finally:
        cancels.end(session, cancel)


def preview_image(path):
    """The contact sheet as pixels: it sits in the LoRA folder, which is never served."""
    if not path:
        return None
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


def result_summary(tset, result) -> dict:
    return {"name": result.name, "file": Path(result.path).name, "steps": result.steps,
            "trigger": result.trigger, "final_loss": result.final_loss, "seconds": round(result.seconds, 1),
            "photos_used": [Path(r.file).name for r in tset.used],
            "left_out": [{"file": Path(r.file).name, "reason": r.reason} for r in tset.excluded]}


class TrainTab:
    def __init__(self, settings: Settings, holder: EngineHolder, cancels: CancelRegistry):
        self.settings = settings
        self.holder = holder
        self.cancels = cancels

    def build(self) -> None:
        gr.Markdown("Train a LoRA of one person from 3–50 photos (one face each; group photos and tiny or "
                    "blurry faces are left out). Use it in the Portrait tab's LoRA table afterwards.")
        with gr.Row():
            self.photos = gr.File(label="Photos", file_count="multiple", type="filepath", file_types=PHOTO_TYPES,
                                  elem_id="train-photos")
            with gr.Column():
                self.name = gr.Textbox(label="LoRA name (letters, digits, - and _)", elem_id="train-name")
                self.trigger = gr.Textbox(label="Trigger word", value="lkns")
                self.class_word = gr.Textbox(label="Class phrase (optional), e.g. 'a woman'")
        with gr.Row():
            self.steps = gr.Number(value=0, precision=0, label="Steps (0 = 200 per photo, at most 800)")
            self.rank = gr.Slider(1, 64, value=4, step=1, label="Rank")
            self.flip = gr.Checkbox(label="Also train on mirrored crops")
            self.resume = gr.Checkbox(label="Resume from the last checkpoint")
            self.overwrite = gr.Checkbox(label="Overwrite an existing LoRA of this name", elem_id="train-overwrite")
        with gr.Row():
            self.start = gr.Button("Train", variant="primary", elem_id="train-start")
            self.stop = gr.Button("Cancel", variant="stop")
        self.status = gr.Markdown(elem_id="train-status")
        self.preview = gr.Image(label="Training crops", interactive=False, format="png", height=320,
                                 elem_id="train-preview")

    def train(self, photos, name, steps, rank, trigger, class_word, flip, resume, overwrite, request: gr.Request,
              progress=gr.Progress()):
        try:
            paths = [str(p) for p in photos or []]
            if not paths:
                raise BadInput("photos: upload 3 to 50 photos of the person.")
            if len(paths) > MAX_TRAIN_PHOTOS:
                raise BadInput(f"photos: at most {MAX_TRAIN_PHOTOS} photos (got {len(paths)}).")
            config, options = train_inputs(name, steps, rank, trigger, class_word, flip, resume, overwrite,
                                           self.settings.profile)
        except LikenessError as exc:
            raise user_error(exc) from exc
        yield {self.status: "Preparing the photos…", self.preview: None}
        notes: list[str] = []
        for ev in train_events(self.settings, self.holder, self.cancels, session_of(request), paths, config,
                               options):
            if ev.kind == "error":
                if isinstance(ev.data, Cancelled):
                    yield {self.status: f"**Stopped**: {ev.data}"}
                    return
                raise user_error(ev.data)
            if ev.kind == "done":
                tset, result = ev.data
                s = result_summary(tset, result)
                loss = f", final loss {s['final_loss']:.4f}" if s["final_loss"] is not None else ""
                text = (f"**Trained `{s['file']}`** in {format_seconds(result.seconds)} ({s['steps']} steps{loss}). "
                        f"Trigger word: `{s['trigger']}`. Pick it in the Portrait tab's LoRA table "
                        "(press Rescan LoRAs).")
                yield {self.status: "\n".join([text, *notes]), self.preview: preview_image(result.preview)}
                return
            info = ev.data
            if info.get("phase") == "dataset":
                notes = [f"- left out **{Path(x['file']).name}**: {x['reason']}" for x in info["excluded"]]
                notes += [f"- {w}" for w in info.get("warnings", [])]
                yield {self.status: "\n".join([f"Training on {len(info['used'])} photo(s).", *notes])}
            elif info.get("phase") == "train":
                desc = (f"step {info['step']}/{info['steps']} · loss {info['loss']:.4f} · "
                        f"ETA {format_seconds(info.get('eta_s'))}")
                progress((info["step"], info["steps"]), desc=desc, unit="steps")
                yield {self.status: desc}
            elif info.get("message"):
                progress(0, desc=info["message"])
                yield {self.status: info["message"]}

    def cancel(self, request: gr.Request):
        if self.cancels.cancel(session_of(request)):
            return "Cancelling… (a checkpoint is kept; tick resume to continue later)"
        return "Nothing is running in this tab."

    def wire(self) -> None:
        inputs = [self.photos, self.name, self.steps, self.rank, self.trigger, self.class_word, self.flip,
                  self.resume, self.overwrite]
        self.start.click(self.train, inputs, [self.status, self.preview], concurrency_id=GPU, concurrency_limit=1,
                         api_visibility="private")
        self.stop.click(self.cancel, None, self.status, queue=False, api_visibility="private")


def build_train_api(settings: Settings, holder: EngineHolder, cancels: CancelRegistry) -> None:
    """The `train` endpoint for gradio_client: photos, name, steps (0 = default),
    overwrite (replace an existing LoRA of that name) -> a summary (the LoRA file
    stays in the loras folder, which is never served)."""

    def train(photos, name, steps, overwrite, request: gr.Request):
        try:
            paths = [str(p) for p in photos or []]
            if not paths:
                raise BadInput("photos: give 3 to 50 photos of the person.")
            config, options = train_inputs(name, steps, 4, "", "", False, False, overwrite, settings.profile)
        except LikenessError as exc:
            raise user_error(exc) from exc
        for ev in train_events(settings, holder, cancels, session_of(request), paths, config, options):
            if ev.kind == "error":
                raise user_error(ev.data)
            if ev.kind == "done":
                yield result_summary(*ev.data)
                return
            yield gr.skip()  # a step: where gradio can close a cancelled call
        raise gr.Error("the training ended without a result.")

    with gr.Group(visible=False):
        photos = gr.File(file_count="multiple", type="filepath", label="photos")
        name = gr.Textbox(label="name")
        steps = gr.Number(value=0, precision=0, label="steps")
        overwrite = gr.Checkbox(value=False, label="overwrite")
        summary = gr.JSON(label="lora")
        trigger = gr.Button("train (API)")
    trigger.click(train, [photos, name, steps, overwrite], summary, api_name="train", concurrency_id=GPU, concurrency_limit=1)
