"""RetinaFace-R50 face detection as facexlib runs it for PuLID, with facexlib's
published key names (`detection_Resnet50_Final.pth`, release v0.1.0; facts from
xinntao/facexlib `detection/retinaface.py`, `retinaface_net.py`,
`retinaface_utils.py` and `utils/face_restoration_helper.py`):

- network: torchvision's ResNet-50 trunk (`body.*`, layers 2-4 returned), an FPN
  (`fpn.output1-3`, `merge1-2`), three SSH context modules and per-level class /
  box / landmark heads with 2 anchors (min sizes 16/32, 64/128, 256/512 at
  strides 8/16/32); LeakyReLU slope 0.1 only where a block is <= 64 wide;
- input: the BGR photo at its own size (`use_origin_size=True`), float, minus
  (104, 117, 123);
- decoding with variances (0.1, 0.2), scores above 0.97 (the face-restore
  helper's threshold), NMS at IoU 0.4;
- the face kept is the one whose box centre is nearest the image centre
  (`get_face_landmarks_5(only_center_face=True)`).

Widths are parameters (the published ones are the defaults: trunk 64, FPN/SSH
256), so a tiny pack keeps the structure and the names. The published file's
`module.` prefixes are stripped, as facexlib's loader does.
"""

from __future__ import annotations

from itertools import product
from math import ceil

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCE = (0.1, 0.2)
MEAN_BGR = (104.0, 117.0, 123.0)
CONF_THRESHOLD = 0.97  # facexlib FaceRestoreHelper.get_face_landmarks_5
NMS_THRESHOLD = 0.4


def _conv_bn(cin, cout, stride=1, leaky=0.0, k=3, relu=True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.LeakyReLU(negative_slope=leaky, inplace=True))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 block (its key names)."""

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Trunk(nn.Module):
    def __init__(self, w: int = 64, blocks=(3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        cin = w
        for i, n in enumerate(blocks):
            width = w * 2 ** i
            layer = [Bottleneck(cin, width, 1 if i == 0 else 2)] + [Bottleneck(width * 4, width) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
            cin = width * 4

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        c2 = self.layer2(self.layer1(x))
        c3 = self.layer3(c2)
        return [c2, c3, self.layer4(c3)]


class SSH(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        leaky = 0.1 if cout <= 64 else 0.0
        self.conv3X3 = _conv_bn(cin, cout // 2, relu=False)
        self.conv5X5_1 = _conv_bn(cin, cout // 4, leaky=leaky)
        self.conv5X5_2 = _conv_bn(cout // 4, cout // 4, relu=False)
        self.conv7X7_2 = _conv_bn(cout // 4, cout // 4, leaky=leaky)
        self.conv7x7_3 = _conv_bn(cout // 4, cout // 4, relu=False)

    def forward(self, x):
        c5_1 = self.conv5X5_1(x)
        c7 = self.conv7x7_3(self.conv7X7_2(c5_1))
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(c5_1), c7], dim=1))


class FPN(nn.Module):
    def __init__(self, cins, cout: int):
        super().__init__()
        leaky = 0.1 if cout <= 64 else 0.0
        for i, cin in enumerate(cins):
            setattr(self, f"output{i + 1}", _conv_bn(cin, cout, leaky=leaky, k=1))
        self.merge1 = _conv_bn(cout, cout, leaky=leaky)
        self.merge2 = _conv_bn(cout, cout, leaky=leaky)

    def forward(self, feats):
        o1, o2, o3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[2:], mode="nearest"))
        return [o1, o2, o3]


class _Head(nn.Module):
    def __init__(self, cin: int, per_anchor: int, anchors: int = 2):
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(cin, anchors * per_anchor, 1)

    def forward(self, x):
        out = self.conv1x1(x).permute(0, 2, 3, 1).contiguous()
        return out.view(out.shape[0], -1, self.per_anchor)


class RetinaFace(nn.Module):
    def __init__(self, w: int = 64, out: int = 256):
        super().__init__()
        self.body = Trunk(w)
        self.fpn = FPN([8 * w, 16 * w, 32 * w], out)
        self.ssh1, self.ssh2, self.ssh3 = SSH(out, out), SSH(out, out), SSH(out, out)
        self.ClassHead = nn.ModuleList(_Head(out, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(_Head(out, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(_Head(out, 10) for _ in range(3))

    def forward(self, x):
        feats = self.fpn(self.body(x))
        feats = [self.ssh1(feats[0]), self.ssh2(feats[1]), self.ssh3(feats[2])]
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats)], dim=1)
        conf = torch.cat([h(f) for h, f in zip(self.ClassHead, feats)], dim=1)
        landm = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats)], dim=1)
        return loc, F.softmax(conf, dim=-1), landm


def retinaface_from_state(state: dict[str, torch.Tensor]) -> RetinaFace:
    """Sized from the checkpoint's shapes; `module.` prefixes stripped; strict."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    net = RetinaFace(w=state["body.conv1.weight"].shape[0], out=state["fpn.merge1.0.weight"].shape[0])
    for key, value in net.state_dict().items():  # see parsing.bisenet_from_state
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    net.load_state_dict(state, strict=True)
    return net.eval()


