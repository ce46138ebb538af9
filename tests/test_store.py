"""Model store: downloads (release URLs and the hub API) against a local fake
server on 127.0.0.1, verification, resume, cut-offs, hash pins, pickle
conversion (including a malicious pickle), licences, insightface layouts,
broken files, demo packs and user checkpoints. Test catalogs are built here."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines import tiny
from pipelines.errors import BadInput, DownloadError, LicenseNotAccepted, ModelError, ModelMissing
from pipelines.models import store as store_mod
from pipelines.models.catalog import Catalog, parse_catalog
from pipelines.models.convert import convert_pickle_to_safetensors, load_pickle_safely, read_extra
from pipelines.models.store import ModelStore
from pipelines.settings import load_settings
from pipelines.stores import open_store
from tests.fakehub import FakeHub

REPO = "org/tiny-model"


# ---- helpers -----------------------------------------------------------------------------
def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed * 7) % 251 for i in range(n))


def pickle_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def catalog(*entries: dict) -> Catalog:
    base = {"license": "MIT"}
    return Catalog.model_validate({"model": [{**base, **e} for e in entries]})


def make_store(tmp_path: Path, cat: Catalog, **overrides) -> ModelStore:
    settings = load_settings(
        models_dir=tmp_path / "models",
        loras_dir=tmp_path / "loras",
        outputs_dir=tmp_path / "outputs",
        device="cpu",
        **overrides,
    )
    return open_store(settings, cat)


@pytest.fixture()
def hub():
    with FakeHub() as h:
        yield h


@pytest.fixture()
def no_retry_pause(monkeypatch):
    monkeypatch.setattr(store_mod, "RETRY_DELAYS", (0.0, 0.0))


@pytest.fixture()
def hub_online(hub, monkeypatch):
    """Point huggingface_hub at the fake hub and lift HF_HUB_OFFLINE for this test only."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    return hub


def url_entry(url: str, name="weights", path="weights.safetensors", entry_kw=None, **file_kw) -> dict:
    files = [{"path": path, "source": url, **file_kw}]
    return {"name": name, "kind": "restore", "source": "url", "files": files, **(entry_kw or {})}


def tiny_safetensors(seed: int = 0) -> bytes:
    g = torch.Generator().manual_seed(seed)
    from safetensors.torch import save

    return save({"w": torch.randn(16, 16, generator=g), "b": torch.zeros(16)})


# ---- catalog -----------------------------------------------------------------------------
def test_catalog_round_trip_and_paths(tmp_path):
    text = """
[[model]]
name = "pt-model"
kind = "restore"
source = "url"
license = "Apache-2.0"
files = [{ path = "net.pth", source = "http://127.0.0.1:9/net.pth", size = 12, convert_to = "net.safetensors" }]

[[model]]
name = "faces"
kind = "insightface"
source = "hf"
repo = "org/faces"
folder = "insightface/models/faces"
license = "research"
research_only = true
files = [{ path = "det.onnx", source = "models/faces/det.onnx" }]
"""
    cat = parse_catalog(text)
    again = Catalog.model_validate(json.loads(cat.model_dump_json()))
    assert again == cat
    store = make_store(tmp_path, cat)
    assert store.root == (tmp_path / "models")
    assert store.folder("faces") == (tmp_path / "models" / "insightface/models/faces").resolve()
    # the path to use for a published pickle is its safetensors copy
    assert store.file_path("pt-model", "net.pth").name == "net.safetensors"
    assert store.file_path("faces", "det.onnx").name == "det.onnx"
    with pytest.raises(BadInput, match="no file"):
        store.file_path("faces", "other.onnx")
    # plain http is refused except for loopback hosts
    with pytest.raises(BadInput, match="https"):
        parse_catalog(text.replace("http://127.0.0.1:9", "http://example.com"))
    demo = make_store(tmp_path, cat, demo=True)
    assert demo.root == tmp_path / "models" / "demo"


