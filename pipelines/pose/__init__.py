"""Pose control: templates as data (`templates`), ControlNet conditioning images
drawn by our code (`render`), and pose extraction from a reference photo with the
OpenPose annotator (`extract`; torch and controlnet-aux load only when used).

Names are re-exported lazily so `python -m pipelines.pose.render` and a plain
`import pipelines.pose` stay cheap."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BODY_KEYPOINTS": "templates",
    "FACE_KEYPOINTS": "templates",
    "PoseTemplate": "templates",
    "list_templates": "templates",
    "load_template": "templates",
    "parse_template": "templates",
    "save_template": "templates",
    "user_poses_dir": "templates",
    "body_keypoints_pixels": "render",
    "face_keypoints_pixels": "render",
    "fit_box": "render",
    "preview": "render",
    "render_face_keypoints": "render",
    "render_openpose": "render",
    "write_previews": "render",
    "extract_pose": "extract",
    "load_openpose": "extract",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
