"""The model store: where each catalog model lives on disk, and how it gets
there safely. `ModelStore` is the one object the rest of the app uses; its
parts, one module each:

- here: where things are (`folder`, `file_path`), the pins, and `ensure` (the
  model's folder, ready to load, or one clear error);
- `status.py`: what state a model is in (`status`: cheap; `verify`: every
  sha256) and the error that says what to run;
- `download.py`: fetch, check, place atomically, pin, convert pickles;
- `demo_packs.py`: demo mode builds a model's demo pack instead of downloading it;
- `user_checkpoints.py`: a user's single-file SDXL checkpoints, registered by path;
- `records.py`: the JSON records (pins, user models), read and written whole;
- `store_core.py`: what the parts share: `ModelStatus`, and `StoreCore`, what
  they use of `ModelStore` (for the type checker only).

Invariants:
- A file appears at its final path only after its size and sha256 were checked
  (catalog hash, else the hash pinned on the first verified download, else the
  hub's LFS sha256; with none of these the first download is pinned). A cut-off
  or mismatching download is deleted, never placed, so it is never loaded.
- Published pickles are opened once, data-only, converted to safetensors, and
  deleted; only the safetensors copy is used (`file_path`).
- Demo mode builds the demo pack of an entry and then takes the same road as a
  download: file check, pins, conversion. Whether this store builds its models
  comes from the run profile (`settings.profile.builds_models`), read once; the
  store does not know how packs are built: it is given a `DemoPacks` (the tiny
  packs of `pipelines/tiny`, passed by `pipelines/stores.py::open_store`), so
  this package imports nothing above it.
- Demo models live in their own folder (`settings.demo_models_dir`), never
  among downloaded ones.

Pins live in `<root>/pins.json`: {"models": {name: {relpath: {"sha256", "size", ...}}}}.

Every name the store's parts define is importable from here as before.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BadInput
from ..paths import confine
from .catalog import Catalog, ModelEntry, load_catalog
from .demo_packs import DemoPackMixin, DemoPacks
from .download import _SHA256_RE, ALLOWED_PICKLE_GLOBALS, HF_CACHE_DIR, DownloadMixin
from .hashing import sha256_file
from .records import RECORD_LOCK, RECORD_LOCK as _RECORD_LOCK, read_json, write_json
from .status import ModelStatus, StatusMixin, download_hint, download_hint as _download_hint
from .user_checkpoints import USER_MODELS_FILE, UserCheckpointMixin, _safetensors_keys

__all__ = [
    "ALLOWED_PICKLE_GLOBALS", "HF_CACHE_DIR", "PINS_FILE", "RECORD_LOCK", "RETRY_DELAYS", "USER_MODELS_FILE",
    "_RECORD_LOCK", "_SHA256_RE", "DemoPacks", "ModelStatus", "ModelStore", "_download_hint", "_safetensors_keys",
    "download_hint", "load_catalog",
]

PINS_FILE = "pins.json"
# pauses before each resumed attempt of a url download cut off mid-way
RETRY_DELAYS: tuple[float, ...] = (1.0, 3.0, 10.0)


class ModelStore(StatusMixin, DownloadMixin, DemoPackMixin, UserCheckpointMixin):
    def __init__(self, settings, catalog: Catalog | None = None, demo_packs: DemoPacks | None = None):
        self.settings = settings
        self.catalog = catalog if catalog is not None else load_catalog()
        # the run profile (pipelines/profile.py), resolved once by the settings
        self.profile = settings.profile
        self.demo_packs = demo_packs
        self.root = Path(settings.demo_models_dir if self.builds_models else settings.models_dir)

    @property
    def builds_models(self) -> bool:
        """Models are built here (the demo packs), never downloaded or licensed."""
        return bool(self.profile.builds_models)

    @property
    def demo(self) -> bool:
        """Read-only: whether this store holds the demo packs (`builds_models`)."""
        return self.builds_models

    @property
    def retry_delays(self) -> tuple[float, ...]:
        """Pauses before each resumed attempt of a URL download (`RETRY_DELAYS`,
        read at each download)."""
        return RETRY_DELAYS

    # ---- where things are ----------------------------------------------------
    def entry(self, name: str) -> ModelEntry:
        return self.catalog.get(name)

    def folder(self, name: str) -> Path:
        return confine(self.root, self.entry(name).dirname, "model folder")

    def file_path(self, name: str, path: str) -> Path:
        """The file to load for `path` of model `name`: its safetensors copy when
        the published file is a pickle. A folder prefix (e.g. 'ControlNetModel')
        is accepted too."""
        entry = self.entry(name)
        folder = self.folder(name)
        for f in entry.files:
            if path in (f.path, f.convert_to):
                return confine(folder, f.convert_to or f.path)
        prefix = path.rstrip("/") + "/"
        if path and any(f.path.startswith(prefix) for f in entry.files):
            return confine(folder, path)
        known = ", ".join(f.convert_to or f.path for f in entry.files)
        raise BadInput(f"model {name} has no file {path!r}; its files are: {known}.")

    # ---- pins ------------------------------------------------------------------
    @property
    def pins_file(self) -> Path:
        return self.root / PINS_FILE

    @staticmethod
    def _read_json(path: Path) -> dict:
        return read_json(path)

    def pins(self, name: str) -> dict[str, dict]:
        return dict(read_json(self.pins_file).get("models", {}).get(name, {}))

    def _write_pins(self, name: str, records: dict[str, dict], replace: bool = False) -> None:
        with RECORD_LOCK:
            data = read_json(self.pins_file)
            models = data.setdefault("models", {})
            current = {} if replace else models.get(name, {})
            current.update(records)
            models[name] = current
            data["version"] = 1
            write_json(self.pins_file, data)

    @staticmethod
    def _record(path: Path, sha: str | None = None, **extra) -> dict:
        return {"sha256": sha or sha256_file(path), "size": path.stat().st_size, **extra}

    # ---- ensure ------------------------------------------------------------------
    def ensure(self, name: str) -> Path:
        """The model's folder, ready to load; raises a clear error otherwise.
        Demo mode builds the tiny pack when needed."""
        entry = self.entry(name)
        if self.builds_models:
            return self._ensure_demo(entry)
        st = self.status(name)
        if not st.present and self._only_unconverted(entry, st):
            self._convert_files(entry, self.folder(name), self.pins(name), fresh=set())
            st = self.status(name)
        if not st.ok:
            self._raise_unusable(entry, st)
        return self.folder(name)
