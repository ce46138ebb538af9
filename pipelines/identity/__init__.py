"""Identity methods: each one file, each behind `IdentityMethod` (see base.py).
The registry maps a method name to its class, importing lazily."""

from __future__ import annotations

import importlib

from ..errors import BadInput

_METHODS = {
    "faceid": "pipelines.identity.faceid:FaceIDPlusV2",
    "instantid": "pipelines.identity.instantid:InstantID",
    "wplus": "pipelines.identity.wplus:WPlusAdapter",
}


def method_names() -> list[str]:
    return list(_METHODS)


def get_method_class(name: str):
    try:
        target = _METHODS[name]
    except KeyError:
        raise BadInput(f"method {name!r} is unknown; choose one of: {', '.join(_METHODS)}.") from None
    mod, cls = target.split(":")
    return getattr(importlib.import_module(mod), cls)
