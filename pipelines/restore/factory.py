"""Building a face restorer by name.

`get_restorer` maps a `--restore` value to its `RestorerSpec` (restore/base.py)
and builds the one implementation, `SpandrelRestorer` (restore/spandrel_restorer.py).
The interface module knows no implementation; the implementation knows only the
interface; this module is the one place that knows both.
"""

from __future__ import annotations

from .base import FaceRestorer, restorer_spec
from .spandrel_restorer import SpandrelRestorer


def get_restorer(name: str, store, device: str, dtype) -> FaceRestorer:
    """A new restorer `name` ("gfpgan" or "codeformer") whose weights come from the
    model store. The model is loaded now and stays resident in the returned object
    (the engine's restore stage keeps it)."""
    return SpandrelRestorer(restorer_spec(name), store, device, dtype)
