#!/usr/bin/env python3
"""LoRA training speed and memory: our trainer vs a plain peft + diffusers loop
on the same model, in one run. Prints one JSON object.

    python bench/train.py                 # tiny demo SDXL on the CPU (or GPU if present)
    python bench/train.py --full-size     # random-weight full SDXL UNet (a GPU with ~24 GB+)

Each variant runs in its own child process, so peak memory is its own (CUDA:
max allocated; CPU: max resident set size of the process). Seconds per step are
the median over the timed steps after warm-up steps; with several rounds
(variants alternating) the best round counts, which evens out a busy machine.

- tiny: both train on the same face crops of skimage's astronaut at the demo
  bucket sizes. Ours: `LoraTrainer.train` (latents and text embeddings cached
  once, accelerate mixed precision on a GPU, gradient checkpointing per
  --checkpointing). Plain: the
  textbook loop, VAE-encoding the crop and running both text encoders every step,
  no gradient checkpointing, the same precision.
- full-size: a random-weight SDXL UNet at 1024x1024 (128x128 latents) with
  random text embeddings; there is no VAE or text encoder, so both loops start
  from the same cached tensors and differ only in the training step (ours:
  accelerate autocast, the checkpointing choice, 8-bit AdamW when bitsandbytes
  is installed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def sdxl_unet_config(smoke: bool = False) -> dict:
    """SDXL base 1.0's UNet (stabilityai/stable-diffusion-xl-base-1.0 unet/config.json);
    `smoke` keeps its structure (depths 1/2/10, 2048-wide text, 2816 add-embed) with
    narrow channels, to check the code path on a CPU."""
    cfg = {
        "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
        "block_out_channels": (320, 640, 1280), "attention_head_dim": (5, 10, 20),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 2, 10), "cross_attention_dim": 2048, "use_linear_projection": True,
        "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32,
    }
    if smoke:
        cfg.update(block_out_channels=(32, 64, 128), attention_head_dim=(1, 2, 4), norm_num_groups=8, sample_size=16)
    return cfg


def _peak_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _settings(args):
    from pipelines.settings import load_settings

    device = "cuda" if _cuda() else "cpu"
    return load_settings(models_dir=args.models_dir, loras_dir=Path(args.work) / "loras",
                         outputs_dir=Path(args.work) / "outputs", device=device, demo=not args.full_size)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _checkpointing(args) -> bool | None:
    return {"on": True, "off": False}.get(args.checkpointing)


def _median(times: list[float], warmup: int) -> float:
    timed = times[warmup:] or times
    return statistics.median(timed)


# ------------------------------------------------------- the textbook loop (plain)
def _plain_lora(unet) -> list:
    """The textbook LoRA on `unet` (peft, rank 4, alpha 32, attention projections);
    returns its trainable parameters."""
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=4, lora_alpha=32, target_modules=["to_k", "to_q", "to_v", "to_out.0"],
                                init_lora_weights="gaussian"))
    return [p for p in unet.parameters() if p.requires_grad]


def _train_dtype(device: str):
    """bf16 on CUDA (the full-size UNet's weights, the plain loop's autocast), float32 on the CPU."""
    import torch

    return torch.bfloat16 if device == "cuda" else torch.float32


def _plain_steps(n: int, loss_fn, opt, device: str) -> tuple[list[float], float]:
    """`n` steps of the textbook loop: `loss_fn()` (the forward pass, under bf16
    autocast on CUDA), backward, AdamW step. Seconds per step (the device's queue
    drained) and the last loss."""
    import torch

    times = []
    loss = None
    for _ in range(n):
        t0 = time.perf_counter()
        with torch.autocast(device_type=device, dtype=_train_dtype(device), enabled=device == "cuda"):
            pred, target = loss_fn()
        loss = torch.nn.functional.mse_loss(pred.float(), target.float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times, float(loss)


def _plain_result(times: list[float], args, device: str, **extra) -> dict:
    return {"s_per_step": _median(times, args.warmup), "peak_mem_mb": _peak_mb(device), "optimizer": "AdamW",
            "mixed_precision": "bf16 autocast" if device == "cuda" else "no", "gradient_checkpointing": False,
            **extra}


# ------------------------------------------------------------------ tiny model


def tiny_ours(args) -> dict:
    from bench.prepare import astronaut
    from pipelines.lora.dataset import DatasetOptions
    from pipelines.lora.train import LoraTrainer, TrainConfig
    from pipelines.stores import open_store

    settings = _settings(args)
    trainer = LoraTrainer(settings, open_store(settings))
    tset = trainer.prepare([astronaut(Path(args.work))],
                           DatasetOptions(profile=settings.profile, framings=("close-up",)))
    res = trainer.train(tset, TrainConfig(name="bench", steps=args.warmup + args.steps, lr=1e-4,
                                          checkpoint_every=100_000, gradient_checkpointing=_checkpointing(args)),
                        progress=False)
    return {"s_per_step": _median(res.step_seconds, args.warmup), "peak_mem_mb": _peak_mb(settings.resolve_device()),
            "optimizer": res.optimizer, "mixed_precision": res.mixed_precision,
            "gradient_checkpointing": res.gradient_checkpointing,
            "cached_latents_and_text": True, "resolution": list(tset.samples[0].size)}


def tiny_plain(args) -> dict:
    import numpy as np
    import torch
    from diffusers import DDPMScheduler

    from bench.prepare import astronaut
    from pipelines.lora.dataset import DatasetOptions
    from pipelines.lora.train import LoraTrainer, load_base
    from pipelines.stores import open_store

    settings = _settings(args)
    device = settings.resolve_device()
    trainer = LoraTrainer(settings, open_store(settings))
    tset = trainer.prepare([astronaut(Path(args.work))],
                           DatasetOptions(profile=settings.profile, framings=("close-up",)))
    sample = tset.samples[0]
    pipe = load_base(trainer.store, "sdxl-base", torch.float32).to(device)
    unet, vae = pipe.unet, pipe.vae
    for m in (unet, vae, pipe.text_encoder, pipe.text_encoder_2):
        m.requires_grad_(False)
    opt = torch.optim.AdamW(_plain_lora(unet), lr=1e-4)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    pix = torch.from_numpy(np.ascontiguousarray(sample.image)).permute(2, 0, 1)[None].float().to(device) / 127.5 - 1
    w, h = sample.size
    time_ids = torch.tensor([[sample.original_size[0], sample.original_size[1], 0, 0, h, w]], device=device)

    def step():  # the VAE and both text encoders run every step: nothing is cached
        with torch.no_grad():
            latents = vae.encode(pix).latent_dist.sample() * vae.config.scaling_factor
            emb, _, pooled, _ = pipe.encode_prompt(sample.caption, device=device, num_images_per_prompt=1,
                                                   do_classifier_free_guidance=False)
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (1,), device=device)
        pred = unet(sched.add_noise(latents, noise, t), t, encoder_hidden_states=emb,
                    added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        return pred, noise

    times, _ = _plain_steps(args.warmup + args.steps, step, opt, device)
    return _plain_result(times, args, device, cached_latents_and_text=False, resolution=[w, h])


# ------------------------------------------------------------- full-size UNet
def _full_unet(device: str, smoke: bool):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**sdxl_unet_config(smoke))
    unet = unet.to(_train_dtype(device))
    if device == "cuda":  # the float32 build is not part of training
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return unet


def _full_inputs(device: str, smoke: bool):
    import torch

    side = 16 if smoke else 128
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, side, side, generator=g)
    emb = torch.randn(1, 77, 2048, generator=g)
    pooled = torch.randn(1, 1280, generator=g)
    time_ids = torch.tensor([[side * 8, side * 8, 0, 0, side * 8, side * 8]], dtype=torch.float32)
    return latents, emb, pooled, time_ids


def _noise_config() -> dict:
    from pipelines.tiny.sdxl import scheduler_config

    return scheduler_config()


def full_ours(args) -> dict:
    import torch
    from accelerate import Accelerator

    from pipelines.lora.train import CachedSample, FitData, FitOptions, Plan, TextTable, _mixed_precision, fit_lora

    device = "cuda" if _cuda() else "cpu"
    acc = Accelerator(mixed_precision=_mixed_precision("auto", device), cpu=device == "cpu")
    unet = _full_unet(device, args.smoke)
    latents, emb, pooled, time_ids = _full_inputs(device, args.smoke)
    plan = Plan(name="bench", steps=args.warmup + args.steps, rank=4, alpha=32.0, lr=1e-4, seed=0, warmup_steps=0,
                checkpoint_every=100_000, text_encoder=False, gradient_checkpointing=_checkpointing(args),
                base_model="random-sdxl")
    def emit(**info):
        if info.get("phase") == "train" and device == "cuda":
            torch.cuda.synchronize()

    fit = fit_lora(unet, None, FitData([CachedSample(latents, 0, time_ids)], TextTable(embeds=[emb], pooled=[pooled]),
                                       _noise_config()), acc, FitOptions(plan, emit=emit, progress=False))
    losses, opt_name, times, used_ckpt = fit.losses, fit.optimizer, fit.step_seconds, fit.gradient_checkpointing
    return {"s_per_step": _median(times, args.warmup), "peak_mem_mb": _peak_mb(device), "optimizer": opt_name,
            "mixed_precision": acc.mixed_precision, "gradient_checkpointing": used_ckpt,
            "final_loss": losses[-1], "resolution": [latents.shape[-1] * 8] * 2}


def full_plain(args) -> dict:
    import torch
    from diffusers import DDPMScheduler

    device = "cuda" if _cuda() else "cpu"
    unet = _full_unet(device, args.smoke)
    unet.requires_grad_(False)
    params = _plain_lora(unet)
    for p in params:
        p.data = p.data.float()
    opt = torch.optim.AdamW(params, lr=1e-4)
    sched = DDPMScheduler.from_config(_noise_config())
    latents, emb, pooled, time_ids = (t.to(device) for t in _full_inputs(device, args.smoke))
    dtype = _train_dtype(device)

    def step():  # from the cached tensors, as ours
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (1,), device=device)
        pred = unet(sched.add_noise(latents, noise, t).to(dtype), t, encoder_hidden_states=emb.to(dtype),
                    added_cond_kwargs={"text_embeds": pooled.to(dtype), "time_ids": time_ids.to(dtype)}).sample
        return pred, noise

    times, loss = _plain_steps(args.warmup + args.steps, step, opt, device)
    return _plain_result(times, args, device, final_loss=loss, resolution=[latents.shape[-1] * 8] * 2)


VARIANTS = {("tiny", "ours"): tiny_ours, ("tiny", "plain"): tiny_plain,
            ("full", "ours"): full_ours, ("full", "plain"): full_plain}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full-size", action="store_true", help="random-weight full SDXL UNet at 1024 px (GPU)")
    p.add_argument("--smoke", action="store_true", help="with --full-size: SDXL's structure, narrow channels (CPU check)")
    p.add_argument("--steps", type=int, default=6, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--rounds", type=int, default=2, help="runs of each variant (best median kept)")
    p.add_argument("--checkpointing", choices=["auto", "on", "off"], default="auto",
                   help="ours: gradient checkpointing (auto: only after running out of GPU memory)")
    p.add_argument("--models-dir", help="where the tiny demo models are built (default: a temp folder)")
    p.add_argument("--variant", choices=["ours", "plain"], help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.variant:  # child: one variant, one JSON line
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        result = VARIANTS[("full" if args.full_size else "tiny", args.variant)](args)
        print("RESULT " + json.dumps(result))
        return 0

    with tempfile.TemporaryDirectory(prefix="likeness-bench-") as work:
        args.models_dir = args.models_dir or str(Path(work) / "models")
        runs: dict[str, list[dict]] = {"ours": [], "plain": []}
        for r in range(args.rounds):  # alternate the order: a busy machine hurts both alike
            for variant in (("ours", "plain") if r % 2 == 0 else ("plain", "ours")):
                cmd = [sys.executable, __file__, "--variant", variant, "--work", work, "--models-dir",
                       args.models_dir, "--steps", str(args.steps), "--warmup", str(args.warmup),
                       "--checkpointing", args.checkpointing]
                cmd += ["--full-size"] if args.full_size else []
                cmd += ["--smoke"] if args.smoke else []
                cmd += ["--threads", str(args.threads)] if args.threads else []
                proc = subprocess.run(cmd, capture_output=True, text=True)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode != 0 or not lines:
                    print(proc.stderr[-4000:], file=sys.stderr)
                    return 1
                runs[variant].append(json.loads(lines[-1][len("RESULT "):]))
        results = {}
        for variant, items in runs.items():
            best = dict(min(items, key=lambda x: x["s_per_step"]))
            best["s_per_step_rounds"] = [round(x["s_per_step"], 5) for x in items]
            best["peak_mem_mb"] = max(x["peak_mem_mb"] for x in items)
            results[variant] = best
    import torch

    ours, plain = results["ours"], results["plain"]
    report = {
        "bench": "lora-train",
        "model": ("random SDXL UNet, SDXL structure, narrow channels" if args.smoke else "random-weight SDXL UNet")
        if args.full_size else "tiny demo SDXL",
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "steps_timed": args.steps,
        "warmup_steps": args.warmup,
        "ours": ours,
        "plain": plain,
        "speedup": plain["s_per_step"] / ours["s_per_step"] if ours["s_per_step"] else None,
        "memory_ratio": ours["peak_mem_mb"] / plain["peak_mem_mb"] if plain["peak_mem_mb"] else None,
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
