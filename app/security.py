"""Launch policy for the web server, kept free of gradio
so it is testable on its own.

- Binds 127.0.0.1 unless --listen; `GRADIO_SERVER_NAME` in the environment is
  ignored (with a warning), so it cannot silently expose the app.
- --listen needs --auth USER:PASS, unless the alarmingly named
  --insecure-no-auth is given.
- No share link unless --share.
- Files are served by allow-list (`served_file`): under the outputs folder only
  generated PNGs, never identity cards (face crops and embeddings, wherever a
  run wrote them), manifests, `identities.json`, job files or temp files;
  elsewhere (gradio's upload and cache folders) only images, so an uploaded
  job file is not served back either.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import BadInput

MAX_UPLOAD_BYTES = 25 * 1024 * 1024
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# what the app shows in the browser from gradio's upload/cache folders: images only
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"})
PRIVATE_FOLDERS = frozenset({"identities"})  # identity cards: <outputs>/identities, <batch out>/identities


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


def served_file(requested: str, outputs_dir: Path, cwd: str | None = None) -> bool:
    """May the file route hand out `requested` (the path after `/file=`)? An
    allow-list on top of gradio's own checks: URLs never; below the outputs
    folder (by its name or through a symbolic link) only a generated portrait, a
    regular `.png` file that starts like a PNG and sits in no hidden and no
    `identities` folder; anywhere else only image files."""
    if not requested or "://" in requested or "\x00" in requested:
        return False
    literal = Path(os.path.abspath(os.path.join(cwd or os.getcwd(), requested)))
    real = Path(os.path.realpath(literal))
    outputs = [Path(os.path.abspath(outputs_dir)), Path(os.path.realpath(outputs_dir))]
    for p in {literal, real}:
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            return False
        for root in outputs:
            if p == root or root in p.parents:
                if not _is_portrait_png(p, p.relative_to(root)):
                    return False
    return True


def _is_portrait_png(path: Path, relative: Path) -> bool:
    parts = relative.parts
    if path.suffix.lower() != ".png" or any(x.startswith(".") for x in parts):
        return False
    if any(x.lower() in PRIVATE_FOLDERS for x in parts[:-1]):
        return False
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # never open a FIFO or a device
            return False
        with open(path, "rb") as fh:
            return fh.read(len(PNG_MAGIC)) == PNG_MAGIC
    except OSError:
        return False
