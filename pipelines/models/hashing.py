"""Cheap and full integrity checks of model files.

`file_problem` is the cheap check (a few header bytes, no hashing): it catches
the two broken files users meet most, a git-lfs pointer saved in place of the
weights and a truncated download. `sha256_file` is the full check."""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from pathlib import Path

LFS_POINTER_PREFIX = b"version https://git-lfs"
_CHUNK = 4 * 1024 * 1024
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def sha256_file(path: Path | str, hasher=None) -> str:
    """Hex sha256 of a file's bytes (streamed; `hasher` lets a caller continue one)."""
    h = hasher or hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def is_lfs_pointer(path: Path | str) -> bool:
    """True if the file is a git-lfs pointer (a small text file naming the real blob)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX
    except OSError:
        return False


def safetensors_problem(path: Path | str) -> str | None:
    """Why a .safetensors file is unusable (truncated, bad header), or None.
    Reads only the header: the byte ranges it declares must fill the file exactly."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            return f"is only {size} bytes long, too short for a safetensors file (truncated download?)"
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_SAFETENSORS_HEADER or 8 + n > size:
            return "has a safetensors header that runs past the end of the file (truncated download?)"
        try:
            header = json.loads(fh.read(n))
        except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
            return "has an unreadable safetensors header (corrupt or not a safetensors file)"
    if not isinstance(header, dict):
        return "has an unreadable safetensors header (corrupt or not a safetensors file)"
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            offset = info["data_offsets"][1]
        except (KeyError, TypeError, IndexError):
            return f"has a malformed safetensors header entry {str(key)[:80]!r}"
        # offsets are non-negative integers (json gives floats for 1e400 / Infinity)
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            return f"has a malformed safetensors header entry {str(key)[:80]!r}"
        end = max(end, offset)
    data = size - 8 - n
    if end > data:
        return f"is truncated: its header declares {end} bytes of tensor data but only {data} are present"
    if end < data:
        return f"has {data - end} unexpected bytes after the tensor data (corrupt file)"
    return None


def file_problem(path: Path | str) -> str | None:
    """A sentence fragment saying what is wrong with a model file, or None.
    Cheap: reads headers only."""
    path = Path(path)
    if is_lfs_pointer(path):
        return (
            "is a git-lfs pointer file, not the weights (the repository was cloned without "
            "git-lfs); download the real file"
        )
    if path.stat().st_size == 0:
        return "is empty (0 bytes)"
    if path.suffix == ".safetensors":
        return safetensors_problem(path)
    if path.suffix in (".bin", ".pth", ".pt", ".ckpt"):
        # torch.save writes zip archives; a cut-off one lacks its central directory
        with open(path, "rb") as fh:
            is_zip_magic = fh.read(4) == b"PK\x03\x04"
        if is_zip_magic and not zipfile.is_zipfile(path):
            return "is a truncated torch archive (its zip directory is missing)"
    return None
