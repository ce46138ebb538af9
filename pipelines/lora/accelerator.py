"""One LoRA training on one or N processes (`accelerate launch`): the
`Accelerator` the trainer runs under, its mixed precision, and which process
reports.

How N processes share a run: every process takes the same steps; at step k,
process r trains on global sample `k * N + r` (`loop.sample_order`), so one
optimizer step sees N crops and DDP averages their gradients. The loss shown is
the mean over processes.

Invariants:
- Only the main process writes (the preview, the checkpoints, the LoRA) and
  reports progress (`MainProcessEmitter`); the others wait for it at every
  checkpoint and at the end (`acc.wait_for_everyone()`).
- Mixed precision is used on CUDA only: `auto` is bf16 where the GPU supports
  it, else fp16; on a CPU every run is float32 (`mixed_precision`).
- Models are fetched or built by the first process while the others wait,
  never raced: the base model under `acc.main_process_first()`, the face models
  (before the `Accelerator` exists) under `pipelines.processes.main_process_first`.
"""

from __future__ import annotations

from collections.abc import Callable

TrainCallback = Callable[[dict], None]


def mixed_precision(choice: str, device: str) -> str:
    """The precision `accelerate` runs the UNet in for `choice` on `device`."""
    if device != "cuda":
        return "no"
    if choice != "auto":
        return choice
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def weight_dtype(mp: str):
    """The dtype the frozen base weights are held in under precision `mp`."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mp, torch.float32)


def start_accelerator(mp: str, device: str):
    """The `Accelerator` of this process (`cpu=True` when training on the CPU)."""
    from accelerate import Accelerator

    return Accelerator(mixed_precision=mp, cpu=device == "cpu")


def finish(acc) -> None:
    """Wait for every process, then end a multi-process run's process group."""
    acc.wait_for_everyone()
    if acc.num_processes > 1:
        acc.end_training()


class MainProcessEmitter:
    """Calls `callback(info)` with keyword arguments as a dict; give it None on
    the processes that do not report."""

    def __init__(self, callback: TrainCallback | None):
        self.callback = callback

    def __call__(self, **info) -> None:
        if self.callback is not None:
            self.callback(info)
