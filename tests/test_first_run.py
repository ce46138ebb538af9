"""From a fresh install to the first portrait: global flags after the command,
every suggested command parsed by the real parser, bundles derived from the
identity methods (with the fp16 VAE fix where SDXL runs in float16), the
download plan (sizes, licences, free disk, one acceptance, a too-small disk
refused), sizes for every catalog entry, one error naming every missing model,
and the UI's wording when models are missing."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from pathlib import Path

import pytest
from conftest import chromium_page, free_port, real_settings

from cli.main import build_parser, run
from pipelines import bundles
from pipelines.models.catalog import Catalog, load_catalog
from pipelines.stores import open_store
from tests.fakehub import FakeHub

REPO = Path(__file__).resolve().parents[1]
HINT = re.compile(r"`((?:python )?launch\.py [^`]+)`")


# ---- 1. global flags after the sub-command; every hint parses -------------------------------
@pytest.mark.parametrize("argv", [
    ["models", "download", "sdxl-base", "--accept-license", "--demo", "--models-dir", "/x"],
    ["--accept-license", "--demo", "--models-dir", "/x", "models", "download", "sdxl-base"],
    ["--demo", "models", "download", "sdxl-base", "--models-dir", "/x", "--accept-license"],
])
def test_global_flags_before_or_after_the_command(argv):
    args = build_parser().parse_args(argv)
    assert (args.accept_license, args.demo, args.models_dir, args.names) == (True, True, "/x", ["sdxl-base"])


def test_global_flags_after_the_command_take_effect(tmp_path, capsys):
    code = run(["models", "list", "--demo", "--models-dir", str(tmp_path / "m"), "--device", "cpu"])
    assert code == 0
    assert f"folder {tmp_path / 'm' / 'demo'}" in capsys.readouterr().out


def readme_commands() -> list[str]:
    """Every `launch.py ...` command in the README's code blocks (continuations joined)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            for part in line.split(" #")[0].split(";"):
                if "launch.py " in part:
                    out.append(part[part.index("launch.py"):].strip())
    return out


def collected_hints(tmp_path, photos_dir) -> list[str]:
    """Every command the app suggests, produced by the code paths that print them."""
    from pipelines.errors import LikenessError
    from pipelines.faces.analysis import check_pack_folder
    from pipelines.pose.extract import load_annotator_weights
    from pipelines.requests import GenerateRequest
    from pipelines.restore.base import RESTORERS
    from pipelines.restore.spandrel_restorer import load_descriptor

    messages: list[str] = []
    store = open_store(real_settings(tmp_path, dtype="float16"))
    for entry in store.catalog:  # the store's own "not downloaded" errors
        with pytest.raises(LikenessError) as exc:
            store.ensure(entry.name)
        messages.append(str(exc.value))
    for choice in bundles.bundle_choices():
        names = bundles.choice_models([choice], store.settings, store.catalog)
        with pytest.raises(bundles.MissingModels) as exc:
            bundles.require(store, names, (choice,))
        messages += [str(exc.value), exc.value.ui_message]
    req = GenerateRequest(prompt="p", photos=[str(photos_dir / "t1.jpg")], method="instantid", pose="front",
                          restore="codeformer")
    with pytest.raises(bundles.MissingModels) as exc:
        bundles.require_for_request(req, store.settings, store)
    messages += [str(exc.value), exc.value.ui_message]
    for fn in (lambda: check_pack_folder(tmp_path / "none", "buffalo_l"),
               lambda: load_annotator_weights(tmp_path, "body_pose_model"),
               lambda: load_descriptor(tmp_path / "x.safetensors", RESTORERS["gfpgan"]),
               lambda: load_descriptor(tmp_path / "x.pth", RESTORERS["codeformer"])):
        with pytest.raises(LikenessError) as exc:
            fn()
        messages.append(str(exc.value))
    return messages


def test_every_suggested_command_parses_with_the_real_parser(tmp_path, photos_dir, capsys):
    from cli.models import resolve_download

    assert run(["models", "verify", "--models-dir", str(tmp_path / "empty")]) == 0
    cli_out = capsys.readouterr().out
    commands = [m for text in [*collected_hints(tmp_path, photos_dir), cli_out] for m in HINT.findall(text)]
    commands += readme_commands()
    assert len(commands) > 40 and any("--for faceid" in c for c in commands)
    assert any("sdxl-vae-fp16-fix" in c for c in readme_commands())  # the GPU default dtype needs it
    parser = build_parser()
    settings = real_settings(tmp_path)
    store = open_store(settings)
    for command in commands:
        argv = shlex.split(command)
        argv = argv[argv.index("launch.py") + 1:]
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"suggested command does not parse: {command}")
        if getattr(args, "models_command", None) == "download":
            names = resolve_download(args, settings, store)  # names and bundles exist
            assert names, command


