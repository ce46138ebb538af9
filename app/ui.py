"""The Gradio Blocks app. Reaches the engine only through `pipelines`' public API:
widgets become typed requests (`app.requests_map`), engine errors become
`gr.Error`. The engine itself is created on first use, not here."""

from __future__ import annotations

import gradio as gr

from pipelines.settings import Settings

from .api import build_api
from .history import HistoryTab
from .jobs import CancelRegistry, EngineHolder
from .models_tab import FirstRunCard, build_models
from .portrait import PortraitTab
from .widgets import build_portrait

PORTRAIT_TAB = "portrait"
CSS = """
#demo-banner { background: #fff3cd; color: #664d03; border: 1px solid #ffe69c; border-radius: 6px;
               padding: 4px 12px; }
"""


def build_app(settings: Settings, holder: EngineHolder | None = None) -> gr.Blocks:
    """The whole UI. `holder` lets a caller share (or fake) the engine; by default
    one is made here and the `Engine` inside it on first use."""
    holder = holder or EngineHolder(settings)
    cancels = CancelRegistry()
    notice = settings.profile.notice  # the demo models say so, once, on every tab
    title = "Likeness" + (f" — {notice}" if notice else "")
    with gr.Blocks(title=title) as demo:
        gr.Markdown("# Likeness")
        if notice:  # once, above the tabs: seen from every tab
            gr.Markdown(f"**{notice}.** Images show the wiring, not quality.", elem_id="demo-banner")
        with gr.Tabs() as tabs:
            with gr.Tab("Portrait", id=PORTRAIT_TAB):
                first_run = FirstRunCard(settings)  # what the chosen method/preset still needs
                first_run.build()
                portrait = PortraitTab(settings, holder, cancels, build_portrait(settings))
            with gr.Tab("History", id="history"):
                history = HistoryTab(settings, portrait, tabs, PORTRAIT_TAB)
                history.build()
            with gr.Tab("Train", id="train"):
                from .train_tab import TrainTab

                train = TrainTab(settings, holder, cancels)
                train.build()
            with gr.Tab("Batch", id="batch"):
                from .batch_tab import build_batch

                build_batch(settings, holder, cancels)
            with gr.Tab("Models", id="models"):
                build_models(settings, demo.load)
        # the named API endpoints first, so no UI event can claim their names
        build_api(settings, holder, cancels)
        if train is not None:
            from .train_tab import build_train_api

            build_train_api(settings, holder, cancels)
            train.wire()
        portrait.wire()
        first_run.wire(portrait.w.by_key["method"], portrait.w.by_key["preset"], demo.load, portrait.w.preset_gallery)
        history.wire(demo.load)
    demo.likeness_holder = holder  # for tests and the server: the app's one engine holder
    return demo


def app_css() -> str:
    return CSS
