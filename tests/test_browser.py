"""The app in a real browser: Debian chromium driven by playwright (never a
downloaded browser) against `launch.py ui` in demo mode. Upload the astronaut
photo, click a preset, wait for the result image, fetch it: served, a PNG."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from conftest import chromium_page

PRESET_TITLE = "Charcoal sketch"  # a square preset: the fastest in demo mode

pytestmark = pytest.mark.browser


def test_preset_click_yields_a_served_image(ui_server, photos_dir, tmp_path):
    from playwright.sync_api import expect

    from pipelines.metadata import read_recipe

    url, outputs = ui_server
    with chromium_page(url) as page:
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
