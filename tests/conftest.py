"""Shared fixtures and helpers. Tests are offline: HF_HUB_OFFLINE=1, and any socket
connection to a non-loopback address fails the test.

Test modules import the plain helpers (`from conftest import ...`): `fast_request`
(the request fields of a fast tiny-model run; a module states only what it changes),
`generate_on_astronaut`, `run_bench`, the astronaut's face points, and the web-UI
and chromium helpers. Settings and engines come from the `make_settings` and
`make_engine` fixtures."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_loopback(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self, address):
    if not _is_loopback(address):
        raise AssertionError(f"test tried to reach the network: {address!r}")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if not _is_loopback(address):
        raise AssertionError(f"test tried to reach the network: {address!r}")
    return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]

REPO = Path(__file__).resolve().parents[1]


# The request fields of a fast run on the tiny models: few steps, the smallest size,
# Euler, a fixed seed. Test modules take them through `fast_request`, stating only
# what they change.
FAST_REQUEST = dict(steps=2, width=64, height=64, cfg=5.0, sampler="euler", prompt="a portrait", seed=3)


def fast_request(*, without: tuple[str, ...] = (), **overrides) -> dict:
    """A fresh dict of `FAST_REQUEST` with `overrides` applied; the fields named in
    `without` are left out, so the request's own defaults apply to them."""
    unknown = set(without) - FAST_REQUEST.keys()
    if unknown:
        raise KeyError(f"fast_request: without names no fast field: {sorted(unknown)}")
    return {k: v for k, v in {**FAST_REQUEST, **overrides}.items() if k not in without}


# bench/generate.py on the tiny models: the smallest run that exercises every row
BENCH_GENERATE_FAST = ["--steps", "2", "--width", "64", "--height", "64", "--repeats", "1", "--threads", "1",
                       "--device", "cpu", "--dtype", "float32"]


def run_bench(script: str, args: list[str], models_dir: Path, cwd: Path, timeout: int = 900) -> tuple[dict, str]:
    """Runs bench/`script` with `args` on `models_dir` in a subprocess, with one
    OpenMP thread (CPU cores here are shared, and spinning threads are slow); asserts
    that it succeeds and returns the one JSON object it prints and its stderr."""
    import json
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("LIKENESS_MODELS_DIR", None)
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *args, "--models-dir", str(models_dir)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout), proc.stderr


def generate_on_astronaut(engine, photos_dir: Path, fields: dict, **kw):
    """`engine.generate` of the request made of `fields`, the astronaut photo and
    `kw` (which wins over both)."""
    from pipelines.requests import GenerateRequest

    return engine.generate(GenerateRequest(**{**fields, "photos": [str(photos_dir / "astronaut.png")], **kw}))


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """One models dir per test session; tiny packs are built into its demo/ folder
    on first use and shared by every test."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture()
def demo_settings(tiny_models_dir, tmp_path):
    from pipelines.settings import load_settings

    return load_settings(
        models_dir=tiny_models_dir,
        loras_dir=tmp_path / "loras",
        outputs_dir=tmp_path / "outputs",
        device="cpu",
        dtype="float32",
        demo=True,
        accept_research_licenses=True,
    )


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory) -> Path:
    """Real photos that ship inside wheels, written as files."""
    import shutil

    import insightface
    from PIL import Image
    from skimage import data

    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.astronaut()).save(d / "astronaut.png")
    Image.fromarray(data.chelsea()).save(d / "chelsea.png")
    t1 = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    shutil.copy(t1, d / "t1.jpg")
    return d


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The models in tests are tiny: with several CPU threads, thread start-up and
    waiting dominate (and cores are shared with subprocesses), so one is faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def make_settings(tiny_models_dir, tmp_path_factory):
    """Settings factory: demo mode on the session's tiny models, CPU, float32, in a
    fresh folder named `name` holding outputs/ and loras/ side by side (as a user's
    install: LoRAs are never inside the served outputs); `overrides` go to
    `load_settings`."""
    from pipelines.settings import load_settings

    def make(name: str = "out", **overrides):
        root = tmp_path_factory.mktemp(name)
        kw = dict(models_dir=tiny_models_dir, outputs_dir=root / "outputs", loras_dir=root / "loras", device="cpu",
                  dtype="float32", demo=True)
        return load_settings(**{**kw, **overrides})

    return make


def real_settings(folder: Path, **overrides):
    """Settings of a fresh install in `folder` (models/, loras/, outputs/; nothing
    downloaded), CPU, float32; `overrides` go to `load_settings`."""
    from pipelines.settings import load_settings

    kw = dict(models_dir=folder / "models", loras_dir=folder / "loras", outputs_dir=folder / "outputs",
              device="cpu", dtype="float32")
    return load_settings(**{**kw, **overrides})


@pytest.fixture(scope="session")
def make_engine(make_settings):
    """Engine factory: an `Engine` on `make_settings(name, **overrides)`; a test
    module keeps one in a module-scoped `engine` fixture."""

    def make(name: str = "engine-out", **overrides):
        from pipelines.engine import Engine

        return Engine(make_settings(name, **overrides))

    return make


# a face in skimage's astronaut photo: eyes, nose, mouth corners (x, y)
ASTRONAUT_KPS = np.array([[177, 111], [209, 112], [195, 130], [180, 152], [208, 152]], dtype=np.float64)


def aligned_astronaut(size: int = 256) -> np.ndarray:
    """The astronaut's face (`ASTRONAUT_KPS`) in the FFHQ alignment the W+ path uses
    (pipelines/wplus/align.py), as a `size`² RGB crop."""
    from skimage import data

    from pipelines.wplus.align import align_face

    return align_face(data.astronaut(), ASTRONAUT_KPS, size=size).image


@pytest.fixture(scope="session")
def demo_store(tiny_models_dir):
    """The model store over the session's tiny packs (research licences accepted)."""
    from pipelines.settings import load_settings
    from pipelines.stores import open_store

    settings = load_settings(models_dir=tiny_models_dir, device="cpu", dtype="float32", demo=True,
                             accept_research_licenses=True)
    return open_store(settings)


