"""Face analysis, identities and identity cards, on the tiny insightface packs
(loaded through the real `insightface.app.FaceAnalysis`) and real photos
(astronaut: one face; chelsea: a cat; t1.jpg: a group)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import fast_request
from PIL import Image

from pipelines.errors import BadInput, FaceQualityError, ModelMissing, NoFaceFound
from pipelines.faces import (
    Face,
    FaceAnalyzer,
    Identity,
    build_identity,
    embeddings_hash,
    expected_files,
    find_outliers,
    load_card,
    save_card,
)
from pipelines.settings import load_settings
from pipelines.tiny import MARKER, build_pack
from pipelines.tiny.insightface_pack import TINY_DET_SCORE

PACKS = ("buffalo_l", "antelopev2")


class PackStore:
    """Stand-in for the model store: builds the tiny pack where the store puts
    it in demo mode (<models>/demo/insightface/models/<name>) and counts calls."""

    def __init__(self, models_dir: Path):
        self.root = models_dir / "demo"
        self.calls: list[str] = []

    def ensure(self, name: str) -> Path:
        self.calls.append(name)
        folder = self.root / "insightface" / "models" / name
        build_pack(f"insightface-{name}", folder)
        return folder


class FixedStore:
    """A store whose folder for every name is `folder` (for broken layouts)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def ensure(self, name: str) -> Path:
        return self.folder


def rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="session")
def store(tiny_models_dir) -> PackStore:
    return PackStore(tiny_models_dir)


@pytest.fixture(scope="session")
def demo(tiny_models_dir):
    return load_settings(models_dir=tiny_models_dir, device="cpu", demo=True)


@pytest.fixture(scope="session")
def real(tiny_models_dir):
    return load_settings(models_dir=tiny_models_dir, device="cpu", demo=False)


@pytest.fixture(scope="session")
def analyzers(store, demo) -> dict[str, FaceAnalyzer]:
    return {p: FaceAnalyzer(store, demo, p) for p in PACKS}


@pytest.fixture(scope="session")
def astronaut(photos_dir) -> np.ndarray:
    return rgb(photos_dir / "astronaut.png")


def cosine(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- tiny packs --------------------------------------------------------------


@pytest.mark.parametrize("pack", PACKS)
def test_tiny_pack_loads_through_faceanalysis(store, photos_dir, pack):
    from insightface.app import FaceAnalysis

    folder = store.ensure(pack)
    written = sorted(p.name for p in folder.iterdir() if p.name != MARKER)
    assert written == sorted(expected_files(pack))  # exactly the catalog's files

    app = FaceAnalysis(name=pack, root=str(store.root / "insightface"), providers=["CPUExecutionProvider"])
    kinds = {task: type(m).__name__ for task, m in app.models.items()}
    assert kinds == {
        "detection": "SCRFD",
        "recognition": "ArcFaceONNX",
        "landmark_3d_68": "Landmark",
        "landmark_2d_106": "Landmark",
        "genderage": "Attribute",
    }
    assert app.models["recognition"].input_size == (112, 112)
    assert app.models["recognition"].input_mean == 127.5  # routed as a PyTorch ArcFace export
    app.prepare(ctx_id=-1, det_size=(640, 640))
    faces = app.get(rgb(photos_dir / "astronaut.png")[..., ::-1].copy())
    # the tiny SCRFD: exactly one face, at the centre of the square image
    assert len(faces) == 1
    f = faces[0]
    assert f.det_score == pytest.approx(TINY_DET_SCORE)
    assert np.allclose(((f.bbox[0] + f.bbox[2]) / 2, f.kps[2][1]), (256, 256), atol=1)
    assert f.kps[0][0] < f.kps[1][0] and f.kps[2][1] < f.kps[3][1]  # eyes left->right, mouth below nose
    assert f.embedding.shape == (512,) and np.isfinite(f.embedding).all()


def test_tiny_packs_are_deterministic(store, tmp_path):
    first = store.ensure("antelopev2")
    again = build_pack("insightface-antelopev2", tmp_path / "antelopev2")
    for name in expected_files("antelopev2"):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name


def test_tiny_recogniser_is_a_function_of_the_pixels(analyzers, astronaut, photos_dir):
    an = analyzers["buffalo_l"]
    a1 = an.analyze(astronaut, "astronaut.png")
    a2 = an.analyze(astronaut.copy(), "again.png")
    assert np.array_equal(a1.embedding, a2.embedding)  # same input, same embedding
    others = an.detect_all(rgb(photos_dir / "t1.jpg"), "t1.jpg")
    sims = [cosine(a1.embedding, o.embedding) for o in others]
    assert max(sims) < 0.9  # different faces, clearly different embeddings
    assert len({o.embedding.tobytes() for o in others}) == len(others)
    # the two packs are two different recognisers, embedding the same face
    b = analyzers["antelopev2"].embed_detection(astronaut, a1, "astronaut.png")
    assert np.array_equal(b.kps, a1.kps) and cosine(a1.embedding, b.embedding) < 0.9


# -- analysis ----------------------------------------------------------------


def test_astronaut_one_face(analyzers, astronaut):
    face = analyzers["buffalo_l"].analyze(astronaut, "astronaut.png")
    assert isinstance(face, Face) and face.n_faces == 1
    h, w = astronaut.shape[:2]
    cx, cy = (face.bbox[0] + face.bbox[2]) / 2, (face.bbox[1] + face.bbox[3]) / 2
    assert 0.25 * w < cx < 0.75 * w and cy < 0.5 * h  # the face is upper middle
    assert 64 <= face.size and face.area < 0.25 * w * h
    x1, y1, x2, y2 = face.bbox
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in face.kps)
    assert face.kps[0][0] < face.kps[1][0]  # left eye (image left) first
    assert face.embedding.shape == (512,) and face.normed_embedding.shape == (512,)
    assert np.linalg.norm(face.normed_embedding) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(face.normed_embedding, face.embedding / np.linalg.norm(face.embedding), atol=1e-6)
    assert face.aligned.shape == (224, 224, 3) and face.aligned.dtype == np.uint8
    assert face.aligned_112.shape == (112, 112, 3) and face.aligned_112.dtype == np.uint8
    assert face.aligned.std() > 10  # a real crop, not the black border
    assert face.image_size == (w, h) and face.source == "astronaut.png" and face.pack == "buffalo_l"