# ---- url downloads -----------------------------------------------------------------------
def test_url_download_pins_and_verify(tmp_path, hub):
    data = tiny_safetensors()
    url = hub.add_url_file("weights.safetensors", data)
    store = make_store(tmp_path, catalog(url_entry(url, size=len(data))))

    assert not store.status("weights").present
    folder = store.download("weights", progress=False)
    dest = folder / "weights.safetensors"
    assert dest.read_bytes() == data
    assert not (folder / "weights.safetensors.part").exists()
    assert store.pins("weights")["weights.safetensors"] == {"sha256": sha(data), "size": len(data)}
    st = store.status("weights")
    assert st.present and st.verified and st.size_on_disk == len(data)
    assert store.verify("weights").verified
    assert store.ensure("weights") == folder

    # already there and pinned: a second download fetches nothing
    n = len(hub.gets("weights.safetensors"))
    store.download("weights", progress=False)
    assert len(hub.gets("weights.safetensors")) == n

    # same size, one byte changed: the cheap status cannot tell, the full verify can
    corrupted = bytearray(data)
    corrupted[-1] ^= 0xFF
    dest.write_bytes(bytes(corrupted))
    assert store.status("weights").ok
    st = store.verify("weights")
    assert not st.verified and "does not match its sha256" in st.problems[0] and str(dest) in st.problems[0]


def test_url_resume_from_partial_file(tmp_path, hub):
    data = blob(5000, seed=1)
    url = hub.add_url_file("big.bin", data)
    store = make_store(tmp_path, catalog(url_entry(url, name="big", path="big.onnx", sha256=sha(data))))
    folder = store.folder("big")
    folder.mkdir(parents=True)
    (folder / "big.onnx.part").write_bytes(data[:1234])  # left by an interrupted run

    store.download("big", progress=False)

    assert (folder / "big.onnx").read_bytes() == data
    gets = hub.gets("big.bin")
    assert len(gets) == 1 and gets[0].range == "bytes=1234-"
    assert not (folder / "big.onnx.part").exists()


def test_url_hash_mismatch_deletes_and_places_nothing(tmp_path, hub):
    data = blob(3000, seed=2)
    url = hub.add_url_file("m.onnx", data)
    bad = make_store(tmp_path, catalog(url_entry(url, name="mm", path="m.onnx", sha256=sha(b"something else"))))
    with pytest.raises(DownloadError, match=r"mm/m\.onnx does not match the catalog"):
        bad.download("mm", progress=False)
    folder = bad.folder("mm")
    assert sorted(p.name for p in folder.iterdir()) == []  # no file, no .part
    assert bad.pins("mm") == {}
    # a correct catalog downloads fine afterwards
    good = make_store(tmp_path, catalog(url_entry(url, name="mm", path="m.onnx", sha256=sha(data))))
    good.download("mm", progress=False)
    assert (folder / "m.onnx").read_bytes() == data


def test_url_pinned_hash_catches_changed_upstream_file(tmp_path, hub):
    data = blob(2000, seed=3)
    url = hub.add_url_file("p.onnx", data)
    store = make_store(tmp_path, catalog(url_entry(url, name="pp", path="p.onnx")))
    store.download("pp", progress=False)  # no catalog hash: the first download is pinned
    assert store.pins("pp")["p.onnx"]["sha256"] == sha(data)
    (store.folder("pp") / "p.onnx").unlink()
    hub.files["/files/p.onnx"].data = blob(2000, seed=4)  # same size, other bytes
    with pytest.raises(DownloadError, match="pinned on its first download"):
        store.download("pp", progress=False)
    assert list(store.folder("pp").iterdir()) == []


