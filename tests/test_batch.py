"""Batch generation: job schema and expansion, stable ids, line-numbered errors,
resume after kill -9, isolation of bad items, manifest shards, accelerate.

Most tests drive the runner with `FakeEngine` (same interface as `Engine`:
`identity()` returns a real `Identity`, `generate()` writes real PNGs atomically
into `req.out_dir`), so they run in seconds; the `real_engine` tests run the
demo `Engine` (tiny models, 64x64, 2 steps) end to end through `launch.py`."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipelines.batch import jobfile as jf
from pipelines.batch.manifest import (
    MANIFEST_NAME,
    append_record,
    is_done,
    load_state,
    merge_shards,
    read_manifest,
    shard_path,
)
from pipelines.batch.runner import run_job
from pipelines.errors import BadInput, UnreadableImage
from pipelines.profile import DEMO

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
TINY = {"steps": 2, "width": 64, "height": 64}


# ------------------------------------------------------------------ fake engine
class FakeEngine:
    """Engine stand-in: photos must be real images (else UnreadableImage naming
    the file); a prompt containing 'oom' raises CUDA's out-of-memory error."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.identity_calls: list[tuple] = []
        self.generated: list = []

    def identity(self, photos=None, card=None, packs=()):
        from PIL import Image

        from pipelines.faces.person import Identity, load_card

        self.identity_calls.append((tuple(photos or ()), card, tuple(packs)))
        if card:
            return load_card(card)
        h = hashlib.sha256()
        for p in photos:
            try:
                with Image.open(p) as im:
                    im.load()
            except Exception as exc:
                raise UnreadableImage(f"photo {p} is not a readable image; use a JPEG or PNG photo.") from exc
            h.update(Path(p).read_bytes())
        rng = np.random.default_rng(int(h.hexdigest()[:8], 16))
        emb = {pk: (v := rng.standard_normal(512).astype(np.float32)) / np.linalg.norm(v) for pk in packs}
        return Identity(
            name="x", embeddings=emb, raw_embeddings={k: v * 20 for k, v in emb.items()},
            crops=[np.zeros((224, 224, 3), np.uint8)], kps=np.zeros((5, 2), np.float32),
            bbox=np.zeros(4, np.float32), image_size=(64, 64), used=[str(p) for p in photos],
        )

    def generate(self, req, on_step=None, cancel=None):
        from PIL import Image

        from pipelines.paths import atomic_path

        if "oom" in req.prompt:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if req.method != "none":
            assert req.identity_card and not req.photos, "items must reuse the analysed identity card"
            self.identity(card=req.identity_card)
        out = Path(req.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        images = []
        for i in range(req.count):
            path = out / f"{req.name_prefix}-{i:03d}.png"
            with atomic_path(path) as tmp:  # the .part file exists while we "compute"
                Image.new("RGB", (8, 8), (req.seed % 256, i, 0)).save(tmp, format="PNG")
                time.sleep(self.delay)
            images.append(SimpleNamespace(path=path, seed=req.seed + i, image=None, recipe={}))
        self.generated.append(req)
        return SimpleNamespace(images=images, identity=None, excluded=[], seconds=self.delay)


# --------------------------------------------------------------------- helpers
@pytest.fixture()
def job_dir(tmp_path, photos_dir):
    d = tmp_path / "job"
    (d / "photos").mkdir(parents=True)
    for name in ("astronaut.png", "t1.jpg"):
        (d / "photos" / name).write_bytes((photos_dir / name).read_bytes())
    (d / "photos" / "broken.jpg").write_text("this is not a jpeg\n")
    return d


def write_job(d: Path, text: str, name: str = "job.yaml") -> Path:
    p = d / name
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return p


SIX_ITEMS = """
    name: six
    identities:
      alice: {photos: [photos/astronaut.png]}
      bob: {photos: [photos/broken.jpg]}
    items:
      - identities: [alice, bob]
        prompt: a portrait photo
        methods: [faceid]
        seeds: [1, 2, 3]
        overrides: {steps: 2, width: 64, height: 64}
"""


def pngs(out: Path) -> list[Path]:
    return sorted(out.glob("*.png"))


def stray(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".part") or p.name.startswith(".staging-")]


