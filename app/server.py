"""Starts the Gradio app with the launch policy of `app.security`."""

from __future__ import annotations

import os

from pipelines.settings import Settings

from .security import LaunchConfig


def serve(settings: Settings, cfg: LaunchConfig, open_browser: bool = False, block: bool = True):
    # gradio reads these at launch; make sure the environment cannot override our host
    os.environ.pop("GRADIO_SERVER_NAME", None)
    os.environ.pop("GRADIO_SHARE", None)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from .ui import build_app

    demo = build_app(settings)
    settings.outputs_dir.mkdir(parents=True, exist_ok=True)
    demo.queue(default_concurrency_limit=1)
    return demo.launch(
        server_name=cfg.host,
        server_port=cfg.port,
        auth=cfg.auth,
        share=cfg.share,
        inbrowser=open_browser,
        max_file_size=cfg.max_file_size,
        allowed_paths=[str(settings.outputs_dir)],
        blocked_paths=[str(settings.models_dir), str(settings.loras_dir)],
        show_error=True,
        prevent_thread_lock=not block,
        quiet=True,
    )
