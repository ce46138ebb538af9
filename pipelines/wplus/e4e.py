"""e4e (Encoder4Editing on an IR-SE50 backbone): an FFHQ-aligned 256² face -> a
StyleGAN2 W+ latent of 18x512.

The module tree is laid out so that its `state_dict()` keys are exactly those of
the published `e4e_ffhq_encode.pt` `state_dict` with the `encoder.` prefix
removed: stem `input_layer.{0,1,2}`, `body.0`-`body.23` IR-SE bottlenecks
(`res_layer.{0..5}`, SE `fc1`/`fc2`, `shortcut_layer` only where channels
change), `styles.0`-`styles.17` (strided convs + an equalised linear layer),
`latlayer1`/`latlayer2`. `width` scales the channel counts (tiny demo packs keep
the names with fewer channels); the W+ width is always 512.

Forward (feature pyramid): c1/c2/c3 are taken after body.6 / body.20 / body.23;
the coarse style (from c3) fills all 18 rows, then rows 1-17 add their own delta
from c3 (rows < 3), c3 + lateral(c2) (rows < 7) or that + lateral(c1).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BadInput, ModelError

STYLE_COUNT = 18  # 2 * log2(1024) - 2 for the 1024 px FFHQ generator
STYLE_DIM = 512
INPUT_SIZE = 256
COARSE_END, MIDDLE_END = 3, 7  # rows [0,3) from c3, [3,7) from p2, [7,18) from p1
TAPS = {6: "c1", 20: "c2", 23: "c3"}

# IR-SE50: (in, out, units) per stage; the first unit of every stage has stride 2
_STAGES = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x):
        w = F.adaptive_avg_pool2d(x, 1)
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(w))))
        return x * w


class BottleneckIRSE(nn.Module):
    """Pre-activation residual unit: BN, 3x3, PReLU, 3x3 (stride), BN, SE."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.shortcut_layer: nn.Module
        if c_in == c_out:
            # a 1x1 max-pool with a stride is plain subsampling (no weights)
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(c_in),
            nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False),
            nn.PReLU(c_out),
            nn.Conv2d(c_out, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out),
            SqueezeExcite(c_out),
        )

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class EqualLinear(nn.Module):
    """StyleGAN2's equalised-learning-rate linear layer: the stored weight is
    scaled by 1/sqrt(fan_in) at run time (lr multiplier 1)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.scale = 1.0 / math.sqrt(c_in)

    def forward(self, x):
        return F.linear(x, self.weight * self.scale, self.bias)


class GradualStyleBlock(nn.Module):
    """log2(spatial) stride-2 3x3 convs (LeakyReLU 0.01) down to 1x1, then an
    EqualLinear to one W row."""

    def __init__(self, c_in: int, c_hidden: int, spatial: int, c_out: int = STYLE_DIM):
        super().__init__()
        layers: list[nn.Module] = []
        c = c_in
        for _ in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(c, c_hidden, 3, 2, 1), nn.LeakyReLU(0.01)]
            c = c_hidden
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(c_hidden, c_out)
        self.c_hidden = c_hidden

    def forward(self, x):
        x = self.convs(x)
        return self.linear(x.reshape(x.shape[0], self.c_hidden))


class Encoder4Editing(nn.Module):
    latent_avg: torch.Tensor  # a buffer (register_buffer below)

    def __init__(self, width: float = 1.0):
        super().__init__()
        ch = lambda c: max(1, int(round(c * width)))  # noqa: E731
        self.width = width
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, ch(64), 3, 1, 1, bias=False), nn.BatchNorm2d(ch(64)), nn.PReLU(ch(64))
        )
        units: list[nn.Module] = []
        for c_in, c_out, n in _STAGES:
            units.append(BottleneckIRSE(ch(c_in), ch(c_out), 2))
            units += [BottleneckIRSE(ch(c_out), ch(c_out), 1) for _ in range(n - 1)]
        self.body = nn.Sequential(*units)
        top = ch(512)
        self.styles = nn.ModuleList(
            GradualStyleBlock(top, top, 16 if i < COARSE_END else 32 if i < MIDDLE_END else 64)
            for i in range(STYLE_COUNT)
        )
        self.latlayer1 = nn.Conv2d(ch(256), top, 1)
        self.latlayer2 = nn.Conv2d(ch(128), top, 1)
        # not part of the published state dict: set by `load_e4e`
        self.register_buffer("latent_avg", torch.zeros(STYLE_COUNT, STYLE_DIM), persistent=False)

    @staticmethod
    def _upsample_add(x, lateral):
        return F.interpolate(x, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral

    def forward(self, x):
        """x: (B, 3, 256, 256) in [-1, 1] -> (B, 18, 512), *without* latent_avg."""
        x = self.input_layer(x)
        taps = {}
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in TAPS:
                taps[TAPS[i]] = x
        c1, c2, c3 = taps["c1"], taps["c2"], taps["c3"]
        w0 = self.styles[0](c3)
        rows = [w0]
        p2 = self._upsample_add(c3, self.latlayer1(c2))
        p1 = self._upsample_add(p2, self.latlayer2(c1))
        for i in range(1, STYLE_COUNT):
            feats = c3 if i < COARSE_END else p2 if i < MIDDLE_END else p1
            rows.append(w0 + self.styles[i](feats))
        return torch.stack(rows, dim=1)


# ----------------------------------------------------------------- loading
_PREFIXES = ("state_dict.encoder.", "encoder.")


def split_checkpoint(tensors: dict[str, torch.Tensor], source: str = "e4e checkpoint"):
    """(encoder state dict without prefix, latent_avg (18, 512)) from the flat keys
    of a converted e4e checkpoint ("state_dict.encoder.*", "latent_avg")."""
    enc: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        for p in _PREFIXES:
            if key.startswith(p):
                enc[key[len(p):]] = t
                break
    if not enc:
        raise ModelError(f"{source} has no 'state_dict.encoder.*' weights; it is not an e4e encoder checkpoint.")
    avg = tensors.get("latent_avg")
    if avg is None:
        raise ModelError(f"{source} has no 'latent_avg'; the e4e encoder needs it to produce W+ latents.")
    avg = avg.float().reshape(-1, STYLE_DIM)
    if avg.shape[0] == 1:
        avg = avg.expand(STYLE_COUNT, STYLE_DIM)
    if avg.shape != (STYLE_COUNT, STYLE_DIM):
        raise ModelError(f"{source}: latent_avg has shape {tuple(tensors['latent_avg'].shape)}, expected (18, 512).")
    return enc, avg.contiguous()


def build_from_state_dict(enc_sd: dict[str, torch.Tensor], latent_avg: torch.Tensor, source: str = "e4e checkpoint"):
    stem = enc_sd.get("input_layer.0.weight")
    if stem is None:
        raise ModelError(f"{source} lacks input_layer.0.weight; it is not an e4e IR-SE50 encoder.")
    encoder = Encoder4Editing(width=stem.shape[0] / 64)
    try:
        result = encoder.load_state_dict({k: v.float() for k, v in enc_sd.items()}, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        first = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc)[:200])
        raise ModelError(f"{source} does not match the e4e IR-SE50 layout ({first}).") from exc
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {result.unexpected_keys[0]!r}"
        raise ModelError(
            f"{source} does not match the e4e IR-SE50 layout ({what}, "
            f"{len(missing)} missing, {len(result.unexpected_keys)} unexpected keys)."
        )
    encoder.latent_avg.copy_(latent_avg)
    return encoder.eval().requires_grad_(False)


def load_e4e(path: Path | str, device: str = "cpu") -> tuple[Encoder4Editing, torch.Tensor]:
    """Load the converted e4e checkpoint (safetensors with flat keys) ->
    (encoder in eval mode, latent_avg (18, 512))."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"e4e checkpoint {path} does not exist.")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # truncated file, LFS pointer, not safetensors
        raise ModelError(f"cannot read e4e checkpoint {path}: {exc} (corrupt or truncated?).") from exc
    enc_sd, avg = split_checkpoint(tensors, str(path))
    encoder = build_from_state_dict(enc_sd, avg, str(path))
    return encoder.to(device), avg