def test_hints_come_from_one_function():
    """No module spells a download command itself: they all call models/commands.py's download_command."""
    offenders = []
    for path in [*(REPO / "pipelines").rglob("*.py"), *(REPO / "app").rglob("*.py")]:
        if path.name == "commands.py" and path.parent.name == "models":
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"launch\.py[^\n]*models download", line):
                offenders.append(f"{path.relative_to(REPO)}:{i}")
    assert offenders == []


# ---- 2/5. bundles ---------------------------------------------------------------------------------
def test_bundles_derive_from_the_method_classes(tmp_path, monkeypatch):
    from pipelines.identity.faceid import FaceIDPlusV2
    from pipelines.identity.instantid import InstantID

    fp32, fp16 = real_settings(tmp_path), real_settings(tmp_path, dtype="float16")
    assert bundles.method_models("faceid", fp32) == ["sdxl-base", *FaceIDPlusV2.required_models, "buffalo_l"]
    assert bundles.method_models("faceid", fp16)[:2] == ["sdxl-base", "sdxl-vae-fp16-fix"]
    assert "sdxl-vae-fp16-fix" in bundles.method_models("instantid", real_settings(tmp_path, device="cuda",
                                                                                   dtype="auto"))
    assert "sdxl-vae-fp16-fix" not in bundles.method_models("wplus", fp16)  # SD1.5 needs no fix
    monkeypatch.setattr(InstantID, "required_models", ("instantid", "controlnet-openpose-sdxl"))
    assert "controlnet-openpose-sdxl" in bundles.method_models("instantid", fp32)
    cat = load_catalog()
    preset = bundles.choice_models(["preset", "corporate-portrait"], fp32, cat)
    assert set(bundles.method_models("faceid", fp32)) <= set(preset) or set(
        bundles.method_models("instantid", fp32)) <= set(preset)
    assert bundles.choice_models(["all"], fp32, cat) == [e.name for e in cat]
    with pytest.raises(Exception, match="unknown"):
        bundles.choice_models(["faces"], fp32, cat)


