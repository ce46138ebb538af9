"""The Gradio Blocks app. Reaches the engine only through `pipelines`' public API."""

from __future__ import annotations

import gradio as gr

from pipelines.settings import DEMO_BANNER, Settings


def model_rows(settings: Settings) -> list[list[str]]:
    from pipelines.models.store import ModelStore

    store = ModelStore(settings)
    rows = []
    for e in store.catalog:
        st = store.status(e.name)
        state = "verified" if st.verified else ("present" if st.present else "missing")
        rows.append([e.name, e.kind, e.license, "yes" if e.research_only else "no", state])
    return rows


def build_app(settings: Settings) -> gr.Blocks:
    title = "Likeness" + (f" — {DEMO_BANNER}" if settings.demo else "")
    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title}")
        if settings.demo:
            gr.Markdown(f"**{DEMO_BANNER}.** Images show the wiring, not quality.", elem_id="demo-banner")
        with gr.Tab("Models"):
            table = gr.Dataframe(
                headers=["model", "kind", "licence", "research-only", "state"],
                value=lambda: model_rows(settings),
                interactive=False,
                elem_id="model-status",
            )
            gr.Button("Refresh").click(lambda: model_rows(settings), outputs=table)
    return demo
