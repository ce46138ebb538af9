"""Daily use from the command line: defaults in `generate --help`, the port's
help, and step progress with an ETA (plain lines off a terminal)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import chromium_page, demo_ui_process, free_port

REPO = Path(__file__).resolve().parents[1]


def _help(*cmd: str) -> str:
    from cli.main import build_parser

    buf = io.StringIO()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    sub.choices[cmd[0]].print_help(buf)
    return " ".join(buf.getvalue().split())


def test_generate_help_shows_request_defaults_and_ui_port_help():
    from pipelines.requests import GenerateRequest

    text = _help("generate")
    f = GenerateRequest.model_fields
    assert f"--steps STEPS (default: {f['steps'].default})" in text
    assert f"--cfg CFG (default: {f['cfg'].default})" in text
    assert f"(default: {f['sampler'].default})" in text
    assert "--seed SEED" in text and "--seed SEED (default" not in text  # no default: random
    port = _help("ui")
    assert "--port PORT port to serve on (default: 7860)" in port


def test_step_progress_plain_lines_with_eta():
    from cli.generate import StepProgress

    out, clock = io.StringIO(), iter(range(0, 1000))
    p = StepProgress(out, count=2, now=lambda: next(clock) * 0.5)  # every step takes 0.5 s
    for image in range(2):
        for step in range(1, 21):
            p({"image_index": image, "step": step, "steps": 20})
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 20  # every 2 steps (a tenth of 20)
    assert lines[0] == "image 1/2: step 2/20, about 19s left"  # 38 steps left at 0.5 s
    assert lines[9] == "image 1/2: step 20/20, about 10s left"
    assert lines[-1] == "image 2/2: step 20/20, about 0s left"


def test_cli_generate_prints_step_progress(tiny_models_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LIKENESS_DEMO": "1"}
    r = subprocess.run(
        [sys.executable, "launch.py", "--demo", "--models-dir", str(tiny_models_dir), "--outputs-dir",
         str(tmp_path / "out"), "--device", "cpu", "generate", "--prompt", "a portrait", "--method", "none",
         "--steps", "3", "--width", "64", "--height", "64", "--seed", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "image 1/1: step 3/3" in r.stderr


# ------------------------------------------------------------------ gradio API


@pytest.fixture(scope="module")
def served(make_settings):
    from app.jobs import EngineHolder
    from app.security import resolve_launch
    from app.server import serve

    settings = make_settings("daily", accept_research_licenses=True)
    (settings.loras_dir / "people").mkdir(parents=True)
    (settings.loras_dir / "people" / "me.safetensors").write_bytes(b"x")
    cfg = resolve_launch(listen=False, port=free_port(), auth=None, insecure_no_auth=False, share=False, environ={})
    demo, url, _ = serve(settings, cfg, block=False, holder=EngineHolder(settings))
    try:
        yield settings, url
    finally:
        demo.close()


def test_gradio_generate_exposes_every_request_field_with_its_default(served):
    from gradio_client import Client

    from app.requests_map import API_BASIC, API_SERVER_ONLY
    from pipelines.requests import GenerateRequest

    _, url = served
    client = Client(url, verbose=False, download_files=False)
    params = {p["parameter_name"]: p for p in
              client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/generate"]["parameters"]}
    for name, f in GenerateRequest.model_fields.items():
        if name in API_SERVER_ONLY or name in API_BASIC:
            continue
        assert name in params, name
        p = params[name]
        default = f.get_default(call_default_factory=True)
        assert p["parameter_has_default"], name  # optional in view_api
        assert p["parameter_default"] == ("" if default is None and p["python_type"]["type"] == "str" else default), name
    assert params["steps"]["parameter_default"] == 30 and params["cfg"]["parameter_default"] == 5.0


def test_gradio_submit_reports_progress_and_likeness_is_a_result_field(served):
    from gradio_client import Client

    settings, url = served
    client = Client(url, verbose=False, download_files=False)
    job = client.submit(photos=[], prompt="a portrait", preset="", method="none", seed=4, count=1,
                        steps=12, width=64, height=64, negative="blurry", api_name="/generate")
    seen = []
    while not job.done():
        st = job.status()
        if st.progress_data:
            seen.append(st.progress_data[0])
    gallery, results = job.result(timeout=120)
    assert len(gallery) == 1 and results[0]["seed"] == 4 and results[0]["likeness"] is None
    assert "likeness" in results[0] and "face_found" in results[0]
    from pipelines.metadata import read_recipe

    recipe = read_recipe(next(settings.outputs_dir.rglob(results[0]["file"])))
    assert recipe["steps"] == 12 and recipe["negative"] == "blurry" and recipe["width"] == 64
    assert seen, "no progress reported"
    last = seen[-1]
    assert last.length == 12 and last.unit == "steps" and "step" in last.desc and "ETA" in last.desc


def test_gradio_list_endpoints(served):
    from gradio_client import Client

    from pipelines.presets import list_presets

    _, url = served
    client = Client(url, verbose=False, download_files=False)
    assert [p["name"] for p in client.predict(api_name="/presets")] == [p.name for p in list_presets()]
    assert client.predict(api_name="/loras") == [{"name": "people/me"}]
    assert any(p["name"] for p in client.predict(api_name="/poses"))
    models = client.predict(api_name="/models")
    assert {"name", "kind", "state"} <= set(models[0])


# ------------------------------------------------------------------ history


def _history(settings):
    import gradio as gr

    from app.history import HistoryTab
    from app.jobs import CancelRegistry, EngineHolder
    from app.portrait import PortraitTab
    from app.widgets import build_portrait

    with gr.Blocks():
        w = build_portrait(settings)
        tab = PortraitTab(settings, EngineHolder(settings, factory=lambda s: None), CancelRegistry(), w)
        with gr.Tabs() as tabs, gr.Tab("History"):
            history = HistoryTab(settings, tab, tabs, "portrait")
            history.build()
    return tab, history


def test_history_lists_only_likeness_portraits_with_captions(demo_settings):
    from PIL import Image

    from app.history import history_caption, list_outputs
    from pipelines.metadata import save_png

    out = demo_settings.outputs_dir / "2026-11-30"
    (out / "rejects").mkdir(parents=True)
    recipe = {"app": "likeness", "prompt": "a knight in shining armour on a white horse at dawn, oil painting",
              "seed": 3, "method": "faceid", "likeness": {"face_found": True, "mean": 0.61},
              "request": {"prompt": "a knight", "seed": 3}}
    notice = demo_settings.profile.notice
    ours = save_png(Image.new("RGB", (8, 8)), out / "likeness-1.png", parameters="p", recipe=recipe, notice=notice)
    save_png(Image.new("RGB", (8, 8)), out / "rejects" / "likeness-2.png", parameters="p", recipe=recipe, notice=notice)
    Image.new("RGB", (8, 8)).save(out / "screenshot.png")  # not ours
    (out / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    items = list_outputs(demo_settings.outputs_dir)
    assert [p for p, _ in items] == [ours]
    caption = history_caption(items[0][1])
    assert caption.startswith("a knight in shining armour on a white horse at…") and caption.endswith("likeness 0.61")


def test_dropped_png_fills_settings_from_likeness_or_a1111_and_names_the_upload(demo_settings, tmp_path):
    import gradio as gr
    from PIL import Image, PngImagePlugin

    from pipelines.metadata import a1111_parameters, save_png

    tab, history = _history(demo_settings)
    upload = tmp_path / "gradio" / "0f3c9a" / "from-a1111.png"  # gradio's upload folder layout
    upload.parent.mkdir(parents=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_parameters("a portrait, (red hat:1.2)", "blurry", 24, "Euler a", 6.5, 42,
                                                 832, 1216, "sdxl", "abc"))
    Image.new("RGB", (8, 8)).save(upload, pnginfo=info)
    updates = history.dropped(str(upload))
    by_key = {tab.w.fields[c]: v for c, v in updates.items() if c in tab.w.fields}
    assert by_key["prompt"] == "a portrait, (red hat:1.2)" and by_key["negative"] == "blurry"
    assert by_key["steps"] == 24 and by_key["cfg"] == 6.5 and by_key["seed"] == 42
    assert by_key["sampler"] == "Euler a" or by_key["sampler"] == "euler_a"
    assert updates[history.tabs].selected == "portrait"
    assert "**from-a1111.png**" in updates[history.drop_info] and str(upload.parent) not in updates[history.drop_info]

    ours = tmp_path / "gradio" / "77aa" / "mine.png"
    ours.parent.mkdir(parents=True)
    save_png(Image.new("RGB", (8, 8)), ours, parameters="p", notice=demo_settings.profile.notice,
             recipe={"prompt": "a knight", "request": {"prompt": "a knight", "seed": 9, "steps": 7}})
    by_key = {tab.w.fields[c]: v for c, v in history.dropped(str(ours)).items() if c in tab.w.fields}
    assert by_key["prompt"] == "a knight" and by_key["seed"] == 9 and by_key["steps"] == 7

    plain = tmp_path / "gradio" / "99bb" / "holiday.png"
    plain.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(gr.Error) as exc:
        history.dropped(str(plain))
    assert "holiday.png holds no Likeness recipe" in str(exc.value) and "gradio" not in str(exc.value)


# ------------------------------------------------------------------ in chromium


@pytest.fixture()
def ui_url(tiny_models_dir, tmp_path):
    import time

    with demo_ui_process(tiny_models_dir, tmp_path, stdout=subprocess.PIPE) as (proc, port):
        line = proc.stdout.readline()  # the UI prints its URL once it listens
        assert line.startswith(f"Likeness web UI: http://127.0.0.1:{port}/"), (line, proc.stderr.read()[-2000:]
                                                                               if proc.poll() is not None else "")
        time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"


@pytest.mark.browser
def test_daily_loop_in_chromium(ui_url, photos_dir, tmp_path):
    """At 1400x900: a preset click shows its result without scrolling; Cancel is
    live only while it runs; History has the new portrait with its likeness
    without a refresh; dropping that PNG on History restores its settings."""
    import urllib.request

    from playwright.sync_api import expect

    from pipelines.metadata import read_recipe

    with chromium_page(ui_url, height=900) as page:
        expect(page.locator("#demo-banner")).to_have_count(1)
        expect(page.locator("#cancel")).to_be_disabled()
        page.set_input_files("#photos input[type=file]", str(photos_dir / "astronaut.png"))
        expect(page.locator("#face-crops img")).to_have_count(1, timeout=90_000)
        page.locator("#preset-gallery button.thumbnail-item", has_text="Charcoal sketch").first.click()
        expect(page.locator("#cancel")).to_be_enabled(timeout=10_000)
        result = page.locator("#results img").first
        expect(result).to_be_visible(timeout=150_000)
        expect(page.locator("#status")).to_contain_text("Done")
        box = result.bounding_box()  # where it is in the viewport now, with no scroll after the click
        assert box is not None and 0 <= box["y"] and box["y"] + box["height"] / 2 <= 900, box
        expect(page.locator("#cancel")).to_be_disabled()
        src = result.get_attribute("src")
        dropped = tmp_path / "dropped.png"
        with urllib.request.urlopen(src, timeout=30) as r:
            dropped.write_bytes(r.read())

        page.get_by_role("tab", name="History").click()
        expect(page.locator("#history img")).to_have_count(1, timeout=20_000)  # no Refresh click
        # captioned with the prompt and the likeness (random weights rarely make a face)
        expect(page.locator("#history")).to_contain_text(
            __import__("re").compile(r"expressive charcoal sketch portrait.*· (likeness \d\.\d\d|no face found)"))

        page.get_by_role("tab", name="Portrait").click()
        page.locator("#prompt textarea").fill("something else")
        page.get_by_role("tab", name="History").click()
        page.set_input_files("#history-drop input[type=file]", str(dropped))
        expect(page.locator("#prompt textarea")).to_have_value(
            __import__("re").compile(r"^expressive charcoal sketch portrait"), timeout=20_000)
        expect(page.locator("#prompt textarea")).to_be_visible()  # the Portrait tab is shown again

        # save these settings as my preset; its card is offered and one click generates with it
        page.locator("#save-preset-name textarea, #save-preset-name input").first.fill("my-look")
        page.locator("#save-preset").click()
        card = page.locator("#preset-gallery button.thumbnail-item", has_text="my-look (yours)")
        expect(card).to_have_count(1, timeout=20_000)
        page.locator("#prompt textarea").fill("a man")  # with a preset, the prompt box names the person
        card.first.click()
        expect(page.locator("#preset input")).to_have_value("my-look (yours)", timeout=20_000)
        expect(page.locator("#cancel")).to_be_enabled(timeout=10_000)  # the second generation runs
        expect(page.locator("#cancel")).to_be_disabled(timeout=150_000)
        assert "Done" in page.locator("#status").inner_text(), page.locator("#status").inner_text()
    saved = tmp_path / "presets" / "my-look.json"
    assert saved.is_file()
    kept = __import__("json").loads(saved.read_text())
    made = sorted((tmp_path / "outputs").rglob("likeness-*.png"), key=lambda p: p.stat().st_mtime_ns)
    assert len(made) == 2, [read_recipe(m)["prompt"] for m in made]
    recipe = read_recipe(made[-1])
    assert recipe["steps"] == kept["steps"] and recipe["sampler"] == kept["sampler"] and recipe["prompt"].startswith("a man, expressive charcoal sketch portrait"), \
        (kept["prompt"], recipe["prompt"])


# ------------------------------------------------------------------ user presets


def test_user_preset_saved_listed_and_used_by_cli_and_batch(demo_settings, tmp_path):
    from pipelines.batch.jobfile import load_job
    from pipelines.errors import BadInput
    from pipelines.presets import (
        all_presets,
        get_preset,
        load_preset,
        preset_from_request,
        save_user_preset,
        user_presets_dir,
    )

    user_dir = user_presets_dir(demo_settings)
    mine = preset_from_request("my-look", "My look", {"prompt": "oil portrait, warm light", "method": "faceid",
                                                      "steps": 21, "cfg": 6.5, "width": 832, "height": 1216,
                                                      "sampler": "euler_a"})
    path = save_user_preset(user_dir, mine)
    assert path == user_dir / "my-look.json"
    with pytest.raises(BadInput, match="already exists"):
        save_user_preset(user_dir, mine)
    with pytest.raises(BadInput, match="taken by a shipped preset"):
        save_user_preset(user_dir, preset_from_request("polaroid", "x", {"prompt": "p", "method": "faceid"}))
    assert ("my-look", True) in [(p.name, u) for p, u in all_presets(user_dir)]
    fields = load_preset("my-look", subject="a man", user_dir=user_dir)
    assert fields["prompt"].startswith("a man") and "oil portrait" in fields["prompt"]
    assert fields["steps"] == 21 and (fields["width"], fields["height"]) == (832, 1216)
    assert get_preset("my-look", user_dir=user_dir).sampler == "euler_a"
    with pytest.raises(BadInput, match="does not exist"):
        get_preset("my-look")  # only where the user's folder is named

    job = tmp_path / "job.yaml"
    job.write_text("items:\n  - preset: my-look\n    method: none\n")
    loaded = load_job(job, demo_settings.profile, presets_dir=user_dir)
    req = loaded.items[0].request
    assert req.steps == 8 and req.sampler == "euler_a" and "oil portrait" in req.prompt  # demo caps steps at 8

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "launch.py", "--demo", "--loras-dir", str(demo_settings.loras_dir),
                        "--models-dir", str(demo_settings.models_dir), "presets", "list"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "my-look" in r.stdout and "My look (yours)" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "launch.py", "--demo", "--loras-dir", str(demo_settings.loras_dir),
                        "--models-dir", str(demo_settings.models_dir), "presets", "show", "my-look"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and '"sampler": "euler_a"' in r.stdout, r.stderr


def test_save_preset_from_the_portrait_tab(demo_settings):
    import gradio as gr

    from app.requests_map import request_from_ui
    from pipelines.presets import user_presets_dir

    tab, _ = _history(demo_settings)
    w = tab.w
    values = {w.by_key["prompt"]: "charcoal portrait, soft light", w.by_key["steps"]: 17, w.by_key["cfg"]: 4.5,
              w.by_key["method"]: "instantid", w.by_key["preset"]: "(none)", w.by_key["size"]: "portrait",
              w.extra["save_name"]: "sketchy"}
    out = tab.save_preset(values)
    saved = user_presets_dir(demo_settings) / "sketchy.json"
    assert saved.is_file()
    assert "sketchy" in w.preset_names  # the gallery's click index finds it
    dropdown = out[w.by_key["preset"]]
    assert dropdown["value"] == "sketchy" and ("sketchy (yours)", "sketchy") in dropdown["choices"]
    assert any(caption.startswith("sketchy (yours)") for _, caption in out[w.preset_gallery]["value"])
    picked = {tab.w.fields[c]: v for c, v in tab.preset_fields("sketchy").items()}
    assert picked["steps"] == 8 and picked["method"] == "instantid"  # demo caps steps at 8
    req = request_from_ui({"preset": "sketchy", "prompt": "a woman", "method": "none"},
                          demo_settings.profile, user_presets_dir(demo_settings))
    assert req.prompt.startswith("a woman") and "charcoal portrait" in req.prompt
    with pytest.raises(gr.Error, match="preset name is empty"):
        tab.save_preset({**values, w.extra["save_name"]: " "})


def test_extracted_poses_appear_in_the_pose_choices(demo_settings):
    import json
    import shutil

    import gradio as gr

    from app.widgets import build_portrait
    from pipelines.pose.templates import ASSETS_POSES, builtin_names, user_poses_dir

    src = ASSETS_POSES / f"{builtin_names()[0]}.json"
    dest = user_poses_dir(demo_settings) / "my-pose.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(src.read_text())
    data["name"] = "my-pose"
    dest.write_text(json.dumps(data))
    with gr.Blocks():
        w = build_portrait(demo_settings)
    assert "my-pose" in [v for _, v in w.by_key["pose"].choices]
    shutil.rmtree(dest.parent)


def test_messages_name_the_uploaded_file_not_the_temp_path(tmp_path, monkeypatch):
    from app.portrait import user_error
    from app.requests_map import hide_upload_paths
    from pipelines.errors import BadInput
    from pipelines.imageio import load_photo

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    upload = tmp_path / "gradio" / "5e1d0c7a9b" / "holiday photo.gif"
    upload.parent.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(upload, format="GIF")
    with pytest.raises(BadInput) as exc:
        load_photo(upload)
    assert str(upload) in str(exc.value)  # the engine names the path it was given
    shown = user_error(exc.value).message
    assert shown.startswith("holiday photo.gif is a GIF image") and "gradio" not in shown and "5e1d" not in shown
    assert hide_upload_paths(f"'{upload}' and {upload.parent}/b.png") == "'holiday photo.gif' and b.png"
    assert hide_upload_paths("/home/me/photo.png") == "/home/me/photo.png"  # other paths stay


def test_reference_pose_photo_takes_the_place_of_a_template(demo_settings, photos_dir):
    import gradio as gr

    from app.requests_map import request_data
    from app.widgets import build_portrait

    with gr.Blocks():
        w = build_portrait(demo_settings)
    assert isinstance(w.by_key["pose_photo"], gr.File)  # the UI offers the upload
    ref = str(photos_dir / "astronaut.png")
    data = request_data({"prompt": "p", "method": "none", "pose": "chin-up", "pose_photo": ref}, demo_settings.profile)
    assert data["pose"] == ref
    assert request_data({"prompt": "p", "method": "none", "pose": "chin-up"}, demo_settings.profile)["pose"] == "chin-up"


def test_render_cards_script_draws_a_generated_card_with_its_title_band(demo_settings, photos_dir, tmp_path):
    import importlib.util

    from PIL import Image

    spec = importlib.util.spec_from_file_location("render_cards", REPO / "assets" / "presets" / "render_cards.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    written = mod.render(str(photos_dir / "astronaut.png"), tmp_path / "cards", demo_settings, only=["polaroid"])
    assert [p.name for p in written] == ["polaroid.png"]
    card = Image.open(written[0])
    assert card.size == mod.CARD
    renders = list((tmp_path / "cards" / ".renders").rglob("likeness-*.png"))
    assert len(renders) == 1  # the card shows a real generation of the preset
    band = card.crop((0, 0, mod.CARD[0], mod.BAND)).getcolors(10_000)
    assert band is not None and len(band) > 2  # title text drawn in the band, above the image


def test_uploaded_photos_become_named_thumbnails(tmp_path, photos_dir):
    from PIL import Image

    from app.requests_map import photo_thumbnails

    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image")
    thumbs = photo_thumbnails([str(photos_dir / "astronaut.png"), str(bad)], side=100)
    assert [n.split(":")[0] for _, n in thumbs] == ["astronaut.png", "notes.png"]
    assert isinstance(thumbs[0][0], Image.Image) and max(thumbs[0][0].size) == 100
    assert "unreadable" in thumbs[1][1] and str(tmp_path) not in thumbs[1][1]
