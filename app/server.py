"""Starts the Gradio app with the launch policy of `app.security`:
127.0.0.1 unless --listen, uploads capped, only generated outputs served."""

from __future__ import annotations

import os

from pipelines.settings import Settings

from .security import LaunchConfig

IDENTITIES_DIR = "identities"  # pipelines.outputs keeps identity cards in outputs/identities/
# environment variables gradio would read at launch; none of them may widen what
# the app exposes (host, share link, served folders)
_GRADIO_ENV = ("GRADIO_SERVER_NAME", "GRADIO_SHARE", "GRADIO_ALLOWED_PATHS", "GRADIO_ROOT_PATH",
               "GRADIO_MCP_SERVER")


def launch_kwargs(settings: Settings, cfg: LaunchConfig) -> dict:
    """What `Blocks.launch` gets: only the outputs folder is served; models,
    LoRAs and the identity cards beside the outputs (face embeddings: private)
    are blocked even when they sit inside it."""
    outputs = settings.outputs_dir.resolve()
    return dict(
        server_name=cfg.host,
        server_port=cfg.port,
        auth=cfg.auth,
        share=cfg.share,
        max_file_size=cfg.max_file_size,
        allowed_paths=[str(outputs)],
        blocked_paths=[str(settings.models_dir.resolve()), str(settings.loras_dir.resolve()),
                       str(outputs / IDENTITIES_DIR)],
        show_error=True,
        quiet=True,
        footer_links=["api", "gradio"],
        mcp_server=False,
    )


def serve(settings: Settings, cfg: LaunchConfig, open_browser: bool = False, block: bool = True,
          holder=None):
    """Build and launch the app. With `block=False` returns (app, url, share_url)
    and leaves the server running in a thread (tests: `demo.close()`)."""
    for var in _GRADIO_ENV:
        os.environ.pop(var, None)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from .ui import app_css, build_app

    demo = build_app(settings, holder=holder)
    settings.outputs_dir.mkdir(parents=True, exist_ok=True)
    demo.queue(default_concurrency_limit=1)
    app, url, share_url = demo.launch(
        inbrowser=open_browser, prevent_thread_lock=not block, css=app_css(), **launch_kwargs(settings, cfg),
    )
    return demo, url, share_url