def test_models_list_has_a_size_for_every_entry_and_bundle_totals(tmp_path, capsys):
    assert run(["models", "list", "--models-dir", str(tmp_path / "m"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    table, _, rest = out.partition("Bundles")
    rows = [ln for ln in table.splitlines()[1:] if ln.strip()]
    assert len(rows) == len(load_catalog().model)
    assert all(re.search(r"\s~?\d+(\.\d)? (B|kB|MB|GB)\s", r) for r in rows), rows
    for b in bundles.bundle_choices():
        assert re.search(rf"^{b}\s+~?\d+\.\d (MB|GB)", rest, re.M), b  # upscale: two 67 MB files
    assert "free disk space" in rest


def file_gets(hub: FakeHub) -> list:
    return [r for r in hub.requests if r.method == "GET" and r.path.startswith("/files/")]


def blob(n: int, seed: int) -> bytes:
    return bytes((i * 31 + seed * 7) % 251 for i in range(n))


def fake_catalog(hub: FakeHub, names: list[str]) -> Catalog:
    """A catalog with the real names (the method classes name them), each one
    small file served by the fake hub; research-only where the real one is."""
    real = load_catalog()
    entries = []
    for i, name in enumerate(names):
        data = blob(1000 + 100 * i, i)
        url = hub.add_url_file(f"{name}.bin", data)
        e = real.get(name)
        entries.append({"name": name, "kind": e.kind, "source": "url", "license": e.license,
                        "research_only": e.research_only,
                        "files": [{"path": "w.bin", "source": url, "size": len(data),
                                   "sha256": hashlib.sha256(data).hexdigest()}]})
    return Catalog.model_validate({"model": entries})


@pytest.fixture()
def faceid_hub(monkeypatch):
    from pipelines.models import store as store_mod

    with FakeHub() as hub:
        names = ["sdxl-base", "sdxl-vae-fp16-fix", "ip-adapter-faceid-plusv2-sdxl", "clip-vit-h-image-encoder",
                 "buffalo_l"]
        cat = fake_catalog(hub, names)
        monkeypatch.setattr(store_mod, "load_catalog", lambda *a, **k: cat)
        yield hub, names


def test_download_for_a_bundle_plans_accepts_once_and_fetches(tmp_path, faceid_hub, capsys):
    hub, names = faceid_hub
    argv = ["models", "download", "--for", "faceid", "--models-dir", str(tmp_path / "m"), "--dtype", "float16"]
    assert run(argv) == 2  # research-only models and no acceptance: nothing moves
    out, err = capsys.readouterr()
    assert "ip-adapter-faceid-plusv2-sdxl, buffalo_l are licensed for research" in err
    assert file_gets(hub) == []
    for n in names:  # the plan: every model with its size and licence, the total, the free disk
        assert re.search(rf"{n}\s+\d\.\d kB\s+licence: ", out), n
    assert re.search(r"total to download: \d+\.\d kB; free disk space in .+: \d+\.\d (GB|MB|TB)", out)
    assert run([*argv, "--accept-license"]) == 0
    out = capsys.readouterr().out
    assert [ln.split(":")[0] for ln in out.splitlines() if ": ok (" in ln] == names
    store = open_store(real_settings(tmp_path / "x", models_dir=tmp_path / "m"))
    assert all(store.status(n).verified for n in names)
    assert run([*argv, "--accept-license"]) == 0  # a second run downloads nothing
    assert "already here" in capsys.readouterr().out and len(file_gets(hub)) == len(names)


def test_download_refuses_when_the_disk_is_too_small(tmp_path, faceid_hub, monkeypatch, capsys):
    hub, _ = faceid_hub
    monkeypatch.setattr(bundles, "free_space", lambda folder: 50_000_000)
    code = run(["models", "download", "--for", "faceid", "--accept-license", "--models-dir", str(tmp_path / "m")])
    assert code == 1
    assert re.search(r"not enough free disk space in .+: the download needs \d+\.\d MB .+50\.0 MB is free",
                     capsys.readouterr().err)
    assert file_gets(hub) == []


# ---- 3/8. one error for every missing model; the UI's wording --------------------------------------
def test_generate_without_models_names_every_missing_model_once(tmp_path, photos_dir, capsys):
    code = run(["generate", "--photo", str(photos_dir / "t1.jpg"), "--prompt", "a portrait", "--method", "faceid",
                "--restore", "gfpgan", "--models-dir", str(tmp_path / "m"), "--device", "cpu",
                "--dtype", "float16", "--outputs-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    for n in ("sdxl-base", "sdxl-vae-fp16-fix", "ip-adapter-faceid-plusv2-sdxl", "clip-vit-h-image-encoder",
              "buffalo_l", "gfpgan-v1.4"):
        assert n in err
    cmd = HINT.search(err).group(1)
    args = build_parser().parse_args(shlex.split(cmd)[2:])
    from cli.models import resolve_download

    settings = real_settings(tmp_path, dtype="float16")
    assert set(resolve_download(args, settings, open_store(settings))) >= {"gfpgan-v1.4", "sdxl-vae-fp16-fix"}


def test_photo_upload_without_models_names_the_models_not_the_photo(tmp_path, photos_dir):
    from app.jobs import CancelRegistry, EngineHolder
    from app.portrait import PortraitTab, user_error
    from pipelines.engine import Engine

    settings = real_settings(tmp_path, dtype="float16")
    tab = PortraitTab(settings, EngineHolder(settings, Engine), CancelRegistry(), w=None)
    crops, report = tab.analyse([str(photos_dir / "t1.jpg")], "faceid")
    assert crops == [] and "No usable photo" not in report
    for n in bundles.method_models("faceid", settings):
        assert n in report
    assert "Models tab" in report and "bundle faceid" in report and "in all" in report
    # a toast and the API answer say the same, for a missing-models error
    with pytest.raises(bundles.MissingModels) as exc:
        bundles.require(open_store(settings), ["sdxl-base", "buffalo_l"], ("faceid",))
    assert "Models tab" in user_error(exc.value).message


# ---- 4. training in the UI ends in success, with its preview -------------------------------------
@pytest.mark.browser
def test_ui_training_shows_success_and_its_preview(ui_server, photos_dir):
    """The real trainer (demo models, 2 steps) through the web UI in chromium: the
    status says trained, no error toast, and the preview (written beside the LoRA,
    a folder that is never served) shows as an image the browser can fetch."""
    import urllib.request

    from playwright.sync_api import expect

    url, _ = ui_server
    with chromium_page(url) as page:
        page.get_by_role("tab", name="Train").click()
        page.set_input_files("#train-photos input[type=file]", str(photos_dir / "astronaut.png"))
        page.locator("#train-name textarea, #train-name input").first.fill("me")
        page.get_by_label("Steps (0 = 200 per photo, at most 800)").fill("2")
        page.locator("#train-start").click()
        expect(page.locator("#train-status")).to_contain_text("Trained", timeout=240_000)
        img = page.locator("#train-preview img")
        expect(img).to_be_visible(timeout=30_000)
        assert page.locator(".toast-body.error").count() == 0
        src = img.get_attribute("src")
    assert "/loras/" not in src
    with urllib.request.urlopen(src, timeout=30) as r:
        assert r.status == 200 and r.read()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- 7. reuse what is on disk: the HF cache, other apps' folders; hub settings ---------------------
HF_REPO, HF_COMMIT = "org/tiny-base", "0123456789abcdef0123456789abcdef01234567"


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def fake_hf_cache(root: Path, files: dict[str, bytes], lfs: set[str]) -> Path:
    """The hub cache layout huggingface_hub writes: blobs named by their hub id,
    snapshot entries as relative symlinks to them."""
    repo = root / f"models--{HF_REPO.replace('/', '--')}"
    for name, data in files.items():
        blob_id = hashlib.sha256(data).hexdigest() if name in lfs else git_sha1(data)
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        (repo / "blobs" / blob_id).write_bytes(data)
        link = repo / "snapshots" / HF_COMMIT / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * (len(Path(name).parts) + 1), "blobs", blob_id))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(HF_COMMIT)
    return root


def hf_base_catalog(files: dict[str, bytes], with_sha: set[str]) -> Catalog:
    return Catalog.model_validate({"model": [{
        "name": "sdxl-base", "kind": "sdxl", "source": "hf", "repo": HF_REPO, "revision": HF_COMMIT,
        "license": "CreativeML Open RAIL++-M",
        "files": [{"path": n, "size": len(d), **({"sha256": hashlib.sha256(d).hexdigest()} if n in with_sha else {})}
                  for n, d in files.items()]}]})


def st_bytes(seed: int) -> bytes:
    import torch
    from safetensors.torch import save

    return save({"w": torch.randn(16, 16, generator=torch.Generator().manual_seed(seed))})


BASE_FILES = {"model_index.json": b'{"_class_name": "StableDiffusionXLPipeline"}',
              "unet/diffusion_pytorch_model.fp16.safetensors": st_bytes(3)}


@pytest.mark.parametrize("env", ["HF_HOME", "HF_HUB_CACHE"])
def test_the_hf_cache_is_verified_and_linked_not_downloaded(tmp_path, monkeypatch, env):
    root = tmp_path / "hfhome"
    cache = fake_hf_cache(root / "hub" if env == "HF_HOME" else root, BASE_FILES,
                          lfs={"unet/diffusion_pytorch_model.fp16.safetensors"})
    monkeypatch.setenv(env, str(root))
    monkeypatch.delenv("HF_HUB_CACHE" if env == "HF_HOME" else "HF_HOME", raising=False)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in cache.rglob("blobs/*")}
    store = open_store(real_settings(tmp_path), hf_base_catalog(BASE_FILES, with_sha=set()))
    folder = store.download("sdxl-base", progress=False)  # HF_HUB_OFFLINE=1: any network use would fail
    for name, data in BASE_FILES.items():
        placed = folder / name
        assert placed.read_bytes() == data
        blob_path = (cache / f"models--{HF_REPO.replace('/', '--')}" / "snapshots" / HF_COMMIT / name).resolve()
        assert placed.resolve() == blob_path or placed.stat().st_ino == blob_path.stat().st_ino  # linked
        assert store.pins("sdxl-base")[name]["reused_from"].endswith(name)
    assert store.status("sdxl-base").verified and store.verify("sdxl-base").verified
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in cache.rglob("blobs/*")} == before  # untouched