# ------------------------------------------------------------------ expansion
def test_expansion_counts_and_stable_ids(job_dir, tmp_path):
    text = """
        identities:
          alice: {photos: [photos/astronaut.png]}
          bob: {photos: [photos/t1.jpg]}
        items:
          - prompts: [a studio portrait, a beach portrait]
            methods: [instantid, faceid]
            seeds: [1, 2, 3]
            overrides: {steps: 2}
          - identity: alice
            prompt: a third prompt
            method: none
    """
    job = jf.load_job(write_job(job_dir, text))
    # identities x prompts x methods x seeds, plus 1
    assert len(job.items) == 2 * 2 * 2 * 3 + 1
    assert len({it.id for it in job.items}) == len(job.items)
    assert all(len(it.id) == 64 for it in job.items)
    assert {it.identity for it in job.items} == {"alice", "bob"}
    assert sorted({it.seed for it in job.items[:24]}) == [1, 2, 3]
    # photos resolve against the job file, not the working directory
    assert job.identities["alice"].photos[0] == job_dir / "photos" / "astronaut.png"

    # same job, moved elsewhere: same ids (ids hash photo contents, not paths)
    moved = tmp_path / "elsewhere"
    (moved / "photos").mkdir(parents=True)
    for p in (job_dir / "photos").iterdir():
        (moved / "photos" / p.name).write_bytes(p.read_bytes())
    again = jf.load_job(write_job(moved, text))
    assert [it.id for it in again.items] == [it.id for it in job.items]

    # a changed photo changes exactly that identity's ids
    (moved / "photos" / "t1.jpg").write_bytes((job_dir / "photos" / "astronaut.png").read_bytes()[:-1] + b"\0")
    changed = jf.load_job(moved / "job.yaml")
    for a, b in zip(job.items, changed.items):
        assert (a.id == b.id) == (a.identity == "alice")

    # a changed setting changes every id of that entry
    other = jf.load_job(write_job(moved, text.replace("steps: 2", "steps: 3"), "other.yaml"))
    assert not {it.id for it in other.items[:24]} & {it.id for it in job.items}

    # run order groups methods (fewest adapter swaps)
    from pipelines.batch.runner import order_items

    methods = [it.method for it in order_items(job.items)]
    assert sum(1 for a, b in zip(methods, methods[1:]) if a != b) == 2


def test_seedless_items_get_stable_derived_seeds_and_duplicates_collapse(job_dir):
    text = """
        identities:
          alice: {photos: [photos/astronaut.png]}
        items:
          - prompt: p
            methods: [faceid, faceid]
          - prompt: p
            method: faceid
    """
    a = jf.load_job(write_job(job_dir, text))
    b = jf.load_job(job_dir / "job.yaml")
    assert len(a.items) == 1 and a.duplicates == 2
    assert a.items[0].seed == b.items[0].seed and a.items[0].id == b.items[0].id
    assert 0 <= a.items[0].seed < 2**32


def test_json_job_files_work_too(job_dir):
    data = {"identities": {"alice": {"photos": ["photos/astronaut.png"]}},
            "items": [{"identity": "alice", "prompt": "p", "methods": ["faceid"], "seeds": [1, 2]}]}
    p = job_dir / "job.json"
    p.write_text(json.dumps(data, indent=2))
    assert len(jf.load_job(p).items) == 2
    data["items"][0]["seedz"] = [1]
    text = json.dumps(data, indent=2)
    p.write_text(text)
    line = next(n for n, x in enumerate(text.splitlines(), 1) if '"seedz"' in x)
    with pytest.raises(BadInput, match=rf"job\.json, line {line}: items\[0\]\.seedz: unknown key"):
        jf.load_job(p)


