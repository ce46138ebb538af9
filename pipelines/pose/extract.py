"""Pose from a reference photo: controlnet-aux's OpenPose detector on annotator
weights from the model store, turned into a `PoseTemplate`.

controlnet-aux's `Body`/`Hand`/`Face` constructors `torch.load` a pickle path
themselves (without `weights_only`). We never let them: the store keeps only
safetensors copies of the published pickles, and we build the detector objects
around networks loaded from those (`load_openpose`). controlnet-aux then does
what it is good at: inference and keypoint grouping.

The 5 face points of a template come from the OpenPose face landmarks when the
face model found all of them (eye centres, nose tip, mouth corners of the
68-point layout), else they are approximated from the body's eyes, nose and
ears (`face5_from_body`)."""

from __future__ import annotations

import contextlib
import importlib
import types
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import BadInput, ModelError, ModelMissing
from .templates import (
    BODY_KEYPOINTS,
    MIN_BODY_POINTS,
    PoseTemplate,
    save_template as save_template,  # re-exported: extract -> save
)

ANNOTATOR_MODEL = "openpose-annotator"
BODY_STEM, HAND_STEM, FACE_STEM = "body_pose_model", "hand_pose_model", "facenet"
DETECT_SHORT_SIDE = 512  # controlnet-aux's default detect_resolution
# insightface's 112x112 ArcFace template: eyes, nose, mouth corners (image-left first)
ARCFACE_5 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
_R_EYE, _L_EYE, _R_EAR, _L_EAR = 14, 15, 16, 17