def test_a_cached_file_that_fails_its_hash_is_not_used(tmp_path, monkeypatch):
    from pipelines.errors import DownloadError

    files = dict(BASE_FILES)
    fake_hf_cache(tmp_path / "hub", files, lfs=set(files))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    wrong = {**files, "unet/diffusion_pytorch_model.fp16.safetensors": st_bytes(4)}  # the catalog's bytes differ
    store = open_store(real_settings(tmp_path), hf_base_catalog(wrong, with_sha=set(wrong)))
    with pytest.raises(DownloadError, match="offline"):  # not reused: it would have to download
        store.download("sdxl-base", progress=False)
    assert not (store.folder("sdxl-base") / "unet/diffusion_pytorch_model.fp16.safetensors").exists()


def test_other_apps_folders_from_extra_model_paths(tmp_path, monkeypatch):
    """A ComfyUI-style extra_model_paths.yaml names an install; a catalog file found
    there with the catalog's sha256 is linked, never changed; a same-size file with
    other bytes is not used."""
    comfy = tmp_path / "ComfyUI"
    good = st_bytes(5)
    (comfy / "models" / "ipadapter").mkdir(parents=True)
    (comfy / "models" / "ipadapter" / "ip-adapter-faceid-plusv2_sdxl.safetensors").write_bytes(good)
    (comfy / "models" / "insightface" / "models" / "buffalo_l").mkdir(parents=True)
    (comfy / "models" / "insightface" / "models" / "buffalo_l" / "w600k_r50.onnx").write_bytes(blob(3000, 6))
    yaml_file = tmp_path / "extra_model_paths.yaml"
    yaml_file.write_text("comfyui:\n    base_path: ComfyUI/\n    ipadapter: models/ipadapter\n"
                         "    insightface: |\n        models/insightface\n    checkpoints: models/checkpoints\n")
    cat = Catalog.model_validate({"model": [
        {"name": "adapter", "kind": "ip-adapter", "source": "url", "license": "MIT",
         "files": [{"path": "a.safetensors", "source": "https://example.invalid/a", "size": len(good),
                    "sha256": hashlib.sha256(good).hexdigest()}]},
        {"name": "other", "kind": "insightface", "source": "url", "license": "MIT",
         "files": [{"path": "w600k_r50.onnx", "source": "https://example.invalid/w", "size": 3000,
                    "sha256": hashlib.sha256(blob(3000, 7)).hexdigest()}]}]})
    settings = real_settings(tmp_path, extra_model_paths=yaml_file)
    store = open_store(settings, cat)
    src = comfy / "models" / "ipadapter" / "ip-adapter-faceid-plusv2_sdxl.safetensors"
    stamp = src.stat().st_mtime_ns
    folder = store.download("adapter", progress=False)
    assert (folder / "a.safetensors").read_bytes() == good and store.status("adapter").verified
    assert src.read_bytes() == good and src.stat().st_mtime_ns == stamp
    assert store.pins("adapter")["a.safetensors"]["reused_from"] == str(src.resolve())
    from pipelines.errors import DownloadError

    with pytest.raises(DownloadError):  # same size, other bytes: not used, so it must download (and cannot)
        store.download("other", progress=False)
    # the default place for the file is the models folder itself
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / "extra_model_paths.yaml").write_text(yaml_file.read_text().replace(
        "ComfyUI/", str(comfy) + "/"))
    from pipelines.models.external import extra_folders

    assert extra_folders(real_settings(tmp_path))["ipadapter"] == [comfy / "models/ipadapter"]
    with pytest.raises(Exception, match="LIKENESS_EXTRA_MODEL_PATHS"):
        extra_folders(real_settings(tmp_path, extra_model_paths=tmp_path / "missing.yaml"))