# --------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "body, line, key",
    [
        ("  - identity: alice\n    promt: hello\n", 5, r"items\[0\]\.promt: unknown key"),
        ("  - identity: alice\n    prompt: p\n    overrides: {steps: 0}\n", 6, r"items\[0\]\.overrides\.steps: .*greater than or equal to 1"),
        ("  - identity: alice\n    prompt: p\n    overrides:\n      stepz: 3\n", 7, r"items\[0\]\.overrides\.stepz: unknown generate option"),
        ("  - identity: alice\n    prompt: p\n    overrides: {out_dir: /tmp}\n", 6, r"overrides\.out_dir: cannot be set here"),
        ("  - identity: carol\n    prompt: p\n", 4, r"items\[0\]\.identity: identity 'carol' is not defined"),
        ("  - identity: alice\n    prompt: p\n    methods: [faceid, dreambooth]\n", 6, r"items\[0\]\.methods: .*faceid"),
        ("  - identity: alice\n    prompt: p\n    seeds: [1, -4]\n", 6, r"items\[0\]\.seeds: .*greater than or equal to 0"),
        ("  - identity: alice\n    methods: [faceid]\n", 4, r"items\[0\]\.prompt: required"),
        ("  - identity: alice\n    prompt: p\n    prompts: [q]\n", 4, r"items\[0\]: give prompt: or prompts:, not both"),
        ("  - identity: alice\n    prompt: p\n  - identity: alice\n    prompt: p\n    prompt: q\n", 8, r"items\[1\]\.prompt: key given twice"),
        ("  - identity: alice\n    preset: no-such-preset\n", 5, r"items\[0\]\.preset: preset 'no-such-preset'"),
        ("  - identity: alice\n    prompt: p\n    loras: [[mine:7.5]]\n", 6, r"items\[0\]\.loras: .*less than or equal to 5"),
    ],
)
def test_job_errors_name_the_key_and_the_line(job_dir, body, line, key, monkeypatch):
    head = "identities:\n  alice: {photos: [photos/astronaut.png]}\nitems:\n"
    p = job_dir / "bad.yaml"
    p.write_text(head + body)
    with pytest.raises(BadInput) as err:
        jf.load_job(p)
    msg = str(err.value)
    assert f"bad.yaml, line {line}: " in msg, msg
    assert __import__("re").search(key, msg), msg
    assert "\n" not in msg


def test_poses_and_loras_are_axes(job_dir):
    (job_dir / "left.png").write_bytes((job_dir / "photos" / "astronaut.png").read_bytes())
    job = jf.load_job(write_job(job_dir, """
        identities:
          alice: {photos: [photos/astronaut.png]}
        items:
          - identity: alice
            prompt: p
            seed: 1
            poses: [left.png, three-quarter]
            loras: [[], "mine:0.7", {name: other}, [a, "b:0.5"]]
    """))
    assert len(job.items) == 2 * 4
    poses = {it.request.pose for it in job.items}
    assert poses == {str((job_dir / "left.png").resolve()), "three-quarter"}  # files resolve against the job
    sets = {tuple((x.name, x.weight) for x in it.request.loras) for it in job.items}
    assert sets == {(), (("mine", 0.7),), (("other", 1.0),), (("a", 1.0), ("b", 0.5))}
    # LoRA sets are grouped in run order
    from pipelines.batch.runner import order_items

    keys = [tuple(x.name for x in it.request.loras) for it in order_items(job.items)]
    assert sum(1 for a, b in zip(keys, keys[1:]) if a != b) == 3


def test_identity_schema_errors(job_dir):
    p = job_dir / "bad.yaml"
    p.write_text("identities:\n  alice: {photos: [a.jpg]}\n  bob:\n    card: b.identity\n    photos: [b.jpg]\n"
                 "items:\n  - prompt: p\n")
    with pytest.raises(BadInput, match=r"line 3: identities\.bob: give either photos"):
        jf.load_job(p)
    p.write_text("identities:\n  ../evil: {photos: [a.jpg]}\nitems:\n  - prompt: p\n")
    with pytest.raises(BadInput, match=r"line 2: identities\.\.\./evil: identity name .*not allowed"):
        jf.load_job(p)
    p.write_text("items:\n  - prompt: [unclosed\n")
    with pytest.raises(BadInput, match=r"line 3: not valid YAML"):
        jf.load_job(p)


def _user_preset(folder: Path, name: str, **fields) -> None:
    data = {"name": name, "title": name, "prompt": "studio headshot of {subject}, soft light", "method": "faceid",
            "size": "square", "sampler": "euler", "steps": 4, "cfg": 3.0, **fields}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(data))


