"""Path confinement, name sanitising and atomic writes.

Every path a user can influence is resolved inside a known folder and refused
otherwise; every file we write appears whole or not at all (temp file in the same
folder, fsync, rename)."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import UnsafePath

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_NAME = 100


def check_name(name: str, field: str = "name") -> str:
    """Return `name` if it is a safe single path component, else raise.

    Allowed: letters, digits, '.', '_', '-'; starts with a letter or digit; at
    most 100 characters; no '..'. Rejects '/', '\\', NUL, and empty names."""
    if not isinstance(name, str) or not name:
        raise UnsafePath(f"{field} is empty; use letters, digits, '.', '_' or '-'.")
    if "\x00" in name:
        raise UnsafePath(f"{field} contains a NUL byte; use letters, digits, '.', '_' or '-'.")
    if len(name) > MAX_NAME:
        raise UnsafePath(f"{field} is {len(name)} characters long; the maximum is {MAX_NAME}.")
    if ".." in name or not _NAME_RE.match(name):
        raise UnsafePath(
            f"{field} {name!r} is not allowed; use letters, digits, '.', '_' or '-' "
            "(no '/', '\\' or '..')."
        )
    return name


def sanitize_name(name: str, fallback: str = "untitled") -> str:
    """Turn arbitrary text into a safe single path component (for output file
    names derived from prompts etc.)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name.replace("\x00", "")).strip(".-_")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)[:MAX_NAME].strip(".-_")
    return cleaned or fallback


def confine(root: Path | str, relative: str | os.PathLike, field: str = "path") -> Path:
    """Resolve `relative` inside `root`; raise `UnsafePath` if it escapes."""
    root_p = Path(root).resolve()
    rel = os.fspath(relative)
    if "\x00" in rel:
        raise UnsafePath(f"{field} contains a NUL byte.")
    candidate = (root_p / rel).resolve()
    if candidate != root_p and root_p not in candidate.parents:
        raise UnsafePath(f"{field} {rel!r} points outside {root_p}.")
    return candidate


@contextlib.contextmanager
def atomic_path(dest: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside `dest`; on success rename it onto `dest`.
    On any exception the temp file is removed and `dest` is untouched."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix + ".part", dir=dest.parent)
    os.close(fd)
    tmp_p = Path(tmp)
    try:
        yield tmp_p
        with open(tmp_p, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_p, 0o644)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp_p, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_p.unlink()
        raise


def atomic_write_bytes(dest: Path | str, data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def atomic_write_text(dest: Path | str, text: str) -> Path:
    return atomic_write_bytes(dest, text.encode("utf-8"))
