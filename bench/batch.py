"""Batch throughput: items per minute of our batch runner (`pipelines.batch`: one
resident Engine, stable ids, manifest lines fsync'd per item, atomic PNG writes
with recipes) against a plain loop of diffusers `StableDiffusionXLPipeline`
calls on the same model files, same scheduler, steps, size and seeds, in one run.
Prints one JSON object; `ratio` = runner / plain loop (target >= 1.0).

    python bench/batch.py                     # tiny demo models, 64x64, 2 steps (CPU is fine)
    python bench/batch.py --full-size         # published-size SDXL (random weights), 1024x1024,
                                              # 30 steps, float16: run on a GPU (builds ~16 GB of packs)
    python bench/batch.py --items 16 --rounds 3 --models-dir /data/likeness-models

Both sides load their models before the clock starts and make one untimed
warm-up image; the loads are reported separately. Rounds alternate which side
goes first; the best round of each side is reported. The comparison is for the
base model (method "none"): a plain diffusers loop has no identity step.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PROMPT = "a studio portrait photo of a person, soft light"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full-size", action="store_true",
                   help="published-size SDXL with random weights (bench/fullsize.py), 1024x1024, 30 steps; needs a GPU")
    p.add_argument("--items", type=int, default=None, help="items per round (default 6 tiny, 8 full size)")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per side, alternating order (default 2)")
    p.add_argument("--steps", type=int, default=None, help="default 2 tiny, 30 full size")
    p.add_argument("--size", type=int, default=None, help="width = height (default 64 tiny, 1024 full size)")
    p.add_argument("--sampler", default="dpmpp_2m_karras")
    p.add_argument("--models-dir", help="model store (default: a temporary folder, packs built there)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    args = p.parse_args(argv)
    args.items = args.items or (8 if args.full_size else 6)
    args.steps = args.steps or (30 if args.full_size else 2)
    args.size = args.size or (1024 if args.full_size else 64)
    return args


def make_store(args, models_dir: Path):
    from pipelines.settings import load_settings
    from pipelines.stores import open_store

    settings = load_settings(models_dir=models_dir, outputs_dir=models_dir.parent / "outputs", device=args.device,
                             dtype=args.dtype, demo=True, accept_research_licenses=True)
    catalog = None
    if args.full_size:
        from bench.fullsize import fullsize_catalog

        catalog = fullsize_catalog()
    return settings, open_store(settings, catalog=catalog)


def write_job(folder: Path, args) -> Path:
    job = {
        "name": "bench",
        "items": [{
            "prompt": PROMPT, "method": "none", "seeds": list(range(1, args.items + 1)),
            "overrides": {"steps": args.steps, "width": args.size, "height": args.size,
                          "sampler": args.sampler, "vae": "base"},
        }],
    }
    path = folder / "bench-job.json"
    path.write_text(json.dumps(job, indent=1))
    return path


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# ------------------------------------------------------------------- our runner
class RunnerSide:
    name = "batch_runner"

    def __init__(self, settings, store, job_path: Path, work: Path):
        from pipelines.batch import load_job
        from pipelines.engine import Engine

        self.job = load_job(job_path, settings.profile)
        self.work = work
        self.settings = settings
        t0 = time.perf_counter()
        self.engine = Engine(settings.model_copy(update={"outputs_dir": work}), store=store)
        req = self.job.items[0].request
        self.engine.pipeline(req.base_model or self.engine.default_base(req.method), req.vae)
        self.engine.generate(req.model_copy(update={"out_dir": str(work / "warmup")}))  # warm-up
        _sync(self.engine.device)
        self.load_seconds = time.perf_counter() - t0
        self.device = self.engine.device
        self.rounds = 0

    def run_round(self) -> float:
        from pipelines.batch import run_job

        self.rounds += 1
        out = self.work / f"round-{self.rounds}"
        t0 = time.perf_counter()
        report = run_job(self.job, self.settings, out, engine=self.engine, stream=io.StringIO(), out=io.StringIO())
        _sync(self.device)
        seconds = time.perf_counter() - t0
        if report.exit_code != 0 or report.ok != len(self.job.items):
            raise SystemExit(f"batch runner failed: {[r.get('error') for r in report.records.values()][:3]}")
        return seconds


# ------------------------------------------------------------ plain diffusers loop
class LoopSide:
    name = "plain_diffusers_loop"

    def __init__(self, settings, store, args, work: Path):
        import diffusers
        import torch

        from pipelines.samplers import make_scheduler

        self.args, self.work = args, work
        self.device = settings.resolve_device()
        dtype = settings.resolve_dtype(self.device)
        t0 = time.perf_counter()
        entry = store.catalog.get("sdxl-base")
        pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(
            store.ensure("sdxl-base"), variant=entry.variant, torch_dtype=dtype, local_files_only=True,
            use_safetensors=True,
        )
        pipe.scheduler = make_scheduler(args.sampler, dict(pipe.scheduler.config))
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.device)
        self.torch = torch
        self._call(0)  # warm-up
        _sync(self.device)
        self.load_seconds = time.perf_counter() - t0
        self.rounds = 0

    def _call(self, seed: int):
        a = self.args
        return self.pipe(
            prompt=PROMPT, num_inference_steps=a.steps, guidance_scale=5.0, width=a.size, height=a.size,
            generator=self.torch.Generator("cpu").manual_seed(seed), output_type="pil",
        ).images[0]

    def run_round(self) -> float:
        self.rounds += 1
        out = self.work / f"round-{self.rounds}"
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        for seed in range(1, self.args.items + 1):
            self._call(seed).save(out / f"{seed}.png")
        _sync(self.device)
        return time.perf_counter() - t0


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="likeness-bench-") as tmp:
        tmp = Path(tmp)
        models_dir = Path(args.models_dir).expanduser() if args.models_dir else tmp / "models"
        settings, store = make_store(args, models_dir)
        job_path = write_job(tmp, args)
        runner = RunnerSide(settings, store, job_path, tmp / "runner")
        loop = LoopSide(settings, store, args, tmp / "loop")
        times: dict[str, list[float]] = {runner.name: [], loop.name: []}
        for r in range(args.rounds):
            for side in ((runner, loop) if r % 2 == 0 else (loop, runner)):
                times[side.name].append(side.run_round())

    def summary(side) -> dict:
        best = min(times[side.name])
        return {
            "items_per_min": round(args.items / best * 60, 3),
            "best_round_seconds": round(best, 3),
            "round_seconds": [round(t, 3) for t in times[side.name]],
            "load_and_warmup_seconds": round(side.load_seconds, 3),
        }

    res_runner, res_loop = summary(runner), summary(loop)
    result = {
        "bench": "batch",
        "models": "full-size random weights" if args.full_size else "tiny demo models (random weights)",
        "device": runner.device,
        "method": "none",
        "items_per_round": args.items,
        "rounds": args.rounds,
        "steps": args.steps,
        "size": [args.size, args.size],
        "sampler": args.sampler,
        runner.name: res_runner,
        loop.name: res_loop,
        "ratio": round(res_runner["items_per_min"] / res_loop["items_per_min"], 3),
        "target_ratio": 1.0,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