def test_presets_resolve_through_apply_preset(job_dir, tmp_path):
    """An item's preset is the user's own (or a shipped one), merged by
    `presets.apply_preset`: overrides beat the preset; a bad preset file or an
    unknown name is an error at the item's presets key and line."""
    user = tmp_path / "my-presets"
    _user_preset(user, "my-headshot")
    _user_preset(user, "broken", steps=999)
    p = write_job(job_dir, """
        identities:
          alice: {photos: [photos/astronaut.png]}
        items:
          - identity: alice
            presets: [my-headshot]
            seeds: [1, 2]
            overrides: {cfg: 4.0}
    """)
    job = jf.load_job(p, presets_dir=user)
    assert [it.request.prompt for it in job.items] == ["studio headshot of a person, soft light"] * 2
    assert job.items[0].request.steps == 4 and job.items[0].request.cfg == 4.0  # override beats preset
    p.write_text(p.read_text().replace("[my-headshot]", "[broken]"))
    with pytest.raises(BadInput, match=r"line 5: items\[0\]\.presets: preset 'broken': .*'steps'.*less than or equal to 150"):
        jf.load_job(p, presets_dir=user)
    p.write_text(p.read_text().replace("[broken]", "[nope]"))
    with pytest.raises(BadInput, match=r"items\[0\]\.presets: preset 'nope': preset 'nope' does not exist"):
        jf.load_job(p, presets_dir=user)


def test_bad_job_file_exits_2_and_dry_run_writes_nothing(job_dir, tmp_path, capsys):
    from cli.main import run

    bad = write_job(job_dir, "items:\n  - prompt: p\n    sedes: [1]\n", "bad.yaml")
    out = tmp_path / "out"
    assert run(["--outputs-dir", str(tmp_path / "o"), "batch", str(bad), "--out", str(out)]) == 2
    assert "line 3: items[0].sedes: unknown key" in capsys.readouterr().err
    good = write_job(job_dir, SIX_ITEMS)
    assert run(["--outputs-dir", str(tmp_path / "o"), "batch", str(good), "--out", str(out), "--dry-run"]) == 0
    listing = capsys.readouterr().out
    job = jf.load_job(good)
    for it in job.items:
        assert it.short_id in listing
    assert listing.count("a portrait photo") == 6 and "alice" in listing and "bob" in listing
    assert not out.exists() and not (tmp_path / "o").exists()


# ----------------------------------------------------------------- manifest
def test_manifest_torn_line_and_shard_merge(tmp_path):
    out = tmp_path
    append_record(out / MANIFEST_NAME, {"id": "a", "status": "ok", "outputs": ["a.png"]})
    append_record(out / MANIFEST_NAME, {"id": "b", "status": "failed", "error": "no face"})
    with open(out / MANIFEST_NAME, "ab") as fh:
        fh.write(b'{"id": "c", "status": "o')  # killed mid-line
    assert [r["id"] for r in read_manifest(out / MANIFEST_NAME)] == ["a", "b"]

    append_record(shard_path(out, 0), {"id": "b", "status": "ok", "outputs": ["b.png"]})  # retried
    append_record(shard_path(out, 1), {"id": "d", "status": "failed", "error": "out of memory"})
    append_record(shard_path(out, 1), {"id": "e", "status": "ok", "outputs": ["e.png"]})
    (out / "manifest.x.jsonl").write_text("not a shard\n")

    merged = merge_shards(out)
    assert {k: v["status"] for k, v in merged.items()} == {"a": "ok", "b": "ok", "d": "failed", "e": "ok"}
    lines = (out / MANIFEST_NAME).read_text().splitlines()
    assert sorted(json.loads(x)["id"] for x in lines) == ["a", "b", "d", "e"]  # one line per id, torn one gone
    assert not shard_path(out, 0).exists() and not shard_path(out, 1).exists()
    assert (out / "manifest.x.jsonl").exists()
    before = (out / MANIFEST_NAME).read_bytes()
    assert merge_shards(out) == merged and (out / MANIFEST_NAME).read_bytes() == before  # idempotent
    assert load_state(out)["b"]["outputs"] == ["b.png"]

    # ok only counts if the outputs exist, inside the out dir
    (out / "a.png").write_bytes(b"x")
    assert is_done(merged["a"], out) and not is_done(merged["b"], out) and not is_done(merged["d"], out)
    assert not is_done({"id": "z", "status": "ok", "outputs": ["../a.png"]}, out / "sub")