def test_cat_has_no_face(analyzers, photos_dir):
    with pytest.raises(NoFaceFound, match="chelsea.png") as exc:
        analyzers["buffalo_l"].analyze(rgb(photos_dir / "chelsea.png"), str(photos_dir / "chelsea.png"))
    assert exc.value.exit_code == 2


def test_group_photo_picks_largest_by_area(analyzers, photos_dir):
    an = analyzers["buffalo_l"]
    img = rgb(photos_dir / "t1.jpg")
    dets = an.detect(img, "t1.jpg")
    assert len(dets) >= 5
    largest = max(dets, key=lambda d: (d.bbox[2] - d.bbox[0]) * (d.bbox[3] - d.bbox[1]))
    # InstantID's key `(x2-x1)*y2-y1` picks another face on this photo, so the
    # assertion below tells the two apart
    buggy = max(dets, key=lambda d: (d.bbox[2] - d.bbox[0]) * d.bbox[3] - d.bbox[1])
    assert not np.array_equal(buggy.bbox, largest.bbox)
    face = an.analyze(img, "t1.jpg")
    assert np.array_equal(face.bbox, largest.bbox)
    assert face.n_faces == len(dets)
    assert len(an.detect_all(img, "t1.jpg")) == len(dets)


def test_larger_face_lower_in_frame_is_chosen(analyzers, astronaut):
    import cv2

    crop = astronaut[20:230, 130:320]
    canvas = np.full((1024, 768, 3), 128, np.uint8)
    small = cv2.resize(crop, None, fx=0.7, fy=0.7, interpolation=cv2.INTER_AREA)
    big = cv2.resize(crop, None, fx=1.5, fy=1.5, interpolation=cv2.INTER_CUBIC)
    canvas[40 : 40 + small.shape[0], 400 : 400 + small.shape[1]] = small  # top right, small
    canvas[1024 - 40 - big.shape[0] : 1024 - 40, 60 : 60 + big.shape[1]] = big  # bottom left, large
    an = analyzers["buffalo_l"]
    dets = an.detect(canvas, "two.png")
    assert len(dets) == 2
    face = an.analyze(canvas, "two.png")
    assert face.bbox[1] > 512 and face.bbox[0] < 384  # the lower, larger one
    assert face.area == pytest.approx(max(d.area for d in dets))
    assert face.n_faces == 2