def controlnet_aux_open_pose() -> types.SimpleNamespace:
    """controlnet-aux's OpenPose pieces. Importing them runs controlnet-aux's
    package __init__, which imports every annotator and warns about optional
    ones (mediapipe, timm names); those warnings are noise here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        op = importlib.import_module("controlnet_aux.open_pose")
        body = importlib.import_module("controlnet_aux.open_pose.body")
        hand = importlib.import_module("controlnet_aux.open_pose.hand")
        face = importlib.import_module("controlnet_aux.open_pose.face")
        model = importlib.import_module("controlnet_aux.open_pose.model")
    return types.SimpleNamespace(
        OpenposeDetector=op.OpenposeDetector,
        Body=body.Body,
        Hand=hand.Hand,
        Face=face.Face,
        FaceNet=face.FaceNet,
        face_params=face.params,
        bodypose_model=model.bodypose_model,
        handpose_model=model.handpose_model,
    )


# ---- weights ----------------------------------------------------------------------------
def load_annotator_weights(folder: Path | str, stem: str) -> tuple[dict, Path]:
    """`<stem>.safetensors` from `folder` (the store's converted copy), else the
    published `<stem>.pth`, opened data-only. Returns (state dict, path)."""
    folder = Path(folder)
    st = folder / f"{stem}.safetensors"
    if st.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(st)), st
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"cannot read {st}: {exc} (corrupt or truncated?).") from exc
    pth = folder / f"{stem}.pth"
    if pth.is_file():
        from ..models.convert import load_pickle_safely

        return load_pickle_safely(pth), pth
    from ..models.commands import model_command

    raise ModelMissing(
        f"OpenPose weights {stem}.safetensors (or {stem}.pth) are missing from {folder}; "
        f"run `{model_command(ANNOTATOR_MODEL)}`."
    )


def _load_into(model, state: dict, path: Path, strip_first: bool):
    """Copy published weights into a controlnet-aux network. The published
    body/hand keys lack the network's first module name ("model0.", ...)."""
    import torch

    target = model.state_dict()
    mapped = {}
    for key, param in target.items():
        src = key.split(".", 1)[1] if strip_first else key
        if src not in state:
            raise ModelError(f"{path} is not the expected OpenPose model: weight {src!r} is missing.")
        t = state[src]
        if tuple(t.shape) != tuple(param.shape):
            raise ModelError(
                f"{path} is not the expected OpenPose model: {src!r} has shape {tuple(t.shape)}, "
                f"expected {tuple(param.shape)}."
            )
        mapped[key] = t.to(torch.float32)
    model.load_state_dict(mapped)
    return model.eval()


def load_openpose(folder: Path | str, *, device: str = "cpu", face: bool = True, hands: bool = False):
    """controlnet-aux's `OpenposeDetector` with networks loaded from `folder`
    (no pickle is executed). Hands are not used by templates, so off by default."""
    import torch

    op = controlnet_aux_open_pose()

    def net(cls, stem, strip_first):
        with torch.device("meta"):
            module = cls()
        module = module.to_empty(device="cpu")
        state, path = load_annotator_weights(folder, stem)
        return _load_into(module, state, path, strip_first).to(device)

    # the estimator objects hold only `model` (+ face thresholds); build them
    # without their __init__, which would torch.load a path
    body = op.Body.__new__(op.Body)
    body.model = net(op.bodypose_model, BODY_STEM, True)
    hand = None
    if hands:
        hand = op.Hand.__new__(op.Hand)
        hand.model = net(op.handpose_model, HAND_STEM, True)
    face_est = None
    if face:
        face_est = op.Face.__new__(op.Face)
        face_est.inference_size = op.face_params["inference_img_size"]
        face_est.sigma = op.face_params["gaussian_sigma"]
        face_est.threshold = op.face_params["heatmap_peak_thresh"]
        face_est.model = net(op.FaceNet, FACE_STEM, False)
    return op.OpenposeDetector(body, hand, face_est)


# ---- keypoints -> template --------------------------------------------------------------
Pt = tuple[float, float]


def face5_from_body(body: Sequence[Pt | None], aspect: float) -> list[Pt] | None:
    """Approximate the 5 insightface points from body-18 (normalised coords of
    a canvas with width/height `aspect`). The detected eyes and nose are kept;
    the mouth sits as far below the eyes as twice the eye-to-nose drop (the
    ArcFace template's proportions), its corners 0.83 eye-distances apart. In a
    profile the hidden eye sits between the visible one and the nose bridge.
    None without a nose and an eye or ear."""
    scale = np.array([aspect, 1.0])  # to isotropic units
    nose = body[0]
    if nose is None:
        return None
    n = np.array(nose) * scale
    re = None if body[_R_EYE] is None else np.array(body[_R_EYE]) * scale
    le = None if body[_L_EYE] is None else np.array(body[_L_EYE]) * scale
    if re is None and le is None:  # eyes lie about halfway from the nose to an ear
        ear = body[_R_EAR] if body[_R_EAR] is not None else body[_L_EAR]
        if ear is None:
            return None
        guess = n + 0.45 * (np.array(ear) * scale - n) + np.array([0.0, -0.02])
        if body[_R_EAR] is not None:
            re = guess
        else:
            le = guess
    if re is None or le is None:
        seen = re if re is not None else le
        hidden = seen + 0.2 * (n - seen)
        re, le = (seen, hidden) if re is not None else (hidden, seen)
    assert re is not None and le is not None  # each eye was seen or placed above
    eye_mid = (re + le) / 2
    across = le - re  # the subject's right eye to left eye
    drop = n - eye_mid
    gap = float(np.linalg.norm(across))
    if gap >= 0.5 * float(np.linalg.norm(drop)) and gap > 0:  # eyes far enough apart to give the roll
        down = np.array([-across[1], across[0]]) / gap
        down = down if down[1] >= 0 else -down
    else:  # a profile: the eye line says nothing, assume an upright head
        down = np.array([0.0, 1.0])
    h = float(drop @ down)
    if h <= 0:  # chin far up or a bad detection: fall back to the eye-nose distance
        h = 0.5 * float(np.linalg.norm(drop))
    mouth = eye_mid + down * 2.0 * h
    half = (ARCFACE_5[4, 0] - ARCFACE_5[3, 0]) / (ARCFACE_5[1, 0] - ARCFACE_5[0, 0]) / 2 * across
    pts = np.stack([re, le, n, mouth - half, mouth + half]) / scale
    return [(float(x), float(y)) for x, y in pts]


def face5_from_landmarks(face: Sequence | None) -> list[Pt] | None:
    """The 5 insightface points from OpenPose's face landmarks (normalised), if
    every landmark was found: controlnet-aux drops a landmark it cannot find,
    which shifts all later indices, so anything but the full set is unusable."""
    if face is None or len(face) < 70:
        return None
    if len(face) not in (70, 71):  # 70 landmarks (+ the background map's peak)
        return None
    xy = np.array([[k.x, k.y] for k in face[:68]], dtype=np.float64)
    if (xy < 0).any() or (xy > 1).any():
        return None
    pts = [xy[36:42].mean(0), xy[42:48].mean(0), xy[30], xy[48], xy[54]]
    return [(float(x), float(y)) for x, y in pts]


def _clip01(p) -> Pt:
    return (round(min(max(float(p[0]), 0.0), 1.0), 4), round(min(max(float(p[1]), 0.0), 1.0), 4))


def template_from_keypoints(
    body: Sequence[Pt | None],
    aspect: float,
    *,
    face_landmarks: Sequence | None = None,
    name: str = "extracted",
    title: str = "Pose from a photo",
    description: str = "",
) -> PoseTemplate:
    """Build a template from body-18 points normalised to a canvas of `aspect`."""
    if len(body) != len(BODY_KEYPOINTS):
        raise BadInput(f"an OpenPose body has {len(BODY_KEYPOINTS)} keypoints, got {len(body)}.")
    pts = [None if p is None else _clip01(p) for p in body]
    if sum(p is not None for p in pts) < MIN_BODY_POINTS:
        raise BadInput(f"the detected person has fewer than {MIN_BODY_POINTS} body keypoints; use a clearer photo.")
    face = face5_from_landmarks(face_landmarks) or face5_from_body(pts, aspect)
    data = {
        "name": name,
        "title": title,
        "description": description,
        "aspect": round(aspect, 4),
        "body": {k: (None if p is None else list(p)) for k, p in zip(BODY_KEYPOINTS, pts)},
        "face": None if face is None else dict(zip(
            ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth"), (list(_clip01(p)) for p in face)
        )),
    }  # fmt: skip
    return PoseTemplate.model_validate(data)


def _largest(poses, width: int, height: int):
    """The person whose keypoints span the largest box, (x2-x1)*(y2-y1)."""

    def area(pose):
        pts = [(k.x * width, k.y * height) for k in pose.body.keypoints if k is not None]
        if len(pts) < 2:
            return 0.0
        xs, ys = zip(*pts)
        return (max(xs) - min(xs)) * (max(ys) - min(ys))

    return max(poses, key=lambda p: (area(p), p.body.total_score))


def _detect_size(width: int, height: int) -> tuple[int, int]:
    s = min(1.0, DETECT_SHORT_SIDE / min(width, height))
    return max(1, int(round(width * s))), max(1, int(round(height * s)))


def extract_pose(
    image,
    store=None,
    *,
    detector=None,
    name: str = "extracted",
    title: str = "Pose from a photo",
    face_landmarks: bool = True,
    device: str = "cpu",
    label: str | None = None,
) -> PoseTemplate:
    """Detect the largest person in `image` (a PIL image, path or array, loaded
    through `pipelines.imageio.load_photo`) and return their pose as a template.
    Give either `store` (weights come from `store.ensure("openpose-annotator")`)
    or a ready `detector` from `load_openpose` (the engine caches one)."""
    from ..imageio import load_photo

    if detector is None and store is None:
        raise ValueError("extract_pose needs a model store or a detector")
    photo = load_photo(image, name=label)  # a bad photo fails before any weights load
    label = label or (str(image) if isinstance(image, (str, Path)) else "the reference photo")
    w, h = _detect_size(*photo.size)
    aspect = w / h
    if not 0.25 <= aspect <= 4.0:
        raise BadInput(f"{label} is {photo.width}x{photo.height}; poses are read from photos between 1:4 and 4:1.")
    if (w, h) != photo.size:
        from PIL import Image

        photo = photo.resize((w, h), Image.Resampling.LANCZOS)
    if detector is None:
        detector = load_openpose(store.ensure(ANNOTATOR_MODEL), device=device, face=face_landmarks)
    import torch

    with torch.inference_mode(), _quiet():
        with_face = face_landmarks and detector.face_estimation is not None
        poses = detector.detect_poses(np.asarray(photo, dtype=np.uint8), include_hand=False, include_face=with_face)
    if not poses:
        raise BadInput(f"no person found in {label}; use a photo where the head and shoulders are visible.")
    pose = _largest(poses, w, h)
    body = [None if k is None else (float(k.x), float(k.y)) for k in pose.body.keypoints]
    return template_from_keypoints(body, aspect, face_landmarks=pose.face, name=name, title=title)


@contextlib.contextmanager
def _quiet():
    # controlnet-aux uses the deprecated scipy.ndimage.filters path at call time too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


__all__ = [
    "ANNOTATOR_MODEL",
    "extract_pose",
    "face5_from_body",
    "face5_from_landmarks",
    "load_annotator_weights",
    "load_openpose",
    "save_template",
    "template_from_keypoints",
]
