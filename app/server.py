"""Starts the Gradio app with the launch policy of `app.security`:
127.0.0.1 unless --listen, uploads capped, only generated outputs served.

gradio decides what its file route serves by folder (`allowed_paths`,
`blocked_paths`); identity cards, manifests and job files sit in the same
folders as the portraits (`outputs/batch-<job>/identities/...`), so a small
ASGI middleware (`FileGate`) applies the file allow-list of
`app.security.served_file` to every file request before gradio sees it.

`ExactCancel` makes a client's cancel stop only the call it names. gradio's
`/cancel` route (what `gradio_client`'s `job.cancel()` posts) cancels every
running task of the caller's session and endpoint, so cancelling a call that
is still queued killed whichever other call of the same client was running, and
that call never got its result. gradio names each running task
`<session>_<fn_index><gradio-sep><event_id>` (gradio/utils.py `set_task_name`);
the middleware cancels the task of the named event only, then hands gradio a body
whose `fn_index` matches no task, so gradio still drops the event from the queue,
closes its iterator and answers the client."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
from pathlib import Path

from pipelines.settings import Settings

from .security import LaunchConfig, served_file

IDENTITIES_DIR = "identities"  # pipelines.outputs keeps identity cards in outputs/identities/
# environment variables gradio would read at launch; none of them may widen what
# the app exposes (host, share link, served folders)
_GRADIO_ENV = ("GRADIO_SERVER_NAME", "GRADIO_SHARE", "GRADIO_ALLOWED_PATHS", "GRADIO_ROOT_PATH",
               "GRADIO_MCP_SERVER")


# gradio's file routes: /gradio_api/file=PATH and the older /gradio_api/file/PATH
# (behind any root path); the path is already percent-decoded in the ASGI scope
FILE_ROUTE = re.compile(r"/gradio_api/file(?:=|/)(.*)\Z", re.S)


class FileGate:
    """ASGI middleware: a file request that `allow(path)` refuses gets 403
    before gradio (or its login check) sees it."""

    def __init__(self, app, allow):
        self.app = app
        self.allow = allow

    async def __call__(self, scope, receive, send):
        if scope.get("type") == "http":
            m = FILE_ROUTE.search(scope.get("path") or "")
            if m is not None and not self.allow(m.group(1)):
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"0")]})
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, send)


CANCEL_ROUTE = re.compile(r"/gradio_api/cancel/?\Z")
TASK_SEP = "<gradio-sep>"  # gradio/utils.py set_task_name: f"{session}_{fn_index}<gradio-sep>{event_id}"
NO_FN = -1  # an fn_index no task has


class ExactCancel:
    """ASGI middleware: POST /gradio_api/cancel cancels the named event only."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") != "POST" or \
                not CANCEL_ROUTE.search(scope.get("path") or ""):
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([], receive, message), send)
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        event_id = data.get("event_id") if isinstance(data, dict) else None
        if not isinstance(event_id, str) or not event_id:
            return await self.app(scope, _replay([body], receive), send)
        await cancel_event_task(event_id)  # the call is running
        data["fn_index"] = NO_FN
        body = json.dumps(data).encode()
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
        scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        await self.app(scope, _replay([body], receive), send)  # gradio drops it from the queue
        # an event leaves the queue and gets its named task in one step of the
        # event loop, so one that started meanwhile has its task by now
        await cancel_event_task(event_id)


def _replay(bodies: list[bytes], receive, first=None):
    """A `receive` that gives the (rewritten) request body once, then defers."""
    pending = [first] if first is not None else [
        {"type": "http.request", "body": b, "more_body": False} for b in bodies]

    async def replay():
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


async def cancel_event_task(event_id: str) -> None:
    tasks = [t for t in asyncio.all_tasks() if t.get_name().endswith(TASK_SEP + event_id)]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def file_gate(outputs_dir: Path):
    from starlette.middleware import Middleware

    return Middleware(FileGate, allow=functools.partial(served_file, outputs_dir=outputs_dir))


def exact_cancel():
    from starlette.middleware import Middleware

    return Middleware(ExactCancel)


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
        # gradio's run history keeps every call's inputs and outputs (face photos,
        # portraits) in the browser and offers to upload them to a Hub bucket
        run_history=False,
        app_kwargs={"middleware": [file_gate(outputs), exact_cancel()]},
    )


def serve(settings: Settings, cfg: LaunchConfig, open_browser: bool = False, block: bool = True,
          holder=None):
    """Build and launch the app. With `block=False` returns (app, url, share_url)
    and leaves the server running in a thread (tests: `demo.close()`)."""
    for var in _GRADIO_ENV:
        os.environ.pop(var, None)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from .http_api import mount_http_api
    from .jobs import EngineHolder
    from .ui import app_css, build_app

    holder = holder or EngineHolder(settings)  # one engine for the UI and the HTTP API
    demo = build_app(settings, holder=holder)
    settings.outputs_dir.mkdir(parents=True, exist_ok=True)
    demo.queue(default_concurrency_limit=1)
    app, url, share_url = demo.launch(
        inbrowser=open_browser, prevent_thread_lock=True, css=app_css(), **launch_kwargs(settings, cfg),
    )
    mount_http_api(app, settings, holder, cfg.auth)  # /api/v1, behind the same login
    print(f"Likeness web UI: {url}  (JSON API: {url.rstrip('/')}/api/v1/docs)", flush=True)
    if share_url:
        print(f"public share link: {share_url}", flush=True)
    if block:
        demo.block_thread()
    return demo, url, share_url
