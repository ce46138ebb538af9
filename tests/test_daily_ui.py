"""Daily use from the command line: defaults in `generate --help`, the port's
help, and step progress with an ETA (plain lines off a terminal)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _help(*cmd: str) -> str:
    from pipelines.cli.main import build_parser

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
    from pipelines.cli.generate import StepProgress

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
def served(tmp_path_factory, tiny_models_dir):
    import socket

    from app.jobs import EngineHolder
    from app.security import resolve_launch
    from app.server import serve
    from pipelines.settings import load_settings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = tmp_path_factory.mktemp("daily")
    settings = load_settings(models_dir=tiny_models_dir, loras_dir=d / "loras", outputs_dir=d / "outputs",
                             device="cpu", dtype="float32", demo=True, accept_research_licenses=True)
    (d / "loras" / "people").mkdir(parents=True)
    (d / "loras" / "people" / "me.safetensors").write_bytes(b"x")
    cfg = resolve_launch(listen=False, port=port, auth=None, insecure_no_auth=False, share=False, environ={})
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
