"""Personal LoRA training on SDXL (UNet LoRA with peft; text-encoder LoRA optional).

Defaults follow FaceChain v3's face LoRA (modelscope/facechain training defaults): rank 4, alpha 32,
lr 1.5e-4 with a cosine schedule, steps = min(200 × photos, 800); demo mode
(tiny random models) uses min(10 × photos, 40) steps (`RunProfile.train_steps`). `--steps/--rank/--lr`
override. One optimizer step = one crop per process (batch 1, as FaceChain and
kohya's defaults); with N processes (`accelerate launch`) each step sees N crops
and DDP averages their gradients.

Speed and memory: latents (VAE in float32, then freed) and text embeddings
(once per caption, then the text encoders are freed) are computed once; the UNet
runs in bf16/fp16 on a GPU (LoRA weights and the optimizer stay float32;
accelerate autocasts), AdamW 8-bit when bitsandbytes is installed and the device
is CUDA. Gradient checkpointing (about half the activation memory, a third
slower) is `auto` by default: off, and turned on when a step runs out of GPU
memory (the step is then redone), so big GPUs keep full speed and 8-12 GB ones
still train; `on`/`off` force it.

Determinism and resume: the crop order and the noise/timestep of step k come
from generators seeded by (seed, k, process), not from a running RNG, so a run
resumed from a checkpoint takes exactly the same steps as an uninterrupted one.
A checkpoint (LoRA weights, optimizer, LR schedule, grad scaler, step, torch
RNG) is written to a temp folder and renamed into place, so a kill -9 leaves
either the previous or the new checkpoint, never half of one.

Where the LoRA goes: an existing `<name>.safetensors` is never replaced unless
`overwrite` is set (`--overwrite`, the Overwrite box in the UI); the LoRA folder
must be writable, and once the trainable weights are known it must have room for
two checkpoints (the old one stays until the new one is complete) and the LoRA.
A disk that fills up mid-run keeps the last complete checkpoint and the error
says to free space and resume from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import BadInput, Cancelled, ModelError
from ..memory import free_memory
from ..models.bases import check_family, ensure_base, load_base_pipeline
from ..paths import confine
from ..processes import main_process_first
from ..profile import RunProfile, as_profile, profile_of
from . import kohya
from .checkpoints import Checkpoints, write_error
from .dataset import DatasetOptions, TrainingSet, prepare_dataset, preview_grid
from .manager import normalize_name

TrainCallback = Callable[[dict], None]

UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
DEFAULT_RANK = 4
DEFAULT_ALPHA = 32.0
DEFAULT_LR = 1.5e-4
WEIGHT_DECAY = 1e-4
MAX_GRAD_NORM = 1.0
WORK_DIR = ".training"
SPACE_MARGIN = 1 << 20  # bytes kept free beyond the estimate (metadata, preview, file-system overhead)
RESUME_HINT = "free some space, then train again with --resume (the Resume box in the UI)"


def default_steps(photos: int, profile: RunProfile | bool | None = None, *, demo: bool | None = None) -> int:
    """FaceChain: 200 steps per photo, at most 800 (demo: 10 per photo, at most 40):
    the run profile's `train_steps`. `demo` (a bool, in the profile's place or as
    `demo=`) is the old boolean."""
    return as_profile(profile, demo).train_steps(photos)


class TrainConfig(BaseModel):
    """Training options; None means "the default for this photo count"."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=300)
    steps: int | None = Field(default=None, ge=1, le=100_000)
    rank: int = Field(default=DEFAULT_RANK, ge=1, le=256)
    alpha: float | None = Field(default=None, gt=0, le=4096)
    lr: float | None = Field(default=None, gt=0, le=1.0)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    warmup_steps: int | None = Field(default=None, ge=0, le=10_000)
    checkpoint_every: int | None = Field(default=None, ge=1, le=100_000)
    resume: bool = False
    overwrite: bool = False  # replace an existing <name>.safetensors
    text_encoder: bool = False  # also train a LoRA on both text encoders (no text-embedding cache then)
    gradient_checkpointing: bool | None = None  # None: off until the GPU runs out of memory
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    optimizer: Literal["auto", "adamw", "adamw8bit"] = "auto"
    base_model: str = "sdxl-base"


