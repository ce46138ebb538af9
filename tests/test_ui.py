"""The web UI: widget <-> request mapping by name, live previews and cancel,
the `generate` API through gradio_client, what the server refuses to serve,
and the launch policy."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import free_port, real_settings

from pipelines.errors import BadInput, Cancelled
from pipelines.profile import DEMO, REAL
from pipelines.requests import GenerateRequest
from pipelines.settings import DEMO_BANNER

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ request mapping
def test_request_from_ui_maps_by_name(tmp_path):
    from app.requests_map import request_from_ui

    photo = str(tmp_path / "me.jpg")
    req = request_from_ui({
        "photos": [photo], "prompt": "a man in a suit", "method": "instantid", "size": "portrait",
        "seed": -1, "steps": 12, "cfg": 4.0, "count": 2, "keep": 1, "scale": 0.6, "pose": "head-tilt",
        "restore": "gfpgan", "restore_strength": 0.4, "loras": [["ink", 0.5], ["off", 0], ["", 1.0]],
    }, REAL)
    assert isinstance(req, GenerateRequest)
    assert req.photos == [photo] and req.prompt == "a man in a suit" and req.method == "instantid"
    assert (req.width, req.height) == (896, 1152) and req.seed is None and req.steps == 12 and req.cfg == 4.0
    assert req.count == 2 and req.keep == 1 and req.scale == 0.6 and req.pose == "head-tilt"
    assert req.restore == "gfpgan" and req.restore_strength == 0.4
    assert [(lo.name, lo.weight) for lo in req.loras] == [("ink", 0.5)]  # weight 0 = off, blank rows ignored
    # demo mode shrinks the bucket like the engine; "auto" leaves the engine's default; WxH is taken as is
    assert (request_from_ui({"photos": [photo], "prompt": "p", "size": "portrait"}, DEMO).width,
            ) == (DEMO.size(896, 1152)[0],)
    assert request_from_ui({"photos": [photo], "prompt": "p", "size": "auto"}, DEMO).width is None
    assert request_from_ui({"photos": [photo], "prompt": "p", "size": "640x832"}, REAL).height == 832
    # a preset turns the prompt box into the subject
    with_preset = request_from_ui({"photos": [photo], "prompt": "a woman", "preset": "studio-headshot"}, REAL)
    assert with_preset.prompt.startswith("professional studio headshot of a woman,")


@pytest.mark.parametrize("values, match", [
    ({"prompt": "p"}, "upload 1 to 10 photos"),
    ({"photos": ["a.jpg"], "prompt": ""}, "prompt is empty"),
    ({"photos": [f"{i}.jpg" for i in range(11)], "prompt": "p"}, "at most 10 photos"),
    ({"photos": ["a.jpg"], "prompt": "p", "steps": 500}, "field steps"),
    ({"photos": ["a.jpg"], "prompt": "p", "size": "huge"}, "size 'huge'"),
    ({"photos": ["a.jpg"], "prompt": "p", "seed": "abc"}, "seed"),
    ({"photos": ["a.jpg"], "prompt": "p", "loras": [["x", "heavy"]]}, "LoRA 'x'"),
    ({"photos": ["a.jpg"], "prompt": "p", "preset": "nope"}, "preset 'nope' does not exist"),
])
def test_request_from_ui_errors_name_the_field(values, match):
    from app.requests_map import request_from_ui

    with pytest.raises(BadInput, match=match):
        request_from_ui(values, REAL)


def test_recipe_round_trips_through_the_widgets(tmp_path):
    from app.requests_map import request_from_ui, ui_from_fields

    req = GenerateRequest(photos=["a.jpg"], prompt="x", method="instantid", seed=42, steps=9, cfg=3.5, scale=0.9,
                          width=112, height=144, pose="head-tilt", loras=[{"name": "ink", "weight": 0.7}])
    fields = req.model_dump(exclude={"photos", "identity_card", "out_dir"})
    ui = ui_from_fields(fields, DEMO, lora_on_disk=["ink", "other"])
    assert ui["size"] == "portrait" and ui["seed"] == 42 and ui["preset"] == "(none)"
    assert ui["loras"] == [["ink", 0.7], ["other", 0.0]]
    again = request_from_ui({**ui, "photos": ["a.jpg"]}, DEMO)
    assert again.model_dump() == req.model_dump()


def test_widgets_are_mapped_by_field_name(demo_settings):
    import gradio as gr

    from app.requests_map import UI_DEFAULTS
    from app.widgets import build_portrait

    with gr.Blocks():
        w = build_portrait(demo_settings)
    keys = list(w.fields.values())
    assert sorted(keys) == sorted(UI_DEFAULTS) and len(set(keys)) == len(keys)
    ui_only = {"photos", "preset", "size", "pose_photo"}
    assert set(keys) - ui_only <= set(GenerateRequest.model_fields)
    assert all(w.by_key[k] is c for c, k in w.fields.items())
    photos = w.by_key["photos"]
    assert isinstance(photos, gr.File) and photos.file_count == "multiple" and photos.type == "filepath"
    assert len(w.preset_names) >= 12 and w.pose_gallery is not None


def test_build_app_demo_is_lazy_and_labelled(demo_settings):
    from app.ui import build_app

    demo = build_app(demo_settings)
    assert not demo.likeness_holder.loaded  # no engine (no models) until first use
    cfg = demo.get_config_file()
    tabs = [c["props"].get("label") for c in cfg["components"] if c["type"] == "tabitem"]
    assert tabs[:2] == ["Portrait", "History"] and {"Train", "Batch", "Models"} <= set(tabs)
    banners = [c for c in cfg["components"] if c["type"] == "markdown" and DEMO_BANNER in str(c["props"].get("value"))]
    assert len(banners) == 1  # once, above the tabs (the browser title says it too)
    api = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}
    assert api["generate"].api_visibility == "public" and api["train"].api_visibility == "public"
    public = ("generate", "train", "presets", "poses", "models", "loras")  # the list endpoints are public too
    assert all(fn.api_visibility == "private" for name, fn in api.items() if name not in public)
    assert all(api[name].api_visibility == "public" for name in public)


# ------------------------------------------------------------------ progress and cancel
def test_latents_to_rgb_uses_the_sdxl_factors():
    from app.progress import SDXL_LATENT_BIAS, SDXL_LATENT_RGB, latent_preview, latents_to_rgb

    zero = latents_to_rgb(np.zeros((1, 4, 8, 6), np.float32))
    assert zero.shape == (8, 6, 3)
    assert np.allclose(zero[0, 0], (SDXL_LATENT_BIAS + 1) / 2 * 255, atol=1)
    one = np.zeros((4, 2, 2), np.float32)
    one[3] = 1.0
    expect = np.clip((SDXL_LATENT_RGB[3] + SDXL_LATENT_BIAS + 1) / 2, 0, 1) * 255
    assert np.allclose(latents_to_rgb(one)[1, 1], expect, atol=1)
    img = latent_preview(np.random.default_rng(0).normal(size=(1, 4, 18, 14)).astype(np.float32), side=256)
    assert img.size == (199, 256)


def test_step_clock_eta():
    from app.progress import StepClock

    t = [0.0]
    clock = StepClock(images=2, steps=5, now=lambda: t[0])
    assert clock.eta() is None
    for step, at in ((1, 10.0), (2, 11.0), (3, 12.0)):  # the first step pays for warm-up
        t[0] = at
        clock.tick(0, step)
    assert clock.done == 3 and clock.total == 10 and clock.eta() == pytest.approx(7.0)


class FakeEngine:
    """Calls on_step like the engine (with latents) and honours cancel."""

    def __init__(self, out: Path):
        self.out = out

    def generate(self, req, on_step=None, cancel=None):
        import torch

        from pipelines.engine import GeneratedImage, GenerateResult

        for step in range(req.steps):
            on_step({"image_index": 0, "step": step + 1, "steps": req.steps, "latents": torch.zeros(1, 4, 8, 8)})
            time.sleep(0.02)
            if cancel.is_set():
                raise Cancelled("cancelled after 0 of 1 images.")
        recipe = {"seed": 5, "likeness": {"face_found": True, "mean": 0.61}, "request": {"prompt": "x", "seed": 5}}
        return GenerateResult(images=[GeneratedImage(self.out, 5, None, recipe)],
                              excluded=[{"file": "/up/cat.png", "reason": "no face found in cat.png"}], seconds=1.0)


def _portrait_tab(settings, engine):
    import gradio as gr

    from app.jobs import CancelRegistry, EngineHolder
    from app.portrait import PortraitTab
    from app.widgets import build_portrait

    with gr.Blocks():
        w = build_portrait(settings)
    return PortraitTab(settings, EngineHolder(settings, factory=lambda s: engine), CancelRegistry(), w)


def test_generate_streams_previews_progress_and_results(demo_settings, tmp_path):
    tab = _portrait_tab(demo_settings, FakeEngine(tmp_path / "x.png"))
    calls = []
    req = GenerateRequest(photos=["a.jpg"], prompt="p", steps=4)
    updates = list(tab.run(req, None, lambda *a, **k: calls.append((a, k))))
    w = tab.w
    previews = [u[w.preview] for u in updates if u.get(w.preview) is not None]
    assert previews and previews[0].size == (256, 256)
    assert calls[-1][0][0] == (4, 4) and "ETA" in calls[-1][1]["desc"]  # step progress with ETA
    final = updates[-1]
    assert final[w.results] == [(str(tmp_path / "x.png"), "seed 5 · likeness 0.61")]
    assert "cat.png" in final[w.status] and "no face found" in final[w.status]
    assert not tab.cancels.running("anonymous")


def test_cancel_stops_the_job_within_a_step(demo_settings, tmp_path):
    tab = _portrait_tab(demo_settings, FakeEngine(tmp_path / "x.png"))
    req = GenerateRequest(photos=["a.jpg"], prompt="p", steps=150)
    gen = tab.run(req, None, lambda *a, **k: None)
    first = next(gen)
    assert "Loading" in first[tab.w.status]
    assert next(gen)[tab.w.preview] is not None  # sampling has started
    t0 = time.monotonic()
    assert tab.cancel(None).startswith("Cancelling")
    rest = list(gen)
    assert time.monotonic() - t0 < 5
    assert "Stopped" in rest[-1][tab.w.status] and tab.w.results not in rest[-1]
    assert tab.cancel(None) == "Nothing is running in this tab."


def test_reuse_fills_widgets_from_a_recipe(demo_settings):
    tab = _portrait_tab(demo_settings, None)
    recipe = {"request": {"prompt": "a knight", "method": "instantid", "seed": 9, "steps": 7,
                          "width": 112, "height": 144, "loras": []}}
    by_key = {tab.w.fields[c]: v for c, v in tab.reuse(0, [recipe]).items()}
    assert by_key["prompt"] == "a knight" and by_key["seed"] == 9 and by_key["steps"] == 7
    assert by_key["size"] == "portrait" and by_key["method"] == "instantid" and by_key["preset"] == "(none)"


def test_train_tab_reports_progress_and_result(demo_settings, tmp_path, monkeypatch):
    import gradio as gr

    import pipelines.lora.train as lt
    from app.jobs import CancelRegistry, EngineHolder
    from app.train_tab import TrainTab

    seen = {}

    def fake_train_lora(settings, photos, config, options, *, store=None, callback=None, cancel=None, progress=True):
        seen.update(photos=photos, name=config.name, steps=config.steps, trigger=options.trigger, demo=options.profile.demo)
        callback({"phase": "dataset", "used": photos[:1], "warnings": [],
                  "excluded": [{"file": photos[1], "reason": "2 faces: a group photo"}]})
        for step in (1, 2):
            callback({"phase": "train", "step": step, "steps": 2, "loss": 0.5 / step, "eta_s": 2 - step})
        used = SimpleNamespace(file=photos[0])
        tset = SimpleNamespace(used=[used], excluded=[SimpleNamespace(file=photos[1], reason="group")])
        result = SimpleNamespace(name=config.name, path=tmp_path / "me.safetensors", steps=2, trigger="zq",
                                 final_loss=0.25, seconds=3.0, preview=None)
        return tset, result

    monkeypatch.setattr(lt, "train_lora", fake_train_lora)
    with gr.Blocks():
        tab = TrainTab(demo_settings, EngineHolder(demo_settings), CancelRegistry())
        tab.build()
    calls = []
    out = list(tab.train(["/up/a.jpg", "/up/group.jpg"], "me", 2, 4, "zq", "", False, False, False, None,
                         lambda *a, **k: calls.append((a, k))))
    assert seen == {"photos": ["/up/a.jpg", "/up/group.jpg"], "name": "me", "steps": 2, "trigger": "zq", "demo": True}
    assert any("group.jpg" in u[tab.status] and "group photo" in u[tab.status] for u in out)
    assert calls[-1][0][0] == (2, 2) and "loss 0.2500" in calls[-1][1]["desc"]
    assert "Trained `me.safetensors`" in out[-1][tab.status] and "zq" in out[-1][tab.status]
    with pytest.raises(gr.Error, match="LoRA name"):
        list(tab.train(["/up/a.jpg"], "../evil", 0, 4, "", "", False, False, False, None, lambda *a, **k: None))


def test_history_reuses_a_recipe_in_the_portrait_tab(demo_settings):
    import gradio as gr
    from PIL import Image

    from app.history import HistoryTab, list_outputs
    from pipelines.metadata import save_png

    out = demo_settings.outputs_dir / "2026-01-01"
    out.mkdir(parents=True)
    card = demo_settings.outputs_dir / "identities" / "abc.identity.safetensors"
    card.parent.mkdir()
    card.write_bytes(b"card")
    recipe = {"prompt": "a knight", "seed": 3, "identity": {"card": str(card)},
              "request": {"prompt": "a knight", "method": "faceid", "seed": 3, "steps": 6, "width": 128,
                          "height": 128, "loras": []}}
    png = save_png(Image.new("RGB", (64, 64)), out / "likeness-faceid-3-000.png", parameters="p",
                   recipe=recipe, notice=demo_settings.profile.notice)
    (out / ".likeness-x.png.part").write_bytes(b"partial")  # temp files are not history
    assert [p for p, _ in list_outputs(demo_settings.outputs_dir)] == [png]
    tab = _portrait_tab(demo_settings, None)
    with gr.Blocks():
        with gr.Tabs() as tabs, gr.Tab("History"):
            history = HistoryTab(demo_settings, tab, tabs, "portrait")
            history.build()
    selected, info, text = history.select([str(png)], SimpleNamespace(index=0))
    assert selected == str(png) and "a knight" in info and '"seed": 3' in text
    updates = history.reuse_recipe(selected)
    by_key = {tab.w.fields[c]: v for c, v in updates.items() if c in tab.w.fields}
    assert by_key["prompt"] == "a knight" and by_key["seed"] == 3 and by_key["size"] == "square"
    assert by_key["identity_card"] == str(card.resolve())  # no photos needed to reuse it
    assert updates[tabs].selected == "portrait"
    assert history.identity_card({"identity": {"card": "/etc/passwd"}}) is None  # only cards beside the outputs


def test_batch_tab_checks_a_job_file_with_presets(tmp_path, photos_dir, demo_settings):
    import gradio as gr

    from app.batch_tab import check_job

    job = tmp_path / "job.yaml"  # in the UI, photos are named by the file name they were uploaded with
    job.write_text("identities:\n  me: {photos: [astronaut.png]}\n"
                   "items:\n  - presets: [polaroid, watercolor]\n    seeds: [1, 2]\n")
    listing = check_job(demo_settings, str(job), [str(photos_dir / "astronaut.png")])
    assert "4 items" in listing and "polaroid instant photo of a person" in listing
    job.write_text("items:\n  - presets: [nope]\n")
    with pytest.raises(gr.Error, match="preset 'nope' does not exist"):
        check_job(demo_settings, str(job))


def test_models_tab_requires_licence_acceptance(tmp_path):
    import gradio as gr

    from app.models_tab import download_model
    real = real_settings(tmp_path, demo=False, accept_research_licenses=False)
    with pytest.raises(gr.Error, match="research / non-commercial"):
        download_model(real, "buffalo_l", accept=False)
    assert not (real.models_dir / "buffalo_l").exists()


# ------------------------------------------------------------------ the running server
@pytest.fixture(scope="module")
def server(make_settings, photos_dir):
    from app.jobs import EngineHolder
    from app.security import resolve_launch
    from app.server import serve

    settings = make_settings("ui", accept_research_licenses=True)
    root = settings.outputs_dir.parent  # holds outputs/ and loras/
    (root / "loras").mkdir()
    (root / "loras" / "style.safetensors").write_bytes(b"secret lora")
    (root / ".env").write_text("TOKEN=secret\n")
    env = {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_ALLOWED_PATHS": "/"}
    cfg = resolve_launch(listen=False, port=free_port(), auth=None, insecure_no_auth=False, share=False, environ=env)
    cfg = dataclasses.replace(cfg, max_file_size=1_000_000)
    holder = EngineHolder(settings)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():  # must not widen what the server exposes
            mp.setenv(k, v)
        demo, url, _ = serve(settings, cfg, block=False, holder=holder)
    try:
        yield SimpleNamespace(url=url.rstrip("/"), settings=settings, root=root, holder=holder, demo=demo,
                              photo=photos_dir / "astronaut.png")
    finally:
        demo.close()


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def test_server_binds_loopback_despite_environment(server):
    assert server.url.startswith("http://127.0.0.1:")
    assert server.demo.server_name == "127.0.0.1"
    # GRADIO_ALLOWED_PATHS=/ in the environment did not widen what is served
    assert server.demo.allowed_paths == [str(server.settings.outputs_dir.resolve())]
    assert str(server.settings.models_dir.resolve()) in server.demo.blocked_paths


@pytest.fixture(scope="module")
def generated(server):
    """One portrait through the `generate` API (shared by the tests below)."""
    from gradio_client import Client, handle_file

    client = Client(server.url, verbose=False, download_files=False)
    result, results = client.predict(photos=[handle_file(str(server.photo))], prompt="a man", preset="polaroid",
                                     method="", seed=7, count=1, api_name="/generate")
    outputs = sorted(server.settings.outputs_dir.rglob("likeness-*.png"))
    return SimpleNamespace(client=client, result=result, results=results, outputs=outputs)


def test_gradio_client_generate(server, generated):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from pipelines.metadata import read_recipe
    from pipelines.presets import DEMO_MAX_STEPS, get_preset

    client, result = generated.client, generated.result
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert [p["parameter_name"] for p in api["/generate"]["parameters"]][:6] == \
        ["photos", "prompt", "preset", "method", "seed", "count"]
    assert [p["parameter_name"] for p in api["/train"]["parameters"]] == ["photos", "name", "steps", "overwrite"]
    assert server.holder.loaded
    assert len(result) == 1 and result[0]["caption"].startswith("seed 7 · ")
    assert result[0]["image"]["url"].startswith(server.url + "/gradio_api/file=")
    status, body = fetch(result[0]["image"]["url"])
    assert status == 200 and body[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(generated.outputs) == 1
    recipe = read_recipe(generated.outputs[0])
    preset = get_preset("polaroid")
    assert recipe["prompt"] == preset.format_prompt("a man") and recipe["seed"] == 7
    assert recipe["steps"] == min(preset.steps, DEMO_MAX_STEPS) and recipe["sampler"] == preset.sampler
    assert "likeness" in recipe and "mean" in recipe["likeness"]
    assert generated.results == [{"seed": 7, "likeness": recipe["likeness"]["mean"] if recipe["likeness"]["face_found"]
                                  else None, "face_found": recipe["likeness"]["face_found"],
                                  "file": generated.outputs[0].name}]
    with pytest.raises(AppError, match="preset 'nope' does not exist"):
        client.predict(photos=[handle_file(str(server.photo))], prompt="a man", preset="nope", method="",
                       seed=1, count=1, api_name="/generate")


def test_only_generated_outputs_are_served(server, generated):
    from pipelines.metadata import read_recipe

    base = server.url + "/gradio_api/file="
    output = generated.outputs[0]
    card = server.settings.outputs_dir / "identities" / Path(read_recipe(output)["identity"]["card"]).name
    assert card.is_file() and server.settings.outputs_dir in card.parents
    status, body = fetch(base + str(output))
    assert status == 200 and body[:4] == b"\x89PNG"  # the control: outputs are served
    model_file = next(p for p in server.settings.models_dir.rglob("*.safetensors"))
    refused = [
        "../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "/etc/passwd", str(REPO / "launch.py"),
        str(server.root / ".env"), str(model_file), str(server.settings.loras_dir / "style.safetensors"),
        str(card),  # identity cards (face embeddings) sit beside the outputs but are private
    ]
    for path in refused:
        status, body = fetch(base + path)
        assert status != 200 and not body, path


def test_upload_size_limit(server):
    import httpx

    r = httpx.post(server.url + "/gradio_api/upload", files={"files": ("big.png", b"\0" * 1_200_000, "image/png")},
                   timeout=30)
    assert r.status_code == 413
    ok = httpx.post(server.url + "/gradio_api/upload", files={"files": ("small.png", b"\0" * 1000, "image/png")},
                    timeout=30)
    assert ok.status_code == 200


def test_listen_without_auth_is_refused():
    env = {**os.environ, "LIKENESS_DEMO": "1"}
    p = subprocess.run([sys.executable, str(REPO / "launch.py"), "ui", "--listen", "--port", str(free_port()),
                        "--no-browser"], capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert p.returncode == 2 and "--auth" in p.stderr


@pytest.mark.slow
def test_gradio_client_train(server):
    from gradio_client import Client, handle_file

    client = Client(server.url, verbose=False, download_files=False)
    summary = client.predict(photos=[handle_file(str(server.photo))], name="me", steps=2, api_name="/train")
    assert summary["name"] == "me" and summary["steps"] == 2 and summary["photos_used"] == ["astronaut.png"]
    lora = server.settings.loras_dir / "me.safetensors"
    assert lora.is_file() and summary["file"] == "me.safetensors"
    status, body = fetch(server.url + "/gradio_api/file=" + str(lora))
    assert status != 200 and not body  # trained LoRAs are never served