# ------------------------------------------------------------------ isolation
def test_bad_items_are_isolated_and_identities_analysed_once(job_dir, tmp_path, monkeypatch):
    text = SIX_ITEMS.replace("methods: [faceid]", "methods: [faceid, instantid]") + """
      - identity: alice
        prompt: oom please
        method: faceid
        seed: 9
        overrides: {steps: 2, width: 64, height: 64}
    """
    job = jf.load_job(write_job(job_dir, text))
    assert len(job.items) == 13
    freed = []
    monkeypatch.setattr("pipelines.batch.runner.free_memory", lambda: freed.append(1))
    engine, out, log = FakeEngine(), tmp_path / "out", io.StringIO()
    summary = io.StringIO()
    report = run_job(job, None, out, engine=engine, stream=log, out=summary)
    assert report.exit_code == 1
    recs = load_state(out)
    assert set(recs) == {it.id for it in job.items}
    by = {it.id: it for it in job.items}
    for iid, r in recs.items():
        it = by[iid]
        if it.identity == "bob":
            assert r["status"] == "failed" and "broken.jpg" in r["error"] and "not a readable image" in r["error"]
            assert r["outputs"] == []
        elif "oom" in it.request.prompt:
            assert r["status"] == "failed" and r["error"].startswith("out of memory: CUDA out of memory")
        else:
            assert r["status"] == "ok", r
            assert [(out / o).is_file() for o in r["outputs"]] == [True]
            assert r["outputs"][0].startswith(f"alice-{it.method}-{it.seed}-{iid[:12]}")
    assert len(pngs(out)) == 6 and not stray(out)
    assert freed == [1]  # the out-of-memory item emptied the CUDA cache
    # each identity analysed once, with every recogniser its methods need
    photo_calls = [c for c in engine.identity_calls if c[0]]
    assert sorted(Path(c[0][0]).name for c in photo_calls) == ["astronaut.png", "broken.jpg"]
    assert all(c[2] == ("antelopev2", "buffalo_l") for c in photo_calls)
    cards = json.loads((out / "identities.json").read_text())
    assert Path(cards["alice"]["card"]).is_file() and Path(cards["alice"]["card"]).parent == out / "identities"
    assert "not a readable image" in cards["bob"]["error"] and cards["bob"]["card"] is None
    # the engine saw items grouped by method
    seen = [r.method for r in engine.generated]
    assert seen == sorted(seen)
    text_out = summary.getvalue()
    assert "6 ok, 7 failed" in text_out and "failed items:" in text_out and "bob" in text_out
    assert "FAILED" in log.getvalue()  # plain progress lines when not a terminal

    # rerun: ok items are skipped, failed ones retried (and fail again)
    engine2 = FakeEngine()
    report2 = run_job(job, None, out, engine=engine2, stream=io.StringIO(), out=io.StringIO())
    assert report2.exit_code == 1 and report2.skipped == 6 and report2.ran == 7
    assert len(engine2.generated) == 0  # bob's items fail at the identity, the oom one in generate
    assert len(read_manifest(out / MANIFEST_NAME)) == 13


def test_identity_cards_in_the_job(job_dir, tmp_path):
    from pipelines.faces.person import save_card

    card = save_card(FakeEngine().identity(photos=[str(job_dir / "photos" / "t1.jpg")], packs=("buffalo_l",)),
                     job_dir / "carol.identity")
    (job_dir / "dave.identity.safetensors").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    job = jf.load_job(write_job(job_dir, f"""
        identities:
          carol: {{card: {card.name}}}
          dave: {{card: dave.identity.safetensors}}
        items:
          - prompt: p
            method: faceid
            seeds: [1, 2]
    """))
    assert job.identities["carol"].card == card
    engine, out = FakeEngine(), tmp_path / "out"
    report = run_job(job, None, out, engine=engine, stream=io.StringIO(), out=io.StringIO())
    assert report.exit_code == 1
    recs = load_state(out)
    status = sorted((by.identity, recs[by.id]["status"]) for by in job.items)
    assert status == [("carol", "ok"), ("carol", "ok"), ("dave", "failed"), ("dave", "failed")]
    assert all("not a readable safetensors file" in recs[it.id]["error"] for it in job.items if it.identity == "dave")
    assert {r.identity_card for r in engine.generated} == {str(card)}


