"""Published pickles (.bin/.pth/.pt) -> safetensors, once.

A pickle can run code when it is loaded, so it is only ever opened with
`torch.load(weights_only=True)`: tensors, containers and plain scalars, plus an
explicit per-model allow-list of harmless classes (e.g. `argparse.Namespace`
for the e4e checkpoint). Anything else is refused, never executed. The nested
dict is flattened with '.'-joined keys (the layout diffusers' `load_ip_adapter`
accepts from a .safetensors); non-tensor leaves are kept as JSON in the header
metadata under `likeness.extra`."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..paths import atomic_path
from .hashing import file_problem

EXTRA_KEY = "likeness.extra"
SOURCE_KEY = "likeness.source"


def _refusal_reason(exc: BaseException) -> str:
    text = str(exc)
    m = re.search(r"GLOBAL ([\w.]+)", text)
    if m:
        return f"it contains a Python object ({m.group(1)}) that is not plain weights"
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return first[:200]


def load_pickle_safely(path: Path | str, allowed_globals: Iterable = ()) -> dict:
    """Load a published torch pickle as data only; raise `ModelError` naming the
    file if it holds anything but tensors, containers, scalars and the classes
    in `allowed_globals`."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist.")
    problem = file_problem(path)
    if problem:
        raise ModelError(f"model file {path} {problem}.")
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(
            f"refused to load {path}: {_refusal_reason(exc)}; pickles can run code, so only "
            "tensors are accepted (use the published file or a .safetensors copy)."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelError(f"cannot read model file {path}: {_refusal_reason(exc)} (corrupt or truncated?).") from exc
    if not isinstance(obj, dict):
        raise ModelError(f"model file {path} holds a {type(obj).__name__}, not a dict of weights.")
    return obj


def _jsonable(value: Any) -> Any:
    if isinstance(value, argparse.Namespace):
        return {k: _jsonable(v) for k, v in vars(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _contains_tensor(value: Any) -> bool:
    import torch

    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, dict):
        return any(_contains_tensor(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_contains_tensor(v) for v in value)
    return False


def flatten_state(obj: dict, src_name: str = "checkpoint") -> tuple[dict, dict]:
    """Split a nested checkpoint into ({'a.b.c': tensor}, {json-able extras})."""
    import torch

    tensors: dict[str, torch.Tensor] = {}
    seen_storage: set[int] = set()

    def put(key: str, t: torch.Tensor) -> None:
        if key in tensors:
            raise ModelError(f"model file {src_name} has two tensors that flatten to the key {key!r}.")
        t = t.detach().contiguous()
        # safetensors refuses tensors sharing memory: copy any later alias
        ident = t.untyped_storage().data_ptr()
        if t.numel() and ident in seen_storage:
            t = t.clone()
        elif t.numel():
            seen_storage.add(ident)
        tensors[key] = t

    def walk(value: Any, prefix: str) -> Any:
        """Returns the non-tensor remainder of `value` (or None when nothing is left)."""
        if isinstance(value, torch.Tensor):
            put(prefix, value)
            return None
        if isinstance(value, dict) or (isinstance(value, (list, tuple)) and _contains_tensor(value)):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            rest = {}
            for k, v in items:
                sub = walk(v, f"{prefix}.{k}" if prefix else str(k))
                if sub is not None:
                    rest[str(k)] = sub
            return rest or None
        return _jsonable(value)

    extra = walk(obj, "") or {}
    return tensors, extra


def convert_pickle_to_safetensors(src: Path | str, dst: Path | str, allowed_globals: Iterable = ()) -> Path:
    """Load `src` safely and write its tensors to `dst` (atomic). Returns `dst`."""
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    obj = load_pickle_safely(src, allowed_globals)
    tensors, extra = flatten_state(obj, str(src))
    if not tensors:
        raise ModelError(f"model file {src} holds no tensors.")
    metadata = {"format": "pt", SOURCE_KEY: src.name, EXTRA_KEY: json.dumps(extra, sort_keys=True)}
    with atomic_path(dst, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return dst


def read_extra(path: Path | str) -> dict:
    """The non-tensor values kept from the original pickle (e.g. e4e `opts`)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    raw = meta.get(EXTRA_KEY)
    return json.loads(raw) if raw else {}
