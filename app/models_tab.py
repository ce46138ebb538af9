"""Models tab: what is on disk, downloads with progress, licence acceptance for
research-only models."""

from __future__ import annotations

import gradio as gr

from pipelines.errors import LikenessError
from pipelines.settings import Settings

from .portrait import user_error

HEADERS = ["model", "kind", "licence", "research-only", "state"]


def _store(settings: Settings):
    from pipelines.models.store import ModelStore

    return ModelStore(settings)


def missing_text(store, missing: list[str], choice: tuple[str, ...] = ()) -> str:
    """What the UI says when models are missing: every one at once, sizes, the
    total, and where to get them."""
    from pipelines.models.bundles import missing_error

    return missing_error(store, missing, choice).ui_message


def model_rows(settings: Settings) -> list[list[str]]:
    store = _store(settings)
    rows = []
    for e in store.catalog:
        st = store.status(e.name)
        state = "verified" if st.verified else ("present" if st.present else "missing")
        rows.append([e.name, e.kind, e.license, "yes" if e.research_only else "no", state])
    return rows


def licence_text(settings: Settings, name: str | None) -> str:
    if not name:
        return ""
    try:
        e = _store(settings).entry(name)
    except LikenessError as exc:
        return str(exc)
    where = f" ([terms]({e.license_url}))" if getattr(e, "license_url", None) else ""
    if e.research_only:
        note = ("**Research / non-commercial use only.** Tick the box to accept the licence before "
                "downloading.")
        if settings.demo:
            note += " (Demo mode builds random-weight stand-ins; no licence applies to them.)"
        return f"{e.name}: licence *{e.license}*{where}. {note}"
    return f"{e.name}: licence *{e.license}*{where}."


def download_model(settings: Settings, name: str | None, accept: bool, progress=None) -> tuple[list, str]:
    """Download (in demo mode: build) `name`; refuses research-only models whose
    licence is not accepted. Returns the new table rows and a status line."""
    if not name:
        raise gr.Error("Choose a model to download.")
    store = _store(settings)
    try:
        entry = store.entry(name)
        if not settings.demo:
            store.check_license(entry, accept_license=bool(accept))
        if progress is not None:
            progress(0, desc=f"downloading {name}…")
        folder = store.download(name, accept_license=bool(accept), progress=True)
    except LikenessError as exc:
        raise user_error(exc) from None
    return model_rows(settings), f"**{name}** is ready in `{folder}`."


def build_models(settings: Settings, app_load) -> None:
    names = [e.name for e in _store(settings).catalog]
    table = gr.Dataframe(headers=HEADERS, interactive=False, wrap=True, elem_id="model-status",
                         column_widths=["24%", "12%", "40%", "10%", "14%"])
    with gr.Row():
        name = gr.Dropdown(names, value=None, label="Model", elem_id="model-name")
        accept = gr.Checkbox(label="I accept this model's licence (needed for research-only models)",
                             value=False, elem_id="accept-license")
    licence = gr.Markdown(elem_id="model-licence")
    with gr.Row():
        download = gr.Button("Download", variant="primary", elem_id="model-download")
        refresh = gr.Button("Refresh")
    status = gr.Markdown(elem_id="model-download-status")

    def do_download(n, a, progress=gr.Progress(track_tqdm=True)):
        return download_model(settings, n, a, progress)

    name.change(lambda n: licence_text(settings, n), name, licence, queue=False, api_visibility="private")
    download.click(do_download, [name, accept], [table, status], concurrency_id="download",
                   concurrency_limit=1, api_visibility="private")
    refresh.click(lambda: model_rows(settings), None, table, queue=False, api_visibility="private")
    app_load(lambda: model_rows(settings), None, table, queue=False, api_visibility="private")
