"""Freeing memory between jobs and recognising out-of-memory errors (one place for
the engine, the batch runner, the trainer and the UI)."""

from __future__ import annotations

import gc


def free_memory() -> None:
    """Collect garbage and hand cached CUDA and MPS blocks back (best effort,
    no-op on CPU)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            torch.mps.empty_cache()
    except Exception:  # noqa: BLE001 - best effort: freeing memory never fails a job
        pass


def is_oom(exc: BaseException) -> bool:
    """An out-of-memory error from torch (CUDA/MPS raise RuntimeError subclasses)."""
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())
