"""Which process this is, under `accelerate launch`: the one place that asks.

A plain run (WORLD_SIZE unset or 1) never touches torch.distributed: it gets
`LocalState`, a stand-in with the same few members. Under `accelerate launch`
with several processes it gets accelerate's `PartialState` (which also binds
the process to its GPU). `PartialState` is shared state: the first call
initialises the process group, with `BARRIER_TIMEOUT`, and later calls (and
the trainer's `Accelerator`) reuse it.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta

BARRIER_TIMEOUT = timedelta(hours=24)  # ranks may finish hours apart on uneven batch slices


class LocalState:
    """The single-process stand-in for accelerate's `PartialState`."""

    num_processes = 1
    process_index = 0
    is_main_process = True
    device = None

    def wait_for_everyone(self) -> None:
        pass

    @contextlib.contextmanager
    def split_between_processes(self, inputs):
        yield inputs

    @contextlib.contextmanager
    def main_process_first(self):
        yield


def is_distributed() -> bool:
    """Started by `accelerate launch` (or torchrun) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def _cpu_from_environment() -> bool:
    import torch

    # PartialState does not read ACCELERATE_USE_CPU itself (Accelerator does)
    return (os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in ("1", "true", "yes")
            or os.environ.get("LIKENESS_DEVICE", "").strip().lower() == "cpu"
            or not torch.cuda.is_available())


def process_state(cpu: bool | None = None):
    """`PartialState` under a multi-process launch, else `LocalState`. `cpu`:
    whether the processes run on the CPU (gloo); None reads it from the
    environment (ACCELERATE_USE_CPU, LIKENESS_DEVICE, no CUDA)."""
    if not is_distributed():
        return LocalState()
    from accelerate import PartialState

    return PartialState(cpu=_cpu_from_environment() if cpu is None else cpu, timeout=BARRIER_TIMEOUT)


def is_main_process(cpu: bool | None = None) -> bool:
    """True in a plain run and in the first process of a launch."""
    return process_state(cpu).is_main_process


def main_process_first(cpu: bool | None = None):
    """A context in which the first process runs before the others (e.g. it
    fetches or builds models the others then find on disk)."""
    return process_state(cpu).main_process_first()
