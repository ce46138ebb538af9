"""Where a trained LoRA goes, and how it is written: the LoRA folder's checks,
the kohya-layout export, and the error a failed write gives.

Invariants:
- An existing `<name>.safetensors` is never replaced unless `overwrite` is set
  (`--overwrite`, the Overwrite box in the UI); the trainer checks that with
  `check_writable` before any long work.
- Once the trainable weights are known, the folder must have room for two
  checkpoints (the old one stays until the new one is complete) and the LoRA
  (`required_bytes`, `check_space`).
- A write that fails mid-run (disk full, folder gone read-only) becomes one
  `BadInput` that says what the user still has: the last complete checkpoint
  and how to resume from it (`disk_error`).
- The LoRA file is the kohya sd-scripts layout (`kohya.peft_to_kohya`, with the
  `ss_*` metadata of `kohya.training_metadata`), so A1111, ComfyUI and this
  app's loader read it; weights are float16 when training ran in mixed
  precision, `.alpha` scalars always float32. It is written atomically
  (`kohya.write_lora`), then the run's checkpoints are deleted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import BadInput
from . import kohya
from .checkpoints import Checkpoints, write_error
from .dataset import TrainingSet
from .plan import Plan

WORK_DIR = ".training"
SPACE_MARGIN = 1 << 20  # bytes kept free beyond the estimate (metadata, preview, file-system overhead)
RESUME_HINT = "free some space, then train again with --resume (the Resume box in the UI)"


# ------------------------------------------------------------ the LoRA folder
def check_writable(folder: Path) -> None:
    """Create `folder` if needed and prove a file can be written in it, before
    any long work (a read-only mount or folder fails here, not after training)."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".likeness-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BadInput(f"LoRA folder {folder} is not writable ({exc.strerror or exc}); make it writable or "
                       "choose another with --loras-dir.") from exc


def required_bytes(trainable_params: int) -> int:
    """Disk a run needs at its peak: two checkpoints side by side (float32
    weights plus AdamW's two float32 moments each) and the final LoRA."""
    weights = 4 * trainable_params
    return 2 * (weights + 2 * weights) + weights + SPACE_MARGIN


def check_space(folder: Path, need: int, name: str) -> None:
    import shutil

    probe = folder
    while not probe.exists() and probe != probe.parent:  # the checkpoint folder may not exist yet
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise BadInput(f"not enough space for training {name}: {probe} has {free / 2**20:.1f} MB free and the "
                       f"checkpoints and the LoRA need about {need / 2**20:.1f} MB; free some space or choose "
                       "another folder with --loras-dir.")


def disk_error(what: str, exc: OSError, ckpts: Checkpoints | None) -> BadInput:
    """A write that failed mid-run (disk full, folder gone read-only): what the
    user still has, and how to continue."""
    latest = ckpts.latest() if ckpts is not None else None
    if latest is not None:
        kept = f"the last good checkpoint is step {int(latest.name.split('-')[-1])} ({latest}): {RESUME_HINT}"
    else:
        kept = "no checkpoint was kept: free some space and train again"
    return BadInput(f"could not write {what} ({exc.strerror or exc}); {kept}.")


# ------------------------------------------------------------ the LoRA file
def export_tensors(acc, unet, encoders, plan: Plan, save_half: bool) -> dict:
    """The trained adapters of `unet` (and `encoders`, when they trained) as
    kohya-layout tensors on the CPU."""
    import torch
    from peft.utils import get_peft_model_state_dict

    base = acc.unwrap_model(unet)
    unet_sd = get_peft_model_state_dict(base)
    te1 = te2 = None
    if encoders is not None:
        te1 = get_peft_model_state_dict(acc.unwrap_model(encoders[0]), adapter_name="default")
        te2 = get_peft_model_state_dict(acc.unwrap_model(encoders[1]), adapter_name="default")
    tensors = kohya.peft_to_kohya(unet_sd, layers_per_block=base.config.layers_per_block, alpha=plan.alpha,
                                  te1_state=te1, te2_state=te2)
    dtype = torch.float16 if save_half else torch.float32
    return {k: (v.to(dtype) if not k.endswith(".alpha") else v.float()).cpu() for k, v in tensors.items()}


def base_hash(store, base_model: str) -> str | None:
    """The base model's hash for the metadata, None when it cannot be had."""
    from ..outputs import model_hash

    try:
        return model_hash(store, base_model)
    except Exception:  # the hash is metadata only; never fail a finished training on it
        return None


def write_trained_lora(out_path: Path, tensors: dict, plan: Plan, tset: TrainingSet, *, store, ckpts: Checkpoints,
                       mixed_precision: str, optimizer: str, gradient_checkpointing: bool, processes: int) -> str:
    """Write `tensors` with the run's kohya metadata to `out_path`, delete the
    run's checkpoints, and return the file's sha256. A failed write raises
    `disk_error` (the checkpoints are kept for `--resume`)."""
    meta = kohya.training_metadata(
        name=plan.name, rank=plan.rank, alpha=plan.alpha, learning_rate=plan.lr, max_steps=plan.steps,
        photos=len(tset.used), images=len(tset.samples), trigger=tset.options.trigger,
        caption=tset.caption, class_word=tset.options.class_word, base_model=plan.base_model,
        base_hash=base_hash(store, plan.base_model),
        resolution=tset.options.bucket(tset.options.framings[0]), seed=plan.seed,
        text_encoder=plan.text_encoder,
        extra={"ss_optimizer": optimizer, "ss_mixed_precision": mixed_precision, "ss_gradient_checkpointing":
               gradient_checkpointing, "ss_lr_warmup_steps": plan.warmup_steps,
               "ss_num_processes": processes,
               "likeness_photos": json.dumps([Path(r.file).name for r in tset.used])},
    )
    try:
        kohya.write_lora(out_path, tensors, meta)
    except Exception as exc:
        failed = write_error(exc)
        if failed is None:
            raise
        raise disk_error(str(out_path), failed, ckpts) from exc
    ckpts.clear()
    from ..models.hashing import sha256_file

    return sha256_file(out_path)
