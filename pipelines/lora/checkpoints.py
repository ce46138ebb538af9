"""Training checkpoints: `<loras_dir>/.training/<name>/step-NNNNNN/` folders holding
the LoRA weights (safetensors) and the optimiser/scheduler/RNG state, each folder
complete or absent (built in a temp folder, fsynced, renamed), so `--resume`
survives a crash or kill -9 at any moment."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import BadInput

# how the writers report a failed write (disk full, read-only) when it is not an
# OSError: safetensors' SafetensorError "I/O error: No space left on device (os
# error 28)", torch.save's RuntimeError "PytorchStreamWriter failed writing file"
_WRITE_FAILURES = ("os error", "i/o error", "no space left", "failed writing", "file write failed",
                   "read-only file system")


def write_error(exc: BaseException) -> OSError | None:
    """`exc` as an OSError when it is a failed write, else None."""
    if isinstance(exc, OSError):
        return exc
    text = str(exc)
    if any(marker in text.lower() for marker in _WRITE_FAILURES):
        code = errno.ENOSPC if "no space left" in text.lower() else errno.EIO
        return OSError(code, " ".join(text.split())[:200])
    return None


class Checkpoints:
    """`<loras_dir>/.training/<name>/step-NNNNNN/` folders, each complete or absent."""

    def __init__(self, root: Path):
        self.root = root

    def latest(self) -> Path | None:
        if not self.root.is_dir():
            return None
        done = sorted(p for p in self.root.glob("step-*") if (p / "state.pt").is_file() and (p / "lora.safetensors").is_file())
        return done[-1] if done else None

    def save(self, step: int, trainables: dict, state: dict) -> Path:
        import torch
        from safetensors.torch import save_file

        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".step-", suffix=".part", dir=self.root))
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in trainables.items()}, str(tmp / "lora.safetensors"))
            torch.save(state, tmp / "state.pt")
            for f in tmp.iterdir():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
            final = self.root / f"step-{step:06d}"
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            failed = write_error(exc) if isinstance(exc, Exception) else None
            if failed is not None and failed is not exc:
                raise failed from exc
            raise
        for old in self.root.glob("step-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return final

    @staticmethod
    def load(path: Path) -> tuple[dict, dict]:
        import torch
        from safetensors.torch import load_file

        try:
            weights = load_file(str(path / "lora.safetensors"))
            state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        except Exception as exc:
            raise BadInput(f"checkpoint {path} is unreadable ({exc}); run without --resume to start over.") from exc
        return weights, state

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        try:
            self.root.parent.rmdir()  # `.training/` itself, once no other run uses it
        except OSError:
            pass
