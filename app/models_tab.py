"""Models tab: what is on disk, downloads with progress, licence acceptance for
research-only models."""

from __future__ import annotations

import gradio as gr

from pipelines.errors import LikenessError
from pipelines.models.catalog import human_size
from pipelines.settings import Settings

from .portrait import user_error

HEADERS = ["model", "kind", "size", "licence", "research-only", "state"]
BUNDLE_HEADERS = ["bundle", "total", "still to download", "models"]
BUNDLE_PREFIX = "bundle: "


def _store(settings: Settings):
    from pipelines.stores import open_store

    return open_store(settings)


def missing_text(store, missing: list[str], choice: tuple[str, ...] = ()) -> str:
    """What the UI says when models are missing: every one at once, sizes, the
    total, and where to get them."""
    from pipelines.bundles import missing_error

    return missing_error(store, missing, choice).ui_message


def model_rows(settings: Settings) -> list[list[str]]:
    store = _store(settings)
    rows = []
    for e in store.catalog:
        st = store.status(e.name)
        state = "verified" if st.verified else ("present" if st.present else "missing")
        rows.append([e.name, e.kind, human_size(*e.planned_size), e.license, "yes" if e.research_only else "no",
                     state])
    return rows


def bundle_table(settings: Settings) -> list[list[str]]:
    """Every bundle with its total and what is still to download here."""
    from pipelines.bundles import bundle_rows

    return [[b, total, todo, names] for b, names, total, todo in bundle_rows(_store(settings), settings)]


def disk_text(settings: Settings) -> str:
    from pipelines.bundles import free_space

    store = _store(settings)
    return (f"Free disk space in `{store.root}`: **{human_size(free_space(store.root))}**. "
            "Sizes marked ~ are estimates (no public byte count).")


def licence_text(settings: Settings, name: str | None) -> str:
    if not name:
        return ""
    if name.startswith(BUNDLE_PREFIX):
        text, visible, _ = card_text(settings, tuple(name[len(BUNDLE_PREFIX):].split()))
        return text if visible else f"Everything **{name[len(BUNDLE_PREFIX):]}** needs is here."
    try:
        e = _store(settings).entry(name)
    except LikenessError as exc:
        return str(exc)
    where = f" ([terms]({e.license_url}))" if getattr(e, "license_url", None) else ""
    if e.research_only:
        note = ("**Research / non-commercial use only.** Tick the box to accept the licence before "
                "downloading.")
        if settings.profile.builds_models:
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
        if name.startswith(BUNDLE_PREFIX):  # a whole bundle, e.g. "bundle: faceid"
            from pipelines.bundles import check_disk, choice_models, plan

            todo = plan(store, choice_models(name[len(BUNDLE_PREFIX):].split(), settings, store.catalog))
            check_disk(todo)
            names = todo.names
        else:
            names = [store.entry(name).name]
        if not settings.profile.builds_models:
            for n in names:  # every licence before the first byte
                store.check_license(store.entry(n), accept_license=bool(accept))
        folder = None
        for i, n in enumerate(names):
            if progress is not None:
                progress((i, len(names)), desc=f"downloading {n}…")
            folder = store.download(n, accept_license=bool(accept), progress=True)
    except LikenessError as exc:
        raise user_error(exc) from exc
    if folder is None:
        return model_rows(settings), f"**{name}**: everything is here already."
    return model_rows(settings), f"**{name}** is ready in `{folder}`."


def build_models(settings: Settings, app_load) -> None:
    from pipelines.bundles import bundle_choices

    names = [f"{BUNDLE_PREFIX}{b}" for b in bundle_choices()] + [e.name for e in _store(settings).catalog]
    table = gr.Dataframe(headers=HEADERS, interactive=False, wrap=True, elem_id="model-status",
                         column_widths=["22%", "10%", "9%", "36%", "9%", "14%"])
    bundles = gr.Dataframe(headers=BUNDLE_HEADERS, interactive=False, wrap=True, elem_id="model-bundles",
                           label="Bundles: everything one choice needs on this computer")
    disk = gr.Markdown(elem_id="model-disk")
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
    def overview():
        return model_rows(settings), bundle_table(settings), disk_text(settings)

    refresh.click(overview, None, [table, bundles, disk], queue=False, api_visibility="private")
    app_load(overview, None, [table, bundles, disk], queue=False, api_visibility="private")


