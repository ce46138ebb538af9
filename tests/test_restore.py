"""Face restoration: tiny GFPGAN/CodeFormer packs recognised by spandrel, the
restorer registry, and the align -> restore -> paste-back geometry."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.errors import BadInput, ModelError
from pipelines.restore import (
    FFHQ_TEMPLATE_512,
    RESTORE_CHOICES,
    FaceRestorer,
    get_restorer,
    restore_faces,
    restorer_spec,
    similarity_transform,
)

# the astronaut's face in skimage.data.astronaut() (MTCNN, fixed): bbox x1 y1 x2 y2
# and the 5 keypoints (left eye, right eye, nose, mouth left, mouth right)
ASTRONAUT_BBOX = np.array([182.0, 63.0, 269.0, 174.0])
ASTRONAUT_KPS = np.array([[206.0, 102.0], [249.0, 105.0], [227.0, 130.0], [204.0, 142.0], [247.0, 144.0]])


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


class IdentityRestorer:
    name = "identity"

    def __init__(self):
        self.calls = 0

    def restore_face(self, face_rgb_512, fidelity):
        self.calls += 1
        assert face_rgb_512.shape == (512, 512, 3) and face_rgb_512.dtype == np.uint8
        return face_rgb_512.copy()


class ConstantRestorer(IdentityRestorer):
    name = "constant"
    colour = (0, 255, 0)

    def restore_face(self, face_rgb_512, fidelity):
        super().restore_face(face_rgb_512, fidelity)
        return np.full_like(face_rgb_512, self.colour)


def _outside(box, shape, grow: float) -> np.ndarray:
    """Boolean mask of pixels outside `box` grown by `grow` x its size per side."""
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * grow, (y2 - y1) * grow
    h, w = shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    inside = (xx >= x1 - dx) & (xx <= x2 + dx) & (yy >= y1 - dy) & (yy <= y2 + dy)
    return ~inside


def _diff(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max(axis=-1)


# ------------------------------------------------------------------ geometry


def test_similarity_transform_recovers_a_known_similarity():
    angle, scale, t = np.deg2rad(17.0), 0.37, np.array([120.5, -33.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = FFHQ_TEMPLATE_512 @ rot.T + t
    m = similarity_transform(pts, FFHQ_TEMPLATE_512)
    back = pts @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(back, FFHQ_TEMPLATE_512, atol=1e-6)
    with pytest.raises(ValueError):
        similarity_transform(np.ones((5, 2)), FFHQ_TEMPLATE_512)


def test_identity_restorer_leaves_the_image_unchanged(astronaut):
    out, report = restore_faces(astronaut, [(ASTRONAUT_KPS, ASTRONAUT_BBOX)], IdentityRestorer(), strength=1.0)
    assert out.size == astronaut.size and out.mode == "RGB"
    assert report == ["face 1 restored with identity (87 px, strength 1)"]
    d = _diff(out, astronaut)
    x1, y1, x2, y2 = ASTRONAUT_BBOX.astype(int)
    face = d[y1:y2, x1:x2]
    # warp in + warp back only resamples: small, local differences (a 1-px eye
    # highlight may blur), none at all far from the face
    assert face.mean() < 2.0
    assert np.percentile(face, 99) <= 16
    assert d[_outside(ASTRONAUT_BBOX, d.shape, 0.2)].max() == 0


def test_identity_restorer_on_a_face_larger_than_the_template(astronaut):
    # 3x upscale: the face is ~260 px, so the crop is shrunk into 512 (INTER_AREA path)
    big = astronaut.resize((1536, 1536), Image.BICUBIC)
    kps, bbox = ASTRONAUT_KPS * 3 + 1, ASTRONAUT_BBOX * 3
    out, _ = restore_faces(big, [(kps, bbox)], IdentityRestorer(), strength=1.0)
    d = _diff(out, big)
    x1, y1, x2, y2 = bbox.astype(int)
    assert d[y1:y2, x1:x2].mean() < 1.0
    assert d[_outside(bbox, d.shape, 0.2)].max() == 0


def test_constant_restorer_changes_only_the_face_region(astronaut):
    restorer = ConstantRestorer()
    out, report = restore_faces(astronaut, [(ASTRONAUT_KPS, ASTRONAUT_BBOX)], restorer, strength=1.0)
    assert restorer.calls == 1 and "restored" in report[0]
    d = _diff(out, astronaut)
    assert d[_outside(ASTRONAUT_BBOX, d.shape, 0.2)].max() == 0
    arr = np.asarray(out)
    # the centre of the face (nose, between the eyes) is the restorer's colour
    for x, y in (ASTRONAUT_KPS[2], ASTRONAUT_KPS[:2].mean(axis=0)):
        np.testing.assert_allclose(arr[int(y), int(x)], ConstantRestorer.colour, atol=3)
    # and most of the face box changed
    x1, y1, x2, y2 = ASTRONAUT_BBOX.astype(int)
    assert (d[y1:y2, x1:x2] > 0).mean() > 0.6


def test_strength_mixes_and_zero_leaves_the_image_unchanged(astronaut):
    faces = [(ASTRONAUT_KPS, ASTRONAUT_BBOX)]
    out0, report0 = restore_faces(astronaut, faces, ConstantRestorer(), strength=0.0)
    assert np.array_equal(np.asarray(out0), np.asarray(astronaut))
    assert "left as it is" in report0[0]

    half, _ = restore_faces(astronaut, faces, ConstantRestorer(), strength=0.5)
    x, y = ASTRONAUT_KPS[2].astype(int)
    orig = np.asarray(astronaut, np.float32)[y, x]
    expected = (orig + np.array(ConstantRestorer.colour, np.float32)) / 2
    np.testing.assert_allclose(np.asarray(half, np.float32)[y, x], expected, atol=2)


def test_small_face_is_skipped_and_reported(astronaut):
    # a second "face": the astronaut's keypoints scaled down to a 31 px box
    small_kps = (ASTRONAUT_KPS - ASTRONAUT_KPS.mean(axis=0)) * 0.3 + [420, 420]
    small_bbox = np.array([405.0, 400.0, 436.0, 440.0])

    class Face:  # detection objects (`.kps`, `.bbox`) are accepted too
        def __init__(self, kps, bbox):
            self.kps, self.bbox = kps, bbox

    restorer = ConstantRestorer()
    out, report = restore_faces(
        astronaut, [Face(ASTRONAUT_KPS, ASTRONAUT_BBOX), (small_kps, small_bbox)], restorer, strength=1.0, min_size=48
    )
    assert restorer.calls == 1
    assert report[1] == "face 2 skipped: 31 px < 48 px minimum"
    d = _diff(out, astronaut)
    assert d[380:460, 380:460].max() == 0  # the small face was left alone
    assert d[int(ASTRONAUT_KPS[2, 1]), int(ASTRONAUT_KPS[2, 0])] > 0  # the big one was not


def test_degenerate_or_missing_keypoints_are_reported(astronaut):
    restorer = ConstantRestorer()
    out, report = restore_faces(
        astronaut, [(np.full((5, 2), 200.0), ASTRONAUT_BBOX), (None, ASTRONAUT_BBOX)], restorer, strength=1.0
    )
    assert restorer.calls == 0
    assert "cannot be aligned" in report[0] and "no usable keypoints" in report[1]
    assert np.array_equal(np.asarray(out), np.asarray(astronaut))


@pytest.mark.parametrize("strength", [-0.1, 1.5, "strong"])
def test_bad_strength_is_a_clear_error(astronaut, strength):
    with pytest.raises(BadInput, match="restore strength"):
        restore_faces(astronaut, [], IdentityRestorer(), strength=strength)


def test_bad_fidelity_is_a_clear_error(astronaut):
    with pytest.raises(BadInput, match="restore fidelity: 1.5 is out of range"):
        restore_faces(astronaut, [], IdentityRestorer(), strength=1.0, fidelity=1.5)


# ------------------------------------------------------------------ registry


def test_registry_names_and_errors():
    assert RESTORE_CHOICES == ("none", "gfpgan", "codeformer")
    assert restorer_spec("gfpgan").model == "gfpgan-v1.4"
    assert restorer_spec("codeformer").model == "codeformer"
    with pytest.raises(BadInput, match="unknown face restorer 'restoreformer'"):
        get_restorer("restoreformer", store=None, device="cpu", dtype="float32")


class _FileStore:
    """Hands out one fixed file for any model (for the error paths)."""

    def __init__(self, path):
        self.path = path

    def ensure(self, name):
        return self.path.parent

    def file_path(self, name, rel):
        return self.path


def test_pickles_and_bad_files_are_refused_with_the_file_named(tmp_path):
    import torch
    from safetensors.torch import save_file

    pth = tmp_path / "GFPGANv1.4.pth"
    pth.write_bytes(b"not loaded")
    with pytest.raises(ModelError, match=r"GFPGANv1\.4\.pth is not a \.safetensors file"):
        get_restorer("gfpgan", _FileStore(pth), "cpu", "float32")

    truncated = tmp_path / "GFPGANv1.4.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(ModelError, match="cannot load .*GFPGANv1.4.safetensors"):
        get_restorer("gfpgan", _FileStore(truncated), "cpu", "float32")

    unrelated = tmp_path / "codeformer.safetensors"
    save_file({"params_ema.some.weight": torch.zeros(2, 2)}, str(unrelated))
    with pytest.raises(ModelError, match="not a known face-restoration model"):
        get_restorer("codeformer", _FileStore(unrelated), "cpu", "float32")


# ------------------------------------------------------- tiny packs + spandrel


class _DemoStore:
    """The model store's demo path in miniature: build the entry's tiny pack,
    convert its pickle with the store's converter, hand out the .safetensors."""

    def __init__(self, root):
        from pipelines.models.catalog import load_catalog

        self.root = root
        self.catalog = load_catalog()

    def ensure(self, name):
        from pipelines.models.convert import convert_pickle_to_safetensors
        from pipelines.tiny import build_pack

        entry = self.catalog.get(name)
        folder = build_pack(entry.demo_pack, self.root / entry.dirname)
        for f in entry.files:
            if f.convert_to and not (folder / f.convert_to).exists():
                convert_pickle_to_safetensors(folder / f.path, folder / f.convert_to)
        return folder

    def file_path(self, name, rel):
        entry = self.catalog.get(name)
        f = next(f for f in entry.files if f.path == rel)
        return self.ensure(name) / (f.convert_to or f.path)


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    return _DemoStore(tmp_path_factory.mktemp("restore-models"))