def test_tiny_face_is_rejected_with_measured_size(analyzers, astronaut):
    small = np.asarray(Image.fromarray(astronaut).resize((256, 256), Image.LANCZOS))
    an = analyzers["buffalo_l"]
    (det,) = an.detect(small, "small.png")
    assert det.size < 64
    with pytest.raises(FaceQualityError) as exc:
        an.analyze(small, "small.png")
    msg = str(exc.value)
    assert f"{det.width:.0f}x{det.height:.0f} px" in msg and "64 px" in msg and "small.png" in msg
    # the gate is a setting: a lower minimum accepts the same photo
    assert FaceAnalyzer(an.store, an.settings, "buffalo_l", min_face_px=32).analyze(small, "s.png").size < 64


def test_real_mode_uses_the_pack_scrfd_and_gates_the_score(store, real, astronaut):
    an = FaceAnalyzer(store, real, "antelopev2")
    face = an.analyze(astronaut, "astronaut.png")
    # the tiny SCRFD's fixed face (centre of the square image), not MTCNN's
    assert face.det_score == pytest.approx(TINY_DET_SCORE)
    assert np.allclose(face.kps[2], (256, 256), atol=1)
    strict = FaceAnalyzer(store, real, "antelopev2", min_det_score=0.95)
    with pytest.raises(FaceQualityError, match=f"score {TINY_DET_SCORE:.2f}.*0.95"):
        strict.analyze(astronaut, "astronaut.png")


def test_models_load_lazily_and_stay_resident(tiny_models_dir, demo, astronaut):
    counting = PackStore(tiny_models_dir)
    an = FaceAnalyzer(counting, demo, "buffalo_l")
    assert counting.calls == [] and not an.loaded
    an.analyze(astronaut, "a.png")
    model = an.recognizer.model
    an.analyze(astronaut, "b.png")
    assert counting.calls == ["buffalo_l"] and an.recognizer.model is model
    an.unload()
    assert not an.loaded


def test_rejects_non_rgb_arrays(analyzers):
    with pytest.raises(BadInput, match="gray.png"):
        analyzers["buffalo_l"].analyze(np.zeros((64, 64), np.uint8), "gray.png")


# -- broken model folders  ---------------------------------


def test_nested_pack_folder_names_expected_path(store, demo, tmp_path):
    folder = tmp_path / "insightface" / "models" / "antelopev2"
    shutil.copytree(store.ensure("antelopev2"), folder / "antelopev2")
    with pytest.raises(ModelMissing) as exc:
        FaceAnalyzer(FixedStore(folder), demo, "antelopev2").analyze(np.zeros((64, 64, 3), np.uint8), "x.png")
    msg = str(exc.value)
    assert str(folder / "antelopev2") in msg and str(folder) in msg
    assert all(name in msg for name in expected_files("antelopev2"))


def test_missing_onnx_files_are_named(store, demo, tmp_path):
    folder = tmp_path / "buffalo_l"
    shutil.copytree(store.ensure("buffalo_l"), folder)
    (folder / "w600k_r50.onnx").unlink()
    (folder / "det_10g.onnx").write_bytes(b"")  # partial download
    with pytest.raises(ModelMissing) as exc:
        FaceAnalyzer(FixedStore(folder), demo, "buffalo_l").analyze(np.zeros((64, 64, 3), np.uint8), "x.png")
    msg = str(exc.value)
    assert str(folder) in msg and "w600k_r50.onnx" in msg and "det_10g.onnx" in msg
    assert exc.value.exit_code == 2
    with pytest.raises(ModelMissing, match="not found"):
        FaceAnalyzer(FixedStore(tmp_path / "nowhere"), demo, "buffalo_l").analyze(
            np.zeros((64, 64, 3), np.uint8), "x.png"
        )


# -- outliers and identities ----------------------------------------------------


def _near(base: np.ndarray, rng, noise: float) -> np.ndarray:
    v = base + rng.standard_normal(base.shape) * noise
    return (v / np.linalg.norm(v)).astype(np.float32)


