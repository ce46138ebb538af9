"""The W+ path computes what csxmli2016/w-plus-adapter computes: the start step
of the conditioning, the face preparation before e4e (FFHQ padding, ParseNet
whitening), the GANSpace edits and their names, on tiny packs in the published
layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import aligned_astronaut

from pipelines.profile import DEMO


@pytest.fixture(scope="module")
def parser(demo_store):
    from pipelines.wplus.parsing import load_parsenet

    demo_store.ensure("parsenet-psfrgan")
    return load_parsenet(demo_store.file_path("parsenet-psfrgan", "parse_multi_iter_90000.pth"))


@pytest.fixture(scope="module")
def face512():
    return aligned_astronaut(512)


# ------------------------------------------------------------------ start step
def _reference_unconditioned(n: int, ratio: int = 20) -> list[bool]:
    """wplus_pipeline.py: scale 0 while i <= start_embed_step, with
    start_embed_step = int(float(ratio) / 100 * n), capped at 30."""
    start = int(float(ratio) / 100 * n)
    start = min(start, 30)
    return [i <= start for i in range(n)]


@pytest.mark.parametrize("n", [1, 2, 4, 5, 6, 10, 25, 30, 31, 49, 50, 150])
def test_start_step_is_the_reference_one(n):
    from pipelines.wplus.adapter import DelayedScale

    class Handle:
        def set_scale(self, s):
            pass

    sched = DelayedScale(Handle(), 0.9, n)
    ours = [sched.scale_at(i, n) == 0.0 for i in range(n)]
    assert ours == _reference_unconditioned(n)
    assert sched.delayed_steps(n) == sum(_reference_unconditioned(n))


def test_start_step_pins():
    from pipelines.wplus.adapter import DelayedScale

    class Handle:
        def set_scale(self, s):
            pass

    pins = {30: 7, 1: 1, 4: 1, 5: 2, 20: 5, 50: 11, 150: 31}  # 150: the reference caps the start at 30
    for n, k in pins.items():
        assert DelayedScale(Handle(), 1.0, n).delayed_steps(n) == k, n


# ------------------------------------------------------------------ ParseNet
def test_tiny_parsenet_pickle_has_the_published_layout(tiny_models_dir):
    from pipelines.models.convert import load_pickle_safely
    from pipelines.tiny import build_pack
    from pipelines.wplus.parsing import ParseNet

    folder = build_pack("parsenet", tiny_models_dir / "raw-parsenet")
    state = load_pickle_safely(folder / "parse_multi_iter_90000.pth")
    with torch.device("meta"):
        full = ParseNet(width=1.0)
    assert set(state) == set(full.state_dict())
    # the published constructor: 4 down blocks to 32², 10 body blocks, 4 up blocks, 19 classes
    assert {int(k.split(".")[1]) for k in state if k.startswith("encoder.")} == set(range(5))
    assert {int(k.split(".")[1]) for k in state if k.startswith("body.")} == set(range(10))
    assert {int(k.split(".")[1]) for k in state if k.startswith("decoder.")} == set(range(4))
    assert not any(k.startswith("body.") and "shortcut_func" in k for k in state)  # identity shortcuts
    assert "encoder.1.conv1.norm.norm.running_var" in state and "encoder.1.conv1.conv2d.bias" not in state
    fs = full.state_dict()
    assert tuple(fs["encoder.0.conv2d.weight"].shape) == (64, 3, 3, 3)
    assert tuple(fs["encoder.4.conv2.conv2d.weight"].shape) == (256, 256, 3, 3)  # ch_range [32, 256]
    assert tuple(fs["decoder.3.conv1.conv2d.weight"].shape) == (64, 128, 3, 3)
    assert tuple(fs["out_mask_conv.conv2d.weight"].shape) == (19, 64, 3, 3)
    # 21.3 M parameters: 85.2 MB in float32, the size of facexlib's copy of this network
    assert 21_000_000 < sum(v.numel() for k, v in fs.items() if "running" not in k and "num_batches" not in k) \
        < 21_500_000


def test_parsenet_loader_refuses_a_foreign_file(tmp_path):
    from safetensors.torch import save_file

    from pipelines.errors import ModelError
    from pipelines.wplus.parsing import load_parsenet

    bad = tmp_path / "x.safetensors"
    save_file({"conv.weight": torch.zeros(4, 3, 3, 3)}, str(bad))
    with pytest.raises(ModelError, match="not a ParseNet"):
        load_parsenet(bad)
    with pytest.raises(ModelError, match="does not exist"):
        load_parsenet(tmp_path / "missing.safetensors")


# ------------------------------------------------------------------ whitening
def test_whitening_changes_the_e4e_input_only_outside_the_face_mask(parser, face512):
    import cv2

    from pipelines.wplus.parsing import WHITENED, prepare_face

    prep = prepare_face(face512, parser)
    labels = prep.labels
    assert labels.shape == (512, 512)
    whiten = np.isin(labels, WHITENED)
    assert whiten.any() and (~whiten).any(), "the tiny parser must label both face and background"
    assert 0.02 < prep.whitened_fraction < 0.98

    # the formula: x * (1 - m) + m in [-1, 1], i.e. white (1.0) where m = 1
    m = torch.from_numpy(prep.mask)
    assert torch.allclose(prep.tensor[0], prep.plain[0] * (1 - m) + m, atol=1e-6)

    changed = (prep.tensor[0] - prep.plain[0]).abs().amax(0).numpy() > 1e-6
    assert changed.any()
    # where the change may reach: the 5x5 blur at 512² (2 px), the 2:1 bicubic
    # reduction (2 px at 256²), plus one for rounding
    near_whitened = cv2.dilate(whiten.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    near_whitened = near_whitened.reshape(256, 2, 256, 2).any(axis=(1, 3))
    near_whitened = cv2.dilate(near_whitened.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    assert not (changed & ~near_whitened).any(), "whitening touched a pixel inside the face mask"
    # deep inside background/clothes the e4e input is white
    core = whiten.reshape(256, 2, 256, 2).all(axis=(1, 3))
    core = cv2.erode(core.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    assert core.any()
    assert torch.allclose(prep.tensor[0][:, torch.from_numpy(core)], torch.ones(1), atol=1e-6)
    # deep inside the face nothing changed
    face_core = cv2.erode((~near_whitened).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert face_core.any()
    assert torch.equal(prep.tensor[0][:, torch.from_numpy(face_core)], prep.plain[0][:, torch.from_numpy(face_core)])


def test_whitened_input_gives_another_w_latent(e4e, parser, face512):
    from pipelines.wplus.e4e import encode_normalized
    from pipelines.wplus.parsing import prepare_face

    encoder, avg = e4e
    whitened = prepare_face(face512, parser)
    plain = prepare_face(face512, None)
    assert torch.equal(plain.tensor, whitened.plain) and not plain.mask.any()
    w1 = encode_normalized(encoder, whitened.tensor, avg)
    w0 = encode_normalized(encoder, plain.tensor, avg)
    assert w1.shape == (1, 18, 512)
    assert not torch.allclose(w0, w1, atol=1e-4)


# ------------------------------------------------------------------ FFHQ padding
def test_padding_outside_the_photo_is_blurred_and_faded_not_mirrored():
    from pipelines.wplus.align import align_face

    # a face whose crop square reaches far above the photo
    kps = np.array([[270, 40], [330, 40], [300, 70], [275, 105], [325, 105]], dtype=np.float64)
    img = np.full((600, 600, 3), 90, np.uint8)
    img[35:46, 265:276] = (255, 0, 0)  # a red left eye
    a = align_face(img, kps)
    to_crop = np.hstack([np.array([[270.0, 40.0], [270.0, -40.0]]), np.ones((2, 1))]) @ a.matrix.T
    (ex, ey), (mx, my) = np.rint(to_crop).astype(int)
    assert 0 <= my < ey < 256  # the mirror image of the eye would lie inside the crop
    r, g, b = a.image[ey, ex].astype(int)
    assert r > 200 and g < 60  # the eye itself is there
    # a mirror copy (what a reflecting border gives) shows a second, sharp eye there;
    # FFHQ's padding blurs (sigma 2 % of the square) and fades it towards the median
    import cv2

    mirrored = cv2.warpAffine(img, a.matrix, (256, 256), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    mr, mg, _ = mirrored[my, mx].astype(int)
    r, g, b = a.image[my, mx].astype(int)
    assert mr - mg > 200
    assert r - g < (mr - mg) / 2, "a mirrored copy of the eye appears above the forehead"
    win = (slice(my - 12, my + 13), slice(mx - 12, mx + 13))
    sharp = np.abs(np.diff(mirrored[win][..., 0].astype(int), axis=1)).max()
    soft = np.abs(np.diff(a.image[win][..., 0].astype(int), axis=1)).max()
    assert soft < sharp / 4
    # far outside the photo the padding fades to the photo's median colour
    assert np.abs(a.image[:8].astype(int) - 90).max() <= 6


# ------------------------------------------------------------------ edits
def test_directions_pack_holds_all_published_names(wplus_directions):
    from pipelines.tiny.wplus import GANSPACE_NAMES
    from pipelines.wplus.edits import edit_catalog, parse_edit

    assert len(GANSPACE_NAMES) == 42
    rows = edit_catalog(wplus_directions)
    by_set = {s: [r for r in rows if r["set"] == s] for s in ("interfacegan", "latent", "ganspace")}
    assert (len(by_set["interfacegan"]), len(by_set["latent"]), len(by_set["ganspace"])) == (2, 21, 42)
    assert [r["qualified"].split(".", 1)[1] for r in by_set["ganspace"]] == list(GANSPACE_NAMES)
    for name in ("lipstick", "face_roundness", "big_smile", "ganspace.smile", "latent.smile", "smile",
                 "interfacegan.age"):
        assert parse_edit(f"{name}=+1", wplus_directions) == (name, 1.0)
    assert wplus_directions["smile"].source == "interfacegan" and wplus_directions["ganspace.smile"].source == "ganspace"
    assert wplus_directions["lipstick"] is wplus_directions["ganspace.lipstick"]
    # every listed name is accepted by --edit
    for r in rows:
        parse_edit(f"{r['name']}=-0.5", wplus_directions)


def test_ganspace_edit_is_the_reference_get_delta(wplus_directions, demo_store):
    from safetensors.torch import load_file

    from pipelines.wplus.edits import apply_edits

    folder = demo_store.folder("wplus-directions")
    pca = load_file(str(folder / "gan_space" / "ffhq_pca.safetensors"))
    table = {}
    for line in (folder / "gan_space" / "ganspace_configs.csv").read_text().splitlines():
        cells = line.split("\t")
        table[cells[0]] = [int(c) for c in cells[1:]]
    w = torch.randn(18, 512, generator=torch.Generator().manual_seed(5))
    for name, strength in (("lipstick", 2.0), ("face_roundness", -3.0), ("boyishness", 0.0)):
        idx, start, end, _ = table[name]
        # utils_direction.get_delta / get_direction_from_ganspace, written out
        comp, std = pca["comp"][idx].reshape(-1), pca["std"][idx]
        coord = torch.sum((w - pca["mean"])[0] * comp) / std
        expected = torch.zeros(18, 512)
        expected[start:end] = ((strength - coord) * comp * std).repeat(end - start, 1)
        out = apply_edits(w, [(name, strength)], wplus_directions)
        assert torch.allclose(out - w, expected, atol=1e-5), name
        if start == 0:  # the edit sets row 0's coordinate to the strength (unit components)
            assert abs(float(torch.sum((out - pca["mean"])[0] * comp) / std) - strength) < 1e-4
    # strength 0 is not "no edit" for GANSpace: it moves to the mean along the component
    assert not torch.allclose(apply_edits(w, [("boyishness", 0.0)], wplus_directions), w)
    # two edits are each computed from the unedited latent and added
    both = apply_edits(w, [("lipstick", 2.0), ("age", 1.0)], wplus_directions)
    assert torch.allclose(both - w, (apply_edits(w, [("lipstick", 2.0)], wplus_directions) - w)
                          + (apply_edits(w, [("age", 1.0)], wplus_directions) - w), atol=1e-5)


def test_unknown_edit_suggests_close_names(wplus_directions):
    from pipelines.errors import BadInput
    from pipelines.wplus.edits import parse_edit

    with pytest.raises(BadInput, match=r"lipstick.*wplus edits"):
        parse_edit("lipstik=1", wplus_directions)


def test_wplus_edits_command_lists_every_edit(tiny_models_dir, capsys):
    from cli.main import run

    rc = run(["--demo", "--models-dir", str(tiny_models_dir), "wplus", "edits"])
    out, err = capsys.readouterr()
    assert rc == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert len(names) == 65 and len(set(names)) == 65
    assert {"lipstick", "face_roundness", "ganspace.smile", "latent.smile", "smile", "age"} <= set(names)
    assert "42 GANSpace" in err


# ------------------------------------------------------------------ UI mapping
def test_ui_edit_table_and_recipe_widgets():
    from app.requests_map import (
        RECIPE_KEYS,
        UI_DEFAULTS,
        edit_rows,
        edits_from_rows,
        method_recipe,
        request_data,
        switch_method,
        ui_from_fields,
    )

    names = ["age", "lipstick", "ganspace.smile"]
    rows = edit_rows(names, {"lipstick": 1.5})
    assert rows == [["age", 0.0], ["lipstick", 1.5], ["ganspace.smile", 0.0]]
    rows[2][1] = -2
    assert edits_from_rows(rows) == ["lipstick=+1.5", "ganspace.smile=-2"]
    data = request_data({"prompt": "p", "method": "wplus", "photos": ["a.png"], "edits": rows}, DEMO)
    assert data["edits"] == ["lipstick=+1.5", "ganspace.smile=-2"]
    data = request_data({"prompt": "p", "method": "faceid", "photos": ["a.png"], "edits": rows}, DEMO)
    assert "edits" not in data  # edits belong to W+ only
    back = ui_from_fields({"edits": ["lipstick=+1.5"]}, DEMO, edit_names=names)
    assert back["edits"] == [["age", 0.0], ["lipstick", 1.5], ["ganspace.smile", 0.0]]

    wplus = method_recipe("wplus")
    assert wplus == {"sampler": "euler", "cfg": 7.5,
                     "negative": "monochrome, lowres, bad anatomy, worst quality, low quality"}
    methods = ["faceid", "instantid", "wplus", "none"]
    untouched = {k: UI_DEFAULTS[k] for k in RECIPE_KEYS}
    assert switch_method("wplus", untouched, methods) == wplus
    assert switch_method("faceid", wplus, methods) == untouched
    edited = {**untouched, "cfg": 9.0}
    assert switch_method("wplus", edited, methods) == {"sampler": "euler", "negative": wplus["negative"]}


def test_training_latents_are_prepared_like_inference(demo_store, e4e, parser, face512):
    """train_wplus encodes whitened faces, as the method does at inference."""
    from pipelines.wplus.e4e import encode_normalized
    from pipelines.wplus.parsing import prepare_face
    from pipelines.wplus.train import _encode_wplus

    w_train = _encode_wplus(demo_store, [face512], "cpu")
    encoder, avg = e4e
    assert torch.allclose(w_train, encode_normalized(encoder, prepare_face(face512, parser).tensor, avg), atol=1e-5)
    assert not torch.allclose(w_train, encode_normalized(encoder, prepare_face(face512, None).tensor, avg),
                              atol=1e-4)


def test_portrait_tab_offers_every_edit_and_switches_the_recipe(demo_settings):
    """The Portrait tab (widgets built, no browser): the W+ edit table lists every
    edit, choosing W+ shows its recipe, and a reused W+ recipe fills the table."""
    import gradio as gr

    from app.jobs import CancelRegistry, EngineHolder
    from app.portrait import PortraitTab
    from app.widgets import build_portrait

    with gr.Blocks():
        w = build_portrait(demo_settings)
    tab = PortraitTab(demo_settings, EngineHolder(demo_settings, factory=lambda s: None), CancelRegistry(), w)
    names = [row[0] for row in w.by_key["edits"].value["data"]]
    assert len(names) == 65 and {"lipstick", "face_roundness", "ganspace.smile"} <= set(names)

    by_key = {w.fields[c]: v for c, v in tab.switch_method("wplus", "dpmpp_2m_karras", 5.0, "").items()}
    assert by_key == {"sampler": "euler", "cfg": 7.5,
                      "negative": "monochrome, lowres, bad anatomy, worst quality, low quality"}
    kept = {w.fields[c]: v for c, v in tab.switch_method("wplus", "ddim", 5.0, "my negative").items()}
    assert kept == {"cfg": 7.5}  # the user's sampler and negative stay

    recipe = {"request": {"prompt": "p", "method": "wplus", "edits": ["lipstick=+1.5", "age=-1"]}}
    filled = {w.fields[c]: v for c, v in tab.reuse(0, [recipe]).items()}
    strengths = {n: s for n, s in filled["edits"] if s}
    assert strengths == {"lipstick": 1.5, "age": -1.0}