def test_url_cut_off_removes_temp_then_retry_works(tmp_path, hub, no_retry_pause):
    data = blob(4000, seed=5)
    url = hub.add_url_file("cut.onnx", data, cut_after=700)  # every response dies after 700 bytes
    store = make_store(tmp_path, catalog(url_entry(url, name="cut", path="cut.onnx", size=len(data))))
    with pytest.raises(DownloadError, match=r"cut/cut\.onnx .*failed after 3 attempts"):
        store.download("cut", progress=False)
    folder = store.folder("cut")
    assert list(folder.iterdir()) == []  # temp removed, nothing placed
    # the retries resumed where the previous attempt stopped
    assert [r.range for r in hub.gets("cut.onnx")] == [None, "bytes=700-", "bytes=1400-"]

    hub.files["/files/cut.onnx"].cut_after = None
    store.download("cut", progress=False)
    assert (folder / "cut.onnx").read_bytes() == data


def test_url_single_cut_off_resumes_in_process(tmp_path, hub, no_retry_pause):
    data = blob(4000, seed=6)
    url = hub.add_url_file("once.onnx", data, cut_after=1000, cut_times=1)
    store = make_store(tmp_path, catalog(url_entry(url, name="once", path="once.onnx")))
    store.download("once", progress=False)
    assert (store.folder("once") / "once.onnx").read_bytes() == data
    assert [r.range for r in hub.gets("once.onnx")] == [None, "bytes=1000-"]


def test_url_size_mismatch_without_hash(tmp_path, hub):
    data = blob(1000)
    url = hub.add_url_file("s.onnx", data)
    store = make_store(tmp_path, catalog(url_entry(url, name="ss", path="s.onnx", size=999)))
    with pytest.raises(DownloadError, match="expected 999"):
        store.download("ss", progress=False)
    assert list(store.folder("ss").iterdir()) == []


# ---- hub downloads -----------------------------------------------------------------------
def hub_entry(**kw) -> dict:
    files = [
        {"path": "config.json"},
        {"path": "unet/model.safetensors"},
        {"path": "adapter.bin", "convert_to": "adapter.safetensors"},
        {"path": "det.onnx", "source": "models/pack/det.onnx"},
    ]
    return {"name": "hubmodel", "kind": "ip-adapter", "source": "hf", "repo": REPO, "files": files, **kw}


def fill_hub(hub: FakeHub) -> dict[str, bytes]:
    files = {
        "config.json": b'{"hidden": 4}',
        "unet/model.safetensors": tiny_safetensors(1),
        "adapter.bin": pickle_bytes({"image_proj": {"norm.weight": torch.ones(4)}, "ip_adapter": {"1.to_k_ip.weight": torch.eye(4)}}),
        "models/pack/det.onnx": blob(3000, seed=7),
    }
    for name, data in files.items():
        hub.add_hub_file(REPO, name, data, lfs=not name.endswith(".json"))
    return files


def test_hub_download_convert_and_verify(tmp_path, hub_online):
    files = fill_hub(hub_online)
    store = make_store(tmp_path, catalog(hub_entry()))
    folder = store.download("hubmodel", progress=False)

    assert (folder / "config.json").read_bytes() == files["config.json"]
    assert (folder / "unet/model.safetensors").read_bytes() == files["unet/model.safetensors"]
    assert (folder / "det.onnx").read_bytes() == files["models/pack/det.onnx"]
    # the pickle was converted once and removed; only the safetensors copy is used
    assert not (folder / "adapter.bin").exists()
    converted = store.file_path("hubmodel", "adapter.bin")
    assert converted == folder / "adapter.safetensors"
    sd = load_file(converted)
    assert set(sd) == {"image_proj.norm.weight", "ip_adapter.1.to_k_ip.weight"}
    assert torch.equal(sd["ip_adapter.1.to_k_ip.weight"], torch.eye(4))

    pins = store.pins("hubmodel")
    assert pins["unet/model.safetensors"]["sha256"] == sha(files["unet/model.safetensors"])
    assert pins["adapter.bin"]["sha256"] == sha(files["adapter.bin"])
    assert pins["adapter.safetensors"]["converted_from"] == "adapter.bin"
    assert store.status("hubmodel").verified and store.verify("hubmodel").verified

    # placed files were moved out of the private hub cache, not copied
    cache_blobs = list((store.root / store_mod.HF_CACHE_DIR).rglob("blobs/*"))
    assert [p for p in cache_blobs if p.is_file()] == []

    # everything pinned and present: nothing is fetched again
    n = len(hub_online.gets("det.onnx"))
    store.download("hubmodel", progress=False)
    assert len(hub_online.gets("det.onnx")) == n