@pytest.fixture(scope="module")
def e4e(demo_store):
    """The tiny e4e encoder pack (pipelines/wplus/e4e.py), loaded: (encoder, latent_avg)."""
    from pipelines.wplus.e4e import load_e4e

    demo_store.ensure("e4e-ffhq")
    return load_e4e(demo_store.file_path("e4e-ffhq", "e4e_ffhq_encode.pt"))


@pytest.fixture(scope="module")
def wplus_directions(demo_store):
    """The tiny W+ edit directions pack (pipelines/wplus/edits.py), loaded."""
    from pipelines.wplus.edits import load_directions

    return load_directions(demo_store.ensure("wplus-directions"))


@pytest.fixture()
def cli_generate(capsys):
    """Runs the command line's `generate` (cli/generate.py) with `args` on `settings`,
    asserts that it succeeds and returns what it wrote to stderr."""
    import argparse

    from cli.generate import cmd_generate, register

    def run(settings, args: list[str]) -> str:
        parser = argparse.ArgumentParser()
        register(parser.add_subparsers())
        parsed = parser.parse_args(["generate", *args])
        capsys.readouterr()
        assert cmd_generate(parsed, settings) == 0
        return capsys.readouterr().err

    return run


@pytest.fixture()
def run_demo_eval(tiny_models_dir, photos_dir, tmp_path, capsys):
    """`launch.py --demo eval` on the astronaut with one prompt, one seed, 2 steps
    at 64 px for `methods`; returns the rows of images.csv."""
    import csv
    import shutil

    from cli.main import run

    def go(methods: str) -> list[dict]:
        ids = tmp_path / "ids" / "astronaut"
        ids.mkdir(parents=True, exist_ok=True)
        shutil.copy(photos_dir / "astronaut.png", ids / "a.png")
        (tmp_path / "prompts.txt").write_text("a portrait photo\n")
        out = tmp_path / "report"
        rc = run(["--demo", "--models-dir", str(tiny_models_dir), "--outputs-dir", str(tmp_path / "outputs"),
                  "--device", "cpu", "--dtype", "float32", "eval", "--identities", str(tmp_path / "ids"),
                  "--prompts", str(tmp_path / "prompts.txt"), "--methods", methods, "--seeds", "1",
                  "--seed", "5", "--steps", "2", "--width", "64", "--height", "64", "--out", str(out)])
        cap = capsys.readouterr()
        assert rc == 0, cap.err
        with open(out / "images.csv", newline="") as fh:
            return list(csv.DictReader(fh))

    return go


# ------------------------------------------------------------ the web UI and chromium
CHROMIUM = "/usr/bin/chromium"  # Debian's chromium, never a downloaded browser
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond, timeout: float = 20.0, poll: float = 0.02) -> bool:
    """Polls `cond()` every `poll` s until it is true (True) or `timeout` s pass (False)."""
    import time

    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            return False
        time.sleep(poll)
    return True


def stop_process(proc) -> None:
    """Terminates `proc` (a `subprocess.Popen`), killing it if it has not exited after 20 s."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def demo_ui_process(models_dir: Path, folder: Path, *, stdout=None, **env):
    """`launch.py ui` in demo mode on a free port, on the CPU with one OpenMP thread,
    outputs in `folder`/outputs, LoRAs in `folder`/loras, run in `folder`; `env` is
    added to its environment and its stderr is a pipe (stdout: `stdout`, default
    discarded). Yields (the process, its port) and stops it on exit."""
    import subprocess
    import sys

    port = free_port()
    full_env = {**os.environ, "LIKENESS_DEMO": "1", "LIKENESS_MODELS_DIR": str(models_dir),
                "LIKENESS_OUTPUTS_DIR": str(folder / "outputs"), "LIKENESS_LORAS_DIR": str(folder / "loras"),
                "LIKENESS_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", **env}
    proc = subprocess.Popen([sys.executable, str(REPO / "launch.py"), "ui", "--port", str(port), "--no-browser"],
                            cwd=folder, env=full_env, stdout=subprocess.DEVNULL if stdout is None else stdout,
                            stderr=subprocess.PIPE, text=True)
    try:
        yield proc, port
    finally:
        stop_process(proc)


def wait_for_port(port: int, proc, timeout: float = 120) -> None:
    """Waits until `proc` listens on 127.0.0.1:`port`; fails with its stderr if it exits first."""
    import time

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
    """The demo web UI in a subprocess, once it listens: (its URL, its outputs folder)."""
    # GRADIO_SERVER_NAME must be ignored: the app binds 127.0.0.1
    with demo_ui_process(tiny_models_dir, tmp_path, GRADIO_SERVER_NAME="0.0.0.0") as (proc, port):
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}", tmp_path / "outputs"


@contextlib.contextmanager
def chromium_page(url: str, width: int = 1400, height: int = 1600):
    """A page of headless chromium (driven by playwright) at `url`, with a
    `width` x `height` viewport; the browser is closed on exit."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), "install Debian's chromium first (make browser)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url)
            yield page
        finally:
            browser.close()
