"""The web server against a hostile or careless client: the file route serves
generated portraits only (never identity cards, manifests, identities.json or
job files, with and without --listen), a job file sent through the Batch tab
cannot name server files, and a client cancel or a dropped connection stops the
engine within a step while every other call still gets its result."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from conftest import free_port, wait_until

from pipelines.errors import Cancelled


# ------------------------------------------------------------------ the allow-list alone
def test_served_file_allows_portraits_only(tmp_path, photos_dir):
    from app.security import served_file

    out = tmp_path / "outputs"
    portrait = out / "2026-01-01" / "likeness-faceid-1-000.png"
    batch = out / "batch-job"
    files = {
        "portrait": portrait, "batch_png": batch / "me-faceid-1-abc.png",
        "card": out / "identities" / "abc.identity.safetensors",
        "batch_card": batch / "identities" / "def.identity.safetensors",
        "png_in_identities": batch / "identities" / "crop.png",
        "manifest": batch / "manifest.jsonl", "identities_json": batch / "identities.json",
        "job": batch / "job.yaml", "staging": batch / ".staging-abc" / "item-000.png",
        "not_a_png": out / "notes.png",
    }
    for f in files.values():
        f.parent.mkdir(parents=True, exist_ok=True)
    for key in ("portrait", "batch_png", "png_in_identities", "staging"):
        shutil.copy(photos_dir / "astronaut.png", files[key])
    for key in ("card", "batch_card", "manifest", "identities_json", "job"):
        files[key].write_bytes(b"private")
    files["not_a_png"].write_text("identities:\n  me: {card: abc}\n")  # a job file in disguise
    link = out / "innocent.png"
    link.symlink_to(files["batch_card"])
    fifo = out / "pipe.png"
    os.mkfifo(fifo)
    uploads = tmp_path / "gradio"
    (uploads / "h1").mkdir(parents=True)
    shutil.copy(photos_dir / "astronaut.png", uploads / "h1" / "me.png")
    (uploads / "h1" / "job.yaml").write_text("items: []\n")

    assert served_file(str(files["portrait"]), out) and served_file(str(files["batch_png"]), out)
    assert served_file(str(uploads / "h1" / "me.png"), out)  # an uploaded photo shown back in the browser
    refused = [files[k] for k in files if k not in ("portrait", "batch_png")]
    refused += [link, fifo, uploads / "h1" / "job.yaml", out / "2026-01-01" / ".." / "identities" /
                "abc.identity.safetensors"]
    t0 = time.monotonic()
    for p in refused:
        assert not served_file(str(p), out), p
    assert time.monotonic() - t0 < 2  # the FIFO was not opened
    assert not served_file("https://example.com/x.png", out) and not served_file("", out)
    # relative requests resolve against the server's working folder, like gradio's
    assert not served_file("identities/abc.identity.safetensors", out, cwd=str(out))
    assert served_file("2026-01-01/likeness-faceid-1-000.png", out, cwd=str(out))


# ------------------------------------------------------------------ a real batch, served
@pytest.fixture(scope="module")
def batch_run(make_settings, photos_dir):
    """A one-item batch through the Batch tab's own code path (job file plus the
    photo uploaded beside it) with the tiny engine: writes a portrait, an
    identity card, the manifest and identities.json into the outputs folder."""
    from app.batch_tab import run_batch
    from app.jobs import CancelRegistry, EngineHolder

    settings = make_settings("hostile", accept_research_licenses=True)
    root = settings.outputs_dir.parent  # holds outputs/ and loras/
    upload = root / "upload"
    upload.mkdir()
    shutil.copy(photos_dir / "astronaut.png", upload / "me.png")
    job = upload / "job.yaml"
    job.write_text("name: hostile\nidentities:\n  me: {photos: [me.png]}\n"
                   "items:\n  - prompt: a portrait\n    method: faceid\n    seed: 1\n"
                   "    overrides: {steps: 2, width: 64, height: 64}\n")
    holder = EngineHolder(settings)
    updates = list(run_batch(settings, holder, CancelRegistry(), str(job), [str(upload / "me.png")]))
    summary, images = updates[-1]
    out = settings.outputs_dir / "batch-hostile"
    shutil.copy(job, out / "job.yaml")  # a job file kept beside its outputs
    return SimpleNamespace(settings=settings, holder=holder, out=out, images=images, summary=summary, root=root)


def test_batch_tab_runs_only_uploaded_photos(batch_run, photos_dir, tmp_path):
    import gradio as gr

    from app.batch_tab import check_job, run_batch
    from app.jobs import CancelRegistry

    assert len(batch_run.images) == 1 and batch_run.images[0][1] == "me"
    cards = list((batch_run.out / "identities").glob("*.safetensors"))
    assert len(cards) == 1
    settings = batch_run.settings
    secret = tmp_path / "secret.png"  # a photo on the server that nobody uploaded
    shutil.copy(photos_dir / "astronaut.png", secret)
    job = tmp_path / "job.yaml"
    for ref in (str(secret), "../secret.png", "~/secret.png"):
        job.write_text(f"identities:\n  x: {{photos: ['{ref}']}}\nitems:\n  - prompt: p\n    method: faceid\n")
        with pytest.raises(gr.Error, match="by name, not by path"):
            check_job(settings, str(job), [])
        with pytest.raises(gr.Error, match="by name, not by path"):
            list(run_batch(settings, batch_run.holder, CancelRegistry(), str(job), []))
    job.write_text("identities:\n  x: {photos: [secret.png]}\nitems:\n  - prompt: p\n    method: faceid\n")
    with pytest.raises(gr.Error, match="not one of the photos uploaded"):
        check_job(settings, str(job), [str(photos_dir / "astronaut.png")])
    for card in (str(cards[0]), "/etc/passwd"):
        job.write_text(f"identities:\n  x: {{card: '{card}'}}\nitems:\n  - prompt: p\n    method: faceid\n")
        with pytest.raises(gr.Error, match="by name, not by path"):
            check_job(settings, str(job), [])
    job.write_text("identities:\n  x: {card: nobody}\nitems:\n  - prompt: p\n    method: faceid\n")
    with pytest.raises(gr.Error, match="no identity card named 'nobody'"):
        check_job(settings, str(job), [])
    job.write_text("items:\n  - prompt: p\n    method: none\n    poses: [/etc/pose.json]\n")
    with pytest.raises(gr.Error, match="poses by name"):
        check_job(settings, str(job), [])
    # an app card by name, copied where the app keeps its cards
    app_cards = settings.outputs_dir / "identities"
    app_cards.mkdir(parents=True, exist_ok=True)
    shutil.copy(cards[0], app_cards / cards[0].name)
    stem = cards[0].name.removesuffix(".identity.safetensors")
    job.write_text(f"identities:\n  x: {{card: {stem}}}\nitems:\n  - prompt: p\n    method: faceid\n")
    assert re.search(r"\b1 items?\b", check_job(settings, str(job), []))


def _serve(settings, listen: bool):
    from app.jobs import EngineHolder
    from app.security import resolve_launch
    from app.server import serve

    cfg = resolve_launch(listen=listen, port=free_port(), auth="ann:s3cret-pass" if listen else None,
                         insecure_no_auth=False, share=False, environ={})
    demo, url, _ = serve(settings, cfg, block=False, holder=EngineHolder(settings))
    return demo, f"http://127.0.0.1:{cfg.port}"


@pytest.mark.parametrize("listen", [False, True], ids=["loopback", "listen-with-auth"])
def test_no_card_manifest_or_job_file_is_served(batch_run, listen, photos_dir):
    settings, out = batch_run.settings, batch_run.out
    portrait = Path(batch_run.images[0][0])
    private = [*out.glob("identities/*.safetensors"), *settings.outputs_dir.glob("identities/*.safetensors"),
               out / "manifest.jsonl", out / "identities.json", out / "job.yaml"]
    assert all(p.is_file() for p in private) and len(private) >= 5
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert manifest[0]["status"] == "ok"
    demo, url = _serve(settings, listen)
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            if listen:
                assert demo.server_name == "0.0.0.0"
                assert http.get("/gradio_api/file=" + str(portrait)).status_code == 401  # not logged in
                login = http.post("/login", data={"username": "ann", "password": "s3cret-pass"})
                assert login.status_code == 200, login.text
            ok = http.get("/gradio_api/file=" + str(portrait))
            assert ok.status_code == 200 and ok.content[:8] == b"\x89PNG\r\n\x1a\n"  # the control
            for p in private:
                for route in ("/gradio_api/file=", "/gradio_api/file/"):
                    r = http.get(route + str(p))
                    assert r.status_code in (403, 404) and not r.content, (route, p, r.status_code)
            # an uploaded job file is not served back either; an uploaded photo is
            up = http.post("/gradio_api/upload", files=[
                ("files", ("job.yaml", (out / "job.yaml").read_bytes(), "application/yaml")),
                ("files", ("me.png", (photos_dir / "astronaut.png").read_bytes(), "image/png"))])
            assert up.status_code == 200, up.text
            job_path, photo_path = up.json()
            assert http.get("/gradio_api/file=" + job_path).status_code == 403
            assert http.get("/gradio_api/file=" + photo_path).status_code == 200
    finally:
        demo.close()


# ------------------------------------------------------------------ cancel from a client
class SlowEngine:
    """Like the engine: steps with on_step, honours cancel at every step, writes
    one PNG per finished image; records what happened."""

    def __init__(self, out: Path, step_s: float = 0.03):
        self.out, self.step_s = out, step_s
        self.calls: list[dict] = []
        self.lock = threading.Lock()

    def generate(self, req, on_step=None, cancel=None):
        from PIL import Image

        from pipelines.engine import GeneratedImage, GenerateResult

        with self.lock:
            call = {"n": len(self.calls), "count": req.count, "steps_done": 0, "end": None, "images": 0}
            self.calls.append(call)
        images = []
        for i in range(req.count):
            for step in range(req.steps):
                time.sleep(self.step_s)
                call["steps_done"] += 1
                on_step({"image_index": i, "step": step + 1, "steps": req.steps})
                if cancel is not None and cancel.is_set():
                    call["end"] = "cancelled"
                    raise Cancelled(f"cancelled after {i} of {req.count} images.")
            path = self.out / f"likeness-slow-{call['n']}-{i}.png"
            Image.new("RGB", (8, 8)).save(path)
            call["images"] += 1
            images.append(GeneratedImage(path, 1, None, {"seed": 1, "likeness": {"face_found": False}}))
        call["end"] = "done"
        return GenerateResult(images=images, excluded=[], seconds=0.0)


@pytest.fixture()
def slow_server(tmp_path):
    from app.jobs import EngineHolder
    from app.security import resolve_launch
    from app.server import serve
    from pipelines.settings import load_settings

    settings = load_settings(models_dir=tmp_path / "models", loras_dir=tmp_path / "loras",
                             outputs_dir=tmp_path / "outputs", device="cpu", dtype="float32", demo=True)
    settings.outputs_dir.mkdir(parents=True)
    engine = SlowEngine(settings.outputs_dir)
    cfg = resolve_launch(listen=False, port=free_port(), auth=None, insecure_no_auth=False, share=False, environ={})
    demo, url, _ = serve(settings, cfg, block=False, holder=EngineHolder(settings, factory=lambda s: engine))
    try:
        yield SimpleNamespace(url=url.rstrip("/"), engine=engine, demo=demo, settings=settings)
    finally:
        demo.close()


CALL = dict(photos=[], prompt="a portrait", preset="", method="none", seed=1, api_name="/generate")


def test_client_cancel_stops_the_engine_within_a_step(slow_server):
    from gradio_client import Client

    engine = slow_server.engine
    client = Client(slow_server.url, verbose=False, download_files=False)
    job = client.submit(count=40, **CALL)  # 40 images x 30 steps: about 36 s uncancelled
    assert wait_until(lambda: engine.calls and engine.calls[0]["steps_done"] >= 3)
    job.cancel()
    at_cancel = engine.calls[0]["steps_done"]
    assert wait_until(lambda: engine.calls[0]["end"] == "cancelled", timeout=5), engine.calls[0]
    assert engine.calls[0]["steps_done"] - at_cancel <= 3  # the step it was in, plus the ones in flight
    assert engine.calls[0]["images"] == 0 and not list(slow_server.settings.outputs_dir.glob("*.png"))
    t0 = time.monotonic()
    result, _ = client.predict(count=1, **CALL)  # the next caller does not wait for the cancelled job
    assert time.monotonic() - t0 < 10 and len(result) == 1


def test_every_call_not_cancelled_gets_its_result(slow_server):
    """Cancelling a call that is still queued must not stop another call of the
    same client (gradio cancels by session and endpoint, not by call)."""
    from gradio_client import Client

    engine = slow_server.engine
    engine.step_s = 0.005
    client = Client(slow_server.url, verbose=False, download_files=False)
    jobs = [client.submit(count=1, **CALL) for _ in range(12)]
    assert wait_until(lambda: len(engine.calls) >= 1)
    cancelled = {0, 4, 9}  # the running one (or the first) and two queued ones
    for i in sorted(cancelled):
        jobs[i].cancel()
    for i, job in enumerate(jobs):
        if i in cancelled:
            continue
        result, _ = job.result(timeout=60)  # (gallery, results)
        assert len(result) == 1 and result[0]["image"]["path"].endswith(".png"), i
    finished = [c for c in engine.calls if c["end"] == "done"]
    assert len(finished) >= len(jobs) - len(cancelled)


def test_dropped_connection_stops_the_engine(slow_server):
    """A closed tab: the event stream's connection goes away mid-job."""
    import uuid

    from app.requests_map import api_field_specs

    engine = slow_server.engine
    demo = slow_server.demo
    fn_index = next(i for i, fn in demo.fns.items() if fn.api_name == "generate")
    session = uuid.uuid4().hex[:11]
    with httpx.Client(base_url=slow_server.url, timeout=30) as http:
        joined = http.post("/gradio_api/queue/join", json={
            # the endpoint's other request fields at their defaults (gradio_client fills them itself)
            "data": [[], "a portrait", "", "none", 1, 40, *(d for _, _, d in api_field_specs())],
            "fn_index": fn_index, "session_hash": session,
            "event_data": None, "trigger_id": None})
        assert joined.status_code == 200, joined.text
        with http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if "process_generating" in line:  # the engine is stepping
                    break
    # the connection is closed here, as when a tab closes
    assert wait_until(lambda: engine.calls and engine.calls[0]["end"] == "cancelled", timeout=15), engine.calls
    assert engine.calls[0]["images"] < 40


