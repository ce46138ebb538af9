"""Personal LoRA training on SDXL (UNet LoRA with peft; text-encoder LoRA
optional): `train_lora`, the one call the CLI and the UI make, and
`LoraTrainer`, which runs one training from prepared photos to
`<loras_dir>/<name>.safetensors`.

The order of a run (`LoraTrainer.train`):
1. plan: every default resolved for the photo count (`plan.py`: FaceChain's
   defaults; demo mode's shorter runs come from the run profile);
2. checks before any long work: the name, an existing LoRA (never replaced
   without `overwrite`), a writable folder (`saving.py`);
3. the `Accelerator` (one or N processes, mixed precision: `accelerator.py`),
   then the preview grid of the crops (main process);
4. resume: the latest checkpoint, accepted only when its key (plan, photos and
   crops, process count) equals this run's; a fresh start deletes older
   checkpoints so they cannot be resumed later;
5. the base model (a catalog model or a registered single file, through the
   one base loader `models.bases`), its latents and text embeddings cached once
   (`cache.py`), then the VAE and text encoders freed;
6. the loop (`loop.py`: deterministic steps, checkpoints, cancel, automatic
   gradient checkpointing);
7. the LoRA written in the kohya layout with its metadata, and the run's
   checkpoints deleted (`saving.py`).

Cancel is checked between the phases before the first step (nothing to keep
yet) and after every step (a checkpoint is written, and `--resume` continues).
A disk that fills up mid-run keeps the last complete checkpoint and the error
says to free space and resume from it.

Every name the trainer's parts define is importable from here as before.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadInput, Cancelled
from ..models.bases import check_family, ensure_base, load_base_pipeline
from ..paths import confine
from ..processes import main_process_first
from ..profile import profile_of
from .accelerator import (
    MainProcessEmitter,
    MainProcessEmitter as _Emitter,
    TrainCallback,
    finish,
    mixed_precision as _mixed_precision,
    start_accelerator,
    weight_dtype as _weight_dtype,
)
from .cache import CachedSample, TextTable, cache_training_set, encode_text, tokenize
from .checkpoints import Checkpoints
from .dataset import DatasetOptions, TrainingSet, prepare_dataset, preview_grid
from .files import normalize_name
from .loop import (
    MAX_GRAD_NORM,
    TEXT_TARGETS,
    UNET_TARGETS,
    WEIGHT_DECAY,
    FitData,
    FitOptions,
    FitResult,
    add_lora,
    fit_lora,
    make_optimizer,
    sample_order,
    step_seed,
)
from .plan import DEFAULT_ALPHA, DEFAULT_LR, DEFAULT_RANK, Plan, TrainConfig, default_steps, make_plan
from .saving import (
    RESUME_HINT,
    SPACE_MARGIN,
    WORK_DIR,
    base_hash as _base_hash,
    check_space,
    check_writable,
    disk_error as _disk_error,
    export_tensors,
    required_bytes,
    write_trained_lora,
)

__all__ = [
    "DEFAULT_ALPHA", "DEFAULT_LR", "DEFAULT_RANK", "MAX_GRAD_NORM", "RESUME_HINT", "SPACE_MARGIN", "TEXT_TARGETS",
    "UNET_TARGETS", "WEIGHT_DECAY", "WORK_DIR", "CachedSample", "Checkpoints", "DatasetOptions", "FitData",
    "FitOptions", "FitResult", "LoraTrainer", "MainProcessEmitter", "Plan", "TextTable", "TrainCallback",
    "TrainConfig", "TrainResult", "TrainingSet", "_Emitter", "_base_hash", "_disk_error", "_mixed_precision",
    "_weight_dtype", "add_lora", "check_space", "check_writable", "default_steps", "encode_text", "fit_lora",
    "load_base", "make_optimizer", "make_plan", "required_bytes", "sample_order", "step_seed", "tokenize",
    "train_lora",
]


@dataclass
class TrainResult:
    path: Path
    name: str
    steps: int
    losses: list[float]
    seconds: float
    sha256: str
    trigger: str
    photos: int
    resumed_from: int = 0
    preview: Path | None = None
    optimizer: str = "AdamW"
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    step_seconds: list[float] = field(default_factory=list)

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


def load_base(store, base_model: str, dtype):
    """The SDXL pipeline to train on (catalog model or a registered single file), on CPU."""
    return load_base_pipeline(store, base_model, dtype, family="sdxl", purpose="LoRA training")


class LoraTrainer:
    """Prepares photos and trains a LoRA into `<loras_dir>/<name>.safetensors`."""

    def __init__(self, settings, store):
        """`store`: the model store to load the base from (the front doors open it with
        `pipelines.stores.open_store`, which gives it the demo packs in demo mode)."""
        self.settings = settings
        self.store = store
        self._analyzer = None

    # ------------------------------------------------------------ dataset
    def analyzer(self):
        from ..faces.analysis import FaceAnalyzer

        if self._analyzer is None:
            self._analyzer = FaceAnalyzer(self.store, self.settings, "buffalo_l")
        return self._analyzer

    def prepare(self, photos, options: DatasetOptions | None = None) -> TrainingSet:
        opts = options or DatasetOptions(profile=profile_of(self.settings))
        with main_process_first(cpu=self.settings.resolve_device() == "cpu"):  # it fetches/builds the face models
            analyzer = self.analyzer()
            _ = analyzer.detector  # loads the pack now
        return prepare_dataset(photos, analyzer, opts, max_pixels=self.settings.max_image_pixels,
                               max_side=self.settings.max_photo_side)

    # ---------------------------------------------------------- the files
    def output_path(self, name: str) -> Path:
        name = normalize_name(name)
        return confine(self.settings.loras_dir, f"{name}.safetensors", "LoRA name")

    def check_target(self, name: str, overwrite: bool = False) -> Path:
        """Before any work: the LoRA file may be (re)written here."""
        out = self.output_path(name)
        if out.exists() and not overwrite:
            raise BadInput(f"LoRA {out.stem!r} already exists ({out}); choose another name, or replace it with "
                           "--overwrite (the Overwrite box in the UI).")
        check_writable(out.parent)
        return out

    def checkpoints(self, name: str) -> Checkpoints:
        name = normalize_name(name)
        return Checkpoints(confine(self.settings.loras_dir, f"{WORK_DIR}/{name}", "LoRA name"))

    # ------------------------------------------------------------- train
    def train(
        self,
        tset: TrainingSet,
        config: TrainConfig,
        *,
        callback: TrainCallback | None = None,
        cancel: threading.Event | None = None,
        progress: bool = True,
    ) -> TrainResult:
        t0 = time.perf_counter()
        plan = make_plan(config, len(tset.used), profile_of(self.settings))
        out_path = self.check_target(plan.name, config.overwrite)
        ckpts = self.checkpoints(plan.name)
        device = self.settings.resolve_device()
        mp = _mixed_precision(config.mixed_precision, device)
        acc = start_accelerator(mp, device)
        emit = MainProcessEmitter(callback if acc.is_main_process else None)
        preview = self._write_preview(tset, out_path, plan) if acc.is_main_process else None

        key = {**plan.key(), "data": tset.fingerprint(), "processes": acc.num_processes}
        resume = self._resume_from(ckpts, key, emit) if config.resume else None
        if not config.resume and acc.is_main_process:
            ckpts.clear()  # a fresh start: an older run's checkpoints must not be resumed later

        _stop_if_cancelled(cancel, plan.name, "before loading the base model")
        emit(phase="load", message=f"loading {plan.base_model}")
        check_family(self.store, plan.base_model, "sdxl", "LoRA training")
        with acc.main_process_first():  # demo packs are built once, not raced by every process
            ensure_base(self.store, plan.base_model)
        pipe = load_base(self.store, plan.base_model, _weight_dtype(mp))
        _stop_if_cancelled(cancel, plan.name, "before caching the latents")
        emit(phase="cache", message=f"caching latents of {len(tset.samples)} crops")
        data, texts = cache_training_set(pipe, tset, acc.device, keep_text=plan.text_encoder)
        unet = pipe.unet
        encoders = (pipe.text_encoder, pipe.text_encoder_2) if plan.text_encoder else None
        noise_config = dict(pipe.scheduler.config)
        del pipe  # VAE (and text encoders unless trained) are freed here

        fit = fit_lora(unet, encoders, FitData(data, texts, noise_config), acc,
                       FitOptions(plan, checkpoints=ckpts, emit=emit, cancel=cancel, progress=progress,
                                  resume=resume, key=key, optimizer=config.optimizer))
        acc.wait_for_everyone()
        sha = ""
        if acc.is_main_process:
            emit(phase="save", message=f"writing {out_path}")
            tensors = export_tensors(acc, unet, encoders, plan, save_half=mp != "no")
            sha = write_trained_lora(out_path, tensors, plan, tset, store=self.store, ckpts=ckpts,
                                     mixed_precision=mp, optimizer=fit.optimizer,
                                     gradient_checkpointing=fit.gradient_checkpointing,
                                     processes=acc.num_processes)
        finish(acc)
        return TrainResult(path=out_path, name=plan.name, steps=plan.steps, losses=fit.losses,
                           seconds=time.perf_counter() - t0, sha256=sha, trigger=tset.options.trigger,
                           photos=len(tset.used), resumed_from=fit.start, preview=preview, optimizer=fit.optimizer,
                           mixed_precision=mp, gradient_checkpointing=fit.gradient_checkpointing,
                           step_seconds=fit.step_seconds)

    @staticmethod
    def _write_preview(tset: TrainingSet, out_path: Path, plan: Plan) -> Path | None:
        """The grid of the training crops beside the LoRA (`<name>.preview.png`)."""
        try:
            return preview_grid(tset.samples, out_path.with_name(f"{plan.name}.preview.png"))
        except OSError as exc:
            raise _disk_error(f"the preview of {plan.name}", exc, None) from exc

    @staticmethod
    def _resume_from(ckpts: Checkpoints, key: dict, emit) -> tuple[dict, dict] | None:
        """The latest checkpoint as (weights, state), None when there is none;
        one made with other photos or settings is refused."""
        latest = ckpts.latest()
        if latest is None:
            emit(phase="resume", message="no checkpoint found; starting from step 0")
            return None
        weights, state = ckpts.load(latest)
        if state.get("key") != key:
            raise BadInput(f"checkpoint {latest} was made with other photos or settings "
                           f"({_key_diff(state.get('key') or {}, key)}); run without --resume to start over.")
        emit(phase="resume", message=f"resuming from step {state['step']} ({latest})", step=state["step"])
        return weights, state


def _stop_if_cancelled(cancel: threading.Event | None, name: str, where: str) -> None:
    """Cancel between the phases before the first step (nothing to keep yet)."""
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"training {name} cancelled {where}, before its first step.")


def _key_diff(old: dict, new: dict) -> str:
    diffs = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    parts = []
    for k in diffs[:3]:
        if k == "data":
            parts.append("different photos or crops")
        else:
            parts.append(f"{k} {old.get(k)!r} now {new.get(k)!r}")
    return "; ".join(parts) or "unknown difference"


def train_lora(settings, photos, config: TrainConfig, options: DatasetOptions | None = None, *, store,
               callback: TrainCallback | None = None, cancel: threading.Event | None = None,
               progress: bool = True) -> tuple[TrainingSet, TrainResult]:
    """Prepare `photos` and train; the one call the CLI and the UI make."""
    normalize_name(config.name)  # a bad name fails before any work
    trainer = LoraTrainer(settings, store)
    trainer.check_target(config.name, config.overwrite)  # so do an existing LoRA and an unwritable folder
    tset = trainer.prepare(photos, options)
    if callback is not None:
        callback({"phase": "dataset", "used": [r.file for r in tset.used],
                  "excluded": [{"file": r.file, "reason": r.reason} for r in tset.excluded],
                  "warnings": list(tset.warnings)})
    _stop_if_cancelled(cancel, config.name, "after preparing the photos")
    return tset, trainer.train(tset, config, callback=callback, cancel=cancel, progress=progress)
