"""Shared fixtures. Tests are offline: HF_HUB_OFFLINE=1, and any socket connection
to a non-loopback address fails the test."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

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
    """Settings factory: demo mode on the session's tiny models, CPU, float32, a
    fresh outputs folder named `name` (LoRAs in its loras/); `overrides` go to
    `load_settings`."""
    from pipelines.settings import load_settings

    def make(name: str = "out", **overrides):
        out = tmp_path_factory.mktemp(name)
        kw = dict(models_dir=tiny_models_dir, outputs_dir=out, loras_dir=out / "loras", device="cpu",
                  dtype="float32", demo=True)
        return load_settings(**{**kw, **overrides})

    return make


@pytest.fixture(scope="session")
def make_engine(make_settings):
    """Engine factory: an `Engine` on `make_settings(name, **overrides)`; a test
    module keeps one in a module-scoped `engine` fixture."""

    def make(name: str = "engine-out", **overrides):
        from pipelines.engine import Engine

        return Engine(make_settings(name, **overrides))

    return make


# a face in skimage's astronaut photo: eyes, nose, mouth corners (x, y)
ASTRONAUT_KPS = [[177, 111], [209, 112], [195, 130], [180, 152], [208, 152]]


@pytest.fixture(scope="session")
def demo_store(tiny_models_dir):
    """The model store over the session's tiny packs (research licences accepted)."""
    from pipelines.settings import load_settings
    from pipelines.stores import open_store

    settings = load_settings(models_dir=tiny_models_dir, device="cpu", dtype="float32", demo=True,
                             accept_research_licenses=True)
    return open_store(settings)


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
