"""A user's own base models: single-file SDXL checkpoints (.safetensors)
registered by path and used in place (`python launch.py models register FILE`).

Records live in `<models_dir>/user_models.json`:
{"checkpoints": {name: {"path", "size", "mtime_ns", "sha256"}}}. The file is
never copied or modified.

Invariants:
- Only a .safetensors file whose keys are a single-file SDXL checkpoint
  (`model.diffusion_model.*` and a second text encoder,
  `conditioner.embedders.1.*`) can be registered; pickles (.ckpt/.pt/.bin/.pth)
  are refused, since they can run code.
- The file is hashed once at registration. Before each load
  (`checked_checkpoint`) its size and mtime are compared with the record (free),
  and when either changed its sha256 is compared too: a replaced file is refused
  with `ModelError` and nothing is loaded.
- A registered name is unique among the catalog's names and the other
  registrations; registering the same path again returns its name and accepts
  the file as it is now.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BadInput, ModelError, ModelMissing
from ..paths import check_name, sanitize_name
from .hashing import file_problem, sha256_file
from .records import RECORD_LOCK, read_json, write_json

if TYPE_CHECKING:
    from .store_core import StoreCore
else:
    StoreCore = object

USER_MODELS_FILE = "user_models.json"


class UserCheckpointMixin(StoreCore):
    """`ModelStore`'s registered user checkpoints (see the module docstring). Uses
    the store's `settings` and `catalog`."""

    @property
    def user_models_file(self) -> Path:
        return Path(self.settings.models_dir) / USER_MODELS_FILE

    def user_checkpoints(self) -> dict[str, Path]:
        data = read_json(self.user_models_file).get("checkpoints", {})
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
        with RECORD_LOCK:
            data = read_json(self.user_models_file)
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
        with RECORD_LOCK:
            data = read_json(self.user_models_file)
            rec = data.get("checkpoints", {}).get(name)
            if isinstance(rec, dict):
                rec.update(fields)
                write_json(self.user_models_file, data)

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
        with RECORD_LOCK:
            data = read_json(self.user_models_file)
            table = data.setdefault("checkpoints", {})
            for name, rec in table.items():
                if isinstance(rec, dict) and rec.get("path") == str(resolved):
                    if rec != record:  # registering again accepts the file as it is now
                        table[name] = record
                        write_json(self.user_models_file, data)
                    return name
            taken = set(table) | {e.name for e in self.catalog}
            base = sanitize_name(p.stem, fallback="checkpoint")[:90]
            name, n = base, 2
            while name in taken:
                name, n = f"{base}-{n}", n + 1
            check_name(name, "checkpoint name")
            table[name] = record
            data["version"] = 1
            write_json(self.user_models_file, data)
        return name


def _safetensors_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return list(fh.keys())
    except Exception as exc:  # safetensors raises its own error type for bad headers
        raise BadInput(f"checkpoint {path} is not a readable safetensors file ({exc}).") from exc