@dataclass
class Plan:
    """A `TrainConfig` with every default resolved for a training set."""

    name: str
    steps: int
    rank: int
    alpha: float
    lr: float
    seed: int
    warmup_steps: int
    checkpoint_every: int
    text_encoder: bool
    gradient_checkpointing: bool | None
    base_model: str

    def key(self) -> dict:
        """What must match for a checkpoint to be resumed."""
        return {k: getattr(self, k) for k in ("steps", "rank", "alpha", "lr", "seed", "warmup_steps",
                                                 "text_encoder", "base_model")}


def make_plan(config: TrainConfig, photos: int, profile: RunProfile | bool | None = None, *,
              demo: bool | None = None) -> Plan:
    """`config` with every default resolved for `photos` photos under the run
    `profile` (`demo=`, or a bool in its place, is the old boolean)."""
    steps = config.steps or as_profile(profile, demo).train_steps(photos)
    every = config.checkpoint_every or min(100, max(1, steps // 4))
    warmup = config.warmup_steps if config.warmup_steps is not None else min(50, steps // 20)
    return Plan(
        name=normalize_name(config.name),
        steps=steps,
        rank=config.rank,
        alpha=float(config.alpha if config.alpha is not None else DEFAULT_ALPHA),
        lr=float(config.lr if config.lr is not None else DEFAULT_LR),
        seed=config.seed,
        warmup_steps=min(warmup, steps - 1) if steps > 1 else 0,
        checkpoint_every=every,
        text_encoder=config.text_encoder,
        gradient_checkpointing=config.gradient_checkpointing,
        base_model=config.base_model,
    )


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


# ---------------------------------------------------------------- helpers
def step_seed(seed: int, index: int) -> int:
    """A 63-bit seed for global sample `index` of a run seeded `seed`."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "little") >> 1


def sample_order(seed: int, index: int, n: int) -> int:
    """Which of `n` samples global index `index` uses: a fresh permutation per epoch."""
    import torch

    epoch, pos = divmod(index, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(seed, -1 - epoch)))
    return int(perm[pos])


def _mixed_precision(choice: str, device: str) -> str:
    if device != "cuda":
        return "no"
    if choice != "auto":
        return choice
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _weight_dtype(mp: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mp, torch.float32)


def make_optimizer(params, lr: float, choice: str, device: str):
    """AdamW; 8-bit (bitsandbytes) when asked or, with `auto`, when it is
    installed and the device is CUDA. Returns (optimizer, name)."""
    import torch

    if choice in ("auto", "adamw8bit") and device == "cuda":
        try:
            import bitsandbytes as bnb  # optional

            return bnb.optim.AdamW8bit(params, lr=lr, betas=(0.9, 0.999), weight_decay=WEIGHT_DECAY), "AdamW8bit"
        except ImportError as exc:
            if choice == "adamw8bit":
                raise BadInput("optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes.") from exc
    elif choice == "adamw8bit":
        raise BadInput("optimizer adamw8bit runs on CUDA only; use adamw.")
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=WEIGHT_DECAY, eps=1e-8), "AdamW"


def encode_text(tokenizers, text_encoders, ids_list=None, captions=None):
    """SDXL text conditioning: penultimate hidden states of both encoders
    concatenated, and the second encoder's pooled projection (as the pipeline
    does). Gives (embeds (B, 77, D), pooled (B, P))."""
    import torch

    if ids_list is None:
        ids_list = [tokenize(tok, captions) for tok in tokenizers]
    states, pooled = [], None
    for enc, ids in zip(text_encoders, ids_list):
        out = enc(ids.to(next(enc.parameters()).device), output_hidden_states=True)
        pooled = out[0]
        states.append(out.hidden_states[-2])
    return torch.cat(states, dim=-1), pooled


def tokenize(tokenizer, captions: list[str]):
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def load_base(store, base_model: str, dtype):
    """The SDXL pipeline to train on (catalog model or a registered single file), on CPU."""
    return load_base_pipeline(store, base_model, dtype, family="sdxl", purpose="LoRA training")


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


def _disk_error(what: str, exc: OSError, ckpts: Checkpoints | None) -> BadInput:
    """A write that failed mid-run (disk full, folder gone read-only): what the
    user still has, and how to continue."""
    latest = ckpts.latest() if ckpts is not None else None
    if latest is not None:
        kept = f"the last good checkpoint is step {int(latest.name.split('-')[-1])} ({latest}): {RESUME_HINT}"
    else:
        kept = "no checkpoint was kept: free some space and train again"
    return BadInput(f"could not write {what} ({exc.strerror or exc}); {kept}.")


# ----------------------------------------------------------------- trainer
@dataclass
class CachedSample:
    latents: Any  # (1, 4, h, w) float32, CPU
    text: int  # index into the caption table
    time_ids: Any  # (1, 6) float32


@dataclass
class TextTable:
    """Per caption: cached (embeds, pooled), or token ids when the text encoders train."""

    embeds: list = field(default_factory=list)
    pooled: list = field(default_factory=list)
    ids: list = field(default_factory=list)  # [(ids_te1, ids_te2)]


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
        from accelerate import Accelerator

        t0 = time.perf_counter()
        plan = make_plan(config, len(tset.used), profile_of(self.settings))
        out_path = self.check_target(plan.name, config.overwrite)
        ckpts = self.checkpoints(plan.name)
        device = self.settings.resolve_device()
        mp = _mixed_precision(config.mixed_precision, device)
        acc = Accelerator(mixed_precision=mp, cpu=device == "cpu")
        emit = _Emitter(callback if acc.is_main_process else None)
        if acc.is_main_process:
            try:
                preview = preview_grid(tset.samples, out_path.with_name(f"{plan.name}.preview.png"))
            except OSError as exc:
                raise _disk_error(f"the preview of {plan.name}", exc, None) from exc
        else:
            preview = None

        key = {**plan.key(), "data": tset.fingerprint(), "processes": acc.num_processes}
        resume = None
        if config.resume:
            latest = ckpts.latest()
            if latest is None:
                emit(phase="resume", message="no checkpoint found; starting from step 0")
            else:
                weights, state = ckpts.load(latest)
                if state.get("key") != key:
                    raise BadInput(f"checkpoint {latest} was made with other photos or settings "
                                   f"({_key_diff(state.get('key') or {}, key)}); run without --resume to start over.")
                resume = (weights, state)
                emit(phase="resume", message=f"resuming from step {state['step']} ({latest})", step=state["step"])
        elif acc.is_main_process:
            ckpts.clear()  # a fresh start: an older run's checkpoints must not be resumed later

        _stop_if_cancelled(cancel, plan.name, "before loading the base model")
        emit(phase="load", message=f"loading {plan.base_model}")
        wdtype = _weight_dtype(mp)
        check_family(self.store, plan.base_model, "sdxl", "LoRA training")
        with acc.main_process_first():  # demo packs are built once, not raced by every process
            ensure_base(self.store, plan.base_model)
        pipe = load_base(self.store, plan.base_model, wdtype)
        _stop_if_cancelled(cancel, plan.name, "before caching the latents")
        emit(phase="cache", message=f"caching latents of {len(tset.samples)} crops")
        data, texts = self._cache(pipe, tset, acc.device, keep_text=plan.text_encoder)
        unet = pipe.unet
        encoders = (pipe.text_encoder, pipe.text_encoder_2) if plan.text_encoder else None
        noise_config = dict(pipe.scheduler.config)
        del pipe  # VAE (and text encoders unless trained) are freed here

        fit = fit_lora(unet, encoders, FitData(data, texts, noise_config), acc,
                       FitOptions(plan, checkpoints=ckpts, emit=emit, cancel=cancel, progress=progress,
                                  resume=resume, key=key, optimizer=config.optimizer))
        losses, start, opt_name, step_times = fit.losses, fit.start, fit.optimizer, fit.step_seconds
        used_checkpointing = fit.gradient_checkpointing
        acc.wait_for_everyone()
        sha = ""
        if acc.is_main_process:
            emit(phase="save", message=f"writing {out_path}")
            tensors = self._export(acc, unet, encoders, plan, save_half=mp != "no")
            meta = kohya.training_metadata(
                name=plan.name, rank=plan.rank, alpha=plan.alpha, learning_rate=plan.lr, max_steps=plan.steps,
                photos=len(tset.used), images=len(tset.samples), trigger=tset.options.trigger,
                caption=tset.caption, class_word=tset.options.class_word, base_model=plan.base_model,
                base_hash=_base_hash(self.store, plan.base_model),
                resolution=tset.options.bucket(tset.options.framings[0]), seed=plan.seed,
                text_encoder=plan.text_encoder,
                extra={"ss_optimizer": opt_name, "ss_mixed_precision": mp, "ss_gradient_checkpointing":
                       used_checkpointing, "ss_lr_warmup_steps": plan.warmup_steps,
                       "ss_num_processes": acc.num_processes,
                       "likeness_photos": json.dumps([Path(r.file).name for r in tset.used])},
            )
            try:
                kohya.write_lora(out_path, tensors, meta)
            except Exception as exc:
                failed = write_error(exc)
                if failed is None:
                    raise
                raise _disk_error(str(out_path), failed, ckpts) from exc
            ckpts.clear()
            from ..models.hashing import sha256_file

            sha = sha256_file(out_path)
        acc.wait_for_everyone()
        if acc.num_processes > 1:
            acc.end_training()
        return TrainResult(path=out_path, name=plan.name, steps=plan.steps, losses=losses,
                           seconds=time.perf_counter() - t0, sha256=sha, trigger=tset.options.trigger,
                           photos=len(tset.used), resumed_from=start, preview=preview, optimizer=opt_name,
                           mixed_precision=mp, gradient_checkpointing=used_checkpointing, step_seconds=step_times)

    # ------------------------------------------------------------- cache
    def _cache(self, pipe, tset: TrainingSet, device, keep_text: bool):
        import numpy as np
        import torch

        captions = sorted({s.caption for s in tset.samples})
        texts = TextTable()
        tokenizers = (pipe.tokenizer, pipe.tokenizer_2)
        encoders = (pipe.text_encoder, pipe.text_encoder_2)
        with torch.no_grad():
            for cap in captions:
                ids = [tokenize(tok, [cap]) for tok in tokenizers]
                texts.ids.append(ids)
                if not keep_text:
                    for enc in encoders:
                        enc.to(device)
                    emb, pooled = encode_text(tokenizers, encoders, ids_list=ids)
                    texts.embeds.append(emb.float().cpu())
                    texts.pooled.append(pooled.float().cpu())
            if not keep_text:
                for enc in encoders:
                    enc.to("cpu")
            vae = pipe.vae.to(device, torch.float32)  # SDXL's VAE overflows in fp16
            data = []
            for s in tset.samples:
                pix = torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
                lat = vae.encode(pix.to(device)).latent_dist.mode() * vae.config.scaling_factor
                w, h = s.size
                time_ids = torch.tensor([[s.original_size[0], s.original_size[1], 0, 0, h, w]], dtype=torch.float32)
                data.append(CachedSample(lat.float().cpu(), captions.index(s.caption), time_ids))
            vae.to("cpu")
        return data, texts

    def _export(self, acc, unet, encoders, plan: Plan, save_half: bool) -> dict:
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


def _base_hash(store, base_model: str) -> str | None:
    from ..outputs import model_hash

    try:
        return model_hash(store, base_model)
    except Exception:  # the hash is metadata only; never fail a finished training on it
        return None


class _Emitter:
    def __init__(self, callback: TrainCallback | None):
        self.callback = callback

    def __call__(self, **info) -> None:
        if self.callback is not None:
            self.callback(info)


def add_lora(model, rank: int, alpha: float, targets: list[str], seed: int) -> None:
    """peft LoRA `default` on `model` (gaussian A, zero B), initialised from
    `seed` without disturbing the global RNG. diffusers models go through their
    `add_adapter`; text encoders through peft directly (transformers' adapter API
    wants a newer peft than diffusers does)."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights="gaussian")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if hasattr(model, "set_adapters"):  # diffusers ModelMixin
            model.add_adapter(config)
        else:
            inject_adapter_in_model(config, model, adapter_name="default")


@dataclass
class FitData:
    """What the training loop reads: the cached latents, the caption table and
    the base's noise-scheduler config."""

    samples: list[CachedSample]
    texts: TextTable
    noise_config: dict


@dataclass
class FitOptions:
    """How to run the loop: the resolved plan, where checkpoints go (None: none),
    progress reporting and cancelling, and a loaded checkpoint to resume
    ((weights, state), already checked against `key`)."""

    plan: Plan
    checkpoints: Checkpoints | None = None
    emit: Callable[..., None] = field(default_factory=lambda: _Emitter(None))
    cancel: threading.Event | None = None
    progress: bool = True
    resume: tuple[dict, dict] | None = None
    key: dict = field(default_factory=dict)
    optimizer: str = "auto"  # "auto", "adamw" or "adamw8bit"


@dataclass
class FitResult:
    losses: list[float]  # of this run's steps
    start: int  # the step it started from (resume)
    optimizer: str  # the optimizer used ("AdamW", "AdamW8bit")
    step_seconds: list[float]
    gradient_checkpointing: bool  # on at the end (auto turns it on after an out-of-memory step)


def fit_lora(unet, encoders, fit_data: FitData, acc, options: FitOptions) -> FitResult:
    """The training loop on cached latents."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from tqdm.auto import tqdm

    plan, ckpts, emit, cancel = options.plan, options.checkpoints, options.emit, options.cancel
    progress, resume, optimizer_choice = options.progress, options.resume, options.optimizer
    data, texts, noise_config = fit_data.samples, fit_data.texts, fit_data.noise_config
    device = acc.device
    wdtype = _weight_dtype(acc.mixed_precision)
    unet.requires_grad_(False)
    unet.to(device, dtype=wdtype)
    add_lora(unet, plan.rank, plan.alpha, UNET_TARGETS, plan.seed)
    models = [unet]
    if encoders is not None:
        for i, enc in enumerate(encoders):
            enc.requires_grad_(False)
            enc.to(device, dtype=wdtype)
            add_lora(enc, plan.rank, plan.alpha, TEXT_TARGETS, plan.seed + 1 + i)
            models.append(enc)
    for m in models:  # LoRA weights train in float32 whatever the base dtype
        for p in m.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    # on: always; off: never; auto (None): off until a step runs out of GPU memory
    checkpointing = [bool(plan.gradient_checkpointing)]
    if checkpointing[0]:
        unet.enable_gradient_checkpointing()  # the text encoders are small next to the UNet
    for m in models:
        m.train()
    names = ["unet", "te1", "te2"]
    named = {f"{names[i]}.{n}": p for i, m in enumerate(models) for n, p in m.named_parameters() if p.requires_grad}
    params = list(named.values())
    if ckpts is not None and acc.is_main_process:
        check_space(ckpts.root, required_bytes(sum(p.numel() for p in params)), plan.name)
    optimizer, opt_name = make_optimizer(params, plan.lr, optimizer_choice, device.type)
    scheduler = get_cosine_schedule_with_warmup(optimizer, plan.warmup_steps, plan.steps)
    prepared = acc.prepare(*models, optimizer)
    models, optimizer = list(prepared[:-1]), prepared[-1]
    unet_run = models[0]
    encoders_run = models[1:] if encoders is not None else None

    world, rank = acc.num_processes, acc.process_index
    key = options.key
    start = 0
    if resume is not None:
        weights, state = resume
        with torch.no_grad():
            for n, p in named.items():
                p.copy_(weights[n].to(p.device, p.dtype))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") is not None and acc.scaler is not None:
            acc.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        start = int(state["step"])

    noise_sched = DDPMScheduler.from_config(noise_config)
    n_train = int(noise_sched.config.num_train_timesteps)
    prediction = noise_sched.config.prediction_type
    n = len(data)

    def save(step: int) -> None:
        if ckpts is None:
            return
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
                     "rng": torch.get_rng_state(), "key": key}
            try:
                ckpts.save(step, named, state)
            except OSError as exc:
                raise _disk_error(f"the checkpoint of {plan.name} at step {step}", exc, ckpts) from exc
        acc.wait_for_everyone()

    def forward_backward(step: int):
        """Loss of global step `step` on this process, gradients accumulated."""
        index = step * world + rank
        sample = data[sample_order(plan.seed, index, n)]
        g = torch.Generator().manual_seed(step_seed(plan.seed, index))
        timesteps = torch.randint(0, n_train, (1,), generator=g)
        noise = torch.randn(sample.latents.shape, generator=g)
        latents, noise, timesteps = sample.latents.to(device), noise.to(device), timesteps.to(device)
        noisy = noise_sched.add_noise(latents, noise, timesteps)
        target = noise_sched.get_velocity(latents, noise, timesteps) if prediction == "v_prediction" else noise
        with acc.autocast():
            if encoders_run is not None:
                emb, pooled = encode_text(None, encoders_run, ids_list=texts.ids[sample.text])
            else:
                emb, pooled = texts.embeds[sample.text].to(device), texts.pooled[sample.text].to(device)
            pred = unet_run(noisy.to(wdtype), timesteps, encoder_hidden_states=emb.to(wdtype),
                            added_cond_kwargs={"text_embeds": pooled.to(wdtype),
                                               "time_ids": sample.time_ids.to(device, wdtype)}).sample
        loss = F.mse_loss(pred.float(), target.float())
        if not torch.isfinite(loss):
            raise ModelError(f"training {plan.name} diverged at step {step + 1} (loss {loss.item()}); "
                             "lower --lr or use --mixed-precision no.")
        acc.backward(loss)
        return loss

    def step_with_fallback(step: int):
        """`forward_backward`; with automatic checkpointing, an out-of-memory
        error turns gradient checkpointing on and the same step is redone (its
        noise and sample come from the step number, so nothing changes)."""
        while True:
            try:
                return forward_backward(step)
            except torch.cuda.OutOfMemoryError as exc:
                optimizer.zero_grad(set_to_none=True)
                if plan.gradient_checkpointing is not None or checkpointing[0]:
                    raise ModelError(f"out of GPU memory at step {step + 1} of {plan.name}; close other GPU "
                                     "programs, or lower --rank.") from exc
                free_memory()
                acc.unwrap_model(unet_run).enable_gradient_checkpointing()
                checkpointing[0] = True
                emit(phase="train", message="out of GPU memory: gradient checkpointing turned on")

    bar = tqdm(total=plan.steps, initial=start, desc=f"training {plan.name}", unit="step",
               disable=not (progress and acc.is_main_process), file=sys.stderr, dynamic_ncols=True)
    losses: list[float] = []
    step_times: list[float] = []
    t_run = time.perf_counter()
    try:
        for step in range(start, plan.steps):
            t_step = time.perf_counter()
            loss = step_with_fallback(step)
            if acc.sync_gradients:
                acc.clip_grad_norm_(params, MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            value = float(acc.gather(loss.detach()[None]).mean()) if world > 1 else float(loss.detach())
            losses.append(value)
            done = step + 1
            step_times.append(time.perf_counter() - t_step)
            elapsed = time.perf_counter() - t_run
            eta = elapsed / (done - start) * (plan.steps - done)
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            bar.update(1)
            emit(phase="train", step=done, steps=plan.steps, loss=value, lr=scheduler.get_last_lr()[0],
                 eta_s=eta, elapsed_s=elapsed, gradient_checkpointing=checkpointing[0])
            if cancel is not None and cancel.is_set():
                if done < plan.steps:
                    save(done)
                raise Cancelled(f"training {plan.name} cancelled at step {done} of {plan.steps}; "
                                "run it again with --resume to continue.")
            if done % plan.checkpoint_every == 0 and done < plan.steps:
                save(done)
    finally:
        bar.close()
    return FitResult(losses, start, opt_name, step_times, checkpointing[0])


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