# ---- the first-run card (Portrait tab) -------------------------------------------------------------
POLL_S = 0.3  # seconds between progress updates while a download runs


def choice_for(method: str | None, preset: str | None) -> tuple[str, ...]:
    """The bundle the Portrait tab's current choice needs: the preset's, else the method's."""
    from .requests_map import NONE

    if preset and preset != NONE:
        return ("preset", preset)
    if method and method != "none":
        return (method,)
    return ()


def needed_models(settings: Settings, choice: tuple[str, ...]) -> list[str]:
    from pipelines.bundles import choice_models, plain_models

    if not choice:
        return plain_models(settings)
    return choice_models(list(choice), settings, _store(settings).catalog)


def card_text(settings: Settings, choice: tuple[str, ...]) -> tuple[str, bool, str]:
    """(markdown, visible, button label) of the first-run card for `choice`."""
    from pipelines.bundles import plan

    if settings.profile.builds_models:  # demo mode builds its tiny packs locally on first use: nothing to download
        return "", False, "Download"
    store = _store(settings)
    todo = plan(store, needed_models(settings, choice))
    if not todo.items:
        return "", False, "Download"
    what = f"preset **{choice[1]}**" if choice[:1] == ("preset",) else f"**{choice[0]}**" if choice else "plain SDXL"
    lines = [f"### Before the first portrait\n{what} needs these models on this computer "
             f"(sha256-verified, resumable; files already in the Hugging Face cache or another app's "
             f"folder are reused):", "", "| model | size | licence |", "|---|---|---|"]
    for i in todo.items:
        flag = " — **research / non-commercial only**" if i.entry.research_only else ""
        link = f" ([terms]({i.entry.license_url}))" if i.entry.license_url else ""
        lines.append(f"| {i.entry.name} | {human_size(i.remaining, i.exact)} | {i.entry.license}{flag}{link} |")
    lines += ["", f"**Total: {human_size(todo.total, todo.exact)}**; free disk space in `{todo.folder}`: "
                  f"{human_size(todo.free)}."]
    if not todo.fits:
        lines.append(f"**Not enough free disk space**: {human_size(todo.needed_disk)} is needed.")
    return "\n".join(lines), True, f"Download {human_size(todo.total, todo.exact)}"


def progress_html(rows, current: str | None, note: str = "") -> str:
    """One bar for the file being fetched and one for the total (plain HTML <progress>)."""
    import html

    total = sum(r.size or r.done for r in rows) or 1
    done = sum(min(r.done, r.size or r.done) for r in rows)
    cur = next((r for r in rows if f"{r.model}/{r.path}" == current), None)
    parts = []
    if cur is not None:
        size = cur.size or max(cur.done, 1)
        parts.append(f'<div class="fr-file">{html.escape(current)}: '
                     f'<progress class="fr-file-bar" value="{min(cur.done, size)}" max="{size}"></progress> '
                     f'{human_size(cur.done)} of {human_size(size)}</div>')
    parts.append(f'<div class="fr-total">total: <progress class="fr-total-bar" value="{done}" max="{total}">'
                 f'</progress> {human_size(done)} of {human_size(total)} ({100 * done // total}%)</div>')
    if note:
        parts.append(f'<div class="fr-note">{html.escape(note)}</div>')
    return "\n".join(parts)


def preset_gallery_items(settings: Settings) -> list[tuple]:
    """The preset cards with what each would still download here in the caption
    (just the title when nothing is missing, e.g. in demo mode)."""
    from pipelines.bundles import plan

    from .widgets import preset_cards

    store = _store(settings)
    items = []
    for name, title, img in preset_cards(settings):
        todo = plan(store, needed_models(settings, ("preset", name)))
        more = f" — downloads {human_size(todo.total, todo.exact)} first" if todo.items else ""
        items.append((img, title + more))
    return items


