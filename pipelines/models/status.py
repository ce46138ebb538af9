"""What state a catalog model is in on disk (`ModelStatus`, from store_core.py), checked cheaply
(`status`) or fully (`verify`), and the one-line error that says how to fix it.

Invariants:
- `status` never hashes: it checks that each file is there, is a regular file
  with a sane header (`file_problem`) and has the size pinned for it (or, for a
  downloaded model, the catalog's size). It is cheap enough to run before every
  load.
- `verify` hashes every file against its pin (or the catalog's sha256); a file
  that matches the catalog but was never pinned gets its pin now. A file with
  no known hash was not downloaded by Likeness and is reported so, never
  trusted.
- Every error names the model and the file, and says what to run
  (`download_hint`: the exact `models download` command, with
  `--accept-license` for a research-only licence).
- insightface packs must hold their .onnx files directly in the model folder; a
  nested copy (the zip's own folder) is named with where to move the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelError, ModelMissing
from ..paths import confine
from .catalog import ModelEntry
from .hashing import file_problem, sha256_file
from .store_core import ModelStatus

if TYPE_CHECKING:
    from .store_core import StoreCore
else:
    StoreCore = object


def download_hint(entry: ModelEntry) -> str:
    """What to run to (re)fetch `entry`: its `models download` command."""
    from .commands import download_command

    return f"run `{download_command([entry.name], accept_license=entry.research_only)}`"


class StatusMixin(StoreCore):
    """`ModelStore`'s status and verification (see the module docstring). Uses the
    store's `entry`, `folder`, `pins`, `_write_pins`, `_record`, `builds_models` and,
    in demo mode, `_ensure_demo`."""

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
            if expected is None and not self.builds_models and not f.convert_to:
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
        hint = download_hint(entry)
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

    def verify(self, name: str) -> ModelStatus:
        """Full check: every file's sha256 against the catalog or its pin."""
        entry = self.entry(name)
        if self.builds_models:
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
            if expected is None and not self.builds_models and not f.convert_to:
                expected = f.sha256
            if expected is None:
                problems.append(
                    f"{p} has no recorded sha256 (it was not downloaded by Likeness); "
                    f"{download_hint(entry)} to fetch a verified copy"
                )
                continue
            actual = sha256_file(p)
            if actual != expected:
                problems.append(
                    f"{p} does not match its sha256 (expected {expected[:12]}…, found {actual[:12]}…); "
                    f"delete it and {download_hint(entry)}"
                )
            elif use not in pins:
                new_pins[use] = self._record(p, actual)
        if new_pins:
            self._write_pins(name, new_pins)
        st.problems = problems
        st.verified = not problems
        return st