def test_train_api_refuses_to_overwrite_a_lora(slow_server, photos_dir):
    """The public /train endpoint: an existing LoRA is replaced only with
    overwrite=True; without it the call fails at once and the file is untouched."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    loras = slow_server.settings.loras_dir
    loras.mkdir(parents=True, exist_ok=True)
    existing = loras / "me.safetensors"
    existing.write_bytes(b"the user's LoRA")
    client = Client(slow_server.url, verbose=False, download_files=False)
    t0 = time.monotonic()
    with pytest.raises(AppError, match="already exists.*--overwrite"):
        client.predict(photos=[handle_file(str(photos_dir / "astronaut.png"))], name="me", steps=1,
                       api_name="/train")
    assert time.monotonic() - t0 < 30 and existing.read_bytes() == b"the user's LoRA"
    assert not (loras / ".training").exists()


def test_run_history_is_off(slow_server):
    """gradio's run history would keep photos and portraits in the browser and
    offer to upload them to a Hub bucket: the app turns it off."""
    assert slow_server.demo.run_history is False
    assert httpx.get(slow_server.url + "/gradio_api/runs", timeout=30).status_code == 404


def test_batch_tab_cancel_stops_within_a_step(tmp_path):
    """The Batch tab's Cancel (and a closed tab: the generator closed) reaches
    the engine through the runner's cancel event; finished items stay done."""
    from app.batch_tab import cancel_batch, run_batch
    from app.jobs import CancelRegistry, EngineHolder
    from pipelines.settings import load_settings

    settings = load_settings(models_dir=tmp_path / "models", loras_dir=tmp_path / "loras",
                             outputs_dir=tmp_path / "outputs", device="cpu", dtype="float32", demo=True)
    engine = SlowEngine(tmp_path, step_s=0.01)

    def generate(req, on_step=None, cancel=None):  # the runner stages each item in its own folder
        engine.out = Path(req.out_dir)
        engine.out.mkdir(parents=True, exist_ok=True)
        return SlowEngine.generate(engine, req, on_step=on_step, cancel=cancel)

    holder = EngineHolder(settings, factory=lambda s: SimpleNamespace(generate=generate))
    job = tmp_path / "job.yaml"
    job.write_text("name: long\nitems:\n  - prompt: p\n    method: none\n    seeds: [1, 2, 3, 4, 5, 6]\n"
                   "    overrides: {steps: 50}\n")
    cancels = CancelRegistry()
    updates = run_batch(settings, holder, cancels, str(job), [])
    while len(engine.calls) < 2:  # the first item is done, the second is running
        next(updates)
    assert cancel_batch(cancels, None).startswith("Cancelling")
    last = list(updates)[-1]
    assert last[0].startswith("Stopped: the batch was cancelled") and "run it again" in last[0]
    assert [c["end"] for c in engine.calls] == ["done", "cancelled"]
    manifest = settings.outputs_dir / "batch-long" / "manifest.jsonl"
    assert len(manifest.read_text().splitlines()) == 1  # the finished item, whole
    updates = run_batch(settings, holder, CancelRegistry(), str(job), [])
    for _ in updates:  # a closed tab: the generator is closed after one step
        break
    updates.close()
    assert wait_until(lambda: engine.calls[-1]["end"] == "cancelled", timeout=5)
    assert len(engine.calls) == 3  # it resumed after the finished item and stopped there
