"""The app's resident engine and running jobs.

- `EngineHolder`: one `Engine` per app, created on first use (never at import or
  when the UI is built), so the UI starts instantly and models load once.
- `CancelRegistry`: one cancel `Event` per browser session; the Cancel button
  sets it and the engine stops within one sampling step.
- `run_job`: runs an engine call in a worker thread and yields its step events
  and its result through a queue, so a gradio generator can stream progress
  and previews while the job runs.

How a job learns that nobody waits for it any more: every way gradio drops a
running event ends in the event's generator being closed at a `yield` (the
`/cancel` route that `gradio_client`'s `job.cancel()` posts cancels the event's
task, and gradio then closes its iterator; a closed tab or a dropped connection
marks the event dead, and gradio stops and closes the iterator after the next
output). Closing the `run_job` iterator sets the job's cancel event, so the engine
stops at its next step check. Endpoints therefore yield once per step (an empty
`gr.skip()` update where there is nothing to show), never run a job as a plain
function, which gradio cannot stop.

`ENGINE_LOCK`: a cancelled job still finishes its current step in its thread
after its event has ended and the next event has started; the lock makes the
next job wait for it instead of running beside it on the same engine and GPU.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pipelines.errors import Cancelled
from pipelines.memory import free_memory
from pipelines.settings import Settings


class EngineHolder:
    def __init__(self, settings: Settings, factory: Callable[[Settings], Any] | None = None):
        self.settings = settings
        self._factory = factory
        self._engine = None
        self._lock = threading.Lock()

    def get(self):
        with self._lock:
            if self._engine is None:
                if self._factory is not None:
                    self._engine = self._factory(self.settings)
                else:
                    from pipelines.engine import Engine

                    self._engine = Engine(self.settings)
            return self._engine

    @property
    def loaded(self) -> bool:
        return self._engine is not None


class CancelRegistry:
    """session id -> the cancel Event of that session's running job."""

    def __init__(self):
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def begin(self, session: str) -> threading.Event:
        ev = threading.Event()
        with self._lock:
            self._events[session] = ev
        return ev

    def end(self, session: str, ev: threading.Event) -> None:
        with self._lock:
            if self._events.get(session) is ev:
                del self._events[session]

    def cancel(self, session: str) -> bool:
        """Set the running job's event; False when this session runs nothing."""
        with self._lock:
            ev = self._events.get(session)
        if ev is None:
            return False
        ev.set()
        return True

    def running(self, session: str) -> bool:
        with self._lock:
            return session in self._events


# one engine job at a time in this process: there is one engine and one GPU
# per app, and a job cancelled by a vanished client may still be ending its step
ENGINE_LOCK = threading.Lock()


@dataclass
class JobEvent:
    kind: str  # "step" | "done" | "error"
    data: Any = None


def run_job(call: Callable[[Callable[[dict], None], threading.Event], Any], cancel: threading.Event,
            poll: float = 0.1, coalesce: bool = True, lock: threading.Lock = ENGINE_LOCK) -> Iterator[JobEvent]:
    """Run `call(on_step, cancel)` in a thread holding `lock`; yield "step" events
    (the engine's step dicts) while it runs, then one "done" (its result) or
    "error" (the exception). With `coalesce`, step events that queued up while
    the consumer was busy are skipped for the newest one (a preview only needs
    the latest). Closing the iterator early sets `cancel`: the job stops at its
    next step and releases `lock`; the closer does not wait for it (gradio
    closes iterators on its event loop, which must not block)."""
    events: queue.Queue[JobEvent] = queue.Queue()

    def on_step(info: dict) -> None:
        events.put(JobEvent("step", info))

    def work() -> None:
        try:
            with lock:
                if cancel.is_set():  # cancelled while an earlier job was ending
                    raise Cancelled("cancelled before it started.")
                try:
                    result = call(on_step, cancel)
                finally:
                    free_memory()
            events.put(JobEvent("done", result))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            events.put(JobEvent("error", exc))

    thread = threading.Thread(target=work, name="likeness-job", daemon=True)
    thread.start()
    finished = False
    try:
        while True:
            try:
                ev = events.get(timeout=poll)
            except queue.Empty:
                continue
            if ev.kind == "step" and coalesce:
                # only the newest step matters for a preview: skip stale ones
                while True:
                    try:
                        nxt = events.get_nowait()
                    except queue.Empty:
                        break
                    if nxt.kind != "step":
                        yield ev
                        ev = nxt
                        break
                    ev = nxt
            yield ev
            if ev.kind in ("done", "error"):
                finished = True
                return
    finally:
        if not finished:  # the consumer went away (client cancel, closed tab): stop the job
            cancel.set()