def test_find_outliers_on_constructed_embeddings():
    rng = np.random.default_rng(0)
    person, stranger = rng.standard_normal(512), rng.standard_normal(512)
    vecs = np.stack([_near(person, rng, 0.03) for _ in range(4)] + [_near(stranger, rng, 0.03)])
    kept, outliers, sims = find_outliers(vecs, threshold=0.3)
    assert kept == [0, 1, 2, 3] and list(outliers) == [4]
    assert outliers[4] < 0.3 and all(s > 0.9 for s in sims.values())
    # with two photos there is no majority: nothing is left out
    kept2, out2, _ = find_outliers(vecs[[0, 4]], threshold=0.3)
    assert kept2 == [0, 1] and out2 == {}
    # a photo is an outlier if any recogniser disagrees
    other = np.stack([_near(person, rng, 0.03) for _ in range(5)])
    other[1] = _near(stranger, rng, 0.03)
    kept3, out3, _ = find_outliers({"a": np.stack([_near(person, rng, 0.03) for _ in range(5)]), "b": other})
    assert list(out3) == [1] and kept3 == [0, 2, 3, 4]


class StubAnalyzer:
    """An analyzer whose faces carry constructed embeddings, keyed by source."""

    def __init__(self, vectors: dict[str, np.ndarray], pack: str):
        self.vectors, self.pack = vectors, pack

    def analyze(self, rgb, source, face_index=None):
        if source not in self.vectors:
            raise NoFaceFound(f"no face found in {source}.")
        return self._face(source)

    def embed_detection(self, rgb, det, source, n_faces=1, face_index=1):
        return self._face(source)

    def _face(self, source):
        raw = self.vectors[source] * 7.0
        return Face(
            bbox=np.array([10, 10, 110, 130], np.float32),
            kps=np.array([[40, 50], [80, 50], [60, 70], [45, 95], [75, 95]], np.float32),
            det_score=0.99,
            embedding=raw.astype(np.float32),
            normed_embedding=(raw / np.linalg.norm(raw)).astype(np.float32),
            aligned=np.full((224, 224, 3), len(source), np.uint8),
            aligned_112=np.zeros((112, 112, 3), np.uint8),
            source=source,
            image_size=(200, 300),
            pack=self.pack,
        )


def test_build_identity_excludes_outliers_and_faceless_photos():
    rng = np.random.default_rng(1)
    person, stranger = rng.standard_normal(512), rng.standard_normal(512)
    vecs = {f"p{i}.jpg": _near(person, rng, 0.05) for i in range(4)}
    vecs["stranger.jpg"] = _near(stranger, rng, 0.05)
    analyzers = {"buffalo_l": StubAnalyzer(vecs, "buffalo_l"), "antelopev2": StubAnalyzer(vecs, "antelopev2")}
    names = ["p0.jpg", "cat.jpg", "p1.jpg", "stranger.jpg", "p2.jpg", "p3.jpg"]
    photos = [(n, np.zeros((8, 8, 3), np.uint8)) for n in names]
    report = build_identity(photos, analyzers, name="jane")
    ident = report.identity
    assert [p.source for p in report.used] == ["p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg"]
    left = {p.source: p.reason for p in report.excluded}
    assert set(left) == {"cat.jpg", "stranger.jpg"}
    assert "no face" in left["cat.jpg"] and "does not match" in left["stranger.jpg"]
    assert ident.used == ["p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg"] and dict(ident.excluded) == left
    used = np.stack([vecs[n] for n in ident.used])
    mean = used.mean(axis=0)
    assert np.allclose(ident.embeddings["buffalo_l"], mean / np.linalg.norm(mean), atol=1e-6)
    assert np.allclose(ident.raw_embeddings["antelopev2"], (used * 7.0).mean(axis=0), atol=1e-5)
    assert len(ident.crops) == 4 and ident.image_size == (200, 300)
    assert any("stranger.jpg" in line for line in report.lines())


def test_build_identity_from_real_photos(analyzers, astronaut, photos_dir):
    cat = rgb(photos_dir / "chelsea.png")
    photos = [("astronaut.png", astronaut), ("chelsea.png", cat), ("flipped.png", astronaut[:, ::-1].copy())]
    report = build_identity(photos, analyzers, name="eileen")
    ident = report.identity
    assert ident.used == ["astronaut.png", "flipped.png"]
    assert ident.excluded[0][0] == "chelsea.png" and "chelsea.png" in ident.excluded[0][1]
    for pack in PACKS:
        assert ident.embeddings[pack].shape == (512,) and ident.raw_embeddings[pack].shape == (512,)
        assert np.linalg.norm(ident.embeddings[pack]) == pytest.approx(1.0, abs=1e-5)
    ref = analyzers["buffalo_l"].analyze(astronaut, "astronaut.png")
    assert np.array_equal(ident.kps, ref.kps) and ident.image_size == (512, 512)
    assert len(ident.crops) == 2 and ident.crops[0].shape == (224, 224, 3)


