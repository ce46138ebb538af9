"""The one generate loop of the app's front doors: the Portrait tab, the gradio
`/generate` endpoint and the HTTP API's jobs all run a typed `GenerateRequest`
on the app's engine through `generate_loop`, and differ only in what they show.

Order of a run:
 1. `run_job` starts a worker thread; it takes `ENGINE_LOCK` (one engine job at
    a time in this process), refuses a job already cancelled while it waited,
    then gets the engine from the `EngineHolder` (the first job loads it, so a
    loading error is reported like any other error) and calls `on_start`.
 2. The engine calls back once per sampling step. The callback ticks the step
    clock in the worker thread, at the step's real time, and hands a `Step`
    (image, step, done/total, ETA, the engine's step info) to the consumer.
    A consumer that is busy gets only the newest step when it asks again; the
    clock has seen every step, so a slow consumer does not skew the ETA.
 3. The consumer gets each `Step` after `progress((done, total), desc=...,
    unit="steps")` was reported, then one `Finished` (the result, or the error;
    `Cancelled` when stopped), last, after the worker has let go of the engine.

Cancel, the two ways the front doors need:
- by event: whoever holds the job's cancel `Event` sets it (the Cancel button
  through `CancelRegistry`, the HTTP API by job id); the engine stops within a
  step and the consumer gets `Finished(error=Cancelled(...))`.
- by closing: gradio stops a call it no longer serves (a client's cancel, a
  closed tab) by closing the endpoint's generator at a `yield`. Closing the loop
  sets the job's cancel event, so the engine stops at its next step check; the
  closer does not wait (gradio closes on its event loop, which must not block).
  So a gradio event must yield while the job runs: the `/generate` endpoint
  yields an empty update at every `Step`, the Portrait tab a live preview.
Nothing else sets the job's cancel event: `Finished` comes after the job
thread ended, so a consumer that returns after it cannot cancel a finished job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Any

from pipelines.errors import Cancelled
from pipelines.requests import GenerateRequest

from .jobs import CancelRegistry, EngineHolder, run_job
from .progress import StepClock, describe_step


@dataclass(frozen=True)
class Step:
    """One finished sampling step of a running job."""

    image_index: int  # 0-based index of the image being sampled
    images: int  # images in the job (the request's count)
    step: int  # 1-based step within this image
    steps: int  # steps per image, as the engine runs them (a speed mode or a method's recipe may change them)
    done: int  # steps finished over all images
    total: int
    eta: float | None  # seconds left; None until two steps were timed
    info: dict = field(repr=False)  # the engine's step info: latents, decode_preview

    @property
    def text(self) -> str:
        return describe_step(self.image_index, self.images, self.step, self.steps, self.eta)


@dataclass(frozen=True)
class Finished:
    """The end of a job: its result, or the error that ended it."""

    result: Any = None  # pipelines.engine.GenerateResult when there is no error
    error: BaseException | None = None

    @property
    def cancelled(self) -> bool:
        return isinstance(self.error, Cancelled)


class _Stepper:
    """The engine's step callback: keeps the step clock (in the worker thread)
    and passes each step on as a `Step`. The clock restarts when the engine runs
    another number of steps per image than it counted with."""

    def __init__(self, images: int, send: Callable[[Step], None]):
        self.images = images
        self.send = send
        self.clock: StepClock | None = None

    def __call__(self, info: dict) -> None:
        steps = int(info["steps"])
        if self.clock is None or self.clock.steps != steps:
            self.clock = StepClock(self.images, steps)
        index, step = int(info["image_index"]), int(info["step"])
        self.clock.tick(index, step)
        self.send(Step(index, self.images, step, steps, self.clock.done, self.clock.total, self.clock.eta(), info))


def generate_loop(holder: EngineHolder, req: GenerateRequest, cancel: threading.Event, *,
                  progress: Callable[..., Any] | None = None,
                  on_start: Callable[[], None] | None = None) -> Iterator[Step | Finished]:
    """Run `req` on the holder's engine; yield a `Step` per step the consumer
    keeps up with, then one `Finished`. `progress` is a gradio progress tracker
    (or any callable taking the same arguments); `on_start` is called in the
    job's thread once it holds the engine."""

    def call(on_step: Callable[[Any], None], job_cancel: threading.Event):
        engine = holder.get()
        if on_start is not None:
            on_start()
        return engine.generate(req, on_step=_Stepper(req.count, on_step), cancel=job_cancel)

    end: Finished | None = None
    with closing(run_job(call, cancel)) as events:
        for ev in events:
            if ev.kind == "step":
                step: Step = ev.data
                if progress is not None:
                    progress((step.done, step.total), desc=step.text, unit="steps")
                yield step
            elif ev.kind == "done":
                end = Finished(result=ev.data)
            else:
                end = Finished(error=ev.data)
    # `run_job` yields exactly one "done" or "error", last; the loop above ran to its end
    assert end is not None
    yield end


@contextmanager
def session_job(holder: EngineHolder, cancels: CancelRegistry, session: str, req: GenerateRequest,
                progress: Callable[..., Any] | None = None) -> Iterator[Iterator[Step | Finished]]:
    """`generate_loop` for a gradio event of browser session `session`: its cancel
    event is the session's in `cancels` (the Cancel button) while it runs. On exit,
    however the event ended (finished, an error, or closed by gradio), the loop is
    closed first, which stops a job still running, then the session lets go."""
    cancel = cancels.begin(session)
    updates = generate_loop(holder, req, cancel, progress=progress)
    try:
        yield updates
    finally:
        updates.close()
        cancels.end(session, cancel)
