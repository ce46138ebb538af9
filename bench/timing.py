"""Timing and memory measurement for the benchmarks: the clock, the device's
queue, peak GPU memory, and the rounding every report uses.

Rules each measurement keeps:

- a timed region starts and ends with the device's queue drained (`sync`), so
  CUDA and MPS work launched inside it is counted inside it and nothing queued
  before it is;
- peak memory is CUDA's max allocated since the last `reset_peak`; other devices
  report None (no comparable counter);
- numbers in a report are rounded only when written (`round6`, `ratio`): ratios
  and target checks are computed from unrounded values;
- `stdout_to_stderr` moves file descriptor 1 itself, so prints from C libraries
  cannot land in the JSON a benchmark prints on stdout.

Imports torch only inside functions: importing this module is free.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time


def sync(device: str) -> None:
    """Wait until the device has finished everything queued on it."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def timed(fn, device: str) -> float:
    """Seconds of one call of `fn`, the device's queue drained on both sides."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def time_calls(fn, n: int) -> list[float]:
    """Seconds of each of `n` calls of `fn` (host clock only: CPU-side work)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def free(device: str) -> None:
    """Drop unreferenced models before the next one loads (and CUDA's cached blocks)."""
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def reset_peak(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device: str) -> float | None:
    """CUDA's max allocated GiB since `reset_peak` (3 decimals); None off CUDA."""
    if device != "cuda":
        return None
    import torch

    torch.cuda.synchronize()
    return round(torch.cuda.max_memory_allocated() / 1024**3, 3)


def round6(x: float) -> float:
    """Seconds as a report writes them."""
    return round(float(x), 6)


def ratio(a: float, b: float) -> float:
    """a / b as a report writes it."""
    return round(a / b, 4)


@contextlib.contextmanager
def stdout_to_stderr():
    """Send everything written to stdout (Python prints and C libraries alike) to
    stderr, so the JSON report is the only thing on stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
