"""Identity methods: each one file, each behind `IdentityMethod` (see base.py).

This registry is the one home of what the rest of the app knows about the
methods: which exist (here), and, as class attributes of each method, its
label and help text, the base family it runs on, its face recogniser, its
default adapter scale and the models it needs. The web UI, the command line,
batch jobs, evaluation and request validation all read them from here, so a
new method is one new file plus one line below. Method classes are imported
on first use (their modules import no torch at import time).

"none" is not a method but a choice everywhere a method is chosen: plain
text-to-image on the default SDXL base, no recogniser.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..errors import BadInput

NONE = "none"
DEFAULT_METHOD = "faceid"  # what a request without a method uses

# name -> "module:Class"
_METHODS = {
    "faceid": "pipelines.identity.faceid:FaceIDPlusV2",
    "instantid": "pipelines.identity.instantid:InstantID",
    "wplus": "pipelines.identity.wplus:WPlusAdapter",
    "arc2face": "pipelines.identity.arc2face:Arc2Face",
    "pulid": "pipelines.identity.pulid:PuLID",
    "pulid-v1": "pipelines.identity.pulid:PuLIDV1",
}


@dataclass(frozen=True)
class MethodInfo:
    """A method's facts as the front doors need them (also for "none")."""

    name: str
    label: str  # short, for choices ("FaceID Plus v2")
    title: str  # full, for reports ("IP-Adapter FaceID Plus v2")
    help: str
    base: str  # "sdxl" or "sd15"
    recognizer: str | None
    default_scale: float | None
    required_models: tuple[str, ...]


NONE_INFO = MethodInfo(NONE, "none (plain SDXL)", "no identity method", "plain text-to-image, no photos needed",
                       "sdxl", None, None, ())


def method_names(include_none: bool = False) -> list[str]:
    """The registered identity methods (and "none" when asked), in registry order."""
    return [*_METHODS, NONE] if include_none else list(_METHODS)


def get_method_class(name: str):
    try:
        target = _METHODS[name]
    except KeyError:
        raise BadInput(f"method {name!r} is unknown; choose one of: {', '.join(_METHODS)}.") from None
    mod, cls = target.split(":")
    return getattr(importlib.import_module(mod), cls)


def method_info(name: str) -> MethodInfo:
    if name == NONE:
        return NONE_INFO
    cls = get_method_class(name)
    return MethodInfo(name=name, label=cls.label or name, title=cls.title or cls.label or name, help=cls.help,
                      base=cls.base, recognizer=cls.recognizer, default_scale=cls.default_scale,
                      required_models=tuple(cls.required_models))


def method_choices(include_none: bool = True) -> list[tuple[str, str]]:
    """(label, name) for every method, "none" last: UI radios and CLI help."""
    return [(method_info(n).label, n) for n in method_names(include_none)]


def method_family(name: str) -> str:
    """The base family ("sdxl"/"sd15") a method (or "none") runs on."""
    return method_info(name).base


def method_recognizer(name: str) -> str | None:
    """The insightface pack a method conditions on (None for "none")."""
    return method_info(name).recognizer


def methods_for_family(family: str) -> list[str]:
    """The methods that run on `family` bases (e.g. the SDXL ones presets may name)."""
    return [n for n in _METHODS if method_info(n).base == family]