PUBLISHED_KEYS = {
    "gfpgan": {
        "conv_body_first.weight": (32, 3, 1, 1),
        "final_linear.weight": (16 * 512, 256 * 4 * 4),  # 16 style codes from the 4x4 U-Net bottleneck
        "stylegan_decoder.style_mlp.1.weight": (512, 512),
        "stylegan_decoder.constant_input.weight": (1, 512, 4, 4),
        "toRGB.0.weight": (3, 256, 1, 1),
    },
    "codeformer": {
        "encoder.blocks.0.weight": (64, 3, 3, 3),
        "generator.blocks.0.weight": (512, 256, 3, 3),
        "quantize.embedding.weight": (64, 256),
        "position_emb": (256, 64),
        "idx_pred_layer.1.weight": (64, 64),
        "ft_layers.0.self_attn.in_proj_weight": (192, 64),
        "fuse_convs_dict.256.scale.0.weight": (128, 128, 3, 3),
    },
}


@pytest.mark.parametrize(
    "name, arch, pickle_name, fidelity",
    [("gfpgan", "GFPGAN", "GFPGANv1.4.pth", None), ("codeformer", "CodeFormer", "codeformer.pth", 0.7)],
)
def test_tiny_pack_loads_in_spandrel_and_restores_the_astronaut(
    demo_store, astronaut, name, arch, pickle_name, fidelity
):
    import torch

    spec = restorer_spec(name)
    folder = demo_store.ensure(spec.model)

    # the published pickle layout: {"params_ema": state_dict}, float16 to stay small
    raw = torch.load(folder / pickle_name, map_location="cpu", weights_only=True)
    assert list(raw) == ["params_ema"]
    state = raw["params_ema"]
    for key, shape in PUBLISHED_KEYS[name].items():
        assert tuple(state[key].shape) == shape, key
    assert all(v.dtype == torch.float16 for v in state.values())

    restorer = get_restorer(name, demo_store, "cpu", "float32")
    assert isinstance(restorer, FaceRestorer)
    assert restorer.architecture == arch  # detected by spandrel from the keys

    seen = {}

    def spy(module, args, kwargs):
        seen["shape"] = tuple(args[0].shape)
        seen["kwargs"] = dict(kwargs)

    handle = restorer.descriptor.model.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        out, report = restore_faces(
            astronaut, [(ASTRONAUT_KPS, ASTRONAUT_BBOX)], restorer, strength=1.0, fidelity=fidelity
        )
    finally:
        handle.remove()

    assert seen["shape"] == (1, 3, 512, 512)  # one 512² forward
    if name == "codeformer":
        assert seen["kwargs"]["weight"] == pytest.approx(0.7)  # the fidelity weight w reaches forward
    assert report == [f"face 1 restored with {name} (87 px, strength 1)"]
    d = _diff(out, astronaut)
    x1, y1, x2, y2 = ASTRONAUT_BBOX.astype(int)
    assert d[y1:y2, x1:x2].mean() > 10  # random weights: the face really changed
    assert d[_outside(ASTRONAUT_BBOX, d.shape, 0.2)].max() == 0


def test_codeformer_pack_is_deterministic(demo_store):
    import torch

    from pipelines.tiny.restore import codeformer_state_dict

    folder = demo_store.ensure("codeformer")
    built = torch.load(folder / "codeformer.pth", map_location="cpu", weights_only=True)["params_ema"]
    again = codeformer_state_dict()
    assert built.keys() == again.keys()
    for key in ("encoder.blocks.0.weight", "position_emb", "ft_layers.0.self_attn.in_proj_weight"):
        assert torch.equal(built[key], again[key])