def test_hub_hash_mismatch_then_retry(tmp_path, hub_online):
    data = blob(2500, seed=8)
    f = hub_online.add_hub_file(REPO, "w.onnx", data, advertised_sha256=sha(b"not these bytes"))
    entry = {"name": "hw", "kind": "controlnet", "source": "hf", "repo": REPO, "files": [{"path": "w.onnx"}]}
    store = make_store(tmp_path, catalog(entry))
    with pytest.raises(DownloadError, match=r"hw/w\.onnx does not match the hub's LFS sha256"):
        store.download("hw", progress=False)
    assert not (store.folder("hw") / "w.onnx").exists()
    cache = store.root / store_mod.HF_CACHE_DIR
    assert [p for p in cache.rglob("*") if p.is_file() and p.stat().st_size == len(data)] == []

    f.advertised_sha256 = None  # the hub now tells the truth
    store.download("hw", progress=False)
    assert (store.folder("hw") / "w.onnx").read_bytes() == data


def test_hub_cut_off_resumes_with_range(tmp_path, hub_online):
    # huggingface_hub resumes at its 10 MiB chunk boundary: cut the stream after 11 MiB
    mib = 1 << 20
    data = (bytes(range(251)) * (12 * mib // 251 + 1))[: 12 * mib]
    hub_online.add_hub_file(REPO, "c.onnx", data, cut_after=11 * mib, cut_times=1)
    entry = {"name": "hc", "kind": "controlnet", "source": "hf", "repo": REPO, "files": [{"path": "c.onnx"}]}
    store = make_store(tmp_path, catalog(entry))
    store.download("hc", progress=False)
    assert (store.folder("hc") / "c.onnx").read_bytes() == data
    assert [r.range for r in hub_online.gets("c.onnx")] == [None, f"bytes={10 * mib}-"]


def test_hub_missing_file_and_offline_give_clear_errors(tmp_path, hub, monkeypatch):
    hub.add_hub_file(REPO, "present.onnx", b"x" * 10)
    entry = {"name": "hm", "kind": "controlnet", "source": "hf", "repo": REPO, "files": [{"path": "absent.onnx"}]}
    store = make_store(tmp_path, catalog(entry))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    # conftest keeps HF_HUB_OFFLINE=1
    with pytest.raises(DownloadError, match="offline"):
        store.download("hm", progress=False)
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(DownloadError, match=r"org/tiny-model/absent\.onnx .*does not exist"):
        store.download("hm", progress=False)


# ---- licences ----------------------------------------------------------------------------
def test_research_only_needs_acceptance(tmp_path, hub):
    data = blob(100)
    url = hub.add_url_file("r.onnx", data)
    entry = url_entry(url, name="research", path="r.onnx", entry_kw={"license": "NTU S-Lab 1.0", "research_only": True})
    store = make_store(tmp_path, catalog(entry))
    with pytest.raises(LicenseNotAccepted) as err:
        store.download("research", progress=False)
    msg = str(err.value)
    assert "research" in msg and "NTU S-Lab 1.0" in msg and "--accept-license" in msg
    assert hub.requests == []  # nothing was fetched
    store.download("research", accept_license=True, progress=False)
    assert store.status("research").verified
    # the setting works too
    other = make_store(tmp_path / "b", catalog(entry), accept_research_licenses=True)
    other.download("research", progress=False)
    # ensure() on a missing research model tells the user the flag
    third = make_store(tmp_path / "c", catalog(entry))
    with pytest.raises(ModelMissing, match="--accept-license"):
        third.ensure("research")


# ---- pickles -----------------------------------------------------------------------------
def test_pickle_conversion_flattens_and_keeps_extras(tmp_path):
    src = tmp_path / "e4e.pt"
    latent = torch.randn(18, 512, generator=torch.Generator().manual_seed(0))
    torch.save(
        {
            "state_dict": {"encoder.conv.weight": torch.ones(2, 3), "decoder.w": torch.zeros(1)},
            "opts": argparse.Namespace(stylegan_size=1024, encoder_type="Encoder4Editing", lr=1e-4),
            "latent_avg": latent,
            "step": 7,
        },
        src,
    )
    with pytest.raises(ModelError, match=r"refused to load .*e4e\.pt.*argparse\.Namespace"):
        load_pickle_safely(src)  # not on the allow-list by default
    dst = convert_pickle_to_safetensors(src, tmp_path / "e4e.safetensors", [argparse.Namespace])
    sd = load_file(dst)
    assert set(sd) == {"state_dict.encoder.conv.weight", "state_dict.decoder.w", "latent_avg"}
    assert torch.equal(sd["latent_avg"], latent)
    assert read_extra(dst) == {
        "opts": {"stylegan_size": 1024, "encoder_type": "Encoder4Editing", "lr": 1e-4},
        "step": 7,
    }


def test_pickle_conversion_handles_shared_tensors(tmp_path):
    base = torch.arange(12.0)
    src = tmp_path / "shared.bin"
    torch.save({"a": base, "b": base[:6], "c": base}, src)
    sd = load_file(convert_pickle_to_safetensors(src, tmp_path / "shared.safetensors"))
    assert torch.equal(sd["b"], torch.arange(6.0)) and torch.equal(sd["c"], base)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused_never_run(tmp_path, hub):
    marker = tmp_path / "MARKER"
    data = pickle_bytes({"w": torch.ones(2), "payload": _Evil(marker)})
    evil = tmp_path / "evil.bin"
    evil.write_bytes(data)
    with pytest.raises(ModelError, match=r"refused to load .*evil\.bin"):
        load_pickle_safely(evil)
    with pytest.raises(ModelError, match="refused"):
        convert_pickle_to_safetensors(evil, tmp_path / "evil.safetensors")
    assert not (tmp_path / "evil.safetensors").exists()

    # through the store: downloaded, verified, refused at conversion, deleted
    url = hub.add_url_file("evil.bin", data)
    entry = url_entry(url, name="evil", path="evil.bin", convert_to="evil.safetensors")
    store = make_store(tmp_path, catalog(entry))
    with pytest.raises(ModelError, match="refused .*deleted"):
        store.download("evil", progress=False)
    assert list(store.folder("evil").iterdir()) == []
    assert not marker.exists()


# ---- broken files and layouts --------------------------------------------------------------
def insightface_entry() -> dict:
    return {
        "name": "antelopev2",
        "kind": "insightface",
        "source": "hf",
        "repo": "org/antelopev2",
        "folder": "insightface/models/antelopev2",
        "files": [{"path": "scrfd_10g_bnkps.onnx"}, {"path": "glintr100.onnx"}],
    }


def test_insightface_missing_partial_and_nested_folders(tmp_path):
    store = make_store(tmp_path, catalog(insightface_entry()))
    folder = store.folder("antelopev2")

    with pytest.raises(ModelMissing) as err:
        store.ensure("antelopev2")
    msg = str(err.value)
    assert str(folder) in msg and "scrfd_10g_bnkps.onnx" in msg and "glintr100.onnx" in msg
    assert "models download antelopev2" in msg

    nested = folder / "antelopev2"
    nested.mkdir(parents=True)
    for n in ("scrfd_10g_bnkps.onnx", "glintr100.onnx"):
        (nested / n).write_bytes(b"onnx")
    st = store.status("antelopev2")
    assert not st.present and any("nested" in p for p in st.problems)
    with pytest.raises(ModelMissing, match="nested") as err:
        store.ensure("antelopev2")
    assert str(nested) in str(err.value) and "glintr100.onnx" in str(err.value)

    # fixed layout, one file still missing
    (nested / "scrfd_10g_bnkps.onnx").rename(folder / "scrfd_10g_bnkps.onnx")
    (nested / "glintr100.onnx").unlink()
    nested.rmdir()
    with pytest.raises(ModelMissing, match=r"incomplete \(missing glintr100\.onnx\)") as err:
        store.ensure("antelopev2")
    assert str(folder) in str(err.value)

    (folder / "glintr100.onnx").write_bytes(b"onnx")
    assert store.ensure("antelopev2") == folder  # a user-placed folder is usable...
    st = store.verify("antelopev2")
    assert not st.verified and "no recorded sha256" in st.problems[0]  # ...but not verified


def test_lfs_pointer_and_truncated_safetensors(tmp_path):
    entry = {
        "name": "vae",
        "kind": "vae",
        "source": "hf",
        "repo": "org/vae",
        "files": [{"path": "config.json"}, {"path": "diffusion_pytorch_model.safetensors"}],
    }
    store = make_store(tmp_path, catalog(entry))
    folder = store.folder("vae")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 64 + "\nsize 334643268\n"
    )
    st = store.status("vae")
    assert st.present and not st.ok and "git-lfs pointer" in st.problems[0]
    with pytest.raises(ModelError, match="git-lfs pointer") as err:
        store.ensure("vae")
    assert str(weights) in str(err.value)

    full = tiny_safetensors(2)
    weights.write_bytes(full[:-10])
    with pytest.raises(ModelError, match="truncated") as err:
        store.ensure("vae")
    assert str(weights) in str(err.value)
    weights.write_bytes(full)
    assert store.ensure("vae") == folder


def test_real_mode_ensure_names_the_download_command(tmp_path):
    store = make_store(tmp_path, catalog({"name": "absent", "kind": "vae", "source": "hf", "repo": "o/r",
                                          "files": [{"path": "a.safetensors"}]}))
    with pytest.raises(ModelMissing, match=r"model absent is not downloaded: run `python launch.py models download absent`"):
        store.ensure("absent")


# ---- demo packs --------------------------------------------------------------------------
def test_demo_pack_is_converted_and_pinned(tmp_path, monkeypatch):
    builds = []

    def build(dest: Path) -> None:
        builds.append(dest)
        torch.save(
            {"state_dict": {"encoder.w": torch.full((2, 2), 3.0)}, "opts": argparse.Namespace(size=256),
             "latent_avg": torch.zeros(18, 8)},
            dest / "e4e_ffhq_encode.pt",
        )
        (dest / "notes.txt").write_text("tiny")

    monkeypatch.setitem(tiny._PACKS, "test-e4e", tiny.PackSpec("test-e4e", 1, build))
    entry = {
        "name": "e4e-test",
        "kind": "e4e",
        "source": "url",
        "research_only": True,
        "demo_pack": "test-e4e",
        "files": [
            {"path": "e4e_ffhq_encode.pt", "source": "https://example.invalid/e4e.pt", "size": 10,
             "convert_to": "e4e_ffhq_encode.safetensors"},
            {"path": "notes.txt", "source": "https://example.invalid/notes.txt"},
        ],
    }
    store = make_store(tmp_path, catalog(entry), demo=True)
    folder = store.ensure("e4e-test")  # no licence needed for random weights, no network
    assert folder == (tmp_path / "models" / "demo" / "e4e-test").resolve()
    out = store.file_path("e4e-test", "e4e_ffhq_encode.pt")
    assert out.exists() and not (folder / "e4e_ffhq_encode.pt").exists()
    assert torch.equal(load_file(out)["state_dict.encoder.w"], torch.full((2, 2), 3.0))
    assert read_extra(out)["opts"] == {"size": 256}
    assert store.status("e4e-test").verified and store.verify("e4e-test").verified
    assert set(store.pins("e4e-test")) == {"e4e_ffhq_encode.pt", "e4e_ffhq_encode.safetensors", "notes.txt"}

    assert store.download("e4e-test") == folder
    assert len(builds) == 1  # already built and verified: not rebuilt

    (folder / "notes.txt").unlink()  # damaged pack: ensure rebuilds it
    store.ensure("e4e-test")
    assert len(builds) == 2 and (folder / "notes.txt").exists()


def test_demo_mode_errors(tmp_path, monkeypatch):
    monkeypatch.setitem(tiny._PACKS, "test-short", tiny.PackSpec("test-short", 1, lambda d: (d / "a.json").write_text("{}")))
    cat = catalog(
        {"name": "nopack", "kind": "vae", "source": "hf", "repo": "o/r", "demo_pack": "does-not-exist-yet",
         "files": [{"path": "a.json"}]},
        {"name": "short", "kind": "vae", "source": "hf", "repo": "o/r", "demo_pack": "test-short",
         "files": [{"path": "a.json"}, {"path": "b.safetensors"}]},
    )
    store = make_store(tmp_path, cat, demo=True)
    with pytest.raises(ModelMissing, match="no demo pack exists yet for model nopack"):
        store.ensure("nopack")
    with pytest.raises(ModelError, match=r"does not write b\.safetensors"):
        store.ensure("short")
    assert not store.folder("short").exists()
    st = store.verify("nopack")
    assert not st.verified and "no demo pack" in st.problems[-1]


# ---- user checkpoints --------------------------------------------------------------------
def sdxl_checkpoint(path: Path, sdxl: bool = True) -> Path:
    tensors = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)}
    tensors["conditioner.embedders.0.transformer.text_model.embeddings.position_ids" if sdxl
            else "cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.zeros(1, 3)
    if sdxl:
        tensors["conditioner.embedders.1.model.ln_final.weight"] = torch.ones(4)
    save_file(tensors, str(path))
    return path


def test_register_checkpoint(tmp_path):
    store = make_store(tmp_path, catalog({"name": "my-xl", "kind": "vae", "source": "hf", "repo": "o/r",
                                          "files": [{"path": "a.json"}]}))
    ckpt = tmp_path / "ckpts" / "ckpt.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"pickle")
    with pytest.raises(BadInput, match=r"ckpt\.ckpt is a \.ckpt file; only \.safetensors"):
        store.register_checkpoint(ckpt)

    good = sdxl_checkpoint(tmp_path / "ckpts" / "My XL!.safetensors")
    name = store.register_checkpoint(good)
    assert name == "My-XL"
    assert store.user_checkpoints() == {name: good.resolve()}
    assert store.register_checkpoint(good) == name  # idempotent
    assert json.loads((tmp_path / "models" / "user_models.json").read_text())["checkpoints"][name]["path"] == str(good.resolve())

    clash = sdxl_checkpoint(tmp_path / "ckpts" / "my-xl.safetensors")  # same name as a catalog model
    assert store.register_checkpoint(clash) == "my-xl-2"

    sd15 = sdxl_checkpoint(tmp_path / "ckpts" / "sd15.safetensors", sdxl=False)
    with pytest.raises(BadInput, match="not an SDXL checkpoint"):
        store.register_checkpoint(sd15)

    truncated = tmp_path / "ckpts" / "cut.safetensors"
    truncated.write_bytes(good.read_bytes()[:-8])
    with pytest.raises(BadInput, match=r"cut\.safetensors is truncated"):
        store.register_checkpoint(truncated)

    pointer = tmp_path / "ckpts" / "lfs.safetensors"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 6938078334\n")
    with pytest.raises(BadInput, match=r"lfs\.safetensors is a git-lfs pointer"):
        store.register_checkpoint(pointer)
    assert set(store.user_checkpoints()) == {"My-XL", "my-xl-2"}
