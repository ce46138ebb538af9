"""Batch tab: run a job file (identities x presets x prompts x methods x seeds)
with the app's resident engine. Shown when this build has `pipelines.batch`."""

from __future__ import annotations

import io
from pathlib import Path

import gradio as gr

from pipelines.errors import LikenessError
from pipelines.settings import Settings

from .jobs import EngineHolder
from .portrait import GPU, user_error


def check_job(path: str | None) -> str:
    from pipelines.batch.jobfile import load_job
    from pipelines.batch.runner import print_items

    if not path:
        raise gr.Error("Upload a job file (.yaml, .yml or .json) first.")
    try:
        job = load_job(path)
    except LikenessError as exc:
        raise user_error(exc) from None
    buf = io.StringIO()
    print_items(job, buf)
    return buf.getvalue()


def run_batch(settings: Settings, holder: EngineHolder, path: str | None):
    from pipelines.batch.jobfile import load_job
    from pipelines.batch.runner import run_job

    if not path:
        raise gr.Error("Upload a job file (.yaml, .yml or .json) first.")
    try:
        job = load_job(path, demo=settings.demo)
        log, summary = io.StringIO(), io.StringIO()
        report = run_job(job, settings, engine=holder.get(), stream=log, out=summary)
    except LikenessError as exc:
        raise user_error(exc) from None
    images = []
    for rec in report.records.values():
        for name in rec.get("outputs") or []:
            p = Path(report.out_dir) / name
            if p.is_file() and p.suffix.lower() == ".png":
                images.append((str(p), rec.get("identity") or ""))
    return summary.getvalue(), images


def build_batch(settings: Settings, holder: EngineHolder) -> None:
    gr.Markdown("A job file lists identities (photo paths: absolute, or relative to the job file) and items "
                "(presets or prompts × methods × seeds). Finished items are skipped when you run it again.")
    job = gr.File(label="Job file", file_types=[".yaml", ".yml", ".json"], type="filepath", elem_id="batch-job")
    with gr.Row():
        check = gr.Button("Check (dry run)")
        run = gr.Button("Run", variant="primary")
    listing = gr.Textbox(label="Items / summary", lines=12, interactive=False, elem_id="batch-output")
    gallery = gr.Gallery(label="Batch outputs", columns=6, format="png", interactive=False)
    check.click(check_job, job, listing, queue=False, api_visibility="private")
    run.click(lambda p: run_batch(settings, holder, p), job, [listing, gallery], concurrency_id=GPU,
              concurrency_limit=1, api_visibility="private")
