"""PuLID v1.1 pieces on tiny weights: the ID attention against a plain restatement
of ToTheBeginning/PuLID's IDAttnProcessor2_0 (all three ortho modes, 2 heads,
zero tokens), the published key layouts (IDFormer, id_adapter_attn_layers
indices, EVA-CLIP visual.*, facexlib BiSeNet), the EVA hidden-state taps, the
face preparation (FFHQ warp, border colour, whitening, no-antialias resize) and
the method through the engine and `eval`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.pulid.attention import IDAttnProcessor, install, remove


# ------------------------------------------------------------- attention
def _attn_module(dim=32, heads=2, cross=24):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    return Attention(query_dim=dim, cross_attention_dim=cross, heads=heads, dim_head=dim // heads).eval()


def _reference(attn, proc, x, text, emb, scale, num_zero, ortho):
    """PuLID's processor restated with explicit per-head softmax attention."""
    b, n, _ = x.shape
    h, d = attn.heads, attn.to_q.out_features // attn.heads

    def split(t):
        return t.view(b, -1, h, d).transpose(1, 2)

    def attend(q, k, v):
        return torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1) @ v

    q = split(attn.to_q(x))
    hid = attend(q, split(attn.to_k(text)), split(attn.to_v(text))).transpose(1, 2).reshape(b, n, h * d)
    e = torch.cat([emb, torch.zeros(b, num_zero, emb.shape[-1])], dim=1)
    k_id, v_id = split(proc.id_to_k(e)), split(proc.id_to_v(e))
    i = attend(q, k_id, v_id).transpose(1, 2).reshape(b, n, h * d)
    if ortho == "off":
        out = hid + scale * i
    else:
        proj = torch.stack([(hid[:, :, c] * i[:, :, c]).sum(1) / (hid[:, :, c] ** 2).sum(1)
                            for c in range(h * d)], dim=-1)[:, None, :] * hid
        if ortho == "v1":
            out = hid + scale * (i - proj)
        else:
            w = torch.stack([torch.softmax(q[:, j] @ k_id[:, j].transpose(-1, -2), dim=-1) for j in range(h)]).mean(0)
            alpha = w[:, :, :5].sum(-1, keepdim=True)
            out = hid + scale * (i + (alpha - 1) * proj)
    return attn.to_out[0](out)


@pytest.mark.parametrize("ortho", ["off", "v1", "v2"])
@pytest.mark.parametrize("num_zero", [0, 8])
def test_id_attention_matches_the_reference(ortho, num_zero):
    attn = _attn_module()
    proc = IDAttnProcessor(32, 24)
    g = torch.Generator().manual_seed(1)
    x, text, emb = torch.randn(2, 6, 32, generator=g), torch.randn(2, 7, 24, generator=g), torch.randn(2, 9, 24, generator=g)
    with torch.no_grad():
        got = proc(attn, x, text, id_embedding=emb, id_scale=0.8, num_zero=num_zero, ortho=ortho)
        ref = _reference(attn, proc, x, text, emb, 0.8, num_zero, ortho)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_id_attention_is_plain_attention_without_an_id_and_refuses_a_batch_mismatch():
    from diffusers.models.attention_processor import AttnProcessor2_0

    attn = _attn_module()
    proc = IDAttnProcessor(32, 24)
    x, text = torch.randn(1, 6, 32), torch.randn(1, 7, 24)
    with torch.no_grad():
        plain = AttnProcessor2_0()(attn, x, text)
        assert torch.equal(proc(attn, x, text), plain)
        assert torch.equal(proc(attn, x, text, id_embedding=torch.randn(1, 9, 24), id_scale=0.0), plain)
        # PuLID's [uncond, cond] embedding at a batch-1 call: refused, not silently merged
        with pytest.raises(ValueError, match="batch 2"):
            proc(attn, x, text, id_embedding=torch.randn(2, 9, 24), id_scale=0.8)


def test_install_maps_checkpoint_indices_to_processor_positions_and_remove_restores():
    from pipelines.tiny.pulid import id_attention_state
    from pipelines.tiny.sdxl import build_unet

    unet = build_unet()
    before = dict(unet.attn_processors)
    state = id_attention_state(unet)
    names = list(before)
    assert {int(k.split(".")[1]) for k in state} == {i for i, n in enumerate(names) if n.endswith("attn2.processor")}
    saved = install(unet, state)
    procs = unet.attn_processors
    for i, name in enumerate(names):
        if name.endswith("attn2.processor"):
            assert torch.equal(procs[name].id_to_k.weight, state[f"id_adapter_attn_layers.{i}.id_to_k.weight"])
    remove(unet, saved)
    assert all(unet.attn_processors[n] is before[n] for n in names)
    with pytest.raises(KeyError, match="id_adapter_attn_layers.1.id_to_k"):
        install(unet, {k: v for k, v in state.items() if not k.startswith("id_adapter_attn_layers.1.")})


