"""Downloading a catalog model: each file fetched, checked, placed atomically
and pinned, then its published pickles converted to safetensors.

The road of one file (`DownloadMixin.download`):
1. already placed and pinned with the right size: skipped (a download resumes);
2. a verified copy already on this machine (the Hugging Face cache, another
   app's model folder): linked in and pinned (`external.reuse_file`), not
   downloaded again;
3. fetched: from the hub (`huggingface_hub`, into the store's private cache,
   `HF_CACHE_DIR`) or from a release URL (https only; a `.part` file resumed
   after a cut, `retry_delays` apart);
4. checked (`_check_download`): sha256 against every known hash (the catalog's,
   the pin of its first download, the hub's LFS sha256), else the catalog's
   size; any disagreement deletes the file and raises `DownloadError`;
5. placed by an atomic rename and pinned (`pins.json`: sha256 and size).

Invariants:
- A file appears at its final path only after step 4; a cut-off or mismatching
  download is deleted, never placed, so it is never loaded.
- Published pickles are opened once, data-only, converted to safetensors, and
  deleted (`_convert_files`); only the safetensors copy is used. A pickle not
  verified just now is re-hashed against its pin before it is opened; a refused
  pickle is deleted.
- A research-only model is not downloaded until its licence is accepted
  (`check_license`: `--accept-license` or LIKENESS_ACCEPT_RESEARCH_LICENSES=1).
- `cancel` stops between files and within a release-URL transfer (its .part is
  kept to resume).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import Cancelled, DownloadError, LicenseNotAccepted, ModelError
from ..paths import atomic_path, confine
from .catalog import ModelEntry, ModelFile, is_allowed_url
from .convert import convert_pickle_to_safetensors
from .external import files_by_size, reuse_file
from .hashing import file_problem, sha256_file
from .status import download_hint
from .store_core import ModelStatus
from .transfer import _fetch_to_part, _hub_error, _SilentTqdm, _Transient

if TYPE_CHECKING:
    from .store_core import StoreCore
else:
    StoreCore = object

log = logging.getLogger(__name__)

HF_CACHE_DIR = ".hf-cache"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# classes a published pickle of this kind may contain besides tensors and plain data
ALLOWED_PICKLE_GLOBALS: dict[str, tuple] = {"e4e": (argparse.Namespace,)}


class DownloadMixin(StoreCore):
    """`ModelStore`'s downloads and pickle conversion (see the module docstring).
    Uses the store's `settings`, `root`, `entry`, `folder`, `pins`, `pins_file`,
    `_write_pins`, `_record`, `status`, `_raise_unusable`, `builds_models`,
    `retry_delays` and, in demo mode, `_ensure_demo`."""

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
        if self.builds_models:  # random weights: no licence applies to them
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
        if f.sha256 and not self.builds_models:
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
        if not known and f.size is not None and not self.builds_models and path.stat().st_size != f.size:
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            raise DownloadError(
                f"download of {entry.name}/{f.path} is {size} bytes, the catalog expects {f.size}; "
                "the file was deleted, nothing was installed."
            )
        return actual

    def _download_hf(self, entry: ModelEntry, f: ModelFile, folder: Path, progress: bool) -> None:
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

        assert entry.repo is not None  # the catalog requires `repo` for source "hf" (ModelEntry._check_source)
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
        size = pin_size if pin_size is not None else (None if self.builds_models else f.size)
        for attempt in range(len(self.retry_delays) + 1):
            try:
                _fetch_to_part(url, part, size, f"{entry.name}/{f.path}", progress, cancel)
                break
            except _Transient as exc:
                if attempt == len(self.retry_delays):
                    part.unlink(missing_ok=True)
                    raise DownloadError(
                        f"download of {entry.name}/{f.path} from {url} failed after {attempt + 1} attempts: "
                        f"{exc}; the partial file was deleted, try again later."
                    ) from exc
                log.warning("download of %s/%s interrupted (%s); resuming", entry.name, f.path, exc)
                time.sleep(self.retry_delays[attempt])
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
                    f"delete it and {download_hint(entry)}."
                )
            try:
                convert_pickle_to_safetensors(src, dst, allowed)
            except ModelError as exc:
                # a refused pickle is useless here and dangerous to other tools: remove it
                src.unlink(missing_ok=True)
                raise ModelError(f"{exc} It was deleted; nothing was installed.") from exc
            records[f.convert_to] = self._record(dst, converted_from=f.path)
            src.unlink()
        if records and not self.builds_models:
            self._write_pins(entry.name, records)
        return records
