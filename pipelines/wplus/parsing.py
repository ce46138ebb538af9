"""Face parsing for the W+ face preparation: PSFRGAN's ParseNet, and the
whitening of background and clothes before e4e.

The W+ adapter's own preparation (csxmli2016/w-plus-adapter
`script/ProcessWildImage.py`, step 2 and 3) is, for an FFHQ-aligned 512² face:

1. ParseNet(512, 512, 32, 64, 19, norm_type='bn', relu_type='LeakyReLU',
   ch_range=[32, 256]) on the face normalised to [-1, 1]; label = argmax of
   the 19 parsing channels (CelebAMask-HQ classes, 0 = background, 18 = cloth);
2. mask = 255 where the label is background or cloth, else 0 (its
   `color_parse_map` paints every class but those two);
3. the mask is blurred (cv2 5x5 Gaussian, sigma from the kernel size) and
   resized to 256² with PIL's default filter (bicubic), then divided by 255;
4. the face, resized to 256² the same way and normalised to [-1, 1], becomes
   face * (1 - mask) + mask: background and clothes turn white, the face and
   hair are untouched.

The adapter was trained on W+ latents of faces prepared this way.

The module tree below has the published state-dict key names
(`encoder.*`, `body.*`, `decoder.*`, `out_img_conv.*`, `out_mask_conv.*`, with
`conv2d`, `norm.norm` and `shortcut_func` inside), so the published
`parse_multi_iter_90000.pth` loads strictly. `width` scales every channel
count (tiny packs keep the structure with fewer channels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import BadInput, ModelError
from .weights import load_strict

PARSE_SIZE = 512
E4E_SIZE = 256
NUM_CLASSES = 19
# CelebAMask-HQ order used by PSFRGAN / facexlib ParseNet
LABELS = ("background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
          "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth")
WHITENED = (0, 18)  # background, cloth
BLUR_KERNEL = 5
# the published constructor: in 512, out 512, min feature 32, base 64, 19 classes, 10 body blocks
BASE_CH, CH_RANGE, RES_DEPTH, MIN_FEAT = 64, (32, 256), 10, 32


class _ConvLayer(nn.Module):
    """Reflection pad, conv (stride 2 for 'down', nearest x2 upsampling before it
    for 'up'), optional BatchNorm (no conv bias then), optional LeakyReLU(0.2)."""

    def __init__(self, c_in: int, c_out: int, scale: str = "none", norm: bool = False, act: bool = False):
        super().__init__()
        self.scale = scale
        self.pad = nn.ReflectionPad2d(1)
        self.conv2d = nn.Conv2d(c_in, c_out, 3, 2 if scale == "down" else 1, bias=not norm)
        self.norm: nn.Module | None
        if norm:
            self.norm = nn.Module()
            self.norm.norm = nn.BatchNorm2d(c_out)  # published key: <layer>.norm.norm.*
        else:
            self.norm = None
        self.act = nn.LeakyReLU(0.2) if act else None

    def forward(self, x):
        if self.scale == "up":
            x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv2d(self.pad(x))
        if self.norm is not None:
            x = self.norm.norm(x)
        if self.act is not None:
            x = self.act(x)
        return x


class _ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, scale: str = "none"):
        super().__init__()
        # a plain identity shortcut only when nothing changes (no weights then)
        self.shortcut_func = _ConvLayer(c_in, c_out, scale) if (scale != "none" or c_in != c_out) else None
        first, second = {"down": ("none", "down"), "up": ("up", "none"), "none": ("none", "none")}[scale]
        self.conv1 = _ConvLayer(c_in, c_out, first, norm=True, act=True)
        self.conv2 = _ConvLayer(c_out, c_out, second, norm=True, act=False)

    def forward(self, x):
        identity = x if self.shortcut_func is None else self.shortcut_func(x)
        return identity + self.conv2(self.conv1(x))


class ParseNet(nn.Module):
    """Encoder (4 strided residual blocks for 512 -> 32), 10 residual body blocks
    added to their input, decoder (4 upsampling blocks), and two output convs:
    19 parsing logits (first output) and an RGB image (unused here)."""

    def __init__(self, size: int = PARSE_SIZE, width: float = 1.0):
        super().__init__()
        lo, hi = (max(1, round(c * width)) for c in CH_RANGE)
        base = max(1, round(BASE_CH * width))

        def clip(c: int) -> int:
            return max(lo, min(c, hi))

        steps = int(math.log2(size // min(size, MIN_FEAT)))
        layers: list[nn.Module] = [_ConvLayer(3, base)]
        head = base
        for _ in range(steps):
            layers.append(_ResidualBlock(clip(head), clip(head * 2), "down"))
            head *= 2
        self.encoder = nn.Sequential(*layers)
        self.body = nn.Sequential(*[_ResidualBlock(clip(head), clip(head)) for _ in range(RES_DEPTH)])
        ups = []
        for _ in range(steps):
            ups.append(_ResidualBlock(clip(head), clip(head // 2), "up"))
            head //= 2
        self.decoder = nn.Sequential(*ups)
        self.out_img_conv = _ConvLayer(clip(head), 3)
        self.out_mask_conv = _ConvLayer(clip(head), NUM_CLASSES)

    def forward(self, x):
        feat = self.encoder(x)
        x = self.decoder(feat + self.body(feat))
        return self.out_mask_conv(x), self.out_img_conv(x)


def load_parsenet(path: Path | str, device="cpu") -> ParseNet:
    """The ParseNet in a converted `.safetensors` (or a published pickle, read
    with weights_only), in eval mode. Its width is read from the first conv."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"face-parsing model {path} does not exist.")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            from ..models.convert import load_pickle_safely

            state = load_pickle_safely(path)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot read face-parsing model {path}: {exc} (corrupt or truncated?).") from exc
    first = state.get("encoder.0.conv2d.weight")
    if first is None or first.ndim != 4:
        raise ModelError(f"{path} is not a ParseNet (no encoder.0.conv2d.weight).")
    net = ParseNet(width=first.shape[0] / BASE_CH)
    own = net.state_dict()
    # BatchNorm's step counter is not used in eval mode; older saves lack it
    for k in own:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = own[k]
    load_strict(net, state, str(path), "the ParseNet layout")
    return net.eval().to(device)


