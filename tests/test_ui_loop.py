"""The app's one generate loop (`app.generate_loop`): the Portrait tab, the gradio
`/generate` endpoint and the HTTP API's jobs report the same steps and the same
results for the same request, and each stops its engine by its own way of
cancelling (the Cancel button, gradio closing the call, a job id)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import fast_request, wait_until

from pipelines.errors import Cancelled, ModelMissing
from pipelines.requests import GenerateRequest


class StepEngine:
    """Steps like the engine (on_step with latents, cancel checked after each
    step) and writes one PNG per image. With `lockstep`, each step waits until
    the front door has reported it (`reported`), so no step is skipped for a newer
    one and the progress sequences can be compared exactly. `steps` overrides the
    request's, as a speed mode or a method's recipe does in the real engine."""

    def __init__(self, out: Path, lockstep: bool = False, steps: int | None = None, step_s: float = 0.0):
        self.out, self.lockstep, self.steps, self.step_s = out, lockstep, steps, step_s
        self.reported = threading.Semaphore(0)
        self.calls: list[dict] = []

    def generate(self, req, on_step=None, cancel=None):
        import torch
        from PIL import Image

        from pipelines.engine import GeneratedImage, GenerateResult

        call = {"req": req, "steps_done": 0, "end": None}
        self.calls.append(call)
        steps = self.steps or req.steps
        images = []
        for i in range(req.count):
            for step in range(steps):
                time.sleep(self.step_s)
                on_step({"image_index": i, "step": step + 1, "steps": steps, "latents": torch.zeros(1, 4, 8, 8)})
                call["steps_done"] += 1
                while self.lockstep and not self.reported.acquire(timeout=0.01) and not cancel.is_set():
                    pass
                if cancel.is_set():
                    call["end"] = "cancelled"
                    raise Cancelled(f"cancelled after {i} of {req.count} images.")
            seed = req.seed + i
            path = self.out / f"likeness-{len(self.calls)}-{i}.png"
            Image.new("RGB", (8, 8), (seed, 0, 0)).save(path)
            recipe = {"seed": seed, "likeness": {"face_found": True, "mean": 0.5},
                      "request": {"prompt": req.prompt, "seed": seed}}
            images.append(GeneratedImage(path, seed, Image.open(path), recipe))
        call["end"] = "done"
        return GenerateResult(images=images, excluded=[], seconds=0.1)


class Reporter:
    """A gradio progress tracker stand-in: records each call; a step report lets
    a lockstep engine go on."""

    def __init__(self, engine: StepEngine | None = None):
        self.engine, self.calls = engine, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.engine is not None and args and isinstance(args[0], tuple):
            self.engine.reported.release()

    def steps(self) -> list[tuple]:
        """(done, total), unit and the description less its ETA, of each step report."""
        return [(a[0], k.get("unit"), k["desc"].split(" · ETA")[0]) for a, k in self.calls if isinstance(a[0], tuple)]


def _front_doors(settings, engine=None, holder=None):
    """The Portrait tab and the `/generate` function on one engine holder and one cancel registry."""
    import gradio as gr

    from app.api import generate_endpoint
    from app.jobs import CancelRegistry, EngineHolder
    from app.portrait import PortraitTab
    from app.requests_map import api_field_specs
    from app.widgets import build_portrait

    holder = holder or EngineHolder(settings, factory=lambda s: engine)
    cancels = CancelRegistry()
    with gr.Blocks():
        w = build_portrait(settings)
    specs = api_field_specs()
    return PortraitTab(settings, holder, cancels, w), generate_endpoint(settings, holder, cancels, specs), specs


def _api_call(endpoint, specs, progress, seed=7, count=2, **fields):
    """Call the `/generate` function as gradio does: every input, then the request and the tracker."""
    extra = [fields.get(name, default) for name, _, default in specs]
    return endpoint([], "a portrait", "", "none", seed, count, *extra, None, progress)


@pytest.mark.parametrize("engine_steps", [None, 2], ids=["request-steps", "engine-own-steps"])
def test_portrait_tab_and_api_endpoint_report_the_same_steps_and_results(demo_settings, tmp_path, engine_steps):
    import gradio as gr

    engine = StepEngine(tmp_path, lockstep=True, steps=engine_steps)
    tab, endpoint, specs = _front_doors(demo_settings, engine)
    req = GenerateRequest(prompt="a portrait", method="none", seed=7, count=2, steps=3, width=64, height=64)

    tab_progress = Reporter(engine)
    tab_updates = list(tab.run(req, None, tab_progress))
    api_progress = Reporter(engine)
    api_updates = list(_api_call(endpoint, specs, api_progress, steps=3, width=64, height=64))

    # the engine got the same request from both doors
    portrait_req, api_req = engine.calls[0]["req"], engine.calls[1]["req"]
    assert api_req.model_dump(include={"prompt", "method", "seed", "count", "steps", "width", "height"}) == \
        portrait_req.model_dump(include={"prompt", "method", "seed", "count", "steps", "width", "height"})
    # every step reported, counted in the steps the engine runs (2 when it overrides the request's 3)
    steps = engine_steps or 3
    expected = [((i * steps + s, 2 * steps), "steps", f"image {i + 1}/2 · step {s}/{steps}")
                for i in range(2) for s in range(1, steps + 1)]
    assert tab_progress.steps() == expected
    assert api_progress.steps() == expected
    assert tab_progress.calls[0] == ((0,), {"desc": "loading models…"})  # the tab's own first line
    # the API yields at every step (where gradio can close it), then (gallery, results)
    assert api_updates[:-1] == [(gr.skip(), gr.skip())] * len(expected)
    gallery, results = api_updates[-1]
    w = tab.w
    final = tab_updates[-1]
    assert [c for _, c in final[w.results]] == [c for _, c in gallery] == ["seed 7 · likeness 0.50",
                                                                            "seed 8 · likeness 0.50"]
    assert [r["seed"] for r in results] == [g["seed"] for g in final[w.results_state]] == [7, 8]
    assert [r["likeness"] for r in results] == [0.5, 0.5]
    assert final[w.status].startswith("**Done**: 2 image(s)")
    assert not tab.cancels.running("anonymous")


def test_http_job_reports_the_same_steps_and_results(demo_settings, tmp_path):
    from app.http_api import Job, JobStore
    from app.jobs import EngineHolder

    engine = StepEngine(tmp_path, steps=2)
    store = JobStore(EngineHolder(demo_settings, factory=lambda s: engine))
    job = Job(GenerateRequest(prompt="a portrait", method="none", seed=7, count=2, steps=3), tmp_path / "job")
    (tmp_path / "job").mkdir()
    store.submit(job)
    wait_until(lambda: job.state in ("done", "failed", "cancelled"), timeout=10)
    assert job.state == "done", job.error
    p = job.progress
    assert (p.image, p.count, p.step, p.steps) == (2, 2, 2, 2)  # the engine's own 2 steps, as in the tab
    assert p.eta_seconds == 0.0
    assert [im.seed for im in job.images] == [7, 8] and [im.likeness for im in job.images] == [0.5, 0.5]
    assert not (tmp_path / "job").exists()  # the job's private upload folder is gone


def test_each_front_door_cancels_its_own_way(demo_settings, tmp_path):
    engine = StepEngine(tmp_path, step_s=0.01)
    tab, endpoint, specs = _front_doors(demo_settings, engine)
    req = GenerateRequest(prompt="a portrait", method="none", seed=7, count=2, steps=150)

    # Portrait tab: the Cancel button sets the session's event; the tab says "Stopped"
    gen = tab.run(req, None, lambda *a, **k: None)
    next(gen)
    assert next(gen)[tab.w.preview] is not None  # sampling has started
    assert tab.cancel(None).startswith("Cancelling")
    rest = list(gen)
    assert "**Stopped**: cancelled after 0 of 2 images." in rest[-1][tab.w.status]
    assert engine.calls[0]["end"] == "cancelled" and engine.calls[0]["steps_done"] < 150

    # gradio API: gradio closes the call's generator; the engine stops within a step
    call = _api_call(endpoint, specs, lambda *a, **k: None, steps=150)
    next(call)
    assert tab.cancels.running("anonymous")
    call.close()
    assert not tab.cancels.running("anonymous")
    assert wait_until(lambda: len(engine.calls) == 2 and engine.calls[1]["end"] == "cancelled", timeout=5)
    assert engine.calls[1]["steps_done"] < 150

    # HTTP API: cancel by job id (its event), the job ends "cancelled" with no images
    from app.http_api import Job, JobStore
    from app.jobs import EngineHolder

    store = JobStore(EngineHolder(demo_settings, factory=lambda s: engine))
    job = Job(req, tmp_path / "job")
    (tmp_path / "job").mkdir()
    store.submit(job)
    assert wait_until(lambda: job.progress.step >= 1, timeout=10)
    assert job.state == "running"
    job.cancel.set()
    assert wait_until(lambda: job.state == "cancelled", timeout=5), job.state
    assert job.images == [] and engine.calls[2]["end"] == "cancelled" and engine.calls[2]["steps_done"] < 150


def test_an_engine_that_cannot_load_is_one_user_error_at_both_doors(demo_settings):
    import gradio as gr

    from app.generate_loop import Finished, generate_loop
    from app.jobs import EngineHolder

    def no_engine(settings):
        raise ModelMissing("sdxl-base is not downloaded: run `launch.py models download sdxl-base`.")

    holder = EngineHolder(demo_settings, factory=no_engine)
    tab, endpoint, specs = _front_doors(demo_settings, holder=holder)
    req = GenerateRequest(prompt="a portrait", method="none", seed=7, steps=2)
    with pytest.raises(gr.Error, match="sdxl-base is not downloaded"):
        list(tab.run(req, None, lambda *a, **k: None))
    with pytest.raises(gr.Error, match="sdxl-base is not downloaded"):
        list(_api_call(endpoint, specs, lambda *a, **k: None, steps=2))
    assert not tab.cancels.running("anonymous")
    updates = list(generate_loop(holder, req, threading.Event()))
    assert len(updates) == 1 and isinstance(updates[0], Finished) and isinstance(updates[0].error, ModelMissing)


def test_the_tiny_engine_makes_the_same_image_through_both_doors(demo_settings):
    """The real engine on the tiny demo models: same request, same pixels, and
    both doors end on the last step."""
    from PIL import Image

    from app.jobs import EngineHolder

    tab, endpoint, specs = _front_doors(demo_settings, holder=EngineHolder(demo_settings))
    fast = fast_request(method="none")
    tab_progress, api_progress = Reporter(), Reporter()
    final = list(tab.run(GenerateRequest(**fast), None, tab_progress))[-1]
    fields = {k: v for k, v in fast.items() if k not in ("prompt", "method", "seed")}
    gallery, results = list(_api_call(endpoint, specs, api_progress, seed=fast["seed"], count=1, **fields))[-1]
    (tab_path, _), = final[tab.w.results]
    (api_path, _), = gallery
    assert tab_path != api_path and results[0]["seed"] == fast["seed"]
    assert np.array_equal(np.asarray(Image.open(tab_path)), np.asarray(Image.open(api_path)))
    last = ((2, 2), "steps", "image 1/1 · step 2/2")
    assert tab_progress.steps()[-1] == api_progress.steps()[-1] == last


def test_the_eta_is_timed_in_the_job_not_by_a_slow_consumer(demo_settings, tmp_path):
    """A consumer busy for a while (a preview, a slow connection) gets the newest
    step only; the clock still saw every step at its real time."""
    from app.generate_loop import Finished, Step, generate_loop
    from app.jobs import EngineHolder

    engine = StepEngine(tmp_path, step_s=0.005)
    req = GenerateRequest(prompt="a portrait", method="none", seed=7, steps=150, count=2)
    seen = []
    for update in generate_loop(EngineHolder(demo_settings, factory=lambda s: engine), req, threading.Event()):
        if isinstance(update, Step):
            seen.append(update)
            if len(seen) <= 2:
                time.sleep(0.3)  # 0.3 s per consumed step, against about 0.005 s per engine step
    assert isinstance(update, Finished) and update.result.images
    assert len(seen) < 300 and seen[-1].done == seen[-1].total == 300  # steps were skipped, not the last
    late = next(s for s in seen[2:] if s.eta is not None and s.done < 300)
    # timed by the consumer, the mean step would be about 0.3 s and the ETA about 0.3 s x steps left
    assert late.eta < 0.1 * (late.total - late.done), (late.done, late.eta)


def test_a_finished_job_is_never_marked_cancelled(demo_settings, tmp_path):
    """`Finished` comes after the job's thread ended: a consumer that stops right
    after it (the tab after "Stopped", the API after its result) cannot set the
    job's cancel event, which the HTTP API reads to tell "cancelled" from "done"."""
    from app.generate_loop import Finished, generate_loop
    from app.jobs import EngineHolder

    engine = StepEngine(tmp_path)
    cancel = threading.Event()
    loop = generate_loop(EngineHolder(demo_settings, factory=lambda s: engine),
                         GenerateRequest(prompt="a portrait", method="none", seed=7, steps=2), cancel)
    end = next(u for u in loop if isinstance(u, Finished))
    loop.close()
    assert end.error is None and not cancel.is_set()
    assert np.asarray(end.result.images[0].image)[0, 0].tolist() == [7, 0, 0]