class FirstRunCard:
    """What the chosen method or preset still needs, shown before any upload:
    sizes, total, licences, free disk; one checkbox, one button, per-file and
    total progress, Cancel; an interrupted download resumes on the next click."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._cancels: dict[str, object] = {}

    def build(self) -> None:
        with gr.Group(visible=False, elem_id="first-run") as self.box:
            self.info = gr.Markdown(elem_id="first-run-info")
            self.accept = gr.Checkbox(label="I accept the licences listed above", value=False,
                                      elem_id="first-run-accept")
            with gr.Row():
                self.start = gr.Button("Download", variant="primary", elem_id="first-run-download")
                self.stop = gr.Button("Cancel", variant="stop", elem_id="first-run-cancel")
        self.progress = gr.HTML(elem_id="first-run-progress")  # stays after the card hides
        self.done = gr.Markdown(elem_id="first-run-done")

    def refresh(self, method, preset):
        text, visible, label = card_text(self.settings, choice_for(method, preset))
        return {self.box: gr.update(visible=visible), self.info: text, self.start: gr.update(value=label)}

    def download(self, method, preset, accept, request: gr.Request):
        import threading

        from pipelines.bundles import check_disk, download_progress, plan
        from pipelines.errors import Cancelled, LicenseNotAccepted

        from .portrait import session_of

        choice = choice_for(method, preset)
        store = _store(self.settings)
        todo = plan(store, needed_models(self.settings, choice))
        try:
            if todo.research_only and not accept and not self.settings.accept_research_licenses:
                raise LicenseNotAccepted("tick the box to accept the licences listed above first.")
            check_disk(todo)
        except LikenessError as exc:
            raise user_error(exc) from exc
        cancel = threading.Event()
        session = session_of(request)
        self._cancels[session] = cancel
        state: dict = {"error": None}

        def work():
            try:
                for item in todo.items:
                    store.download(item.entry.name, accept_license=True, progress=False, cancel=cancel)
            except BaseException as exc:  # handed to the UI thread below
                state["error"] = exc

        def current(rows):
            pending = [r for r in rows if not r.finished]
            return f"{pending[0].model}/{pending[0].path}" if pending else None

        worker = threading.Thread(target=work, name="first-run-download", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                rows = download_progress(store, todo)
                yield {self.progress: progress_html(rows, current(rows))}
                worker.join(POLL_S)
        finally:
            self._cancels.pop(session, None)
        rows = download_progress(store, todo)
        err = state["error"]
        if isinstance(err, Cancelled):
            yield {self.progress: progress_html(rows, current(rows), "Cancelled: the partial files are kept; "
                                                "press Download again to resume.")}
            return
        if err is not None:
            raise user_error(err)
        text, visible, label = card_text(self.settings, choice)
        yield {self.progress: progress_html(rows, None, "All models are verified and ready."),
               self.box: gr.update(visible=visible), self.info: text, self.start: gr.update(value=label),
               self.done: "**Models ready.** Upload photos and press Generate (no restart needed)."}

    def cancel(self, request: gr.Request):
        from .portrait import session_of

        ev = self._cancels.get(session_of(request))
        if ev is not None:
            ev.set()
            return "Cancelling… (the partial files are kept)"
        return ""

    def wire(self, method, preset, load, gallery=None) -> None:
        outs = [self.box, self.info, self.start]
        for widget in (method, preset):
            widget.change(self.refresh, [method, preset], outs, queue=False, api_visibility="private")
        load(self.refresh, [method, preset], outs, queue=False, api_visibility="private")
        fetched = self.start.click(self.download, [method, preset, self.accept],
                                   [self.progress, self.box, self.info, self.start, self.done],
                                   concurrency_id="download", concurrency_limit=1, api_visibility="private")
        if gallery is not None and not self.settings.profile.builds_models:  # each preset card: what it would still download
            items = lambda: preset_gallery_items(self.settings)  # noqa: E731
            load(items, None, gallery, queue=False, api_visibility="private")
            fetched.then(items, None, gallery, queue=False, api_visibility="private")
        self.stop.click(self.cancel, None, self.done, queue=False, api_visibility="private")
