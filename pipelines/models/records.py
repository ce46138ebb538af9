"""The store's small JSON records (`pins.json`, `user_models.json`): read with
one clear error, written whole.

Invariants:
- A missing file reads as an empty record; an unreadable one, or one that does
  not hold a JSON object, is a `ModelError` naming the file and saying to fix or
  delete it, never silently an empty record that the next write would replace.
- A read-modify-write of a record holds `RECORD_LOCK` (one writer at a time in
  this process), and the file is replaced atomically (`atomic_write_text`), so a
  kill leaves the old record or the new one.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from ..errors import ModelError
from ..paths import atomic_write_text

# one writer at a time for the small json records (pins, user models)
RECORD_LOCK = threading.Lock()


def read_json(path: Path) -> dict:
    """The JSON object in `path`; {} when there is no file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (ValueError, OSError) as exc:
        raise ModelError(f"{path} is unreadable ({exc}); fix or delete it.") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path} does not hold a JSON object; fix or delete it.")
    return data


def write_json(path: Path, data: dict) -> None:
    """Replace `path` with `data` atomically (call it holding `RECORD_LOCK`)."""
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))
