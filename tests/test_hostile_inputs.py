"""Hostile and careless inputs: every one is refused with one line naming the file or
field (exit 2 through the CLI), in bounded time, and nothing steers the app.

One test per class: alias bombs, duplicate blow-ups, device files, recipes that
steer output, LoRA header metadata and NaN tensors, swapped checkpoints, the
"unexpected" errors (deep nesting, inf in headers, NUL bytes, devices, ports),
dry-run completeness, messages, and privacy of recipes. A property test feeds
random and mutated job files, recipes and safetensors headers to the loaders."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.batch import jobfile as jf
from pipelines.errors import BadInput, LikenessError, ModelError

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)  # a hang is a failure, not a stuck suite


def cli(*args, env=None, timeout=120):
    e = {**os.environ, "HF_HUB_OFFLINE": "1"}
    e.pop("LIKENESS_DEMO", None)
    e.update(env or {})
    return subprocess.run([sys.executable, str(REPO / "launch.py"), *args], cwd=REPO, env=e,
                          capture_output=True, text=True, timeout=timeout)


def one_line_exit_2(r) -> str:
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("[demo")]
    assert len(lines) == 1 and not lines[0].startswith("error: unexpected"), r.stderr
    return lines[0]


@pytest.fixture()
def job_dir(tmp_path, photos_dir):
    d = tmp_path / "job"
    (d / "photos").mkdir(parents=True)
    (d / "photos" / "astronaut.png").write_bytes((photos_dir / "astronaut.png").read_bytes())
    return d


GOOD_HEAD = "identities:\n  alice: {photos: [photos/astronaut.png]}\nitems:\n"


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    try:
        fn(*args, **kwargs)
    except LikenessError as exc:
        return exc, time.perf_counter() - t0
    raise AssertionError("no error was raised")


# ----------------------------------------------------------------- hangs / blow-ups
def test_alias_bomb_is_refused_with_a_line_number_fast(job_dir):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]")
    bomb = "\n".join(lines) + "\nidentities: {}\nitems:\n  - prompt: p\n    method: none\n    seeds: *i\n"
    p = job_dir / "bomb.yaml"
    p.write_text(bomb)
    assert len(bomb) < 1000
    exc, seconds = timed(jf.load_job, p)
    assert seconds < 1.0
    assert "line 1:" in str(exc) and "anchors and aliases" in str(exc)
    # a single harmless alias is refused too: the rule is simple and checkable
    p.write_text(GOOD_HEAD + "  - {prompt: &p hello, method: none}\n  - {prompt: *p, method: none}\n")
    assert "line 4:" in str(timed(jf.load_job, p)[0])


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_deep_nesting_is_one_line_not_recursion_error(job_dir, suffix):
    p = job_dir / f"deep{suffix}"
    p.write_text('{"items": ' + "[" * 50_000 + "]" * 50_000 + "}")
    exc, seconds = timed(jf.load_job, p)
    assert isinstance(exc, BadInput) and "nested" in str(exc) and seconds < 2.0


def test_duplicates_count_against_the_item_cap_before_expansion(job_dir):
    # 400 x 400 x 1000 = 1.6e8 identical combinations: one unique item
    body = (GOOD_HEAD + "  - identity: alice\n    prompts: [" + ", ".join(["p"] * 400) + "]\n"
            "    methods: [" + ", ".join(["faceid"] * 400) + "]\n    seeds: [" + ", ".join(["1"] * 1000) + "]\n")
    p = job_dir / "dups.yaml"
    p.write_text(body)
    exc, seconds = timed(jf.load_job, p)
    assert seconds < 2.0 and "more than 100000 items (duplicates included)" in str(exc) and "line 4" in str(exc)


def _fifo(tmp_path) -> Path:
    f = tmp_path / "pipe.png"
    os.mkfifo(f)
    return f


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "/dev/urandom", "folder"])
def test_device_files_are_refused_everywhere_a_user_names_a_file(job_dir, tmp_path, kind):
    from pipelines.engine import _file_digest
    from pipelines.imageio import load_photo
    from pipelines.metadata import read_recipe

    target = {"fifo": None, "folder": tmp_path}.get(kind, kind)
    target = _fifo(tmp_path) if kind == "fifo" else Path(target)
    if not target.exists():
        pytest.skip(f"{target} does not exist here")
    t0 = time.perf_counter()
    for call in (lambda: load_photo(target), lambda: _file_digest(target), lambda: read_recipe(target)):
        with pytest.raises(BadInput, match=r"not a file|folder"):
            call()
    p = job_dir / "dev.json"  # the job loader (batch, --dry-run, the UI's Check)
    p.write_text(json.dumps({"identities": {"a": {"photos": [str(target)]}},
                             "items": [{"prompt": "p"}]}))
    with pytest.raises(BadInput, match=r"identities\.a\.photos\[0\]: .*(not a file|folder)"):
        jf.load_job(p)
    p.write_text(json.dumps({"identities": {"a": {"card": str(target)}}, "items": [{"prompt": "p"}]}))
    with pytest.raises(BadInput, match=r"identities\.a\.card"):
        jf.load_job(p)
    if kind != "folder":
        with pytest.raises(BadInput, match="not a file"):
            jf.load_job(target)  # the job file itself
    assert time.perf_counter() - t0 < 5


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_a_pose_file_that_is_a_fifo_is_refused_by_the_engine(demo_settings, tmp_path):
    from pipelines.engine import Engine
    from pipelines.requests import GenerateRequest

    fifo = tmp_path / "pose.json"
    os.mkfifo(fifo)
    req = GenerateRequest(prompt="p", method="none", pose=str(fifo), steps=1, width=64, height=64)
    with pytest.raises(BadInput, match="pose file .* is a pipe"):
        Engine(demo_settings)._pose_unit(req, "sdxl", 64, 64)  # before any model is loaded


def test_oversized_user_files_are_refused_before_reading(tmp_path):
    from pipelines.imageio import read_user_file

    big = tmp_path / "big.bin"
    with open(big, "wb") as fh:
        fh.truncate(10_000_001)  # sparse: no real bytes to read
    with pytest.raises(BadInput, match="10,000,001 bytes; the limit is 1,000"):
        read_user_file(big, max_bytes=1000)


# ------------------------------------------------------------ the "unexpected" branch
def test_nul_byte_and_url_photos_are_job_errors(job_dir):
    p = job_dir / "nul.json"
    p.write_text(json.dumps({"identities": {"a": {"photos": ["photos/a\u0000b.png"]}}, "items": [{"prompt": "p"}]}))
    with pytest.raises(BadInput, match=r"identities\.a\.photos\[0\]: the path contains a NUL byte"):
        jf.load_job(p)
    p.write_text(json.dumps({"identities": {"a": {"photos": ["https://example.com/me.jpg"]}},
                             "items": [{"prompt": "p"}]}))
    with pytest.raises(BadInput, match=r"is a URL; download the file"):
        jf.load_job(p)


def test_cli_unexpected_cases_are_one_line_exit_2(job_dir, tmp_path):
    p = job_dir / "nul.json"
    p.write_text(json.dumps({"identities": {"a": {"photos": ["a\u0000b.png"]}}, "items": [{"prompt": "p"}]}))
    assert "NUL byte" in one_line_exit_2(cli("batch", str(p), "--dry-run"))
    assert "is a file, not a folder" in one_line_exit_2(
        cli("--outputs-dir", "/dev/null", "generate", "--prompt", "p", "--method", "none"))
    existing = tmp_path / "file.txt"
    existing.write_text("x")
    assert "is a file, not a folder" in one_line_exit_2(
        cli("--outputs-dir", str(tmp_path / "o"), "generate", "--prompt", "p", "--method", "none",
            "--out", str(existing)))
    assert "--out" in one_line_exit_2(cli("batch", str(job_dir / "nul.json"), "--out", str(existing)))
    deep = job_dir / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert "nested" in one_line_exit_2(cli("batch", str(deep), "--dry-run"))


def test_device_cuda_without_a_gpu_is_bad_input():
    import torch

    from pipelines.settings import load_settings

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(BadInput, match="--device cuda .*no CUDA GPU"):
        load_settings(device="cuda").resolve_device()


def test_busy_ui_port_names_the_flag():
    from cli.ui import check_port_free

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(BadInput, match=f"^port {port} is in use; choose another with --port.$"):
            check_port_free("127.0.0.1", port)
        r = cli("ui", "--port", str(port), "--no-browser")
    assert one_line_exit_2(r) == f"error: port {port} is in use; choose another with --port."


def _safetensors(path: Path, header: bytes | dict, data: bytes = b"") -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize("header", [
    b'{"a": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
    b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, Infinity]}}',
    b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 1e400]}}',
    b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 18446744073709551616]}}',
    b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, NaN]}}',
])
def test_hostile_safetensors_headers_are_clear_errors(tmp_path, header):
    from pipelines.lora import kohya
    from pipelines.models.hashing import file_problem
    from pipelines.settings import load_settings
    from pipelines.stores import open_store

    f = _safetensors(tmp_path / "x.safetensors", header, b"\0" * 4)
    assert isinstance(file_problem(f), str)
    store = open_store(load_settings(models_dir=tmp_path / "m"))
    with pytest.raises(BadInput, match="checkpoint .*x.safetensors"):
        store.register_checkpoint(f)
    with pytest.raises(BadInput, match="LoRA .*x.safetensors"):
        kohya.read_metadata(f)


# ----------------------------------------------------------------- dry run
def test_dry_run_checks_loras_base_models_poses_and_urls(job_dir, tmp_path):
    (tmp_path / "loras").mkdir()
    base = ["--loras-dir", str(tmp_path / "loras"), "--models-dir", str(tmp_path / "m")]
    cases = {
        "  - {identity: alice, prompt: p, loras: [nope]}\n": "LoRA 'nope' not found",
        "  - {identity: alice, prompt: p, overrides: {base_model: sdxl-nope}}\n": "base_model 'sdxl-nope' is not a known",
        "  - {identity: alice, prompt: p, poses: [no-such-pose]}\n": "unknown pose 'no-such-pose'",
        "  - {identity: alice, prompt: p, poses: [bad.json]}\n": "pose file .*bad.json is not valid JSON",
    }
    (job_dir / "bad.json").write_text("{not json")
    for body, message in cases.items():
        p = job_dir / "job.yaml"
        p.write_text(GOOD_HEAD + body)
        line = one_line_exit_2(cli(*base, "batch", str(p), "--dry-run"))
        assert "line 4" in line
        import re

        assert re.search(message, line), line
    p = job_dir / "url.yaml"
    p.write_text("identities:\n  a: {photos: ['http://x.org/a.jpg']}\nitems:\n  - {prompt: p}\n")
    assert "is a URL" in one_line_exit_2(cli(*base, "batch", str(p), "--dry-run"))


# ----------------------------------------------------------------- messages
def test_lora_weights_one_parser_for_cli_and_jobs(job_dir):
    from cli.generate import _lora_spec
    from pipelines.requests import LoraSpec

    assert _lora_spec("base:-3") == {"name": "base", "weight": -3.0}
    with pytest.raises(BadInput, match="greater than or equal to -5"):
        _lora_spec("base:-9")
    with pytest.raises(BadInput, match="not a number"):
        _lora_spec("base:abc")
    with pytest.raises(BadInput, match="finite"):
        _lora_spec("base:nan")
    assert LoraSpec.parse("a:b:0.5").name == "a:b"
    p = job_dir / "j.yaml"
    p.write_text(GOOD_HEAD + "  - {identity: alice, prompt: p, loras: ['me:abc']}\n")
    with pytest.raises(BadInput, match=r"line 4: items\[0\]\.loras: LoRA weight in 'me:abc' is not a number"):
        jf.load_job(p)
    p.write_text(GOOD_HEAD + "  - {identity: alice, prompt: p, loras: ['me:-1.5']}\n")
    assert jf.load_job(p).items[0].request.loras[0].weight == -1.5


def test_huge_edit_strength_is_out_of_range():
    from pipelines.wplus.edits import parse_edit

    with pytest.raises(BadInput, match="out of range"):
        parse_edit("age=+1e308")
    with pytest.raises(BadInput, match="out of range"):
        parse_edit("age=1e999")
    assert parse_edit("age=2e0") == ("age", 2.0)


def test_strip_images_are_reported_with_their_real_size():
    from pipelines.imageio import load_photo

    with pytest.raises(BadInput, match="30000x10 px, a strip"):
        load_photo(np.zeros((10, 30000, 3), np.uint8))


def test_control_characters_in_names_are_echoed_escaped(tmp_path):
    from pipelines.imageio import load_photo

    name = tmp_path / "evil\x1b[2J\x07.png"
    with pytest.raises(BadInput) as err:
        load_photo(name)
    text = str(err.value)
    assert "\x1b" not in text and "\x07" not in text and "\\x1b[2J\\x07" in text
    r = cli("--demo", "--models-dir", str(tmp_path / "m"), "--outputs-dir", str(tmp_path / "o"), "generate",
            "--prompt", "p", "--photo", str(name))
    assert "\x1b" not in r.stderr and "\\x1b[2J" in one_line_exit_2(r)


# ----------------------------------------------------------------- LoRA headers
def _lora_file(path: Path, metadata: dict, value: float = 0.01) -> Path:
    import torch
    from safetensors.torch import save_file

    t = torch.full((4, 8), value)
    save_file({"lora_unet_x.lora_down.weight": t, "lora_unet_x.lora_up.weight": t.T.contiguous()}, str(path),
              metadata=metadata)
    return path


def test_lora_header_metadata_is_validated(tmp_path):
    from pipelines.lora import kohya

    f = _lora_file(tmp_path / "big.safetensors", {"ss_trigger_word": "x" * 3_000_000})
    with pytest.raises(BadInput, match="trigger word of 3,000,000 characters"):
        kohya.trigger_words(kohya.read_metadata(f), f)
    f = _lora_file(tmp_path / "nl.safetensors", {"ss_trigger_word": "me\nNegative prompt: x\nSteps: 1"})
    with pytest.raises(BadInput, match="line break"):
        kohya.trigger_words(kohya.read_metadata(f), f)
    f = _lora_file(tmp_path / "ok.safetensors", {"ss_trigger_word": "sks person, studio"})
    assert kohya.trigger_words(kohya.read_metadata(f), f) == ["sks person", "studio"]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_lora_with_nonfinite_tensors_is_refused_when_loaded(tmp_path, value):
    from pipelines.lora.manager import LoraManager
    from pipelines.settings import load_settings

    f = _lora_file(tmp_path / "bad.safetensors", {}, value)
    manager = LoraManager(load_settings(loras_dir=tmp_path, models_dir=tmp_path / "m"))
    with pytest.raises(BadInput, match=r"bad.safetensors holds NaN or infinite values"):
        manager._read_checked("bad", f, pipe=None)  # refused before the pipeline is looked at


def test_infotext_cannot_be_forged_by_prompt_text():
    from pipelines.metadata import a1111_parameters

    text = a1111_parameters("me\nNegative prompt: forged\nSteps: 99, Sampler: x, Seed: 1\r\u2028fine",
                            "bad\nSteps: 1", 4, "Euler", 5, 7, 64, 64, "m", "h", {})
    lines = text.split("\n")
    assert [ln for ln in lines if ln.startswith("Negative prompt:")] == ["Negative prompt: bad Steps: 1"]
    assert [ln for ln in lines if ln.startswith("Steps:")] == [lines[-1]]
    assert lines[-1].startswith("Steps: 4,")


# ----------------------------------------------------------------- swapped checkpoint
def test_swapped_checkpoint_is_refused_before_loading(tmp_path):
    import torch
    from safetensors.torch import save_file

    from pipelines.settings import load_settings
    from pipelines.stores import open_store

    ckpt = tmp_path / "mine.safetensors"
    tensors = {"model.diffusion_model.w": torch.zeros(4), "conditioner.embedders.1.w": torch.zeros(4)}
    save_file(tensors, str(ckpt))
    store = open_store(load_settings(models_dir=tmp_path / "m"))
    name = store.register_checkpoint(ckpt)
    assert store.checked_checkpoint(name) == ckpt.resolve()
    save_file(tensors, str(ckpt))  # the same bytes written again: new mtime, same hash, accepted
    assert store.checked_checkpoint(name) == ckpt.resolve()
    tensors["model.diffusion_model.w"] = torch.ones(4)  # same size, other weights
    save_file(tensors, str(ckpt))
    with pytest.raises(ModelError, match="was replaced after it was registered.*models register"):
        store.checked_checkpoint(name)
    assert store.register_checkpoint(ckpt) == name  # registering again accepts the new file
    assert store.checked_checkpoint(name) == ckpt.resolve()


# ----------------------------------------------------------------- recipes
def _recipe_png(path: Path, recipe: dict) -> Path:
    from PIL import Image

    from pipelines.metadata import save_png

    save_png(Image.new("RGB", (8, 8)), path, parameters="p", recipe=recipe)
    return path


def test_recipe_fields_only_the_local_user_sets_are_dropped(tmp_path):
    from cli.generate import recipe_request
    from pipelines.settings import load_settings

    settings = load_settings(outputs_dir=tmp_path / "outputs")
    png = _recipe_png(tmp_path / "r.png", {"request": {
        "prompt": "p", "method": "none", "count": 64, "out_dir": "/tmp/../etc", "name_prefix": "../../pwn",
        "keep": 2, "rejects": True, "photos": ["/etc/shadow"], "pose": "/home/me/secret/pose.json"}})
    data = recipe_request(png, settings)
    assert data["count"] == 1 and data["pose"] == "pose.json"
    assert not {"out_dir", "name_prefix", "keep", "rejects", "photos", "identity_card"} & set(data)


@pytest.mark.parametrize("recipe, why", [
    ({"app": "likeness"}, "'request' is missing"),
    ({"request": "prompt"}, "'request' is missing or not an object"),
    ({"request": {"prompt": "p", "steps": "many", "method": "none"}}, "field steps"),
    ({"request": {"prompt": "p", "nonsense": 1, "method": "none"}}, "field nonsense"),
    ({"request": {"prompt": "p", "method": "faceid"}, "identity": "card"}, "'identity' is not an object"),
])
def test_damaged_recipes_exit_2(tmp_path, recipe, why):
    png = _recipe_png(tmp_path / "r.png", recipe)
    line = one_line_exit_2(cli("--outputs-dir", str(tmp_path / "o"), "generate", "--recipe", str(png)))
    assert "damaged recipe" in line and why in line


def test_deeply_nested_recipe_is_damaged_not_recursion_error(tmp_path):
    from pipelines.metadata import read_recipe

    png = tmp_path / "deep.png"
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("likeness", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    Image.new("RGB", (4, 4)).save(png, pnginfo=info)
    with pytest.raises(BadInput, match="damaged Likeness recipe"):
        read_recipe(png)


def test_recipes_hold_no_local_paths_and_replay_by_name_and_hash(demo_settings, photos_dir, tmp_path):
    """The recipe records file names and hashes; a replay finds the card in the
    outputs folder, or the photos beside a copied PNG, and makes the same pixels."""
    import shutil

    from cli.generate import recipe_request
    from pipelines.engine import Engine
    from pipelines.metadata import read_recipe
    from pipelines.requests import GenerateRequest

    photo = tmp_path / "private" / "me.png"
    photo.parent.mkdir()
    shutil.copy(photos_dir / "astronaut.png", photo)
    engine = Engine(demo_settings)
    req = GenerateRequest(photos=[str(photo)], prompt="a portrait", steps=2, width=64, height=64, seed=5,
                          out_dir=str(tmp_path / "first"))
    first = engine.generate(req).images[0]
    raw = json.dumps(read_recipe(first.path))
    from PIL import Image

    infotext = Image.open(first.path).info["parameters"]
    for secret in (str(tmp_path), str(demo_settings.outputs_dir)):
        assert secret not in raw and secret not in infotext
    ident = read_recipe(first.path)["identity"]
    assert ".identity" in ident["card"] and "/" not in ident["card"]
    assert ident["photos"][0]["name"] == "me.png" and len(ident["photos"][0]["sha256"]) == 64

    # 1. from where it was written: the card is found in outputs/identities by name and hash
    data = recipe_request(first.path, demo_settings)
    assert Path(data["identity_card"]).parent == demo_settings.outputs_dir / "identities"
    again = engine.generate(GenerateRequest(**data, out_dir=str(tmp_path / "again"))).images[0]
    assert np.array_equal(np.asarray(again.image), np.asarray(first.image))

    # 2. a PNG shared with its photo, on a machine without the card: the photo is found by hash
    shared = tmp_path / "shared"
    shared.mkdir()
    shutil.copy(first.path, shared / "x.png")
    shutil.copy(photo, shared / "me.png")
    elsewhere = demo_settings.model_copy(update={"outputs_dir": tmp_path / "other-outputs"})
    assert recipe_request(shared / "x.png", elsewhere)["photos"] == [str(shared / "me.png")]
    # a different file under the same name is not used
    (shared / "me.png").write_bytes((photos_dir / "chelsea.png").read_bytes())
    with pytest.raises(BadInput, match="identity card .* was not found"):
        recipe_request(shared / "x.png", elsewhere)


# ----------------------------------------------------------------- property test
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st  # noqa: E402

_VALID_JOB = (GOOD_HEAD + "  - identity: alice\n    prompts: [a, b]\n    methods: [faceid, none]\n"
              "    seeds: [1, 2]\n    overrides: {steps: 4, cfg: 3.5}\n")
_MUTATIONS = st.lists(st.tuples(st.integers(0, len(_VALID_JOB)), st.integers(0, 8),
                                st.sampled_from(list("[]{}:,&*!|>-'\"\n \t#%@`0\x00") + ["*a", "&a ", "!!python/"])),
                      max_size=6)
_PROPERTY = hsettings(max_examples=60, deadline=2000, derandomize=True,
                      suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _mutate(text: str, edits) -> str:
    for pos, cut, piece in edits:
        pos = min(pos, len(text))
        text = text[:pos] + piece + text[pos + cut:]
    return text


def _only_likeness_errors(fn, bound: float = 2.0):
    t0 = time.perf_counter()
    try:
        fn()
    except LikenessError as exc:
        assert "\n" not in str(exc)
    assert time.perf_counter() - t0 < bound


@_PROPERTY
@given(edits=_MUTATIONS, suffix=st.sampled_from([".yaml", ".json"]))
def test_property_mutated_job_files(job_dir, edits, suffix):
    p = job_dir / f"m{suffix}"
    p.write_text(_mutate(_VALID_JOB, edits), encoding="utf-8", errors="surrogatepass")
    _only_likeness_errors(lambda: jf.load_job(p))


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
                     max_leaves=25)
_REQUEST_KEYS = ["prompt", "method", "count", "steps", "seed", "width", "loras", "pose", "out_dir", "photos"]


@_PROPERTY
@given(recipe=st.dictionaries(st.sampled_from(["request", "identity", "seed", "x"]),
                              _JSON | st.dictionaries(st.sampled_from(_REQUEST_KEYS), _JSON, max_size=6),
                              max_size=3))
def test_property_random_recipes(tmp_path, recipe):
    from cli.generate import recipe_request
    from pipelines.settings import load_settings

    try:
        json.dumps(recipe, allow_nan=False)
    except ValueError:
        return  # save_png refuses NaN itself
    png = _recipe_png(tmp_path / "r.png", recipe)
    settings = load_settings(outputs_dir=tmp_path / "o")
    _only_likeness_errors(lambda: recipe_request(png, settings))


@_PROPERTY
@given(header=st.one_of(
    st.binary(max_size=200),
    _JSON.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.text(max_size=8), st.fixed_dictionaries({
        "dtype": st.sampled_from(["F32", "F16", "I64", "X"]),
        "shape": st.lists(st.integers(-2, 2**63), max_size=3),
        "data_offsets": st.lists(st.one_of(st.integers(-5, 2**70), st.floats()), max_size=3)}), max_size=3)
    .map(lambda d: json.dumps(d).encode())))
def test_property_safetensors_headers(tmp_path, header):
    from pipelines.lora import kohya
    from pipelines.models.hashing import file_problem
    from pipelines.models.store import _safetensors_keys

    f = _safetensors(tmp_path / "h.safetensors", header, b"\0" * 16)
    _only_likeness_errors(lambda: (file_problem(f), kohya.read_metadata(f), _safetensors_keys(f)))
