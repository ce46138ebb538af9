"""The app in a real browser: Debian chromium driven by playwright (never a
downloaded browser) against `launch.py ui` in demo mode. Upload the astronaut
photo, click a preset, wait for the result image, fetch it: served, a PNG."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PRESET_TITLE = "Charcoal sketch"  # a square preset: the fastest in demo mode

pytestmark = pytest.mark.browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the UI exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the UI did not listen on 127.0.0.1:{port} within {timeout} s")


@pytest.fixture()
def ui_server(tiny_models_dir, tmp_path):
    port = free_port()
    env = {**os.environ, "LIKENESS_DEMO": "1", "LIKENESS_MODELS_DIR": str(tiny_models_dir),
           "LIKENESS_OUTPUTS_DIR": str(tmp_path / "outputs"), "LIKENESS_LORAS_DIR": str(tmp_path / "loras"),
           "LIKENESS_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_SERVER_NAME": "0.0.0.0"}  # must be ignored: the app binds 127.0.0.1
    proc = subprocess.Popen([sys.executable, str(REPO / "launch.py"), "ui", "--port", str(port), "--no-browser"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}", tmp_path / "outputs"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_preset_click_yields_a_served_image(ui_server, photos_dir, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from pipelines.metadata import read_recipe

    assert Path(CHROMIUM).is_file(), "install Debian's chromium first (make browser)"
    url, outputs = ui_server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.goto(url)
            expect(page.locator("#demo-banner")).to_contain_text("demo models: random weights")
            page.set_input_files("#photos input[type=file]", str(photos_dir / "astronaut.png"))
            expect(page.locator("#face-crops img")).to_have_count(1, timeout=90_000)  # the detected face
            expect(page.locator("#photo-report")).to_contain_text("1 of 1")
            page.locator("#preset-gallery button.thumbnail-item", has_text=PRESET_TITLE).first.click()
            result = page.locator("#results img").first
            expect(result).to_be_visible(timeout=150_000)
            expect(page.locator("#status")).to_contain_text("Done")
            expect(page.locator("#preset input")).to_have_value(PRESET_TITLE)
            src = result.get_attribute("src")
        finally:
            browser.close()
    assert src.startswith(url + "/gradio_api/file=")
    with urllib.request.urlopen(src, timeout=30) as r:
        assert r.status == 200
        body = r.read()
    assert body[:8] == b"\x89PNG\r\n\x1a\n"
    served = tmp_path / "served.png"
    served.write_bytes(body)
    recipe = read_recipe(served)  # the download carries the recipe of the preset that made it
    assert recipe["prompt"].startswith("expressive charcoal sketch portrait of a person")
    assert [p.name for p in outputs.rglob("likeness-*.png")] == [Path(src).name]
