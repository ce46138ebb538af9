"""PuLID's face preparation (ToTheBeginning/PuLID `pulid/pipeline.py`
`get_id_embedding`, with facexlib's `FaceRestoreHelper` alignment):

1. the 512x512 FFHQ crop: a similarity from the 5 landmarks to facexlib's FFHQ
   template by `cv2.estimateAffinePartial2D(..., method=cv2.LMEDS)`, then
   `cv2.warpAffine` (INTER_LINEAR) with the constant border (135, 133, 132) in
   BGR, i.e. (132, 133, 135) in RGB;
2. BiSeNet parsing of the crop (RGB / 255, ImageNet mean/std, 512x512, argmax of
   the main head);
3. background classes (background, cloth, hat, ears, earring, neck, necklace)
   become white, everything else grey (0.299 R + 0.587 G + 0.114 B, three times);
4. that image goes to EVA-CLIP (see `eva.eva_input`).
"""

from __future__ import annotations

import numpy as np
import torch

FACE_SIZE = 512
# facexlib face_restoration_helper.py: the FFHQ 512 template (left eye, right eye, nose, mouth corners)
FFHQ_512 = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                     [201.26117, 371.41043], [313.08905, 371.15118]], np.float32)
BORDER_RGB = (132, 133, 135)  # facexlib's (135, 133, 132), given in BGR
BACKGROUND = (0, 16, 18, 7, 8, 9, 14, 15)  # CelebAMask-HQ: bg, cloth, hat, l/r ear, earring, neck, necklace
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def align_face(rgb: np.ndarray, kps: np.ndarray) -> np.ndarray:
    """The 512x512 RGB uint8 FFHQ crop of the face whose 5 landmarks are `kps`."""
    import cv2

    from ..errors import BadInput

    matrix, _ = cv2.estimateAffinePartial2D(np.asarray(kps, np.float32).reshape(5, 2), FFHQ_512, method=cv2.LMEDS)
    if matrix is None:
        raise BadInput("PuLID could not align the face: its 5 landmarks are degenerate.")
    return cv2.warpAffine(np.ascontiguousarray(rgb), matrix, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=BORDER_RGB)


def parse_labels(parser, face_rgb: np.ndarray) -> torch.Tensor:
    """[H, W] class labels of the aligned crop."""
    x = torch.from_numpy(face_rgb).permute(2, 0, 1)[None].float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    p = next(parser.parameters())
    with torch.no_grad():
        logits = parser(((x - mean) / std).to(p.device, p.dtype))
    return logits.argmax(dim=1)[0].cpu()


def whiten_background(face_rgb: np.ndarray, labels: torch.Tensor) -> torch.Tensor:
    """[1, 3, H, W] in 0..1: background classes white, the face grey."""
    x = torch.from_numpy(face_rgb).permute(2, 0, 1)[None].float() / 255.0
    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).repeat(1, 3, 1, 1)
    bg = torch.zeros_like(labels, dtype=torch.bool)
    for c in BACKGROUND:
        bg |= labels == c
    return torch.where(bg[None, None], torch.ones_like(grey), grey)
