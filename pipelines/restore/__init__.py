"""Face restoration: GFPGAN v1.4 and CodeFormer (spandrel) behind `FaceRestorer`,
and `restore_faces`, which aligns each face to the FFHQ template, restores it at
512x512 and pastes it back with a feathered mask."""

from .base import (
    FACE_SIZE,
    RESTORE_CHOICES,
    RESTORERS,
    FaceRestorer,
    RestorerSpec,
    check_fidelity,
    restorer_spec,
)
from .factory import get_restorer
from .paste import FFHQ_TEMPLATE_512, restore_faces, similarity_transform

__all__ = [
    "FACE_SIZE",
    "FFHQ_TEMPLATE_512",
    "RESTORE_CHOICES",
    "RESTORERS",
    "FaceRestorer",
    "RestorerSpec",
    "check_fidelity",
    "get_restorer",
    "restore_faces",
    "restorer_spec",
    "similarity_transform",
]
