"""Launch policy for the web server (BAD_INPUTS rows 13-17), kept free of gradio
so it is testable on its own.

- Binds 127.0.0.1 unless --listen; `GRADIO_SERVER_NAME` in the environment is
  ignored (with a warning), so it cannot silently expose the app.
- --listen needs --auth USER:PASS, unless the alarmingly named
  --insecure-no-auth is given.
- No share link unless --share.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from pipelines.errors import BadInput

MAX_UPLOAD_BYTES = 25 * 1024 * 1024


@dataclass(frozen=True)
class LaunchConfig:
    host: str
    port: int
    auth: tuple[str, str] | None
    share: bool
    max_file_size: int = MAX_UPLOAD_BYTES
    warnings: list[str] = field(default_factory=list)


def parse_auth(value: str) -> tuple[str, str]:
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise BadInput("--auth must be USER:PASS with a non-empty user and password.")
    return user, password


def resolve_launch(
    *, listen: bool, port: int, auth: str | None, insecure_no_auth: bool, share: bool,
    environ: dict | None = None,
) -> LaunchConfig:
    env = os.environ if environ is None else environ
    warnings: list[str] = []
    if env.get("GRADIO_SERVER_NAME") and not listen:
        warnings.append(
            f"ignoring GRADIO_SERVER_NAME={env['GRADIO_SERVER_NAME']!r}: Likeness binds 127.0.0.1 "
            "unless you pass --listen (with --auth USER:PASS)."
        )
    if env.get("GRADIO_SHARE") and not share:
        warnings.append("ignoring GRADIO_SHARE: pass --share to create a public share link.")
    if not (1 <= port <= 65535):
        raise BadInput(f"--port {port} is out of range 1-65535.")
    creds = parse_auth(auth) if auth else None
    if listen and creds is None and not insecure_no_auth:
        raise BadInput(
            "--listen exposes the app to your network: give --auth USER:PASS "
            "(or --insecure-no-auth if you really mean it)."
        )
    if share and creds is None and not insecure_no_auth:
        raise BadInput("--share publishes the app on the internet: give --auth USER:PASS.")
    host = "0.0.0.0" if listen else "127.0.0.1"
    return LaunchConfig(host=host, port=port, auth=creds, share=share, warnings=warnings)