# ------------------------------------------------------------------ preparation
@dataclass(frozen=True)
class PreparedFace:
    """What e4e receives, and how it was made."""

    tensor: torch.Tensor  # (1, 3, 256, 256) float in [-1, 1]: the whitened face
    plain: torch.Tensor  # the same face without whitening (for checks and previews)
    mask: np.ndarray  # (256, 256) float32 in [0, 1]; 1 = whitened (background / clothes)
    labels: np.ndarray  # (512, 512) uint8 parsing labels
    whitened_fraction: float  # share of the 256² pixels with mask > 0.5

    def image(self) -> np.ndarray:
        """The e4e input as RGB uint8 (for a preview)."""
        x = ((self.tensor[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255)
        return x.to(torch.uint8).numpy()


def _to_unit_range(rgb: np.ndarray) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> (1, 3, H, W) float (x - 127.5) / 127.5."""
    x = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).permute(2, 0, 1).float()
    return ((x - 127.5) / 127.5)[None]


@torch.no_grad()
def parse_labels(net: ParseNet, face512: np.ndarray) -> np.ndarray:
    """Per-pixel class labels (512, 512) of an RGB uint8 512² aligned face."""
    param = next(net.parameters())
    logits, _ = net(_to_unit_range(face512).to(param.device, param.dtype))
    return logits[0].float().argmax(0).to(torch.uint8).cpu().numpy()


def whitening_mask(labels: np.ndarray) -> np.ndarray:
    """labels (512²) -> the reference's soft mask at 256² (float32, 1 = whiten)."""
    import cv2
    from PIL import Image

    hard = np.where(np.isin(labels, WHITENED), 255, 0).astype(np.uint8)
    soft = cv2.GaussianBlur(hard, (BLUR_KERNEL, BLUR_KERNEL), 0)
    small = Image.fromarray(soft).resize((E4E_SIZE, E4E_SIZE), Image.Resampling.BICUBIC)
    return np.asarray(small).astype(np.float32) / 255.0


def prepare_face(face512: np.ndarray, net: ParseNet | None) -> PreparedFace:
    """An FFHQ-aligned RGB uint8 512² face -> the e4e input of the W+ reference
    (whitened background and clothes). With `net=None` nothing is whitened."""
    from PIL import Image

    arr = np.asarray(face512)
    if arr.shape != (PARSE_SIZE, PARSE_SIZE, 3) or arr.dtype != np.uint8:
        raise BadInput(f"aligned face has shape {arr.shape} and dtype {arr.dtype}; expected (512, 512, 3) uint8.")
    small = np.asarray(Image.fromarray(arr).resize((E4E_SIZE, E4E_SIZE), Image.Resampling.BICUBIC))
    plain = _to_unit_range(small)
    if net is None:
        zeros = np.zeros((E4E_SIZE, E4E_SIZE), np.float32)
        return PreparedFace(plain, plain, zeros, np.zeros((PARSE_SIZE, PARSE_SIZE), np.uint8), 0.0)
    labels = parse_labels(net, arr)
    mask = whitening_mask(labels)
    m = torch.from_numpy(mask)[None, None]
    whitened = plain * (1 - m) + m
    return PreparedFace(whitened, plain, mask, labels, float((mask > 0.5).mean()))