# ------------------------------------------------------------ encoders
def test_idformer_has_the_published_layout():
    from pipelines.pulid.encoders import IDFormer

    with torch.device("meta"):
        net = IDFormer()  # the published widths
    sd = net.state_dict()
    assert len(sd) == 172 and sum(v.numel() for v in sd.values()) == pytest.approx(151.4e6, rel=2e-3)
    assert sd["latents"].shape == (1, 32, 1024) and sd["proj_out"].shape == (1024, 2048)
    assert sd["layers.9.0.to_kv.weight"].shape == (2048, 1024) and "layers.9.1.3.weight" in sd
    assert sd["id_embedding_mapping.6.weight"].shape == (5120, 1024) and sd["mapping_4.0.weight"].shape == (1024, 1024)


def test_eva_taps_are_the_outputs_of_blocks_3_7_11_15_19():
    from pipelines.pulid.eva import eva_clip_keys, eva_features, load_eva_visual
    from pipelines.tiny.pulid import build_eva

    built = build_eva()
    model = load_eva_visual(eva_clip_keys(built.state_dict()))  # EVA-CLIP names -> timm, strictly
    seen = {}
    for i in (3, 7, 11, 15, 19):
        model.blocks[i].register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out.detach().clone()))
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        cond, hidden = eva_features(model, x)
        final = model.forward_features(x)
        head = model.head(final[:, 0])
    assert [tuple(h.shape) for h in hidden] == [(1, 17, 128)] * 5  # CLS + 4x4 patches
    for h, i in zip(hidden, (3, 7, 11, 15, 19)):
        assert torch.equal(h, seen[i])
    torch.testing.assert_close(cond, head / head.norm(dim=1, keepdim=True))
    assert model.rope is not None and len(model.blocks) >= 21


def test_bisenet_keeps_facexlib_key_names():
    from pipelines.pulid.parsing import BiSeNet, bisenet_from_state
    from pipelines.tiny.pulid import build_bisenet

    with torch.device("meta"):
        published = BiSeNet().state_dict()
    assert published["cp.arm16.conv.conv.weight"].shape == (128, 256, 3, 3)
    assert published["ffm.convblk.conv.weight"].shape == (256, 256, 1, 1)
    assert published["conv_out.conv_out.weight"].shape == (19, 256, 1, 1)
    assert published["cp.resnet.layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    tiny = build_bisenet().state_dict()
    assert set(tiny) == set(published)
    net = bisenet_from_state(tiny)
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 19, 64, 64)
    # a 2019 checkpoint without num_batches_tracked loads too; any other missing key is an error
    old = {k: v for k, v in tiny.items() if not k.endswith("num_batches_tracked")}
    assert torch.equal(bisenet_from_state(old)(torch.ones(1, 3, 64, 64)), net(torch.ones(1, 3, 64, 64)))
    with pytest.raises(RuntimeError, match="ffm.conv1.weight"):
        bisenet_from_state({k: v for k, v in tiny.items() if k != "ffm.conv1.weight"})


# --------------------------------------------------------- preparation
def test_alignment_is_the_ffhq_similarity_with_facexlibs_border():
    import cv2

    from pipelines.pulid.preprocess import BORDER_RGB, FFHQ_512, align_face

    # landmarks = the template scaled by 0.5 and shifted: the crop maps them back exactly
    kps = FFHQ_512 * 0.5 + np.array([40.0, 10.0], np.float32)
    rgb = np.full((200, 200, 3), 200, np.uint8)  # the crop reaches past its right and bottom edges
    rgb[:, :, 0] = np.arange(200, dtype=np.uint8)[None, :]
    out = align_face(rgb, kps)
    matrix, _ = cv2.estimateAffinePartial2D(kps, FFHQ_512, method=cv2.LMEDS)
    np.testing.assert_allclose(np.c_[kps, np.ones(5)] @ matrix.T, FFHQ_512, atol=1e-3)
    assert out.shape == (512, 512, 3)
    # pixels from outside the photo take facexlib's BGR (135, 133, 132) border
    assert tuple(out[-1, -1]) == BORDER_RGB == (132, 133, 135)
    # INTER_LINEAR, not cubic: a pixel inside equals the bilinear sample
    inv = cv2.invertAffineTransform(matrix)
    sx, sy = inv @ np.array([256.0, 256.0, 1.0])
    assert abs(int(out[256, 256, 0]) - sx) <= 1


