"""What the store's parts (`status.py`, `download.py`, `demo_packs.py`,
`user_checkpoints.py`) share: `ModelStatus`, the state of one model on disk,
and `StoreCore`, what they use of `ModelStore` (the attributes and methods it
defines itself or takes from another part), written down for the type checker.

Invariants:
- `StoreCore` is a typing description only: each part's mixin inherits it
  under `TYPE_CHECKING` and plain `object` at run time, so `ModelStore`'s
  classes and method order are the same with or without it.
- `ModelStore` (store.py) is the one class that provides all of it.
- This module imports none of the parts, so no part is in an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .catalog import Catalog, ModelEntry


@dataclass
class ModelStatus:
    name: str
    kind: str
    present: bool
    verified: bool
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    size_on_disk: int = 0
    folder: Path | None = None

    @property
    def ok(self) -> bool:
        return self.present and not self.problems


class StoreCore(Protocol):
    # pipelines.settings.Settings; that module sits above this package, which never imports it
    settings: Any
    catalog: Catalog
    root: Path

    @property
    def builds_models(self) -> bool: ...

    @property
    def retry_delays(self) -> tuple[float, ...]: ...

    @property
    def pins_file(self) -> Path: ...

    # store.py
    def entry(self, name: str) -> ModelEntry: ...

    def folder(self, name: str) -> Path: ...

    def pins(self, name: str) -> dict[str, dict]: ...

    def _write_pins(self, name: str, records: dict[str, dict], replace: bool = False) -> None: ...

    @staticmethod
    def _record(path: Path, sha: str | None = None, **extra) -> dict: ...

    # status.py
    def status(self, name: str) -> ModelStatus: ...

    def _raise_unusable(self, entry: ModelEntry, st: ModelStatus) -> None: ...

    # download.py
    def _convert_files(self, entry: ModelEntry, folder: Path, pins: dict, fresh: set[str]) -> dict: ...

    # demo_packs.py
    def _ensure_demo(self, entry: ModelEntry) -> Path: ...
