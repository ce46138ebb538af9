"""The model store: where each catalog model lives on disk, and how it gets
there safely.

Invariants:
- A file appears at its final path only after its size and sha256 were checked
  (catalog hash, else the hash pinned on the first verified download, else the
  hub's LFS sha256; with none of these the first download is pinned). A cut-off
  or mismatching download is deleted, never placed, so it is never loaded.
- Published pickles are opened once, data-only, converted to safetensors, and
  deleted; only the safetensors copy is used (`file_path`).
- Demo mode builds the demo pack of an entry and then takes the same road as a
  download: file check, pins, conversion. The store does not know how packs are
  built: it is given a `DemoPacks` (the tiny packs of `pipelines/tiny`, passed by
  `pipelines/stores.py::open_store`), so this package imports nothing above it.

Pins live in `<root>/pins.json`: {"models": {name: {relpath: {"sha256", "size", ...}}}}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..errors import BadInput, Cancelled, DownloadError, LicenseNotAccepted, ModelError, ModelMissing
from ..paths import atomic_path, atomic_write_text, check_name, confine, sanitize_name
from .catalog import Catalog, ModelEntry, ModelFile, is_allowed_url, load_catalog
from .convert import convert_pickle_to_safetensors
from .external import files_by_size, reuse_file
from .hashing import file_problem, sha256_file
from .transfer import _fetch_to_part, _hub_error, _SilentTqdm, _Transient

log = logging.getLogger(__name__)

PINS_FILE = "pins.json"
USER_MODELS_FILE = "user_models.json"
HF_CACHE_DIR = ".hf-cache"
# pauses before each resumed attempt of a url download cut off mid-way
RETRY_DELAYS: tuple[float, ...] = (1.0, 3.0, 10.0)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# classes a published pickle of this kind may contain besides tensors and plain data
ALLOWED_PICKLE_GLOBALS: dict[str, tuple] = {"e4e": (argparse.Namespace,)}

# one writer at a time for the small json records (pins, user models)
_RECORD_LOCK = threading.Lock()


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


def _download_hint(entry: ModelEntry) -> str:
    from .commands import download_command

    return f"run `{download_command([entry.name], accept_license=entry.research_only)}`"


class DemoPacks(Protocol):
    """Builds the demo pack a catalog entry names (random weights in the published
    layout) in place of a download."""

    def get(self, name: str) -> object:
        """The pack's spec; KeyError when no pack has that name."""

    def is_built(self, name: str, folder: Path) -> bool:
        """Whether `folder` holds the current version of pack `name`."""

    def build_pack(self, name: str, dest: Path) -> Path:
        """Write pack `name` into `dest` and return the folder written."""