def test_hub_token_and_endpoint_are_honoured(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    with FakeHub() as hub:
        hub.add_hub_file(HF_REPO, "w.safetensors", data := st_bytes(9))
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)  # a mirror
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
        cat = Catalog.model_validate({"model": [{"name": "vae-w", "kind": "vae", "source": "hf", "repo": HF_REPO,
                                                 "license": "MIT", "files": [{"path": "w.safetensors"}]}]})
        store = open_store(real_settings(tmp_path), cat)
        store.download("vae-w", progress=False)
        gets = [r for r in hub.requests if r.path.endswith("w.safetensors")]
    assert gets and all(r.authorization == "Bearer hf_test_token" for r in gets)
    assert (store.folder("vae-w") / "w.safetensors").read_bytes() == data


def test_the_plan_counts_a_cached_base_as_nothing_to_download(tmp_path, monkeypatch, capsys):
    from pipelines.models import store as store_mod

    fake_hf_cache(tmp_path / "hub", BASE_FILES, lfs={"unet/diffusion_pytorch_model.fp16.safetensors"})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cat = hf_base_catalog(BASE_FILES, with_sha=set())
    monkeypatch.setattr(store_mod, "load_catalog", lambda *a, **k: cat)
    assert run(["models", "download", "sdxl-base", "--models-dir", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"sdxl-base\s+0 B .*on disk already", out) and "total to download: 0 B" in out
    assert "sdxl-base: ok" in out


# ---- 6. the first-run card in a real browser, against the fake hub and a fake HF cache --------------
FACEID_BUNDLE = ["sdxl-base", "ip-adapter-faceid-plusv2-sdxl", "clip-vit-h-image-encoder", "buffalo_l"]


def tiny_hub_catalog(hub: FakeHub, workdir: Path, names: list[str], cache_only: set[str] = frozenset(),
                     hf_cache: Path | None = None) -> Catalog:
    """The real catalog entries of `names` with the files of their tiny packs (same
    paths, the tiny bytes' sizes and sha256), served by the fake hub at a fake
    commit; `cache_only` entries are put in a fake HF cache instead of the hub."""
    from pipelines import tiny

    real = load_catalog()
    entries = []
    for name in names:
        e = real.get(name)
        built = tiny.build_pack(e.demo_pack, workdir / name)
        repo = e.repo or f"url/{name}"
        commit = hashlib.sha1(repo.encode()).hexdigest()
        files = []
        for f in e.files:
            data = (built / f.path).read_bytes()
            remote = f.source if e.source == "hf" and f.source else f.path
            if name in cache_only:
                snap = hf_cache / f"models--{repo.replace('/', '--')}" / "snapshots" / commit / remote
                blob_path = hf_cache / f"models--{repo.replace('/', '--')}" / "blobs" / hashlib.sha256(data).hexdigest()
                blob_path.parent.mkdir(parents=True, exist_ok=True)
                blob_path.write_bytes(data)
                snap.parent.mkdir(parents=True, exist_ok=True)
                snap.symlink_to(blob_path)
            else:
                hub.add_hub_file(repo, remote, data)
            files.append({"path": f.path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                          **({"source": remote} if remote != f.path else {}),
                          **({"convert_to": f.convert_to} if f.convert_to else {})})
        hub.repos[repo] = commit
        entries.append({**e.model_dump(exclude={"files"}), "source": "hf", "repo": repo, "revision": commit,
                        "files": files})
    others = [e.model_dump() for e in real if e.name not in names]  # the UI lists every entry
    return Catalog.model_validate({"model": entries + others})


@pytest.fixture()
def first_run_server(tmp_path, monkeypatch, request):
    """The web UI in real mode (not demo) on tiny weights: the catalog's faceid bundle
    served by the fake hub (and, with the `cached` param, the base in a fake HF cache)."""
    import huggingface_hub.constants as hf_constants

    from app.jobs import EngineHolder
    from app.security import resolve_launch
    from app.server import serve
    from pipelines.models import store as store_mod

    cached = getattr(request, "param", False)
    with FakeHub() as hub:
        hf_cache = tmp_path / "hf-cache"
        cat = tiny_hub_catalog(hub, tmp_path / "packs", FACEID_BUNDLE, {"sdxl-base"} if cached else set(), hf_cache)
        monkeypatch.setattr(store_mod, "load_catalog", lambda *a, **k: cat)
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
        settings = real_settings(tmp_path)
        cfg = resolve_launch(listen=False, port=free_port(), auth=None, insecure_no_auth=False, share=False,
                             environ={})
        demo, url, _ = serve(settings, cfg, block=False, holder=EngineHolder(settings))
        try:
            yield url.rstrip("/"), hub, settings
        finally:
            demo.close()


@pytest.mark.browser
@pytest.mark.parametrize("first_run_server", [False, True], ids=["fake-hub", "fake-hf-cache"], indirect=True)
def test_first_run_card_downloads_the_bundle_then_generation_works(first_run_server, photos_dir):
    from playwright.sync_api import expect

    url, hub, settings = first_run_server
    with chromium_page(url, height=1800) as page:
        card = page.locator("#first-run").first
        expect(card).to_be_visible(timeout=30_000)  # before any upload
        for name in FACEID_BUNDLE:
            expect(page.locator("#first-run-info")).to_contain_text(name)
        expect(page.locator("#first-run-info")).to_contain_text("Total")
        expect(page.locator("#first-run-info")).to_contain_text("research / non-commercial only")
        gallery = page.locator("#preset-gallery")  # each preset card says what it would still download
        expect(gallery).to_contain_text("Charcoal sketch — downloads", timeout=30_000)
        page.locator("#first-run-download").click()  # not accepted yet: refused, nothing fetched
        expect(page.locator(".toast-body").first).to_contain_text("accept", timeout=10_000)
        assert not [r for r in hub.requests if r.method == "GET"]
        page.locator("#first-run-accept input").check()
        page.locator("#first-run-download").click()
        expect(page.locator("#first-run-done")).to_contain_text("Models ready", timeout=120_000)
        total = page.locator("#first-run-progress .fr-total-bar")
        assert total.get_attribute("value") == total.get_attribute("max") != "0"
        expect(page.locator("#first-run-progress")).to_contain_text("100%")
        expect(card).to_be_hidden()
        expect(gallery).not_to_contain_text("Charcoal sketch — downloads")  # a faceid preset: all here now
        expect(gallery).to_contain_text("Corporate portrait — downloads")  # it also needs the pose ControlNet
        # then a portrait, in the same server, without a restart
        page.set_input_files("#photos input[type=file]", str(photos_dir / "astronaut.png"))
        expect(page.locator("#face-crops img")).to_have_count(1, timeout=60_000)
        page.locator("#advanced").click()
        page.locator("#steps input[type=number]").fill("2")
        page.locator("#size input").fill("128x128")
        page.locator("#size input").press("Enter")
        page.locator("#prompt textarea").fill("studio portrait")
        page.locator("#generate").click()
        expect(page.locator("#status")).to_contain_text("Done", timeout=180_000)
        expect(page.locator("#results img").first).to_be_visible()
    base_gets = [r for r in hub.requests if r.method == "GET" and "stable-diffusion-xl" in r.path]
    store = open_store(settings)
    assert all(store.status(n).verified for n in FACEID_BUNDLE)
    if "fake-hf-cache" in os.environ.get("PYTEST_CURRENT_TEST", ""):
        assert base_gets == []  # the base came from the HF cache, verified and linked
        assert "reused_from" in next(iter(store.pins("sdxl-base").values()))
    else:
        assert base_gets


class CancelAfter:
    """An Event stand-in that turns set after `n` checks (a user pressing Cancel mid-file)."""

    def __init__(self, n: int):
        self.n = n

    def is_set(self) -> bool:
        self.n -= 1
        return self.n < 0


def test_cancel_keeps_the_partial_file_and_the_next_download_resumes(tmp_path):
    import torch
    from safetensors.torch import save

    from pipelines.bundles import download_progress, plan
    from pipelines.errors import Cancelled

    data = save({"w": torch.randn(800_000, generator=torch.Generator().manual_seed(11))})  # 3.2 MB: 1 MiB chunks
    with FakeHub() as hub:
        url = hub.add_url_file("big.bin", data)
        cat = Catalog.model_validate({"model": [{"name": "big-model", "kind": "restore", "source": "url",
                                                 "license": "MIT", "files": [{"path": "big.safetensors",
                                                 "source": url, "size": len(data)}]}]})
        store = open_store(real_settings(tmp_path), cat)
        todo = plan(store, ["big-model"])
        with pytest.raises(Cancelled, match="run it again to resume"):
            store.download("big-model", progress=False, cancel=CancelAfter(2))  # 1 check before the file, 1 chunk
        part = store.folder("big-model") / "big.safetensors.part"
        assert part.stat().st_size == 1 << 20
        rows = download_progress(store, todo)
        assert (rows[0].done, rows[0].size) == (1 << 20, len(data))  # the card's per-file bar
        store.download("big-model", progress=False)
        assert hub.range_requests("big.bin")[0].range == f"bytes={1 << 20}-"  # resumed, not restarted
    assert (store.folder("big-model") / "big.safetensors").read_bytes() == data and not part.exists()
    assert store.status("big-model").verified


def test_other_apps_checkpoints_and_loras_are_listed_and_registered_in_place(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    ckpts = tmp_path / "webui" / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    sdxl = ckpts / "myXL.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4),
               "conditioner.embedders.1.model.ln_final.weight": torch.ones(4)}, str(sdxl))
    save_file({"model.diffusion_model.x": torch.zeros(2)}, str(ckpts / "sd15.safetensors"))  # not SDXL: skipped
    (tmp_path / "webui" / "models" / "Lora").mkdir()
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(tmp_path / "webui/models/Lora/me.safetensors"))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "extra_model_paths.yaml").write_text(
        f"a111:\n    base_path: {tmp_path / 'webui'}\n    checkpoints: models/Stable-diffusion\n"
        "    loras: |\n        models/Lora\n        models/LyCORIS\n")
    before = (sdxl.read_bytes(), sdxl.stat().st_mtime_ns)
    flags = ["--models-dir", str(tmp_path / "models"), "--device", "cpu"]
    assert run(["models", "list", *flags]) == 0
    out = capsys.readouterr().out
    found = out.split("Other apps")[1]
    assert "1 SDXL checkpoint(s) not registered yet" in found and str(sdxl) in found and "sd15.safetensors" not in found
    assert "1 LoRA file(s)" in out
    command = HINT.search(out.split("Other apps")[1]).group(1)
    assert run([*shlex.split(command)[2:], *flags]) == 0  # the suggested command, as printed
    assert "registered" in capsys.readouterr().out
    store = open_store(real_settings(tmp_path))
    assert list(store.user_checkpoints().values()) == [sdxl.resolve()]
    assert (sdxl.read_bytes(), sdxl.stat().st_mtime_ns) == before  # read in place, never modified
    assert run(["models", "list", *flags]) == 0
    assert "0 SDXL checkpoint(s) not registered yet" in capsys.readouterr().out
    # the other app's LoRA is usable by name, read in place; a LoRA of the same name in loras/ wins
    from pipelines.errors import BadInput
    from pipelines.lora.manager import LoraManager, find_lora, user_lora_names

    settings = real_settings(tmp_path)
    lora = tmp_path / "webui/models/Lora/me.safetensors"
    assert "me" in user_lora_names(settings) and find_lora(settings, "me") == lora
    assert LoraManager(settings, store).path("me") == lora
    (tmp_path / "loras").mkdir()
    save_file({"lora_unet_x.lora_down.weight": torch.ones(2, 2)}, str(tmp_path / "loras/me.safetensors"))
    assert find_lora(settings, "me") == tmp_path / "loras/me.safetensors" and user_lora_names(settings) == ["me"]
    with pytest.raises(BadInput, match="not found"):
        find_lora(settings, "nobody")