def test_whitening_and_grey():
    from pipelines.pulid.preprocess import whiten_background

    face = np.zeros((4, 4, 3), np.uint8)
    face[..., 0], face[..., 1], face[..., 2] = 200, 100, 50
    labels = torch.tensor([[0, 1, 16, 17]] * 4)  # bg, skin, cloth, hair
    out = whiten_background(face, labels)[0]
    grey = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    assert torch.all(out[:, :, 0] == 1.0) and torch.all(out[:, :, 2] == 1.0)
    torch.testing.assert_close(out[:, :, 1], torch.full((3, 4), grey))
    torch.testing.assert_close(out[:, :, 3], torch.full((3, 4), grey))


def test_eva_input_resizes_without_antialias():
    from pipelines.pulid.eva import MEAN, STD, eva_input

    x = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    got = eva_input(x, 336)
    plain = F.interpolate(x, size=(336, 336), mode="bicubic", align_corners=False, antialias=False)
    smooth = F.interpolate(x, size=(336, 336), mode="bicubic", align_corners=False, antialias=True)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(got, (plain - mean) / std)
    assert not torch.allclose(got, (smooth - mean) / std)


# ---------------------------------------------------------------- engine
@pytest.fixture(scope="module")
def engine(make_engine):
    return make_engine("pulid-out")


def test_method_conditions_with_the_reference_settings(engine, photos_dir):
    from pipelines.engine import apply_method_defaults
    from pipelines.identity import get_method_class
    from pipelines.identity.pulid import REFERENCE_NEGATIVE
    from pipelines.requests import GenerateRequest
    from pipelines.scoring import scorer_pack

    req = apply_method_defaults(GenerateRequest(method="pulid", photos=["x.png"], prompt="p"), get_method_class("pulid"))
    assert (req.sampler, req.steps, req.cfg, req.negative) == ("kdpmpp_2m_karras", 25, 7.0, REFERENCE_NEGATIVE)
    assert scorer_pack("pulid") == "buffalo_l"  # it conditions on antelopev2
    res = engine.generate(GenerateRequest(method="pulid", photos=[str(photos_dir / "astronaut.png")], prompt="p",
                                          steps=2, width=64, height=64, sampler="euler", seed=2))
    details = res.images[0].recipe["method_details"]
    assert (details["num_zero"], details["ortho"], details["version"]) == (20, "v2", "v1.1")
    img = np.asarray(res.images[0].image)
    assert np.isfinite(img).all() and img.std() > 0
    # the face crop the EVA tower saw: white background, grey face (R = G = B)
    method = engine.use_method("pulid", engine.pipeline("sdxl-base"))
    aligned, grey, id_cond, hidden, source = method.face_features(res.identity)  # cached from the run
    # random demo RetinaFace weights find no face: the identity's landmarks, said in the recipe
    assert source.startswith("identity") and details["warnings"]
    assert aligned.shape == (512, 512, 3)
    g = grey[0]
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    assert id_cond.shape[-1] == 512 + method.eva.num_classes
    assert method.face_features(res.identity) is method.face_features(res.identity)


def test_eval_runs_pulid(run_demo_eval):
    rows = run_demo_eval("pulid")
    assert [(r["method"], r["recognizer"]) for r in rows] == [("pulid", "buffalo_l")]


def test_num_zero_and_ortho_reach_the_processors_per_call(engine, photos_dir):
    from pipelines.requests import GenerateRequest

    base = dict(method="pulid", photos=[str(photos_dir / "astronaut.png")], prompt="p", steps=2, width=64,
                height=64, sampler="euler", seed=2)
    seen = []
    pipe = engine.pipeline("sdxl-base")
    engine.use_method("pulid", pipe)
    handle = pipe.unet.register_forward_pre_hook(
        lambda m, a, kw: seen.append(dict(kw.get("cross_attention_kwargs") or {})), with_kwargs=True)
    try:
        images = {}
        for nz, ortho in ((20, "v2"), (8, "v2"), (16, "v1"), (20, "off")):
            seen.clear()
            res = engine.generate(GenerateRequest(**base, pulid_num_zero=nz, pulid_ortho=ortho))
            assert {(c["num_zero"], c["ortho"]) for c in seen} == {(nz, ortho)}
            assert (res.images[0].recipe["method_details"]["num_zero"],
                    res.images[0].recipe["method_details"]["ortho"]) == (nz, ortho)
            images[(nz, ortho)] = np.asarray(res.images[0].image)
    finally:
        handle.remove()
    assert len({v.tobytes() for v in images.values()}) == 4  # every setting changes the image