# ----------------------------------------------------------------- encoding
def preprocess(faces) -> torch.Tensor:
    """RGB uint8 (256, 256, 3) or (N, 256, 256, 3) -> float (N, 3, 256, 256) in
    [-1, 1], i.e. (x/255 - 0.5)/0.5. Other sizes are resized (area filter)."""
    arr = np.asarray(faces)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise BadInput(f"face crop has shape {arr.shape}; expected an RGB image (H, W, 3).")
    if arr.dtype != np.uint8:
        raise BadInput(f"face crop has dtype {arr.dtype}; expected uint8 RGB.")
    if arr.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
        import cv2

        arr = np.stack([cv2.resize(a, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA) for a in arr])
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float()
    return (x / 255.0 - 0.5) / 0.5


@torch.no_grad()
def encode(encoder: Encoder4Editing, faces, latent_avg: torch.Tensor | None = None) -> torch.Tensor:
    """FFHQ-aligned RGB uint8 face(s) -> W+ = encoder(x) + latent_avg, float32 on
    the CPU: (18, 512) for one face, (N, 18, 512) for a batch."""
    single = np.asarray(faces).ndim == 3
    param = next(encoder.parameters())
    x = preprocess(faces).to(param.device, param.dtype)
    avg = encoder.latent_avg if latent_avg is None else latent_avg
    w = encoder.eval()(x).float() + avg.to(x.device).float()
    w = w.cpu()
    return w[0] if single else w


@torch.no_grad()
def encode_normalized(encoder: Encoder4Editing, x: torch.Tensor, latent_avg: torch.Tensor | None = None) -> torch.Tensor:
    """A ready e4e input (N, 3, 256, 256) in [-1, 1] (e.g. a whitened face from
    `parsing.prepare_face`) -> W+ (N, 18, 512) float32 on the CPU."""
    if x.ndim != 4 or tuple(x.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
        raise BadInput(f"e4e input has shape {tuple(x.shape)}; expected (N, 3, {INPUT_SIZE}, {INPUT_SIZE}).")
    param = next(encoder.parameters())
    avg = encoder.latent_avg if latent_avg is None else latent_avg
    w = encoder.eval()(x.to(param.device, param.dtype)).float() + avg.to(param.device).float()
    return w.cpu()