def test_progress_bar_on_a_terminal_plain_lines_otherwise():
    from pipelines.batch.runner import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    item = SimpleNamespace(short_id="abc123def456", identity="alice", method="faceid", seed=3)
    tty, plain = Tty(), io.StringIO()
    for stream in (tty, plain):
        bar = Progress(2, stream)
        bar.update(item, {"status": "ok", "seconds": 1.5, "error": None})
        bar.update(item, {"status": "failed", "seconds": 0.1, "error": "no face in a.jpg"})
        bar.close()
    assert "2/2" in tty.getvalue() and "failed=1" in tty.getvalue() and "\r" in tty.getvalue()
    assert "abc123def456 alice faceid seed 3: FAILED no face in a.jpg" in tty.getvalue()
    lines = plain.getvalue().splitlines()
    assert lines[0].startswith("[1/2] abc123def456 alice faceid seed 3: ok 1.5 s (failed 0, ETA")
    assert lines[1].startswith("[2/2] abc123def456 alice faceid seed 3: FAILED no face in a.jpg (failed 1")
    assert "\r" not in plain.getvalue()


# ---------------------------------------------------------------- kill -9
RUNNER_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_batch import FakeEngine
from pipelines.batch import load_job, run_job
job = load_job(sys.argv[1])
report = run_job(job, None, sys.argv[2], engine=FakeEngine(delay=float(sys.argv[3])))
sys.exit(report.exit_code)
"""


def _runner(tmp_path) -> Path:
    script = tmp_path / "run_fake.py"
    script.write_text(RUNNER_SCRIPT.format(tests=str(REPO / "tests")))
    return script


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return env


def test_resume_after_kill_9(job_dir, tmp_path):
    text = SIX_ITEMS.replace("photos/broken.jpg", "photos/t1.jpg").replace("[1, 2, 3]", "[1, 2, 3, 4]")
    job_path = write_job(job_dir, text)
    job = jf.load_job(job_path)
    out = tmp_path / "out"
    proc = subprocess.Popen([PY, str(_runner(tmp_path)), str(job_path), str(out), "0.4"], cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(read_manifest(out / MANIFEST_NAME)) < 1:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        while time.time() < deadline and not any(p.name.endswith(".part") for p in out.rglob("*")):
            time.sleep(0.01)  # wait until the next item's image is half written
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done_before = {r["id"] for r in read_manifest(out / MANIFEST_NAME)}
    assert 1 <= len(done_before) < len(job.items)
    assert any(p.name.endswith(".part") for p in out.rglob("*")), "the kill left no temp file behind"

    engine = FakeEngine()
    report = run_job(job, None, out, engine=engine, stream=io.StringIO(), out=io.StringIO())
    assert report.exit_code == 0
    assert report.skipped == len(done_before)
    assert len(engine.generated) == len(job.items) - len(done_before)  # nothing done twice
    lines = read_manifest(out / MANIFEST_NAME)
    ids = [r["id"] for r in lines]
    assert sorted(ids) == sorted(it.id for it in job.items)  # each item exactly once
    assert all(r["status"] == "ok" for r in lines)
    assert not stray(out)
    assert sorted(p.name for p in pngs(out)) == sorted(o for r in lines for o in r["outputs"])


# -------------------------------------------------------------- accelerate
def _accelerate(tmp_path, args: list[str], timeout: int):
    # accelerate 1.x: `--cpu --num_processes 2` starts ONE process unless an MPI
    # hostfile is given; `--multi_gpu` starts 2 through torch.distributed.run, and
    # ACCELERATE_USE_CPU makes them CPU (gloo) processes.
    env = _env()
    env.update(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", MASTER_PORT=str(29500 + os.getpid() % 1000))
    cmd = [PY, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", env["MASTER_PORT"], *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------- the real demo engine
@pytest.fixture()
def demo_args(tiny_models_dir, tmp_path) -> list[str]:
    return ["--demo", "--models-dir", str(tiny_models_dir), "--outputs-dir", str(tmp_path / "outputs"),
            "--device", "cpu", "--dtype", "float32", "--accept-license"]


def _check_six_item_outcome(job_path: Path, out: Path) -> None:
    from pipelines.metadata import read_recipe

    job = jf.load_job(job_path)
    lines = read_manifest(out / MANIFEST_NAME)
    assert sorted(r["id"] for r in lines) == sorted(it.id for it in job.items)  # each item exactly once
    by = {it.id: it for it in job.items}
    for r in lines:
        it = by[r["id"]]
        if it.identity == "bob":
            assert r["status"] == "failed" and "broken.jpg" in r["error"] and r["outputs"] == []
        else:
            assert r["status"] == "ok", r
            (name,) = r["outputs"]
            recipe = read_recipe(out / name)
            assert (recipe["seed"], recipe["steps"], recipe["width"], recipe["height"]) == (it.seed, 2, 64, 64)
            assert recipe["method"] == "faceid" and recipe["prompt"].startswith("a portrait photo")
            # the manifest carries each output's likeness score (same as its recipe)
            assert r["likeness"] == [recipe["likeness"]] and "face_found" in r["likeness"][0]
    assert len(pngs(out)) == 3 and not stray(out)
    assert not list(out.glob("manifest.*.jsonl"))


def test_demo_engine_six_item_job_with_an_unreadable_photo(job_dir, tmp_path, demo_args, capsys):
    from cli.main import run

    job_path = write_job(job_dir, SIX_ITEMS)
    out = tmp_path / "out"
    assert run([*demo_args, "batch", str(job_path), "--out", str(out)]) == 1
    _check_six_item_outcome(job_path, out)
    summary = capsys.readouterr().out
    assert "6 items, 3 ok, 3 failed" in summary and "broken.jpg" in summary
    assert not (tmp_path / "outputs").exists()  # everything went to --out
    stamps = {p.name: p.stat().st_mtime_ns for p in pngs(out)}

    # rerun: the 3 good items are skipped (files untouched), bob's are retried and fail again
    assert run([*demo_args, "batch", str(job_path), "--out", str(out)]) == 1
    assert "(3 already done, 3 run now)" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in pngs(out)} == stamps
    _check_six_item_outcome(job_path, out)


@pytest.mark.slow
def test_demo_engine_kill_9_midway_then_rerun(job_dir, tmp_path, demo_args):
    from cli.main import run

    job_path = write_job(job_dir, SIX_ITEMS)
    out = tmp_path / "out"
    proc = subprocess.Popen([PY, "launch.py", *demo_args, "batch", str(job_path), "--out", str(out)], cwd=REPO,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not any(r["status"] == "ok" for r in read_manifest(out / MANIFEST_NAME)):
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert 1 <= len(read_manifest(out / MANIFEST_NAME)) < 6
    assert run([*demo_args, "batch", str(job_path), "--out", str(out)]) == 1
    _check_six_item_outcome(job_path, out)


def test_demo_engine_two_process_accelerate_run(job_dir, tmp_path, demo_args):
    job_path = write_job(job_dir, SIX_ITEMS)
    out = tmp_path / "out"
    res = _accelerate(tmp_path, ["launch.py", *demo_args, "batch", str(job_path), "--out", str(out)], timeout=500)
    assert res.returncode != 0  # bob's items failed
    assert "6 items, 3 ok, 3 failed" in res.stdout, res.stdout + res.stderr[-3000:]
    _check_six_item_outcome(job_path, out)
    ranks = {r["identity"]: r["rank"] for r in read_manifest(out / MANIFEST_NAME)}
    assert ranks == {"alice": 0, "bob": 1}  # ordered items, split in contiguous halves


def test_real_presets_shrink_to_demo_sizes_in_demo_mode(job_dir):
    from pipelines.presets import list_presets

    name = list_presets()[0].name
    p = write_job(job_dir, f"""
        identities:
          alice: {{photos: [photos/astronaut.png]}}
        items:
          - identity: alice
            preset: {name}
    """)
    full, demo = jf.load_job(p).items[0].request, jf.load_job(p, DEMO).items[0].request
    assert demo.width * 8 == full.width and demo.height * 8 == full.height