def test_build_identity_without_any_usable_photo(analyzers, astronaut, photos_dir):
    cat = rgb(photos_dir / "chelsea.png")
    with pytest.raises(NoFaceFound, match="chelsea.png"):
        build_identity([("chelsea.png", cat)], analyzers)
    small = np.asarray(Image.fromarray(astronaut).resize((256, 256), Image.LANCZOS))
    with pytest.raises(FaceQualityError, match="small.png"):  # one photo: its own error
        build_identity([("small.png", small)], analyzers)
    with pytest.raises(NoFaceFound) as exc:
        build_identity([("chelsea.png", cat), ("small.png", small)], analyzers)
    assert "chelsea.png" in str(exc.value) and "small.png" in str(exc.value)


# -- identity cards --------------------------------------------------------------


@pytest.fixture(scope="session")
def identity(analyzers, astronaut) -> Identity:
    return build_identity([("astronaut.png", astronaut)], analyzers, name="eileen").identity


def test_identity_card_round_trip(identity, tmp_path):
    written = save_card(identity, tmp_path / "eileen")
    assert written == tmp_path / "eileen.safetensors" and written.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name != "eileen.safetensors"]  # no temp left
    back = load_card(tmp_path / "eileen")
    assert back.hash == identity.hash
    assert back.name == "eileen" and back.used == identity.used and back.excluded == identity.excluded
    assert back.image_size == identity.image_size
    for pack in PACKS:
        assert np.array_equal(back.embeddings[pack], identity.embeddings[pack])
        assert np.array_equal(back.raw_embeddings[pack], identity.raw_embeddings[pack])
    assert np.array_equal(back.kps, identity.kps) and np.array_equal(back.bbox, identity.bbox)
    assert all(np.array_equal(a, b) for a, b in zip(back.crops, identity.crops))
    assert load_card(written).hash == identity.hash  # with the suffix too


def test_identity_hash_is_stable_and_tracks_embeddings(identity):
    assert identity.hash == embeddings_hash(identity.embeddings, identity.raw_embeddings)
    assert len(identity.hash) == 64
    changed = dict(identity.embeddings)
    changed["buffalo_l"] = changed["buffalo_l"].copy()
    changed["buffalo_l"][0] += 1e-3
    assert embeddings_hash(changed, identity.raw_embeddings) != identity.hash
    with pytest.raises(BadInput, match="no glint embedding"):
        identity.embedding("glint")


def test_broken_identity_cards_are_named(identity, tmp_path):
    from safetensors.numpy import save

    good = save_card(identity, tmp_path / "good").read_bytes()
    cases = {
        "truncated.safetensors": good[: len(good) // 2],
        "empty.safetensors": b"",
        "lfs.safetensors": b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n",
        "other.safetensors": save({"x": np.zeros(3, np.float32)}, metadata={"format": "something"}),
    }
    tampered = load_card(tmp_path / "good")
    tampered.embeddings["buffalo_l"] = -tampered.embeddings["buffalo_l"]
    save_card(tampered, tmp_path / "tampered")
    raw = bytearray((tmp_path / "tampered.safetensors").read_bytes())
    raw = raw.replace(tampered.hash.encode(), identity.hash.encode())  # keep the old hash
    cases["tampered.safetensors"] = bytes(raw)
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BadInput, match=name):
            load_card(tmp_path / name)
    with pytest.raises(BadInput, match="does not exist"):
        load_card(tmp_path / "missing")


# -- several faces in a photo: numbered, reported, selectable ----------------------


def test_faces_are_numbered_largest_first_with_a_stable_tie_order():
    from pipelines.faces import rank_faces
    from pipelines.faces.detectors import DetectedFace

    kps = np.zeros((5, 2), np.float32)

    def det(x1, y1, w, h):
        return DetectedFace(np.array([x1, y1, x1 + w, y1 + h], np.float32), kps, 0.9)

    small, big = det(0, 0, 10, 10), det(50, 50, 30, 30)
    right, left, low = det(200, 0, 20, 20), det(100, 0, 20, 20), det(100, 90, 20, 20)  # equal areas
    for order in ([small, right, big, low, left], [low, left, right, small, big]):
        ranked = rank_faces(order)
        assert [d.bbox.tolist() for d in ranked] == [d.bbox.tolist() for d in (big, left, low, right, small)]


