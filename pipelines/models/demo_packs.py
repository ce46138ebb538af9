"""Demo mode's models: the store builds an entry's demo pack (random weights in
the published layout) in place of a download.

The store does not know how packs are built: it is given a `DemoPacks` (the
tiny packs of `pipelines/tiny`, passed by `pipelines/stores.py::open_store`), so
`pipelines/models/` imports nothing above it. A store opened without one says
how to open one.

Invariants:
- A built pack takes the same road as a download: every file the catalog lists
  must be there, each is pinned, and its pickles are converted.
- A pack is built in a staging folder beside the model folder and renamed into
  place, then its pins replace the old ones: a kill leaves the old pack or the
  new one, never half of one.
- A pack already built at its current version, with every file present and
  verified, is not built again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import ModelError, ModelMissing
from ..paths import confine
from .catalog import ModelEntry

if TYPE_CHECKING:
    from .store_core import StoreCore
else:
    StoreCore = object


class DemoPacks(Protocol):
    """Builds the demo pack a catalog entry names (random weights in the published
    layout) in place of a download."""

    def get(self, name: str) -> object:
        """The pack's spec; KeyError when no pack has that name."""

    def is_built(self, name: str, folder: Path) -> bool:
        """Whether `folder` holds the current version of pack `name`."""

    def build_pack(self, name: str, dest: Path) -> Path:
        """Write pack `name` into `dest` and return the folder written."""


class DemoPackMixin(StoreCore):
    """`ModelStore`'s demo-pack builds (see the module docstring). Uses the store's
    `demo_packs`, `folder`, `status`, `_record`, `_convert_files` and `_write_pins`."""

    demo_packs: DemoPacks | None  # set by ModelStore.__init__

    def _ensure_demo(self, entry: ModelEntry) -> Path:
        tiny = self.demo_packs
        folder = self.folder(entry.name)
        if not entry.demo_pack:
            raise ModelMissing(f"model {entry.name} has no demo pack; it cannot be used with --demo.")
        if tiny is None:
            raise ModelError(
                f"this model store was opened without demo packs, so it cannot build {entry.name} in demo "
                "mode; open it with pipelines.stores.open_store(settings)."
            )
        try:
            tiny.get(entry.demo_pack)
        except KeyError as exc:
            raise ModelMissing(
                f"no demo pack exists yet for model {entry.name} (pack {entry.demo_pack!r}); "
                "it cannot be used with --demo."
            ) from exc
        if tiny.is_built(entry.demo_pack, folder):
            st = self.status(entry.name)
            if st.ok and st.verified:
                return folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".staging", dir=folder.parent))
        try:
            built = tiny.build_pack(entry.demo_pack, staging / "pack")
            absent = [f.path for f in entry.files if not confine(built, f.path).is_file()]
            if absent:
                raise ModelError(
                    f"demo pack {entry.demo_pack!r} does not write {', '.join(absent)}, "
                    f"which the catalog lists for model {entry.name}."
                )
            records = {f.path: self._record(confine(built, f.path)) for f in entry.files}
            records.update(self._convert_files(entry, built, records, fresh=set(records)))
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(built, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._write_pins(entry.name, records, replace=True)
        return folder
