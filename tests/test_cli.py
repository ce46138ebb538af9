"""The command line as a user runs it: subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, stop_process

REPO = Path(__file__).resolve().parents[1]


def cli(*args, env=None, timeout=600):
    e = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    e.pop("LIKENESS_DEMO", None)
    e.update(env or {})
    return subprocess.run([sys.executable, str(REPO / "launch.py"), *args], cwd=REPO, env=e,
                          capture_output=True, text=True, timeout=timeout)


def test_help_lists_commands():
    r = cli("--help")
    assert r.returncode == 0
    for cmd in ("ui", "models", "generate", "poses"):
        assert cmd in r.stdout


def test_bad_usage_exits_2_with_one_line():
    r = cli("no-such-command")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_models_list_offline(tmp_path):
    from pipelines.models.catalog import load_catalog

    r = cli("--models-dir", str(tmp_path), "models", "list")
    assert r.returncode == 0, r.stderr
    for entry in load_catalog():
        assert entry.name in r.stdout
    assert "missing" in r.stdout and "research-only" in r.stdout


def test_invalid_setting_from_environment_names_the_variable(tmp_path):
    r = cli("models", "list", env={"LIKENESS_DEVICE": "banana"})
    assert r.returncode == 2
    assert "LIKENESS_DEVICE" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_download_unknown_model_is_bad_input(tmp_path):
    r = cli("--models-dir", str(tmp_path), "models", "download", "nope")
    assert r.returncode == 2 and "unknown model 'nope'" in r.stderr


def test_download_research_model_needs_acceptance(tmp_path):
    r = cli("--models-dir", str(tmp_path), "models", "download", "instantid")
    assert r.returncode == 2 and "--accept-license" in r.stderr  # refused before any download


def test_demo_models_verify_builds_and_verifies_every_pack(tiny_models_dir):
    from pipelines.models.catalog import load_catalog

    r = cli("--demo", "--models-dir", str(tiny_models_dir), "models", "verify")
    assert r.returncode == 0, r.stdout + r.stderr
    for entry in load_catalog():
        assert f"{entry.name}: verified" in r.stdout
    assert "demo models: random weights" in r.stderr


def test_generate_writes_pngs_and_no_face_exits_2(tiny_models_dir, photos_dir, tmp_path):
    common = ["--demo", "--models-dir", str(tiny_models_dir), "--outputs-dir", str(tmp_path / "o"), "generate",
              "--prompt", "a portrait", "--steps", "2", "--width", "64", "--height", "64", "--seed", "7"]
    r = cli(*common, "--photo", str(photos_dir / "astronaut.png"), "-n", "2", "--out", str(tmp_path / "x"))
    assert r.returncode == 0, r.stderr
    paths = r.stdout.split()
    assert len(paths) == 2 and all(Path(p).is_file() for p in paths)
    r = cli(*common, "--photo", str(photos_dir / "chelsea.png"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: no face found in")
    assert "Traceback" not in r.stderr
    r = cli(*common, "--photo", str(photos_dir / "astronaut.png"), "--steps", "0")
    assert r.returncode == 2 and "steps" in r.stderr


def _listen_addresses(port: int) -> set[str]:
    addrs = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, state = parts[1], parts[3]
            ip_hex, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:
                addrs.add(ip_hex)
    return addrs


def test_demo_ui_serves_on_loopback_only(tiny_models_dir, tmp_path):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_SERVER_NAME": "0.0.0.0"}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "launch.py"), "--demo", "--models-dir", str(tiny_models_dir),
         "--outputs-dir", str(tmp_path), "ui", "--port", str(port), "--no-browser"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        html = ""
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                html = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(proc.stdout.read())
                time.sleep(1)
        assert "Likeness" in html or "gradio" in html.lower()
        assert _listen_addresses(port) == {"0100007F"}  # 127.0.0.1 only, despite GRADIO_SERVER_NAME
    finally:
        stop_process(proc)


def test_listen_without_auth_is_refused():
    r = cli("ui", "--listen", "--no-browser")
    assert r.returncode == 2 and "--auth" in r.stderr


def test_models_register_refuses_pickles_and_non_sdxl_files(tmp_path):
    ckpt = tmp_path / "mine.ckpt"
    ckpt.write_bytes(b"\x80\x04pickle")
    r = cli("--models-dir", str(tmp_path), "models", "register", str(ckpt))
    assert r.returncode == 2 and "only .safetensors" in r.stderr and "mine.ckpt" in r.stderr
    import torch
    from safetensors.torch import save_file

    sdxl = tmp_path / "my-sdxl.safetensors"
    save_file({"model.diffusion_model.x": torch.zeros(1), "conditioner.embedders.1.y": torch.zeros(1)}, sdxl)
    r = cli("--models-dir", str(tmp_path), "models", "register", str(sdxl))
    assert r.returncode == 0 and "'my-sdxl'" in r.stdout
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1)}, lora)
    r = cli("--models-dir", str(tmp_path), "models", "register", str(lora))
    assert r.returncode == 2 and "not a single-file" in r.stderr