def test_group_photo_faces_can_be_chosen_by_number(analyzers, photos_dir):
    an = analyzers["buffalo_l"]
    img = rgb(photos_dir / "t1.jpg")
    dets = an.detect(img, "t1.jpg")
    assert len(dets) == 6  # MTCNN finds the six people of insightface's t1.jpg
    areas = [d.area for d in dets]
    assert areas == sorted(areas, reverse=True)
    for k in (1, 2, 6):
        face = an.analyze(img, "t1.jpg", face_index=k)
        assert np.array_equal(face.bbox, dets[k - 1].bbox) and face.face_index == k and face.n_faces == 6
    assert not np.array_equal(an.analyze(img, "t1.jpg", face_index=2).embedding, an.analyze(img, "t1.jpg").embedding)
    with pytest.raises(BadInput, match=r"face 7 .*t1.jpg.* 6 faces \(numbered 1-6, largest first\)"):
        an.analyze(img, "t1.jpg", face_index=7)
    with pytest.raises(BadInput, match="face 2 .*astronaut.png.* 1 face "):
        an.analyze(rgb(photos_dir / "astronaut.png"), "astronaut.png", face_index=2)


def test_identity_reports_and_keeps_the_chosen_face(analyzers, photos_dir, astronaut, tmp_path):
    from pipelines.faces import FaceChoice, box_crop

    img = rgb(photos_dir / "t1.jpg")
    dets = analyzers["buffalo_l"].detect(img, "t1.jpg")
    default = build_identity([("t1.jpg", img)], analyzers)
    third = build_identity([("t1.jpg", img)], analyzers, faces=[3])
    (c1,), (c3,) = default.identity.faces, third.identity.faces
    assert (c1.faces, c1.face, c1.note) == (6, 1, "6 faces, used the largest")
    assert (c3.faces, c3.face, c3.note) == (6, 3, "6 faces, used face 3")
    assert np.allclose(c3.bbox, dets[2].bbox) and np.array_equal(third.identity.bbox, dets[2].bbox)
    assert third.photos[0].reason == "6 faces, used face 3" and third.photos[0].face == 3
    assert third.identity.group_photos == [c3]
    # the other packs embed the very same face
    for pack in PACKS:
        assert not np.allclose(default.identity.embeddings[pack], third.identity.embeddings[pack])
    # a photo with one face is no group photo
    single = build_identity([("astronaut.png", astronaut), ("t1.jpg", img)], analyzers, faces=[None, 2],
                            outlier_threshold=-1.0)
    assert [c.note for c in single.identity.faces] == ["", "6 faces, used face 2"]
    assert len(single.identity.group_photos) == 1
    # an out-of-range number leaves that photo out with the reason, others carry on
    partial = build_identity([("astronaut.png", astronaut), ("t1.jpg", img)], analyzers, faces=[None, 9])
    assert partial.identity.used == ["astronaut.png"] and "face 9" in dict(partial.identity.excluded)["t1.jpg"]
    # the choice survives the identity card
    back = load_card(save_card(third.identity, tmp_path / "group"))
    assert back.faces == [c3] and FaceChoice.from_dict(c3.as_dict()) == c3
    # a thumbnail to show the face by: square, around the box, inside the image
    thumb = box_crop(img, dets[2].bbox)
    side = max(dets[2].width, dets[2].height) * 1.5
    assert abs(thumb.shape[0] - side) <= 2 and abs(thumb.shape[1] - side) <= 2


def test_cli_face_index_applies_to_the_photo_before_it(capsys):
    import argparse

    from cli import generate

    parser = argparse.ArgumentParser()
    generate.register(parser.add_subparsers())
    args = parser.parse_args(["generate", "--photo", "a.jpg", "--photo", "t1.jpg", "--face-index", "3",
                              "--photo", "b.jpg", "--prompt", "x"])
    assert args.face_index == {"t1.jpg": 3}
    data = generate.request_from_args(args, load_settings(demo=True))
    assert data["photos"] == ["a.jpg", "t1.jpg", "b.jpg"] and data["face_index"] == {"t1.jpg": 3}
    for argv, msg in ((["--face-index", "2", "--photo", "a.jpg"], "right after the --photo"),
                      (["--photo", "a.jpg", "--face-index", "2", "--face-index", "3"], "twice")):
        with pytest.raises(SystemExit):
            parser.parse_args(["generate", *argv, "--prompt", "x"])
        assert msg in capsys.readouterr().err


