#!/usr/bin/env python
"""Generation speed: the Likeness engine against plain diffusers, same models, steps
and size, in one run. Prints ONE JSON object on stdout (everything else goes to
stderr).

Measured, warm (after one warm-up call; median of --repeats calls, baseline and
engine calls interleaved so clock drift hits both alike):

- `plain_seconds`: a plain diffusers `StableDiffusionXLPipeline.from_pretrained` of
  the same folder (no Likeness code in its path), one image per call;
- `engine_seconds[m]`: `Engine.generate` with method m (none, faceid, instantid;
  also pulid, arc2face with --methods), one image per call, everything it does
  included (conditioning, the pipeline, the PNG with its recipe, the likeness
  score);
- `ratio[m]` = engine / plain;
- `baseline_seconds[m]`: the fair baseline for m, written by hand with diffusers'
  public API (bench/baselines.py describes each). Arc2Face runs `turbo` as its
  README's LCM-LoRA mode (lcm-lora-sdv1-5, LCM, 2 steps, cfg 1) and has no `fast`
  (skipped);
- `ratio_vs_baseline[m]` = engine / baseline; the target is <= 1.05 (`meets_target`);
- `cold_start_seconds`: `Engine(settings, store)` + its first image (models already
  built on disk); `plain_cold_start_seconds`: from_pretrained + first image.

Speed modes (`--speeds`, default all three): each mode is timed against plain
diffusers running the same mode by hand: `load_lora_weights` of the same distilled
LoRA (beside FaceID's own adapter), the mode's scheduler class and config, steps and
cfg (`speeds[s]`). Quality uses --steps/--cfg and Euler on both sides.

Also measured: `score_seconds_per_image` (the likeness score alone; in the engine
it runs on a worker thread, overlapping the next image's denoising),
`batch` (-n N as one batched call vs one call per image, seconds per image; on a
CPU batching is off by default and shown for reference), `--compile` (torch.compile
of the UNet: the first call, then calls that switch method and speed, and how many
times dynamo compiled a new graph during them), and `--device-report`: GPU name,
dtype, peak VRAM and seconds per 1024² image per mode and method (a table on
stderr, the same numbers under `device_report`).

Models: tiny demo packs (random weights, CPU-friendly), or with `--full-size`
full-size SDXL + IdentityNet + FaceID Plus v2 / InstantID adapters + CLIP ViT-H with
random weights in the published layouts (`bench/fullsize.py`): the compute of the
real models, for a GPU. `--full-size --dry-run` only counts parameters (meta device).

    python bench/generate.py --steps 4 --width 128 --height 128
    python bench/generate.py --full-size --steps 30 --width 1024 --height 1024
    python bench/generate.py --full-size --device-report     # unattended on a GPU, < 10 min

Where each part lives (this file: the command line, the order of a run, the report):

- bench/calls.py: the one call both sides make (prompt, seed, sizes, scales);
- bench/prepare.py: the models folder, settings, model builds, baseline folders;
- bench/baselines.py: the hand-built diffusers baseline of each method;
- bench/speed_setup.py: plain diffusers running a speed mode by hand;
- bench/compare.py: the cold starts and each speed mode's interleaved timing;
- bench/engine_costs.py: score, batching, torch.compile and step costs;
- bench/device_report.py: the --device-report table;
- bench/timing.py: the clock, device sync, peak memory, rounding.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from bench.baselines import BASELINES, Arc2FaceBaseline, PuLIDBaseline  # noqa: E402, F401  (the baseline table)
from bench.calls import SAMPLER, engine_request  # noqa: E402
from bench.compare import TARGET, cold_starts, time_speed  # noqa: E402
from bench.device_report import device_name, device_report  # noqa: E402
from bench.engine_costs import batch_gain, compile_run, score_cost, step_costs  # noqa: E402
from bench.prepare import preload_imports, prepare_run, warm_device  # noqa: E402
from bench.timing import free, round6, stdout_to_stderr  # noqa: E402

METHODS = ("none", "faceid", "instantid")  # the default set
ALL_METHODS = (*METHODS, "pulid", "arc2face")  # pulid, arc2face: opt-in with --methods
SPEEDS = ("quality", "fast", "turbo")


# ------------------------------------------------------------------- arguments
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/generate.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, help="denoising steps (default 4 tiny, 30 full-size)")
    p.add_argument("--width", type=int, help="image width, multiple of 8 (default 128 tiny, 1024 full-size)")
    p.add_argument("--height", type=int, help="image height, multiple of 8 (default 128 tiny, 1024 full-size)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per configuration after the warm-up (median)")
    p.add_argument("--device", choices=["auto", "cuda", "mps", "cpu"], default="auto")
    p.add_argument("--dtype", choices=["auto", "float16", "bfloat16", "float32"], default="auto")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated engine methods to time (none, faceid, instantid; also pulid, "
                        "arc2face)")
    p.add_argument("--cfg", type=float, default=5.0, help="guidance scale (both sides)")
    p.add_argument("--full-size", action="store_true", help="full-size random-weight models (GPU)")
    p.add_argument("--dry-run", action="store_true",
                   help="with --full-size: build the configs on the meta device and print parameter counts only")
    p.add_argument("--models-dir", type=Path,
                   help="models dir (default $LIKENESS_MODELS_DIR, else a temp dir); "
                        "full-size packs go to <dir>/bench-fullsize")
    p.add_argument("--photo", type=Path, help="a photo with one face (default: skimage's astronaut)")
    p.add_argument("--threads", type=int, help="torch CPU threads (torch.set_num_threads)")
    p.add_argument("--speeds", default=",".join(SPEEDS), help="comma-separated speed modes (quality, fast, turbo)")
    p.add_argument("--batch", type=int, default=4, help="images for the -n batching measurement (0: skip)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the UNet across switches")
    p.add_argument("--step-costs", action=argparse.BooleanOptionalAction, default=True,
                   help="time upscale, face detail, template and two people against plain diffusers (bench/steps.py)")
    p.add_argument("--device-report", action="store_true",
                   help="print GPU name, dtype, peak VRAM and s per 1024² image per mode and method (stderr)")
    args = p.parse_args(argv)
    speeds = [s.strip() for s in args.speeds.split(",") if s.strip()]
    if not speeds or any(s not in SPEEDS for s in speeds):
        p.error(f"--speeds: choose from {', '.join(SPEEDS)}")
    args.speeds = list(dict.fromkeys(speeds))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad or not methods:
        p.error(f"--methods: {', '.join(bad) or '(empty)'} unknown; choose from {', '.join(ALL_METHODS)}")
    if args.full_size and {"pulid", "arc2face"} & set(methods):
        p.error("--methods pulid/arc2face: --full-size has no full-size random-weight packs for them yet; "
                "time them with the tiny packs or real weights (--models-dir)")
    args.methods = list(dict.fromkeys(methods))
    if args.dry_run and not args.full_size:
        p.error("--dry-run counts the full-size models' parameters; use it with --full-size")
    full = args.full_size
    args.steps = args.steps or (30 if full else 4)
    args.width = args.width or (1024 if full else 128)
    args.height = args.height or (1024 if full else 128)
    for name in ("width", "height"):
        v = getattr(args, name)
        if v < 64 or v % 8:
            p.error(f"--{name} {v}: use a multiple of 8, at least 64")
    if args.steps < 1 or args.repeats < 1:
        p.error("--steps and --repeats must be at least 1")
    return args


# ------------------------------------------------------------------- the run
NOTES = [
    "engine seconds are whole Engine.generate calls (one image): conditioning, the diffusers call, "
    "the PNG with its recipe and the likeness score",
    "speed modes: the baseline loads the same LoRA with load_lora_weights (unfused, as the engine) "
    "and sets the mode's scheduler; resident speed LoRAs of other modes are inactive in the engine",
    "face analysis and likeness scoring use the tiny demo insightface packs in both modes",
    "cold starts read models already built on disk (warm file cache); build_seconds is the pack build",
    "ratios are computed from unrounded medians",
]
TINY_NOTE = ("tiny models: fixed per-image costs (PNG, scoring) weigh far more than at full "
             "size; the 1.05 target is meant for --full-size on a GPU")


def run(args) -> dict:
    """Order of a run: set up and build every model (bench/prepare.py); cold starts,
    plain first; each speed mode's table (bench/compare.py); the engine's other
    costs (bench/engine_costs.py); the report."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="likeness-bench-"))
    try:
        prep = prepare_run(args, work)
        device = prep.device

        def request(method: str, speed: str = "quality", count: int = 1):
            return engine_request(prep.ctx, method, speed, count)

        preload_imports()
        warm_device(device, prep.dtype)
        cold = cold_starts(prep, args.methods, args.speeds, request, args.repeats)
        tables = {s: time_speed(cold.sides, s, args.methods) for s in args.speeds}
        engine = cold.sides.engine
        cold.sides.plain = None  # the plain pipeline goes before the engine's other costs are measured
        free(device)
        extra = {
            "score_seconds_per_image": score_cost(engine, args, request),
            "batch": batch_gain(engine, args, request) if args.batch > 1 else None,
            "compile": compile_run(prep.settings, prep.store, args, request, device) if args.compile else None,
            "step_costs": step_costs(engine, prep.ctx, args, request) if args.step_costs else None,
        }
        report = build_report(args, prep, cold, tables, extra)
        if args.device_report:
            report["device_report"] = device_report(report)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_report(args, prep, cold, tables: dict, extra: dict) -> dict:
    """The JSON report: the run's settings, the first speed's numbers at the top
    level (quality when timed), every speed under `speeds`, then the extras."""
    import diffusers
    import torch

    results = {s: t.row for s, t in tables.items()}
    labels: dict[str, str] = {}
    for t in tables.values():
        labels.update(t.labels)
    q = results.get("quality") or results[args.speeds[0]]
    return {
        "models": prep.label,
        "device": prep.device,
        "device_name": device_name(prep.device),
        "dtype": str(prep.dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "steps": args.steps,
        "width": args.width,
        "height": args.height,
        "cfg": args.cfg,
        "sampler": SAMPLER,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "vae": "sdxl-vae-fp16-fix" if prep.use_fix_vae else "sdxl-base vae",
        "methods": list(args.methods),
        "speeds_timed": list(args.speeds),
        # the first speed's numbers (quality when timed) at the top level, as before
        "plain_seconds": q["plain_seconds"],
        "engine_seconds": q["engine_seconds"],
        "ratio": q["ratio"],
        "baseline_seconds": q["baseline_seconds"],
        "ratio_vs_baseline": q["ratio_vs_baseline"],
        "target": TARGET,
        "meets_target": q["meets_target"],
        "samples": q["samples"],
        "speeds": results,
        **extra,
        "baselines": labels,
        "skipped": [x for t in tables.values() for x in t.skipped],
        "cold_start_seconds": round6(cold.engine_seconds),
        "cold_start_method": cold.method,
        "plain_cold_start_seconds": round6(cold.plain_seconds),
        "engine_first_call_seconds": q["engine_first_call_seconds"],
        "baseline_load_seconds": q["baseline_load_seconds"],
        "build_seconds": round6(prep.build_seconds),
        "notes": list(NOTES) + ([] if args.full_size else [TINY_NOTE]),
    }


def dry_run() -> dict:
    import diffusers
    import torch

    from bench import fullsize

    report = fullsize.parameter_report()
    return {
        "models": fullsize.MODELS_LABEL,
        "dry_run": True,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "parameters": {k: v["parameters"] for k, v in report.items()},
        "unet_parameters": report["unet"]["parameters"],
        "total_parameters": sum(v["parameters"] for v in report.values()),
        "files": report,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    from pipelines.errors import LikenessError

    try:
        with stdout_to_stderr():
            report = dry_run() if args.dry_run else run(args)
    except LikenessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
