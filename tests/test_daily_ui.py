"""Daily use from the command line: defaults in `generate --help`, the port's
help, and step progress with an ETA (plain lines off a terminal)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

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