def test_request_face_index_names_a_photo_and_a_valid_number():
    from pipelines.requests import GenerateRequest, validate_request

    ok = validate_request(GenerateRequest, {"prompt": "x", "photos": ["t1.jpg"], "face_index": {"t1.jpg": 2}})
    assert ok.face_index == {"t1.jpg": 2}
    with pytest.raises(BadInput, match="face_index names 'other.jpg'"):
        validate_request(GenerateRequest, {"prompt": "x", "photos": ["t1.jpg"], "face_index": {"other.jpg": 2}})
    with pytest.raises(BadInput, match="face_index 0"):
        validate_request(GenerateRequest, {"prompt": "x", "photos": ["t1.jpg"], "face_index": {"t1.jpg": 0}})


@pytest.fixture(scope="module")
def engine(make_engine):
    return make_engine("faces-engine")


def test_generate_with_a_chosen_face_reports_it_everywhere(engine, photos_dir, cli_generate):
    from pipelines.metadata import read_recipe
    from pipelines.requests import GenerateRequest

    t1 = str(photos_dir / "t1.jpg")
    fast = fast_request(method="faceid")
    first = engine.generate(GenerateRequest(photos=[t1], **fast))
    fourth = engine.generate(GenerateRequest(photos=[t1], face_index={t1: 4}, **fast))
    assert first.identity.hash != fourth.identity.hash  # another person
    recipe = read_recipe(fourth.images[0].path)
    (entry,) = recipe["identity"]["faces"]
    assert entry["file"] == "t1.jpg" and entry["faces"] == 6 and entry["face"] == 4
    assert entry["note"] == "6 faces, used face 4" and len(entry["bbox"]) == 4
    assert "face_index" not in recipe["request"]  # the card holds the choice; the request names no local file
    assert read_recipe(first.images[0].path)["identity"]["faces"][0]["note"] == "6 faces, used the largest"
    # the command line says so, with the face's box and how to choose another
    err = cli_generate(engine.settings, ["--photo", t1, "--face-index", "4", "--prompt", "a portrait", "--steps", "2",
                                         "--width", "64", "--height", "64", "--seed", "3",
                                         "--out", str(engine.settings.outputs_dir / "cli")])
    x1, y1, x2, y2 = (int(round(v)) for v in entry["bbox"])
    assert f"t1.jpg: 6 faces, used face 4 (face box x {x1}-{x2}, y {y1}-{y2})" in err
    assert "--face-index N (1-6)" in err


def _job(folder: Path, face: int | None) -> Path:
    photo = "t1.jpg" if face is None else f"{{photo: t1.jpg, face: {face}}}"
    text = f"""
identities:
  group: {{photos: [{photo}]}}
items:
  - identity: group
    prompt: a portrait
    method: faceid
    seed: 5
    overrides: {{steps: 2, width: 64, height: 64, sampler: euler}}
"""
    path = folder / f"job-{face}.yaml"
    path.write_text(text)
    return path


def test_job_file_names_the_face_of_a_group_photo(engine, photos_dir, tmp_path):
    import io
    import json

    from pipelines.batch import jobfile as jf
    from pipelines.batch.runner import run_job

    shutil.copy(photos_dir / "t1.jpg", tmp_path / "t1.jpg")
    default, face1, face3 = (jf.load_job(_job(tmp_path, f)) for f in (None, 1, 3))
    (it,) = face3.items
    assert it.request.face_index == {str(tmp_path / "t1.jpg"): 3}
    assert default.items[0].request.face_index == {}
    # another face is another identity: another id; moving nothing keeps it
    assert it.id != default.items[0].id and it.id == jf.load_job(_job(tmp_path, 3)).items[0].id
    assert face1.items[0].id != it.id
    bad = tmp_path / "bad.yaml"
    bad.write_text(_job(tmp_path, 3).read_text().replace("face: 3", "face: 0"))
    with pytest.raises(BadInput, match="face"):
        jf.load_job(bad)
    reserved = tmp_path / "reserved.yaml"
    reserved.write_text(_job(tmp_path, None).read_text().replace("steps: 2,", "steps: 2, face_index: {t1.jpg: 2},"))
    with pytest.raises(BadInput, match="face_index"):
        jf.load_job(reserved)

    log, out = io.StringIO(), tmp_path / "out"
    report = run_job(face3, None, out, engine=engine, stream=log, out=io.StringIO())
    assert report.exit_code == 0
    assert "group: " in log.getvalue() and "6 faces, used face 3 (face box x " in log.getvalue()
    card = json.loads((out / "identities.json").read_text())["group"]["card"]
    assert [(c.faces, c.face) for c in load_card(card).faces] == [(6, 3)]


