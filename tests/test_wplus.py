"""W+ adapter path: e4e encoder, FFHQ alignment, attribute edits, the adapter on a
tiny SD1.5 (and SDXL) UNet, and adapter training, all on tiny packs in the
published layouts."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import ASTRONAUT_KPS, aligned_astronaut

from pipelines.errors import BadInput, ModelError


@pytest.fixture(scope="module")
def astronaut_crop():
    return aligned_astronaut()


@pytest.fixture(scope="module")
def pipe(demo_store):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    p = StableDiffusionPipeline.from_pretrained(demo_store.ensure("sd15-base"), variant="fp16", dtype=torch.float32,
                                                local_files_only=True, use_safetensors=True)
    p.set_progress_bar_config(disable=True)
    # one UNet call per step (PNDM adds a step), to keep the tests fast
    p.scheduler = DDIMScheduler.from_config(p.scheduler.config)
    return p


@pytest.fixture(scope="module")
def base_image(pipe):
    return _run(pipe)


@pytest.fixture(scope="module")
def adapter_sd(demo_store):
    from pipelines.wplus.adapter import load_adapter_file

    demo_store.ensure("wplus-adapter")
    return load_adapter_file(demo_store.file_path("wplus-adapter", "wplus_adapter.bin"))


def _run(pipe, steps=1, **kw):
    return pipe("a photo of a face", num_inference_steps=steps, guidance_scale=7.5, height=64, width=64,
                generator=torch.Generator("cpu").manual_seed(7), output_type="np", **kw).images


# ------------------------------------------------------------------ e4e
def test_tiny_e4e_pickle_has_published_key_layout(tiny_models_dir):
    import argparse

    from pipelines.models.convert import load_pickle_safely
    from pipelines.tiny import build_pack
    from pipelines.wplus.e4e import Encoder4Editing

    folder = build_pack("e4e-ffhq", tiny_models_dir / "raw-e4e")
    ckpt = load_pickle_safely(folder / "e4e_ffhq_encode.pt", [argparse.Namespace])
    assert set(ckpt) == {"state_dict", "opts", "latent_avg"}
    assert isinstance(ckpt["opts"], argparse.Namespace)
    assert tuple(ckpt["latent_avg"].shape) == (18, 512)
    keys = list(ckpt["state_dict"])
    assert {k.split(".")[0] for k in keys} == {"encoder", "decoder"}
    enc = [k[len("encoder."):] for k in keys if k.startswith("encoder.")]

    # structure: stem, 24 IR-SE units, 18 style blocks, two lateral layers
    assert {k.split(".")[0] for k in enc} == {"input_layer", "body", "styles", "latlayer1", "latlayer2"}
    assert {int(k.split(".")[1]) for k in enc if k.startswith("body.")} == set(range(24))
    assert {int(k.split(".")[1]) for k in enc if k.startswith("styles.")} == set(range(18))
    assert {int(k.split(".")[1]) for k in enc if "shortcut_layer" in k} == {3, 7, 21}
    assert "body.5.res_layer.5.fc1.weight" in enc and "body.5.res_layer.5.fc2.weight" in enc
    assert {k for k in enc if k.startswith("input_layer.")} >= {"input_layer.0.weight", "input_layer.2.weight"}
    # style blocks: log2(16)=4 convs for rows 0-2, 5 for 3-6, 6 for 7-17, then the EqualLinear
    for i, n_convs in ((0, 4), (2, 4), (3, 5), (6, 5), (7, 6), (17, 6)):
        convs = {int(re.match(rf"styles\.{i}\.convs\.(\d+)\.weight", k).group(1))
                 for k in enc if re.match(rf"styles\.{i}\.convs\.\d+\.weight", k)}
        assert convs == set(range(0, 2 * n_convs, 2)), i
        assert f"styles.{i}.linear.weight" in enc and f"styles.{i}.linear.bias" in enc

    # the tiny checkpoint and the full-size module have the same key list
    with torch.device("meta"):  # shapes only, no 1 GB of random weights
        full = Encoder4Editing(width=1.0).state_dict()
    assert set(enc) == set(full)
    assert tuple(full["latlayer1.weight"].shape) == (512, 256, 1, 1)
    assert tuple(full["latlayer2.weight"].shape) == (512, 128, 1, 1)
    assert tuple(full["input_layer.0.weight"].shape) == (64, 3, 3, 3)
    assert tuple(full["body.21.shortcut_layer.0.weight"].shape) == (512, 256, 1, 1)
    assert tuple(full["styles.0.linear.weight"].shape) == (512, 512)


def test_e4e_encode_shape_determinism_and_latent_avg(e4e, astronaut_crop):
    from pipelines.wplus.e4e import encode, preprocess

    encoder, latent_avg = e4e
    w1 = encode(encoder, astronaut_crop)
    w2 = encode(encoder, astronaut_crop.copy())
    assert tuple(w1.shape) == (18, 512) and w1.dtype == torch.float32
    assert torch.equal(w1, w2)
    # W+ = raw encoder output + latent_avg, input normalised to [-1, 1]
    x = preprocess(astronaut_crop)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    with torch.no_grad():
        raw = encoder(x)[0]
    assert torch.allclose(w1, raw + latent_avg, atol=1e-6)
    assert not torch.allclose(w1, latent_avg)
    # another face gives another latent; a batch gives the same rows
    other = np.ascontiguousarray(astronaut_crop[:, ::-1])
    batch = encode(encoder, np.stack([astronaut_crop, other]))
    assert batch.shape == (2, 18, 512)
    assert torch.allclose(batch[0], w1, atol=1e-5)
    assert not torch.allclose(batch[1], w1, atol=1e-4)


def test_load_e4e_rejects_bad_files(tmp_path):
    from safetensors.torch import save_file

    from pipelines.wplus.e4e import load_e4e

    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\"")
    with pytest.raises(ModelError, match="truncated.safetensors"):
        load_e4e(bad)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"state_dict.encoder.input_layer.0.weight": torch.zeros(4, 3, 3, 3),
               "latent_avg": torch.zeros(18, 512)}, str(wrong))
    with pytest.raises(ModelError, match="missing"):
        load_e4e(wrong)
    shapes = tmp_path / "shapes.safetensors"
    with torch.device("meta"):
        from pipelines.wplus.e4e import Encoder4Editing

        keys = {k: tuple(v.shape) for k, v in Encoder4Editing(width=1 / 16).state_dict().items()}
    sd = {f"state_dict.encoder.{k}": torch.zeros(v) for k, v in keys.items()}
    sd["state_dict.encoder.latlayer1.weight"] = torch.zeros(32, 8, 3, 3)
    save_file({**sd, "latent_avg": torch.zeros(18, 512)}, str(shapes))
    with pytest.raises(ModelError, match="latlayer1"):
        load_e4e(shapes)


# ------------------------------------------------------------------ align
def test_align_levels_a_tilted_face_and_flags_small_faces():
    import cv2

    from pipelines.errors import FaceQualityError
    from pipelines.wplus.align import align_face, ensure_face_size

    # an upright face with eyes 60 px apart, then rotated 25 degrees about (300, 300)
    kps = np.array([[270, 280], [330, 280], [300, 310], [275, 345], [325, 345]], dtype=np.float64)
    rot = cv2.getRotationMatrix2D((300, 300), 25, 1.0)
    tilted = np.hstack([kps, np.ones((5, 1))]) @ rot.T
    img = np.full((600, 600, 3), 90, np.uint8)
    lx, ly = np.rint(tilted[0]).astype(int)
    img[ly - 2:ly + 3, lx - 2:lx + 3] = (255, 0, 0)  # a red dot on the left eye

    a = align_face(img, tilted)
    assert a.image.shape == (256, 256, 3) and a.image.dtype == np.uint8
    mapped = np.hstack([tilted, np.ones((5, 1))]) @ a.matrix.T
    (le, re_, _, ml, mr) = mapped
    assert abs(le[1] - re_[1]) < 0.5  # eyes level in the crop
    assert abs((le[0] + re_[0]) / 2 - 127.5) < 0.5  # centred horizontally
    assert ml[1] > le[1] + 40 and mr[1] > re_[1] + 40  # mouth below the eyes
    ex, ey = np.rint(le).astype(int)
    assert tuple(a.image[ey, ex]) == (255, 0, 0)  # the pixel really moved there
    assert a.face_px > 160 and not a.too_small

    # a large face (crop side > 2x the output) is area-reduced first; the matrix
    # still maps source pixels to the crop
    big_img = cv2.resize(img, (2400, 2400), interpolation=cv2.INTER_NEAREST)
    big = align_face(big_img, tilted * 4)
    assert big.face_px > 4 * 160
    bl, br = (np.hstack([tilted[:2] * 4, np.ones((2, 1))]) @ big.matrix.T)
    assert abs(bl[1] - br[1]) < 0.5 and abs((bl[0] + br[0]) / 2 - 127.5) < 1.5
    assert np.abs(big.image.astype(int) - a.image.astype(int)).mean() < 12  # the same crop

    small = align_face(img, (tilted - 300) * 0.3 + 300)
    assert small.too_small and small.face_px < 160
    with pytest.raises(FaceQualityError, match=r"me\.jpg.*160 px"):
        ensure_face_size(small, "me.jpg")
    with pytest.raises(BadInput, match="keypoints"):
        align_face(img, kps[:3])


# ------------------------------------------------------------------ edits
def test_parse_edit_accepts_strengths_and_names_the_field(wplus_directions):
    from pipelines.wplus.edits import parse_edit, parse_edits

    assert parse_edit("age=+2", wplus_directions) == ("age", 2.0)
    assert parse_edit(" smile = -1.5 ", wplus_directions) == ("smile", -1.5)
    assert parse_edit("latent.gender=4", wplus_directions) == ("latent.gender", 4.0)
    for bad, why in (("age", "name=strength"), ("age=+x", "name=strength"), ("=2", "name=strength"),
                     ("age=nan", "name=strength"), ("beard=1", "no direction named 'beard'"),
                     ("age=4.5", "out of range"), ("smile=-5", "out of range")):
        with pytest.raises(BadInput, match="--edit") as exc:
            parse_edit(bad, wplus_directions)
        # "nan" is refused either by the syntax or by the range check
        assert why in str(exc.value) or (bad == "age=nan" and "out of range" in str(exc.value)), bad
    with pytest.raises(BadInput, match="twice"):
        parse_edits(["age=1", "age=2"], wplus_directions)


def test_edit_moves_latent_only_along_its_direction(wplus_directions, demo_store):
    from pipelines.wplus.edits import apply_edits

    w = torch.randn(18, 512, generator=torch.Generator().manual_seed(3))
    before = w.clone()

    # InterFaceGAN: a (1, 512) unit vector on all 18 rows
    out = apply_edits(w, [("age", 2.0)], wplus_directions)
    assert torch.equal(w, before)  # input untouched
    d = wplus_directions["age"].delta[0]
    assert abs(float(d.norm()) - 1.0) < 1e-5
    diff = out - w
    assert torch.allclose(diff, 2.0 * d.expand(18, 512), atol=1e-5)

    # latent direction: rows 0-7 move by strength x the file's rows, rows 8-17 stay
    from pipelines.wplus.edits import _read_vector

    raw = _read_vector(demo_store.folder("wplus-directions") / "latent_directions" / "gender.npy")
    out = apply_edits(w, {"gender": -1.5}, wplus_directions)
    assert torch.equal(out[8:], w[8:])
    assert torch.allclose(out[:8] - w[:8], -1.5 * raw[:8], atol=1e-5)

    # edits add up, and strength 0 is the identity
    both = apply_edits(w, [("age", 2.0), ("gender", -1.5)], wplus_directions)
    assert torch.allclose(both - w, (apply_edits(w, [("age", 2.0)], wplus_directions) - w)
                          + (apply_edits(w, [("gender", -1.5)], wplus_directions) - w), atol=1e-5)
    assert torch.equal(apply_edits(w, [("smile", 0.0)], wplus_directions), w)
    with pytest.raises(BadInput, match="beard"):
        apply_edits(w, [("beard", 1.0)], wplus_directions)


# ------------------------------------------------------------------ adapter
def test_adapter_indices_follow_attn_processors_order(pipe, adapter_sd):
    from pipelines.wplus.adapter import cross_attention_layers, split_state_dict

    idx = [i for i, _n, _m in cross_attention_layers(pipe.unet)]
    assert idx == list(range(1, 32, 2))  # the published SD1.5 indices
    proj, layers = split_state_dict(adapter_sd)
    assert {int(k.split(".")[0]) for k in layers} == set(idx)
    assert set(proj) == {"proj_0.weight", "proj_1.weight", "proj_2.weight", "proj_3.weight", "norm.weight", "norm.bias"}
    cad = pipe.unet.config.cross_attention_dim
    assert tuple(proj["proj_0.weight"].shape) == (cad, 4 * 512)
    assert tuple(proj["proj_3.weight"].shape) == (cad, 6 * 512)
    assert tuple(layers["1.to_k_wplus.weight"].shape) == (8, cad)  # down block 0: 8 channels
    assert tuple(layers["31.to_q_wplus.weight"].shape) == (32, 32)  # mid block


def test_scale_zero_equals_base_tokens_matter_and_remove_restores(pipe, adapter_sd, base_image):
    from pipelines.wplus.adapter import install_wplus, remove_wplus, wplus_embeds

    unet = pipe.unet
    base = base_image
    procs_before = dict(unet.attn_processors)
    keys_before = list(unet.state_dict())

    w1 = torch.randn(18, 512, generator=torch.Generator().manual_seed(1))
    w2 = torch.randn(18, 512, generator=torch.Generator().manual_seed(2))
    handle = install_wplus(unet, adapter_sd, scale=0.0)
    try:
        assert np.array_equal(_run(pipe, ip_adapter_image_embeds=wplus_embeds(w1, True)), base)
        handle.set_scale(1.0)
        out1 = _run(pipe, ip_adapter_image_embeds=wplus_embeds(w1, True))
        out2 = _run(pipe, ip_adapter_image_embeds=wplus_embeds(w2, True))
        assert np.abs(out1 - base).max() > 1e-3  # the adapter acts
        assert np.abs(out1 - out2).max() > 1e-3  # and it is the W+ latent that matters
        with pytest.raises(ModelError, match="unload the other adapter"):
            install_wplus(unet, adapter_sd)
    finally:
        remove_wplus(unet, handle)
    assert np.array_equal(_run(pipe), base)
    after = unet.attn_processors
    assert list(after) == list(procs_before)
    assert all(after[k] is procs_before[k] for k in after)
    assert list(unet.state_dict()) == keys_before
    assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None
    remove_wplus(unet, handle)  # idempotent


def test_delayed_conditioning_schedule(pipe, adapter_sd, base_image):
    from pipelines.wplus.adapter import DelayedScale, install_wplus, remove_wplus, wplus_embeds

    unet = pipe.unet
    w = torch.randn(18, 512, generator=torch.Generator().manual_seed(1))
    seen: list[float] = []
    handle = install_wplus(unet, adapter_sd, scale=1.0)
    hook = unet.register_forward_pre_hook(lambda m, a: seen.append(handle.processors[1].scale))
    try:
        # the published rule: scale 0 while i <= int(ratio/100 * N); 0.34 * 3 -> 1, so steps 0 and 1
        delayed = DelayedScale(handle, scale=0.8, steps=3, delay=0.34)
        _run(pipe, steps=3, ip_adapter_image_embeds=wplus_embeds(w, True), callback_on_step_end=delayed)
        assert seen == [0.0, 0.0, 0.8]
        seen.clear()
        default = DelayedScale(handle, scale=0.8, steps=5)  # 20 %: int(1.0) + 1 = 2 steps at 0
        _run(pipe, steps=5, ip_adapter_image_embeds=wplus_embeds(w, True), callback_on_step_end=default)
        assert seen == [0.0, 0.0, 0.8, 0.8, 0.8]
        # back at the starting state, so the next image of a request gets the same schedule
        assert handle.processors[31].scale == 0.0
        # fully delayed = the base model
        all_delayed = _run(pipe, ip_adapter_image_embeds=wplus_embeds(w, True),
                           callback_on_step_end=DelayedScale(handle, 1.0, steps=1, delay=1.0))
    finally:
        hook.remove()
        remove_wplus(unet, handle)
    assert np.array_equal(all_delayed, base_image)


def test_adapter_on_sdxl_unet_and_wrong_base_is_refused(adapter_sd):
    from pipelines.tiny.sdxl import build_unet
    from pipelines.wplus.adapter import cross_attention_layers, install_wplus, remove_wplus

    unet = build_unet()
    n = len(unet.attn_processors)
    idx = [i for i, _n, _m in cross_attention_layers(unet)]
    assert idx == list(range(1, n, 2)) and unet.config.cross_attention_dim == 128
    with pytest.raises(ModelError, match="cross-attention dim 128"):
        install_wplus(unet, adapter_sd)  # an SD1.5 adapter on an SDXL UNet
    assert unet.encoder_hid_proj is None

    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=g)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    added = {"text_embeds": torch.randn(1, 32, generator=g), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        base = unet(sample, 10, encoder_hidden_states=text, added_cond_kwargs=added).sample
        h = install_wplus(unet, None, scale=0.0, init_from_unet=True)
        sd = h.state_dict()
        assert {int(k.split(".")[1]) for k in sd if k.startswith("wplus_adapter.")} == set(idx)
        w = {**added, "image_embeds": [torch.randn(1, 1, 18, 512, generator=g)]}
        assert torch.equal(unet(sample, 10, encoder_hidden_states=text, added_cond_kwargs=w).sample, base)
        h.set_scale(1.0)
        assert not torch.allclose(unet(sample, 10, encoder_hidden_states=text, added_cond_kwargs=w).sample, base)
        remove_wplus(unet, h)
        assert torch.equal(unet(sample, 10, encoder_hidden_states=text, added_cond_kwargs=added).sample, base)


# ------------------------------------------------------------------ training
class _FakeAnalyzer:
    """Stands in for FaceAnalyzer.detect: faces per file name."""

    def __init__(self, table):
        self.table = table

    def detect(self, rgb, source):
        from pipelines.faces.detectors import DetectedFace

        return [DetectedFace(bbox=np.array([0, 0, 1, 1.0]), kps=k, det_score=0.9)
                for k in self.table[source.rsplit("/", 1)[-1]]]


def test_collect_faces_excludes_unusable_photos(tmp_path, demo_settings):
    from PIL import Image
    from skimage import data

    from pipelines.wplus.train import collect_faces

    img = data.astronaut()
    for name in ("good.png", "group.png", "small.png", "none.png"):
        Image.fromarray(img).save(tmp_path / name)
    (tmp_path / "broken.jpg").write_text("not an image")
    big = (ASTRONAUT_KPS - 195) * 1.5 + 195  # a face 1.5x the astronaut's (> 160 px)
    analyzer = _FakeAnalyzer({"good.png": [big], "group.png": [big, big], "small.png": [ASTRONAUT_KPS * 0.5],
                              "none.png": []})
    used, excluded = collect_faces(tmp_path, demo_settings, analyzer)
    assert [s.rsplit("/", 1)[-1] for s, _ in used] == ["good.png"]
    assert used[0][1].shape == (512, 512, 3)  # the 512² crop the face parser takes
    reasons = {e["file"].rsplit("/", 1)[-1]: e["reason"] for e in excluded}
    assert set(reasons) == {"group.png", "small.png", "none.png", "broken.jpg"}
    assert "2 faces" in reasons["group.png"] and "160 px" in reasons["small.png"]
    assert "no face" in reasons["none.png"]
    with pytest.raises(BadInput, match="no usable face"):
        collect_faces(tmp_path, demo_settings, _FakeAnalyzer({k: [] for k in reasons | {"good.png": 0}}))


def test_train_wplus_three_steps_and_result_loads(tmp_path, demo_store, pipe, astronaut_crop, base_image):
    from PIL import Image
    from safetensors import safe_open
    from safetensors.torch import load_file

    from pipelines.wplus.adapter import cross_attention_layers, install_wplus, remove_wplus, wplus_embeds
    from pipelines.wplus.train import train_wplus

    faces = tmp_path / "faces"
    faces.mkdir()
    Image.fromarray(astronaut_crop).save(faces / "a.png")
    Image.fromarray(np.ascontiguousarray(astronaut_crop[:, ::-1])).save(faces / "b.png")
    (faces / "notes.jpg").write_text("not an image")
    out = tmp_path / "out" / "my_wplus.safetensors"
    seen = []
    result = train_wplus(faces, "sd15", 3, out, demo_store, demo_store.settings, aligned=True, progress=seen.append)

    assert result.path == out and out.is_file()
    assert [p["step"] for p in seen] == [1, 2, 3]
    assert len(result.losses) == 3 and all(np.isfinite(result.losses))
    assert len(result.used) == 2 and [e["file"].rsplit("/", 1)[-1] for e in result.excluded] == ["notes.jpg"]
    assert not list(out.parent.glob(".*part"))  # written atomically, no leftovers

    sd = load_file(str(out))
    assert {k.split(".")[0] for k in sd} == {"w_proj", "wplus_adapter"}
    with safe_open(str(out), "pt") as fh:
        assert fh.metadata()["likeness.base"] == "sd15"
    # processors start from the UNet's own attn2 weights (3 small AdamW steps away)
    layers = {i: m for i, _n, m in cross_attention_layers(pipe.unet)}
    assert torch.allclose(sd["wplus_adapter.1.to_k_wplus.weight"].float(), layers[1].to_k.weight, atol=5e-3)
    assert torch.allclose(sd["wplus_adapter.31.to_q_wplus.weight"].float(), layers[31].to_q.weight, atol=5e-3)

    handle = install_wplus(pipe.unet, sd, scale=1.0)
    try:
        img = _run(pipe, ip_adapter_image_embeds=wplus_embeds(torch.randn(18, 512), True))
        assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all()
    finally:
        remove_wplus(pipe.unet, handle)

    with pytest.raises(BadInput, match="sd15 or sdxl"):
        train_wplus(faces, "sd3", 3, out, demo_store, demo_store.settings, aligned=True)
    with pytest.raises(BadInput, match="safetensors"):
        train_wplus(faces, "sd15", 3, tmp_path / "x.bin", demo_store, demo_store.settings, aligned=True)


def test_sd15_vae_pack_is_a_finetune_of_the_base_vae(demo_store, pipe):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(demo_store.ensure("sd-vae-ft-mse"), local_files_only=True)
    assert vae.config.block_out_channels == pipe.vae.config.block_out_channels
    assert vae.config.scaling_factor == pipe.vae.config.scaling_factor == 0.18215
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = vae.decode(z).sample, pipe.vae.decode(z).sample
    assert a.shape == b.shape == (1, 3, 64, 64)
    assert 0 < float((a - b).abs().mean()) < float(b.abs().mean())  # close, not identical