def source_hints() -> list[str]:
    """Every `launch.py ...` command quoted in a message string of pipelines/ and
    app/ (docstrings are prose and left out; an f-string's {field} reads as X)."""
    import ast

    found = []
    for path in [*(REPO / "pipelines").rglob("*.py"), *(REPO / "app").rglob("*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "X" for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                text = node.value
            else:
                continue
            found += [f"{m} ({path.relative_to(REPO)})" for m in HINT.findall(text)]
    return found


def test_every_command_quoted_in_a_message_parses():
    hints = source_hints()
    assert any("models register" in h for h in hints) and any("wplus edits" in h for h in hints)
    parser = build_parser()
    for hint in hints:
        command, where = hint.rsplit(" (", 1)
        argv = shlex.split(command)
        try:
            parser.parse_args(argv[argv.index("launch.py") + 1:])
        except SystemExit:
            pytest.fail(f"{where[:-1]} suggests a command that does not parse: {command}")


def test_first_run_card_cancel_then_resume(tmp_path, monkeypatch):
    """The card's handlers without a browser: Cancel during the download ends with
    'Cancelled' and keeps what arrived; the next Download finishes the job."""
    from types import SimpleNamespace

    import torch
    from safetensors.torch import save

    import app.models_tab as mt
    from pipelines.models import store as store_mod

    data = save({"w": torch.zeros(1_000_000)})  # 4 MB over a slow link: still arriving when Cancel is pressed
    with FakeHub() as hub:
        url = hub.add_url_file("big.bin", data, chunk_delay=0.1)
        real = load_catalog()
        entries = [e.model_dump() for e in real if e.name != "sdxl-base"]
        entries.append({**real.get("sdxl-base").model_dump(exclude={"files", "repo", "revision", "variant"}),
                        "source": "url", "files": [{"path": "big.safetensors", "source": url, "size": len(data),
                                                    "sha256": hashlib.sha256(data).hexdigest()}]})
        cat = Catalog.model_validate({"model": entries})
        monkeypatch.setattr(store_mod, "load_catalog", lambda *a, **k: cat)
        settings = real_settings(tmp_path)
        card = mt.FirstRunCard(settings)
        with __import__("gradio").Blocks():
            card.build()
        request = SimpleNamespace(session_hash="s1")
        updates = card.download("none", None, True, request)
        part = open_store(settings).folder("sdxl-base") / "big.safetensors.part"
        while not (part.is_file() and part.stat().st_size > 0):  # wait until bytes are arriving
            assert "fr-total-bar" in next(updates)[card.progress]
        assert card.cancel(request).startswith("Cancelling")
        last = list(updates)[-1]
        assert "Cancelled" in last[card.progress]
        assert not open_store(settings).status("sdxl-base").ok
        last = list(card.download("none", None, True, request))[-1]
        assert "ready" in last[card.progress] and "Models ready" in last[card.done]
        assert open_store(settings).status("sdxl-base").verified
        resumed = hub.range_requests("big.bin")
        part_bytes = sum(len(data) - int(r.range.split("=")[1].rstrip("-")) for r in resumed)
        assert len([r for r in hub.requests if r.method == "GET"]) == 2 and part_bytes < len(data)  # resumed


def test_models_tab_shows_sizes_bundle_totals_and_free_disk(tmp_path):
    import gradio as gr

    from app.models_tab import BUNDLE_PREFIX, bundle_table, disk_text, download_model, licence_text, model_rows

    settings = real_settings(tmp_path, dtype="float16")
    rows = model_rows(settings)
    assert len(rows) == len(load_catalog().model)
    assert all(re.fullmatch(r"~?\d+(\.\d)? (B|kB|MB|GB)", r[2]) for r in rows), rows
    table = {r[0]: r for r in bundle_table(settings)}
    assert set(table) == set(bundles.bundle_choices())
    assert "sdxl-vae-fp16-fix" in table["faceid"][3]  # float16 here: the bundle carries the VAE fix
    assert re.fullmatch(r"~?\d+\.\d GB", table["all"][1])
    assert "Free disk space" in disk_text(settings)
    assert "Total" in licence_text(settings, f"{BUNDLE_PREFIX}faceid")
    with pytest.raises(gr.Error, match="research / non-commercial"):  # every licence before the first byte
        download_model(settings, f"{BUNDLE_PREFIX}faceid", accept=False)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("*.safetensors"))