def test_portrait_tab_shows_every_face_of_a_group_photo_and_a_click_picks_one(engine, photos_dir):
    from types import SimpleNamespace

    import gradio as gr

    from app.jobs import CancelRegistry, EngineHolder
    from app.portrait import PortraitTab
    from app.requests_map import request_from_ui
    from app.widgets import build_portrait

    with gr.Blocks():
        w = build_portrait(engine.settings)
    tab = PortraitTab(engine.settings, EngineHolder(engine.settings, factory=lambda s: engine), CancelRegistry(), w)
    t1, astro = str(photos_dir / "t1.jpg"), str(photos_dir / "astronaut.png")
    crops, report, targets = tab.analyse_faces([astro, t1], "faceid", {})
    captions = [c for _, c in crops]
    assert captions[0] == "astronaut.png" and targets[0] == []  # one face: nothing to choose
    assert captions[1:] == [f"t1.jpg · face {k}/6" + (" ✓ used" if k == 1 else "") for k in range(1, 7)]
    assert targets[1:] == [[t1, k] for k in range(1, 7)]
    assert "**t1.jpg**: 6 faces, used the largest" in report
    dets = engine.analyzer("buffalo_l").detect(np.asarray(Image.open(t1).convert("RGB")), t1)
    assert crops[3][0].shape[0] == pytest.approx(max(dets[2].width, dets[2].height) * 1.5, abs=2)

    out = tab.pick_face([astro, t1], "faceid", {}, SimpleNamespace(index=3))  # face 3 of t1
    chosen = out[w.by_key["face_index"]]
    assert chosen == {t1: 3}
    assert out[w.crops][3][1] == "t1.jpg · face 3/6 ✓ used" and out[w.crops][1][1] == "t1.jpg · face 1/6"
    assert "6 faces, used face 3" in out[w.photo_report]
    assert tab.pick_face([astro, t1], "faceid", chosen, SimpleNamespace(index=0)) == {}
    back = tab.pick_face([astro, t1], "faceid", chosen, SimpleNamespace(index=1))
    assert back[w.by_key["face_index"]] == {}  # face 1 is the default
    # the choice goes into the request, for photos still uploaded only
    req = request_from_ui({"photos": [astro, t1], "prompt": "x", "face_index": {**chosen, "/gone.jpg": 2}},
                          engine.settings.profile)
    assert req.face_index == {t1: 3}


def test_replay_from_the_photos_uses_the_recorded_face(engine, photos_dir, tmp_path):
    from pipelines.metadata import read_recipe
    from pipelines.outputs import find_recipe_identity
    from pipelines.requests import GenerateRequest

    t1 = str(photos_dir / "t1.jpg")
    fast = fast_request(method="faceid")
    made = engine.generate(GenerateRequest(photos=[t1], face_index={t1: 4}, **fast))
    # the PNG shared with its photo but without the identity card
    folder = tmp_path / "shared"
    folder.mkdir()
    png = folder / made.images[0].path.name
    shutil.copy(made.images[0].path, png)
    shutil.copy(t1, folder / "t1.jpg")
    elsewhere = load_settings(models_dir=engine.settings.models_dir, outputs_dir=tmp_path / "other", demo=True)
    data = find_recipe_identity(png, read_recipe(png)["identity"], elsewhere)
    assert data["photos"] == [str(folder / "t1.jpg")] and data["face_index"] == {str(folder / "t1.jpg"): 4}
    req = GenerateRequest(prompt="x", **data)
    assert engine.identity(req.photos, None, ("buffalo_l",), req.face_index).hash == made.identity.hash