def priors(height: int, width: int) -> torch.Tensor:
    """Anchor boxes (cx, cy, w, h), relative to the image, in facexlib's order."""
    out = []
    for k, step in enumerate(STEPS):
        for i, j in product(range(ceil(height / step)), range(ceil(width / step))):
            for size in MIN_SIZES[k]:
                out += [(j + 0.5) * step / width, (i + 0.5) * step / height, size / width, size / height]
    return torch.tensor(out, dtype=torch.float32).view(-1, 4)


def decode(loc, pri):
    boxes = torch.cat((pri[:, :2] + loc[:, :2] * VARIANCE[0] * pri[:, 2:], pri[:, 2:] * torch.exp(loc[:, 2:] * VARIANCE[1])), 1)
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def decode_landmarks(pre, pri):
    return torch.cat([pri[:, :2] + pre[:, 2 * i:2 * i + 2] * VARIANCE[0] * pri[:, 2:] for i in range(5)], dim=1)


def detect(net, bgr: np.ndarray, conf_threshold: float = CONF_THRESHOLD) -> np.ndarray:
    """[n, 15] rows: box (4), score, 5 landmarks (x, y), best score first after NMS."""
    import torchvision

    h, w = bgr.shape[:2]
    p = next(net.parameters())
    x = torch.from_numpy(bgr.astype(np.float32).transpose(2, 0, 1))[None]
    x = (x - torch.tensor(MEAN_BGR).view(1, 3, 1, 1)).to(p.device, p.dtype)
    with torch.no_grad():
        loc, conf, landm = net(x)
    pri = priors(h, w).to(loc.device)
    boxes = decode(loc[0].float(), pri) * torch.tensor([w, h, w, h], device=loc.device)
    marks = decode_landmarks(landm[0].float(), pri) * torch.tensor([w, h] * 5, device=loc.device)
    scores = conf[0, :, 1].float()
    keep = scores > conf_threshold
    boxes, marks, scores = boxes[keep], marks[keep], scores[keep]
    order = scores.argsort(descending=True)
    boxes, marks, scores = boxes[order], marks[order], scores[order]
    kept = torchvision.ops.nms(boxes, scores, NMS_THRESHOLD)
    return torch.cat([boxes[kept], scores[kept, None], marks[kept]], dim=1).cpu().numpy()


def center_face_landmarks(net, rgb: np.ndarray, centre=None) -> np.ndarray | None:
    """The 5 landmarks (5, 2) of the detected face whose box centre is nearest
    `centre` (default: the image centre, facexlib's `get_center_face`), or None."""
    rows = detect(net, np.ascontiguousarray(rgb[:, :, ::-1]))
    if len(rows) == 0:
        return None
    h, w = rgb.shape[:2]
    target = np.array([w / 2, h / 2]) if centre is None else np.asarray(centre, np.float64)
    centres = np.stack([(rows[:, 0] + rows[:, 2]) / 2, (rows[:, 1] + rows[:, 3]) / 2], axis=1)
    best = int(np.argmin(np.linalg.norm(centres - target, axis=1)))
    return rows[best, 5:15].reshape(5, 2)
