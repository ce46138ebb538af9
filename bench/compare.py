"""The engine against its hand-built baselines, timed side by side: the cold
starts, then each speed mode's table of methods (bench/generate.py's core).

Order of a speed mode (`time_speed`):

1. the plain pipeline of the mode: quality reuses the warm one from the cold
   start; a mode with a LoRA loads a fresh one and applies the mode by hand
   (bench/speed_setup.py), then one untimed call;
2. per method: the method's own mode where it publishes one, or a skip when the
   engine refuses the mode for it; its baseline (method none: the plain
   pipeline) is built, timed as `baseline_load_seconds`, and called once
   untimed; the engine's first call with the request is timed as
   `engine_first_call_seconds` (it loads what it needs) and not counted;
3. --repeats pairs of calls, baseline then engine, so clock drift and a busy
   machine hit both alike; the medians are the report's seconds;
4. one more engine call between peak-memory resets gives `peak_vram_gb`.

Only one baseline is alive at a time besides the plain pipeline: each is
dropped (and CUDA's cache emptied) before the next one loads.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

from bench.baselines import BASELINES, PlainSDXL
from bench.calls import SAMPLER, Ctx, speed_ctx
from bench.speed_setup import apply_speed, lora_path, method_mode
from bench.timing import free, peak_gb, ratio, reset_peak, round6, timed

TARGET = 1.05  # engine seconds / baseline seconds a method should stay within


@dataclass
class Sides:
    """Both sides, warm after their cold starts, and what timing them needs."""

    engine: object
    plain: PlainSDXL | None  # None once the speed tables are done
    ctx: Ctx
    store: object
    device: str
    repeats: int
    request: object  # request(method, speed) -> the engine's GenerateRequest
    first_call: dict[tuple, float] = field(default_factory=dict)  # (speed, method) -> engine's first call


@dataclass
class ColdStarts:
    sides: Sides
    plain_seconds: float  # from_pretrained + first image
    engine_seconds: float  # Engine(settings, store) + its first image
    method: str  # the method of the engine's first image


def cold_starts(prep, methods: list[str], speeds: list[str], request, repeats: int) -> ColdStarts:
    """Plain first, then the engine (both read the same files, already built on disk)."""
    from pipelines.engine import Engine

    device = prep.device
    holder: dict = {}
    plain_cold = timed(lambda: holder.setdefault("plain", PlainSDXL(prep.ctx))(), device)
    first = methods[0]
    first_call: dict[tuple, float] = {}

    def cold_engine():
        holder["engine"] = Engine(prep.settings, store=prep.store)
        t = time.perf_counter()
        holder["engine"].generate(request(first, speeds[0]))
        first_call[(speeds[0], first)] = time.perf_counter() - t

    engine_cold = timed(cold_engine, device)
    sides = Sides(engine=holder["engine"], plain=holder["plain"], ctx=prep.ctx, store=prep.store, device=device,
                  repeats=repeats, request=request, first_call=first_call)
    return ColdStarts(sides=sides, plain_seconds=plain_cold, engine_seconds=engine_cold, method=first)


@dataclass
class SpeedTable:
    """One speed mode's results: the report's `speeds[s]` row, and what it skipped."""

    row: dict
    skipped: list[str]
    labels: dict[str, str]  # method -> its baseline's label


def _speed_plain(sides: Sides, mode):
    """Step 1: the plain pipeline running `mode`, warm."""
    if mode.lora is None:
        return sides.plain
    free(sides.device)
    plain = PlainSDXL(speed_ctx(sides.ctx, mode))
    apply_speed(plain.pipe, mode, lora_path(sides.store, mode))
    timed(plain, sides.device)  # warm-up
    return plain


def _build_baseline(sides: Sides, method: str, mode) -> tuple[object, float]:
    """Step 2: `method`'s baseline running `mode`, warm, and the seconds its build took."""
    built = {}

    def build():
        b = BASELINES[method](speed_ctx(sides.ctx, mode))
        apply_speed(b.pipe, mode, lora_path(sides.store, mode))
        built["base"] = b

    seconds = timed(build, sides.device)
    timed(built["base"], sides.device)  # warm-up
    return built["base"], seconds


def time_speed(sides: Sides, speed: str, methods: list[str]) -> SpeedTable:
    """Steps 1-4 for speed mode `speed` (see the module docstring)."""
    from pipelines.speed import SPEED_MODES

    device, engine = sides.device, sides.engine
    mode = SPEED_MODES[speed]
    sctx = speed_ctx(sides.ctx, mode)
    plain = _speed_plain(sides, mode)
    samples_engine: dict[str, list[float]] = {}
    samples_base: dict[str, list[float]] = {}
    own_modes: dict[str, dict] = {}
    base_load: dict[str, float] = {}
    peaks: dict[str, float | None] = {}
    skipped: list[str] = []
    labels: dict[str, str] = {}
    base = None
    for m in methods:
        # a method's own few-step mode where it has one (Arc2Face turbo: LCM-LoRA SD1.5)
        mmode, why = method_mode(speed, m)
        if mmode is None:
            skipped.append(why)
            continue
        if mmode is not mode:
            mctx = speed_ctx(sides.ctx, mmode)
            own_modes[m] = {"lora": mmode.lora, "sampler": mmode.sampler, "steps": mctx.steps, "cfg": mctx.cfg}
        if m == "none":
            base = plain
        else:
            base = None  # the previous baseline goes before this one loads
            free(device)
            base, base_load[m] = _build_baseline(sides, m, mmode)
        labels[m] = BASELINES[m].label
        req = sides.request(m, speed)
        if (speed, m) not in sides.first_call:
            sides.first_call[(speed, m)] = timed(lambda: engine.generate(req), device)  # warm-up (loads what it needs)
        eng, bas = [], []
        for _ in range(sides.repeats):
            bas.append(timed(base, device))
            eng.append(timed(lambda: engine.generate(req), device))
        samples_engine[m], samples_base[m] = eng, bas
        reset_peak(device)
        engine.generate(req)
        peaks[m] = peak_gb(device)
    samples_plain = samples_base.get("none") or [timed(plain, device) for _ in range(sides.repeats)]
    plain_s = statistics.median(samples_plain)
    engine_s = {m: statistics.median(v) for m, v in samples_engine.items()}
    base_s = {m: statistics.median(v) for m, v in samples_base.items()}
    row = {
        "lora": mode.lora,
        "sampler": mode.sampler or SAMPLER,
        "steps": sctx.steps,
        "cfg": sctx.cfg,
        "method_modes": own_modes,  # methods running their own few-step mode here
        "plain_seconds": round6(plain_s),
        "engine_seconds": {m: round6(v) for m, v in engine_s.items()},
        "ratio": {m: ratio(v, plain_s) for m, v in engine_s.items()},
        "baseline_seconds": {m: round6(v) for m, v in base_s.items()},
        "ratio_vs_baseline": {m: ratio(engine_s[m], base_s[m]) for m in engine_s},
        "meets_target": {m: engine_s[m] <= TARGET * base_s[m] for m in engine_s},
        "peak_vram_gb": {m: peaks.get(m) for m in engine_s},
        "engine_first_call_seconds": {m: round6(v) for (s2, m), v in sides.first_call.items() if s2 == speed},
        "baseline_load_seconds": {m: round6(v) for m, v in base_load.items()},
        "samples": {"plain": [round6(x) for x in samples_plain],
                    "engine": {m: [round6(x) for x in v] for m, v in samples_engine.items()},
                    "baseline": {m: [round6(x) for x in v] for m, v in samples_base.items()}},
    }
    return SpeedTable(row=row, skipped=skipped, labels=labels)