def test_cli_flags_reach_the_request(demo_settings):
    import argparse

    from cli.generate import register, request_from_args
    from pipelines.requests import GenerateRequest

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    base = ["generate", "--photo", "me.jpg", "--prompt", "p", "--method", "pulid"]
    req = GenerateRequest(**request_from_args(parser.parse_args(base), demo_settings))
    assert (req.pulid_num_zero, req.pulid_ortho) == (20, "v2")  # the v1.1 demo's
    args = parser.parse_args([*base, "--pulid-num-zero", "16", "--pulid-ortho", "v1"])
    req = GenerateRequest(**request_from_args(args, demo_settings))
    assert (req.pulid_num_zero, req.pulid_ortho) == (16, "v1")
    with pytest.raises(ValueError):
        GenerateRequest(**request_from_args(parser.parse_args([*base, "--pulid-num-zero", "81"]), demo_settings))


# ------------------------------------------------------------------ v1
def test_idencoder_has_the_published_layout():
    from pipelines.pulid.encoders import IDEncoder

    with torch.device("meta"):
        sd = IDEncoder().state_dict()
    assert len(sd) == 110 and sum(v.numel() for v in sd.values()) == pytest.approx(54.9e6, rel=2e-3)
    assert sd["body.6.weight"].shape == (10240, 1024) and sd["mapping_patch_4.6.weight"].shape == (2048, 1024)


def test_v1_runs_on_the_lightning_unet_with_its_demo_recipe(engine, photos_dir):
    from pipelines.engine import apply_method_defaults
    from pipelines.identity import get_method_class
    from pipelines.requests import GenerateRequest
    from pipelines.samplers import make_scheduler

    req = apply_method_defaults(GenerateRequest(method="pulid-v1", photos=["x.png"], prompt="p"),
                                get_method_class("pulid-v1"))
    assert (req.sampler, req.steps, req.cfg, req.pulid_num_zero, req.pulid_ortho) == (
        "dpmpp_2m_trailing", 4, 1.2, 8, "v2")  # app.py: 4 steps, cfg 1.2, "fidelity"
    pipe = engine.pipeline("sdxl-base")
    engine.use_method("none", pipe)
    base_unet = pipe.unet
    sched = make_scheduler("dpmpp_2m_trailing", dict(pipe.scheduler.config))
    sched.set_timesteps(4)
    assert sched.timesteps.tolist() == [999, 749, 499, 249] and float(sched.sigmas[-1]) == pytest.approx(0.0292, abs=1e-4)

    seen = []
    method = engine.use_method("pulid-v1", pipe)
    assert pipe.unet is not base_unet  # the Lightning UNet
    hook = pipe.unet.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["cross_attention_kwargs"]["id_embedding"].shape), with_kwargs=True)
    try:
        res = engine.generate(GenerateRequest(method="pulid-v1", photos=[str(photos_dir / "astronaut.png")],
                                              prompt="p", width=64, height=64, seed=3))
    finally:
        hook.remove()
    assert set(seen) == {torch.Size([2, 10, 128])}  # [uncond, cond] x (5 body + 5 ViT tokens)
    assert res.images[0].recipe["method_details"]["version"] == "v1"
    assert type(method.id_encoder).__name__ == "IDEncoder"
    engine.generate(GenerateRequest(method="pulid-v1", photos=[str(photos_dir / "astronaut.png")], prompt="p",
                                    width=64, height=64, seed=3, scale=0.0))
    assert pipe.unet is base_unet  # scale 0: the plain base
    engine.use_method("none", pipe)
    assert pipe.unet is base_unet


@pytest.mark.parametrize("field, value, match", [
    ("loras", [{"name": "me", "weight": 0.8}], "loras cannot be used with method 'pulid-v1'"),
    ("speed", "fast", "already runs a few-step distilled UNet"),  # speed.check_speed, via few_step
])
def test_v1_refuses_what_cannot_work(engine, photos_dir, field, value, match):
    from pipelines.errors import BadInput
    from pipelines.requests import GenerateRequest

    data = dict(method="pulid-v1", photos=[str(photos_dir / "astronaut.png")], prompt="p", width=64, height=64,
                seed=3)
    data[field] = value
    with pytest.raises(BadInput, match=match):
        engine.generate(GenerateRequest(**data))


