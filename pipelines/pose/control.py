"""The engine's pose stage: an SDXL OpenPose ControlNet unit from a template name,
a template .json, or a reference photo (OpenPose annotator). The ControlNet and the
annotator stay resident; with InstantID the engine combines IdentityNet and pose
into a multi-ControlNet, each with its own scale and start/end range."""

from __future__ import annotations

from pathlib import Path

from ..errors import BadInput
from ..types import ControlUnit

MODEL = "controlnet-openpose-sdxl"
PHOTO_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


class PoseControl:
    def __init__(self, store, device: str, dtype, settings=None):
        self.store = store
        self.device = device
        self.dtype = dtype
        self.settings = settings
        self._controlnet = None
        self._detector = None

    def controlnet(self):
        if self._controlnet is None:
            from diffusers import ControlNetModel

            self._controlnet = ControlNetModel.from_pretrained(
                self.store.ensure(MODEL), torch_dtype=self.dtype, local_files_only=True
            ).to(self.device).eval()
        return self._controlnet

    def template(self, pose: str):
        from .extract import extract_pose, load_openpose
        from .templates import load_template, user_poses_dir

        path = Path(pose).expanduser()
        if path.suffix.lower() in PHOTO_SUFFIXES:
            if not path.is_file():
                raise BadInput(f"pose photo {pose} does not exist.")
            if self._detector is None:
                self._detector = load_openpose(self.store.ensure("openpose-annotator"), device="cpu")
            return extract_pose(path, detector=self._detector, name="from-photo")
        user_dir = user_poses_dir(self.settings) if self.settings is not None else None
        return load_template(pose, user_dir=user_dir)

    def unit(self, req, family: str, width: int, height: int) -> ControlUnit:
        from .render import render_openpose

        if family != "sdxl":
            raise BadInput("pose needs an SDXL base model (the catalog has an SDXL OpenPose ControlNet only).")
        template = self.template(req.pose)
        image = render_openpose(template, width, height)
        unit = ControlUnit("pose", self.controlnet(), image, scale=req.pose_scale,
                           start=req.pose_start, end=req.pose_end)
        unit.template = template  # type: ignore[attr-defined]
        return unit


def align_identitynet(units: list[ControlUnit], template, width: int, height: int) -> bool:
    """With a pose, draw InstantID's face keypoints where the pose puts the head
    (instead of where the reference photo had it), so IdentityNet and the pose
    ControlNet agree. A unit that knows its face (InstantID's `IdentityNetUnit`)
    moves its face region along and records a warning if a keypoint falls
    off the canvas. Returns whether anything changed."""
    from .render import face_keypoints_pixels, render_face_keypoints

    kps = face_keypoints_pixels(template, width, height)
    if kps is None:
        return False
    changed = False
    for u in units:
        if u.name == "identitynet":
            if hasattr(u, "move_face"):
                u.move_face(kps, width, height)
            else:
                u.image = render_face_keypoints(kps, width, height)
            changed = True
    return changed
