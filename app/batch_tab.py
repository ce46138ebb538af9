"""Batch tab: run a job file (identities x presets x prompts x methods x seeds)
with the app's resident engine.

A job file that comes through the browser may not name files on the server:
its identities name the photos uploaded beside it (by file name) or identity
cards of this app (by name), and poses by template name (`Uploads` in
`pipelines.batch.jobfile`). A run yields at every sampling step, so Cancel, a
closed tab or a dropped connection stops it within a step (see `app.jobs`);
finished items stay done and a rerun continues after them."""

from __future__ import annotations

import io
from pathlib import Path

import gradio as gr

from pipelines.errors import Cancelled, LikenessError
from pipelines.settings import Settings

from .jobs import CancelRegistry, EngineHolder, run_job
from .portrait import GPU, session_of, user_error
from .widgets import PHOTO_TYPES

CARDS_DIR = "identities"  # pipelines.outputs keeps the app's identity cards in outputs/identities/


def uploads_of(settings: Settings, photos):
    from pipelines.batch.jobfile import Uploads

    return Uploads.from_files([str(p) for p in photos or []], Path(settings.outputs_dir) / CARDS_DIR)


def load_uploaded_job(settings: Settings, path: str | None, photos):
    """The job as both "Check (dry run)" and "Run" see it: one loader, with the
    settings' run profile, so the listing names the items the run makes."""
    from pipelines.batch.jobfile import load_job

    if not path:
        raise gr.Error("Upload a job file (.yaml, .yml or .json) first.")
    try:
        from pipelines.presets import user_presets_dir

        return load_job(path, settings.profile, uploads=uploads_of(settings, photos),
                        presets_dir=user_presets_dir(settings))
    except LikenessError as exc:
        raise user_error(exc) from exc


def check_job(settings: Settings, path: str | None, photos=None) -> str:
    from pipelines.batch.runner import print_items

    job = load_uploaded_job(settings, path, photos)
    buf = io.StringIO()
    print_items(job, buf)
    return buf.getvalue()


def batch_images(report) -> list[tuple[str, str]]:
    images = []
    for rec in report.records.values():
        for name in rec.get("outputs") or []:
            p = Path(report.out_dir) / name
            if p.is_file() and p.suffix.lower() == ".png":
                images.append((str(p), rec.get("identity") or ""))
    return images


def run_batch(settings: Settings, holder: EngineHolder, cancels: CancelRegistry, path: str | None, photos,
              request: gr.Request | None = None):
    """Generator: a progress line per sampling step, then (summary, images)."""
    from pipelines.batch.runner import run_job as run_batch_job

    job = load_uploaded_job(settings, path, photos)
    log, summary = io.StringIO(), io.StringIO()
    session = session_of(request)
    cancel = cancels.begin(session)
    try:
        for ev in run_job(lambda on_step, c: run_batch_job(job, settings, engine=holder.get(), stream=log,
                                                           out=summary, on_step=on_step, cancel=c), cancel):
            if ev.kind == "error":
                if isinstance(ev.data, Cancelled):
                    yield (f"Stopped: the batch was cancelled ({ev.data}). Finished items are kept; run it again "
                           f"to continue.\n\n{log.getvalue()}", gr.skip())
                    return
                raise user_error(ev.data)
            if ev.kind == "done":
                yield summary.getvalue(), batch_images(ev.data)
                return
            info = ev.data
            yield f"{log.getvalue()}step {info.get('step')}/{info.get('steps')}", gr.skip()
    finally:
        cancels.end(session, cancel)


def cancel_batch(cancels: CancelRegistry, request: gr.Request | None) -> str:
    if cancels.cancel(session_of(request)):
        return "Cancelling… (finished items are kept; run again to continue)"
    return "Nothing is running in this tab."


def build_batch(settings: Settings, holder: EngineHolder, cancels: CancelRegistry | None = None) -> None:
    cancels = cancels or CancelRegistry()
    gr.Markdown("A job file lists identities and items (presets or prompts × methods × seeds). Here its "
                "identities name the photos you upload beside it, by file name (`photos: [me1.jpg]`), or an "
                "identity card of this app by name; poses by template name. Finished items are skipped when you "
                "run it again.")
    with gr.Row():
        job = gr.File(label="Job file", file_types=[".yaml", ".yml", ".json"], type="filepath", elem_id="batch-job")
        photos = gr.File(label="Photos named in the job file", file_count="multiple", type="filepath",
                         file_types=PHOTO_TYPES, elem_id="batch-photos")
    with gr.Row():
        check = gr.Button("Check (dry run)")
        run = gr.Button("Run", variant="primary")
        stop = gr.Button("Cancel", variant="stop")
    listing = gr.Textbox(label="Items / summary", lines=12, interactive=False, elem_id="batch-output")
    gallery = gr.Gallery(label="Batch outputs", columns=6, format="png", interactive=False)

    def start(p, ph, request: gr.Request):
        yield from run_batch(settings, holder, cancels, p, ph, request)

    check.click(lambda p, ph: check_job(settings, p, ph), [job, photos], listing, queue=False,
                api_visibility="private")
    run.click(start, [job, photos], [listing, gallery], concurrency_id=GPU, concurrency_limit=1,
              api_visibility="private")
    def stop_batch(request: gr.Request):
        return cancel_batch(cancels, request)

    stop.click(stop_batch, None, listing, queue=False, api_visibility="private")
