"""The LoRA training loop (`fit_lora`): peft LoRA on a frozen SDXL UNet (and,
optionally, both text encoders), trained on cached latents.

Speed and memory: the UNet runs in bf16/fp16 on a GPU (LoRA weights and the
optimizer stay float32; accelerate autocasts); AdamW 8-bit when bitsandbytes is
installed and the device is CUDA. Gradient checkpointing (about half the
activation memory, a third slower) is `auto` by default: off, and turned on
when a step runs out of GPU memory (the step is then redone), so big GPUs keep
full speed and 8-12 GB ones still train; `on`/`off` force it.

Invariants:
- Step k is a function of (seed, k, process): the crop it trains on
  (`sample_order`: a fresh permutation per epoch) and its noise and timestep
  (`step_seed`) come from generators seeded by those, never from a running RNG.
  So a run resumed from a checkpoint takes exactly the same steps as an
  uninterrupted one, and a step redone after running out of memory is the same
  step.
- The LoRA's initial weights come from `seed` inside `torch.random.fork_rng`,
  so adding a LoRA does not disturb the global RNG.
- A checkpoint (LoRA weights, optimizer, LR schedule, grad scaler, step, torch
  RNG) is written by the main process every `checkpoint_every` steps and on
  cancel (`Checkpoints.save`: a temp folder renamed into place, so a kill -9
  leaves the previous or the new one, never half of one); a failed write is
  `saving.disk_error`, naming the last good checkpoint.
- A non-finite loss stops the run with `ModelError` (it names the step and
  what to lower); it never writes a LoRA of NaNs.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import BadInput, Cancelled, ModelError
from ..memory import free_memory
from .accelerator import MainProcessEmitter, weight_dtype
from .cache import CachedSample, TextTable, encode_text
from .checkpoints import Checkpoints
from .plan import Plan
from .saving import check_space, disk_error, required_bytes

UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
WEIGHT_DECAY = 1e-4
MAX_GRAD_NORM = 1.0


def step_seed(seed: int, index: int) -> int:
    """A 63-bit seed for global sample `index` of a run seeded `seed`."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "little") >> 1


def sample_order(seed: int, index: int, n: int) -> int:
    """Which of `n` samples global index `index` uses: a fresh permutation per epoch."""
    import torch

    epoch, pos = divmod(index, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(seed, -1 - epoch)))
    return int(perm[pos])


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


def add_lora(model, rank: int, alpha: float, targets: list[str], seed: int) -> None:
    """peft LoRA `default` on `model` (gaussian A, zero B), initialised from
    `seed` without disturbing the global RNG. diffusers models go through their
    `add_adapter`; text encoders through peft directly (transformers' adapter API
    wants a newer peft than diffusers does)."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    # peft annotates lora_alpha as int; it only divides it by r, so a fractional alpha works
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets,  # type: ignore[arg-type]
                        init_lora_weights="gaussian")
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
    emit: Callable[..., None] = field(default_factory=lambda: MainProcessEmitter(None))
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
    wdtype = weight_dtype(acc.mixed_precision)
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
            for pname, p in named.items():
                p.copy_(weights[pname].to(p.device, p.dtype))
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
                raise disk_error(f"the checkpoint of {plan.name} at step {step}", exc, ckpts) from exc
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