# ------------------------------------------------------------- RetinaFace
def test_retinaface_keeps_facexlibs_layout():
    import torchvision

    from pipelines.pulid.retinaface import RetinaFace, retinaface_from_state
    from pipelines.tiny.pulid import build_facexlib_retinaface

    with torch.device("meta"):
        sd = RetinaFace().state_dict()
        tv = torchvision.models.resnet50().state_dict()
    body = {k[len("body."):]: v.shape for k, v in sd.items() if k.startswith("body.")}
    assert body == {k: v.shape for k, v in tv.items() if not k.startswith("fc.")}  # torchvision's trunk
    assert sd["fpn.output1.0.weight"].shape == (256, 512, 1, 1) and sd["ssh3.conv7x7_3.0.weight"].shape == (64, 64, 3, 3)
    assert sd["LandmarkHead.2.conv1x1.weight"].shape == (20, 256, 1, 1)  # 2 anchors x 10
    params = sum(v.numel() for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert params * 4 == pytest.approx(109497761, rel=1e-3)  # the published file's size, float32
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        build_facexlib_retinaface(Path(d))
        state = torch.load(Path(d) / "detection_Resnet50_Final.pth", weights_only=True)
    assert all(k.startswith("module.") for k in state)
    net = retinaface_from_state(state)
    loc, conf, landm = net(torch.zeros(1, 3, 64, 96))
    n = sum(((64 + s - 1) // s) * ((96 + s - 1) // s) * 2 for s in (8, 16, 32))
    assert loc.shape == (1, n, 4) and conf.shape == (1, n, 2) and landm.shape == (1, n, 10)


class _FakeRetinaFace(torch.nn.Module):
    """Outputs chosen per prior: given scores, zero offsets (boxes = the priors)
    unless given."""

    def __init__(self, scores: dict[int, float], loc: dict[int, list] | None = None):
        super().__init__()
        self.scores, self.loc = scores, loc or {}
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        from pipelines.pulid.retinaface import priors

        n = priors(*x.shape[2:]).shape[0]
        conf = torch.zeros(1, n, 2)
        for i, s in self.scores.items():
            conf[0, i] = torch.tensor([1 - s, s])
        loc = torch.zeros(1, n, 4)
        for i, v in self.loc.items():
            loc[0, i] = torch.tensor(v)
        return loc, conf, torch.zeros(1, n, 10)


def test_retinaface_decoding_threshold_nms_and_centre_face():
    from pipelines.pulid.retinaface import center_face_landmarks, detect, priors

    h, w = 64, 128
    pri = priors(h, w)
    stride8 = (h // 8) * (w // 8) * 2
    # stride-32 priors (256 px boxes would cover everything): use stride-8 ones, min size 16
    left = (2 * (w // 8) + 2) * 2  # cell (row 2, col 2), first anchor (16 px)
    right = (2 * (w // 8) + 12) * 2  # cell (row 2, col 12): centre x 100, nearer the middle (64) than 20
    dup = left + 2  # the next cell's 16 px anchor, moved 8 px back onto `left` (0.1 x 16 x -5)
    weak = (6 * (w // 8) + 8) * 2
    assert max(left, right, dup, weak) < stride8
    net = _FakeRetinaFace({left: 0.99, right: 0.995, dup: 0.98, weak: 0.9}, loc={dup: [-5.0, 0.0, 0.0, 0.0]})
    rows = detect(net, np.zeros((h, w, 3), np.uint8))
    assert len(rows) == 2  # weak is under 0.97, dup is suppressed by NMS
    np.testing.assert_allclose(rows[0, 4], 0.995, atol=1e-6)
    cx, cy, bw, bh = (pri[right] * torch.tensor([w, h, w, h])).tolist()
    np.testing.assert_allclose(rows[0, :4], [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], atol=1e-4)
    np.testing.assert_allclose(rows[0, 5:15], [cx, cy] * 5, atol=1e-4)  # zero offsets: the prior's centre
    # the face nearest the image centre (facexlib get_center_face), or nearest a given point
    kps = center_face_landmarks(net, np.zeros((h, w, 3), np.uint8))
    lx = (pri[left, 0] * w).item()
    rx = (pri[right, 0] * w).item()
    expect = lx if abs(lx - w / 2) < abs(rx - w / 2) else rx
    assert kps.shape == (5, 2) and kps[0, 0] == pytest.approx(expect, abs=1e-4)
    other = center_face_landmarks(net, np.zeros((h, w, 3), np.uint8), centre=(lx if expect == rx else rx, 20))
    assert other[0, 0] != pytest.approx(expect, abs=1e-4)