class ModelStore:
    def __init__(self, settings, catalog: Catalog | None = None, demo_packs: DemoPacks | None = None):
        self.settings = settings
        self.catalog = catalog if catalog is not None else load_catalog()
        self.demo = bool(settings.demo)
        self.demo_packs = demo_packs
        self.root = Path(settings.demo_models_dir if self.demo else settings.models_dir)

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

    def _read_json(self, path: Path) -> dict:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (ValueError, OSError) as exc:
            raise ModelError(f"{path} is unreadable ({exc}); fix or delete it.") from exc
        if not isinstance(data, dict):
            raise ModelError(f"{path} does not hold a JSON object; fix or delete it.")
        return data

    def pins(self, name: str) -> dict[str, dict]:
        return dict(self._read_json(self.pins_file).get("models", {}).get(name, {}))

    def _write_pins(self, name: str, records: dict[str, dict], replace: bool = False) -> None:
        with _RECORD_LOCK:
            data = self._read_json(self.pins_file)
            models = data.setdefault("models", {})
            current = {} if replace else models.get(name, {})
            current.update(records)
            models[name] = current
            data["version"] = 1
            atomic_write_text(self.pins_file, json.dumps(data, indent=1, sort_keys=True))

    @staticmethod
    def _record(path: Path, sha: str | None = None, **extra) -> dict:
        return {"sha256": sha or sha256_file(path), "size": path.stat().st_size, **extra}

    # ---- status ----------------------------------------------------------------
    def status(self, name: str) -> ModelStatus:
        """Cheap: existence, header checks and sizes against the catalog/pins."""
        entry = self.entry(name)
        folder = self.folder(name)
        pins = self.pins(name)
        missing: list[str] = []
        problems: list[str] = []
        size = 0
        for f in entry.files:
            use = f.convert_to or f.path
            p = confine(folder, use)
            if not p.is_file():
                missing.append(use)
                continue
            actual = p.stat().st_size
            size += actual
            problem = file_problem(p)
            if problem:
                problems.append(f"{p} {problem}")
                continue
            expected = pins.get(use, {}).get("size")
            if expected is None and not self.demo and not f.convert_to:
                expected = f.size
            if expected is not None and actual != expected:
                problems.append(f"{p} is {actual} bytes, expected {expected} (truncated or replaced?)")
        if entry.kind == "insightface" and missing:
            nested = self._nested_insightface(entry, folder)
            if nested:
                problems.append(nested)
        present = not missing
        verified = present and not problems and all((f.convert_to or f.path) in pins for f in entry.files)
        return ModelStatus(entry.name, entry.kind, present, verified, missing, problems, size, folder)

    @staticmethod
    def _nested_insightface(entry: ModelEntry, folder: Path) -> str | None:
        names = [f.path for f in entry.files]
        if not folder.is_dir():
            return None
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            if any((sub / n).is_file() for n in names):
                return (
                    f"insightface model folder {folder} is nested: the .onnx files are in {sub}; "
                    f"move {', '.join(names)} up into {folder}"
                )
        return None

    def _raise_unusable(self, entry: ModelEntry, st: ModelStatus) -> None:
        folder = st.folder or self.folder(entry.name)
        hint = _download_hint(entry)
        if entry.kind == "insightface" and not st.present:
            nested = self._nested_insightface(entry, folder)
            if nested:
                raise ModelMissing(f"{nested}.")
            expected = ", ".join(f.path for f in entry.files)
            state = "missing" if not folder.is_dir() else f"incomplete (missing {', '.join(st.missing)})"
            raise ModelMissing(
                f"insightface model {entry.name} is {state}: expected the files {expected} "
                f"directly in {folder}; {hint}."
            )
        if not st.present:
            if len(st.missing) == len(entry.files):
                raise ModelMissing(f"model {entry.name} is not downloaded: {hint}.")
            raise ModelMissing(
                f"model {entry.name} is incomplete in {folder} (missing {', '.join(st.missing)}): {hint}."
            )
        if st.problems:
            raise ModelError(f"model {entry.name}: {st.problems[0]}; {hint} to fetch it again.")

    # ---- ensure / verify -----------------------------------------------------------
    def ensure(self, name: str) -> Path:
        """The model's folder, ready to load; raises a clear error otherwise.
        Demo mode builds the tiny pack when needed."""
        entry = self.entry(name)
        if self.demo:
            return self._ensure_demo(entry)
        st = self.status(name)
        if not st.present and self._only_unconverted(entry, st):
            self._convert_files(entry, self.folder(name), self.pins(name), fresh=set())
            st = self.status(name)
        if not st.ok:
            self._raise_unusable(entry, st)
        return self.folder(name)

    def verify(self, name: str) -> ModelStatus:
        """Full check: every file's sha256 against the catalog or its pin."""
        entry = self.entry(name)
        if self.demo:
            try:
                self._ensure_demo(entry)
            except ModelError as exc:
                st = self.status(name)
                st.verified = False
                st.problems.append(str(exc))
                return st
        st = self.status(name)
        if not st.ok:
            st.verified = False
            return st
        folder = self.folder(name)
        pins = self.pins(name)
        problems: list[str] = []
        new_pins: dict[str, dict] = {}
        for f in entry.files:
            use = f.convert_to or f.path
            p = confine(folder, use)
            expected = pins.get(use, {}).get("sha256")
            if expected is None and not self.demo and not f.convert_to:
                expected = f.sha256
            if expected is None:
                problems.append(
                    f"{p} has no recorded sha256 (it was not downloaded by Likeness); "
                    f"{_download_hint(entry)} to fetch a verified copy"
                )
                continue
            actual = sha256_file(p)
            if actual != expected:
                problems.append(
                    f"{p} does not match its sha256 (expected {expected[:12]}…, found {actual[:12]}…); "
                    f"delete it and {_download_hint(entry)}"
                )
            elif use not in pins:
                new_pins[use] = self._record(p, actual)
        if new_pins:
            self._write_pins(name, new_pins)
        st.problems = problems
        st.verified = not problems
        return st

    # ---- download --------------------------------------------------------------------
    def check_license(self, entry: ModelEntry, accept_license: bool = False) -> None:
        if entry.research_only and not (accept_license or self.settings.accept_research_licenses):
            where = f", see {entry.license_url}" if entry.license_url else ""
            raise LicenseNotAccepted(
                f"model {entry.name} is licensed '{entry.license}' for research / non-commercial use only"
                f"{where}; to download it, accept the licence with --accept-license "
                "(or LIKENESS_ACCEPT_RESEARCH_LICENSES=1)."
            )

    def download(self, name: str, accept_license: bool = False, progress: bool = True, cancel=None) -> Path:
        """Fetch every missing file of `name`, verified and placed atomically, then
        convert its pickles. Returns the model folder. `cancel` (an Event) stops
        between files and within a release-URL transfer (its .part is kept to resume)."""
        entry = self.entry(name)
        if self.demo:  # random weights: no licence applies to them
            return self._ensure_demo(entry)
        self.check_license(entry, accept_license)
        folder = self.folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        fresh: set[str] = set()
        sizes = files_by_size(self.settings)  # other apps' model files, by size
        for f in entry.files:
            if self._file_done(f, folder, self.pins(name)):
                continue
            if reuse_file(self, entry, f, confine(folder, f.path), sizes) is not None:  # HF cache, other apps
                fresh.add(f.path)
                continue
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"download of {name} cancelled; run it again to resume.")
            if entry.source == "hf":
                self._download_hf(entry, f, folder, progress)
            else:
                self._download_url(entry, f, folder, progress, cancel)
            fresh.add(f.path)
        self._convert_files(entry, folder, self.pins(name), fresh)
        st = self.status(name)
        if not st.ok:
            self._raise_unusable(entry, st)
        return folder

    def _file_done(self, f: ModelFile, folder: Path, pins: dict) -> bool:
        """Placed and pinned with the right size (or a pinned pickle waiting for conversion)."""
        for rel in filter(None, (f.convert_to, f.path)):
            p = confine(folder, rel)
            rec = pins.get(rel)
            if rec and p.is_file() and p.stat().st_size == rec.get("size") and not file_problem(p):
                return True
        return False

    def _expected(self, entry: ModelEntry, f: ModelFile) -> dict[str, str]:
        """Known sha256 values for `f`, by where they come from."""
        known = {}
        if f.sha256 and not self.demo:
            known["the catalog"] = f.sha256
        pin = self.pins(entry.name).get(f.path, {}).get("sha256")
        if pin:
            known[f"the hash pinned on its first download ({self.pins_file})"] = pin
        return known

    def _check_download(self, entry: ModelEntry, f: ModelFile, path: Path, known: dict[str, str]) -> str:
        """Hash `path`; on any disagreement delete it and raise. Returns the sha256."""
        actual = sha256_file(path)
        for where, expected in known.items():
            if actual != expected:
                path.unlink(missing_ok=True)
                raise DownloadError(
                    f"download of {entry.name}/{f.path} does not match {where} "
                    f"(expected sha256 {expected[:12]}…, got {actual[:12]}…); the file was deleted, "
                    "nothing was installed; try again, and if it persists the file changed upstream."
                )
        if not known and f.size is not None and not self.demo and path.stat().st_size != f.size:
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            raise DownloadError(
                f"download of {entry.name}/{f.path} is {size} bytes, the catalog expects {f.size}; "
                "the file was deleted, nothing was installed."
            )
        return actual

    def _download_hf(self, entry: ModelEntry, f: ModelFile, folder: Path, progress: bool) -> None:
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

        endpoint = os.environ.get("HF_ENDPOINT") or None
        hub_path = f.source or f.path
        dest = confine(folder, f.path)
        what = f"{entry.repo}/{hub_path} (revision {entry.revision})"
        cache = self.root / HF_CACHE_DIR
        try:
            meta = get_hf_file_metadata(
                hf_hub_url(entry.repo, hub_path, revision=entry.revision, endpoint=endpoint), endpoint=endpoint
            )
            cached = Path(
                hf_hub_download(
                    entry.repo,
                    hub_path,
                    revision=entry.revision,
                    cache_dir=cache,
                    endpoint=endpoint,
                    tqdm_class=None if progress else _SilentTqdm,
                )
            )
        except Exception as exc:  # the hub client raises many types; all mean "not fetched"
            raise DownloadError(f"download of {what} failed: {_hub_error(exc)}.") from exc
        known = self._expected(entry, f)
        if meta.etag and _SHA256_RE.match(meta.etag):
            known["the hub's LFS sha256"] = meta.etag
        blob = cached.resolve()
        try:
            sha = self._check_download(entry, f, blob, known)
        finally:
            if cached.is_symlink() and not blob.exists():
                cached.unlink(missing_ok=True)
        with atomic_path(dest) as tmp:
            if cache.resolve() in blob.parents:  # our private cache: move, no second copy
                shutil.move(str(blob), str(tmp))
            else:
                shutil.copyfile(blob, tmp)
        if cached.is_symlink():
            cached.unlink(missing_ok=True)
        self._write_pins(entry.name, {f.path: self._record(dest, sha)})

    def _download_url(self, entry: ModelEntry, f: ModelFile, folder: Path, progress: bool, cancel=None) -> None:
        url = f.source or ""
        if not is_allowed_url(url):
            raise DownloadError(f"refusing to download {entry.name}/{f.path} from {url!r}: only https:// URLs.")
        dest = confine(folder, f.path)
        part = dest.with_name(dest.name + ".part")
        known = self._expected(entry, f)
        pin_size = self.pins(entry.name).get(f.path, {}).get("size")
        size = pin_size if pin_size is not None else (None if self.demo else f.size)
        for attempt in range(len(RETRY_DELAYS) + 1):
            try:
                _fetch_to_part(url, part, size, f"{entry.name}/{f.path}", progress, cancel)
                break
            except _Transient as exc:
                if attempt == len(RETRY_DELAYS):
                    part.unlink(missing_ok=True)
                    raise DownloadError(
                        f"download of {entry.name}/{f.path} from {url} failed after {attempt + 1} attempts: "
                        f"{exc}; the partial file was deleted, try again later."
                    ) from exc
                log.warning("download of %s/%s interrupted (%s); resuming", entry.name, f.path, exc)
                time.sleep(RETRY_DELAYS[attempt])
            except DownloadError:
                part.unlink(missing_ok=True)
                raise
        if size is not None and part.stat().st_size != size:
            got = part.stat().st_size
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"download of {entry.name}/{f.path} is {got} bytes, expected {size}; "
                "the file was deleted, nothing was installed."
            )
        sha = self._check_download(entry, f, part, known)
        with open(part, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(part, dest)
        self._write_pins(entry.name, {f.path: self._record(dest, sha)})

    # ---- conversion --------------------------------------------------------------------
    def _only_unconverted(self, entry: ModelEntry, st: ModelStatus) -> bool:
        """True if every missing file is a safetensors copy whose pinned pickle is present."""
        folder = self.folder(entry.name)
        pins = self.pins(entry.name)
        by_use = {(f.convert_to or f.path): f for f in entry.files}
        for rel in st.missing:
            f = by_use[rel]
            if not f.convert_to or f.path not in pins or not confine(folder, f.path).is_file():
                return False
        return bool(st.missing)

    def _convert_files(self, entry: ModelEntry, folder: Path, pins: dict, fresh: set[str]) -> dict:
        """Convert each published pickle of `entry` in `folder` to its safetensors
        path, then delete the pickle. A pickle not verified just now (`fresh`) is
        re-hashed against its pin first. Returns the new pin records."""
        allowed = ALLOWED_PICKLE_GLOBALS.get(entry.kind, ())
        records: dict[str, dict] = {}
        for f in entry.files:
            if not f.convert_to:
                continue
            src, dst = confine(folder, f.path), confine(folder, f.convert_to)
            if not src.is_file():
                continue
            pin = pins.get(f.path, {}).get("sha256")
            if f.path not in fresh and (pin is None or sha256_file(src) != pin):
                raise ModelError(
                    f"{src} does not match the hash recorded when it was downloaded; "
                    f"delete it and {_download_hint(entry)}."
                )
            try:
                convert_pickle_to_safetensors(src, dst, allowed)
            except ModelError as exc:
                # a refused pickle is useless here and dangerous to other tools: remove it
                src.unlink(missing_ok=True)
                raise ModelError(f"{exc} It was deleted; nothing was installed.") from exc
            records[f.convert_to] = self._record(dst, converted_from=f.path)
            src.unlink()
        if records and not self.demo:
            self._write_pins(entry.name, records)
        return records

    # ---- demo packs --------------------------------------------------------------------
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
        except KeyError:
            raise ModelMissing(
                f"no demo pack exists yet for model {entry.name} (pack {entry.demo_pack!r}); "
                "it cannot be used with --demo."
            ) from None
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

    # ---- user checkpoints -------------------------------------------------------------
    @property
    def user_models_file(self) -> Path:
        return Path(self.settings.models_dir) / USER_MODELS_FILE

    def user_checkpoints(self) -> dict[str, Path]:
        data = self._read_json(self.user_models_file).get("checkpoints", {})
        if not isinstance(data, dict):
            raise ModelError(f"{self.user_models_file} is damaged (checkpoints is not an object); fix or delete it.")
        return {name: Path(rec["path"]) for name, rec in data.items()
                if isinstance(rec, dict) and isinstance(rec.get("path"), str)}

    def checked_checkpoint(self, name: str) -> Path:
        """The file of registered checkpoint `name`, after checking it is the file
        that was registered: size and mtime first (free), then, when either
        changed, its sha256 against the one recorded at registration. A record
        from before hashes were kept gets its hash pinned now. A changed file is
        refused with `ModelError`; nothing is loaded."""
        with _RECORD_LOCK:
            data = self._read_json(self.user_models_file)
            rec = (data.get("checkpoints") or {}).get(name)
        if not isinstance(rec, dict) or not isinstance(rec.get("path"), str):
            raise BadInput(f"{name!r} is not a registered checkpoint.")
        path = Path(rec["path"])
        again = f"if the change is yours, register it again: `python launch.py models register {path}`"
        try:
            st = os.stat(path)
        except OSError as exc:
            raise ModelMissing(f"registered checkpoint {name} ({path}) cannot be read ({exc.strerror or exc}); "
                               f"{again}.") from exc
        import stat as _stat

        if not _stat.S_ISREG(st.st_mode):
            raise ModelError(f"registered checkpoint {name} ({path}) is no longer a regular file; {again}.")
        if rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns and rec.get("sha256"):
            return path
        problem = file_problem(path)
        if problem:
            raise ModelError(f"registered checkpoint {name}: {path} {problem}; {again}.")
        actual = sha256_file(path)
        expected = rec.get("sha256")
        if expected is not None and actual != expected:
            raise ModelError(
                f"registered checkpoint {name} ({path}) was replaced after it was registered (sha256 "
                f"{actual[:12]}…, registered {str(expected)[:12]}…); it was not loaded; {again}."
            )
        self._update_checkpoint(name, {"sha256": actual, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        return path

    def _update_checkpoint(self, name: str, fields: dict) -> None:
        with _RECORD_LOCK:
            data = self._read_json(self.user_models_file)
            rec = data.get("checkpoints", {}).get(name)
            if isinstance(rec, dict):
                rec.update(fields)
                atomic_write_text(self.user_models_file, json.dumps(data, indent=1, sort_keys=True))

    def register_checkpoint(self, path: Path | str) -> str:
        """Register a user's single-file SDXL checkpoint (.safetensors) by path;
        returns the name to use as base model."""
        p = Path(path).expanduser()
        if p.suffix.lower() != ".safetensors":
            raise BadInput(
                f"checkpoint {p} is a {p.suffix or 'suffix-less'} file; only .safetensors checkpoints can be "
                "registered (.ckpt/.pt/.bin/.pth are pickles that can run code): convert it to .safetensors first."
            )
        if not p.is_file():
            raise BadInput(f"checkpoint {p} does not exist or is not a file.")
        problem = file_problem(p)
        if problem:
            raise BadInput(f"checkpoint {p} {problem}.")
        keys = _safetensors_keys(p)
        if not any(k.startswith("model.diffusion_model.") for k in keys):
            raise BadInput(
                f"checkpoint {p} is not a single-file Stable Diffusion checkpoint (no model.diffusion_model.* "
                "weights); LoRAs and diffusers folders cannot be registered as base models."
            )
        if not any(k.startswith("conditioner.embedders.1.") for k in keys):
            raise BadInput(
                f"checkpoint {p} is not an SDXL checkpoint (it has no second text encoder, "
                "conditioner.embedders.1.*); only SDXL base models are supported."
            )
        resolved = p.resolve()
        st = resolved.stat()
        # hashed once here, so a file swapped later is caught before it is loaded
        record = {"path": str(resolved), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                  "sha256": sha256_file(resolved)}
        with _RECORD_LOCK:
            data = self._read_json(self.user_models_file)
            table = data.setdefault("checkpoints", {})
            for name, rec in table.items():
                if isinstance(rec, dict) and rec.get("path") == str(resolved):
                    if rec != record:  # registering again accepts the file as it is now
                        table[name] = record
                        atomic_write_text(self.user_models_file, json.dumps(data, indent=1, sort_keys=True))
                    return name
            taken = set(table) | {e.name for e in self.catalog}
            base = sanitize_name(p.stem, fallback="checkpoint")[:90]
            name, n = base, 2
            while name in taken:
                name, n = f"{base}-{n}", n + 1
            check_name(name, "checkpoint name")
            table[name] = record
            data["version"] = 1
            atomic_write_text(self.user_models_file, json.dumps(data, indent=1, sort_keys=True))
        return name


# ---- helpers ------------------------------------------------------------------------------
def _safetensors_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return list(fh.keys())
    except Exception as exc:  # safetensors raises its own error type for bad headers
        raise BadInput(f"checkpoint {path} is not a readable safetensors file ({exc}).") from exc
