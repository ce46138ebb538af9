"""BiSeNet face parsing (19 CelebAMask-HQ classes) with facexlib's published key
names (`parsing_bisenet.pth`, xinntao/facexlib `facexlib/parsing/bisenet.py` and
`resnet.py`): a ResNet-18 context path with attention refinement at 1/16 and
1/32, the 1/8 ResNet feature as the spatial path, a feature-fusion module and
three heads; PuLID uses the main head's argmax. The widths are parameters (the
published ones are the defaults) so a tiny pack keeps the structure and names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, ks: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ks, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        r = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu((x if self.downsample is None else self.downsample(x)) + r)


class ResNet18(nn.Module):
    def __init__(self, w: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = (w, w, 2 * w, 4 * w, 8 * w)
        for i in range(4):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(widths[i], widths[i + 1], stride),
                                                         BasicBlock(widths[i + 1], widths[i + 1])))

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinement(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x):
        feat = self.conv(x)
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(F.avg_pool2d(feat, feat.shape[2:]))))
        return feat * atten


class ContextPath(nn.Module):
    def __init__(self, w: int = 64, ctx: int = 128):
        super().__init__()
        self.resnet = ResNet18(w)
        self.arm16 = AttentionRefinement(4 * w, ctx)
        self.arm32 = AttentionRefinement(8 * w, ctx)
        self.conv_head32 = ConvBNReLU(ctx, ctx)
        self.conv_head16 = ConvBNReLU(ctx, ctx)
        self.conv_avg = ConvBNReLU(8 * w, ctx, ks=1, padding=0)

    def forward(self, x):
        feat8, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(F.avg_pool2d(feat32, feat32.shape[2:]))
        up32 = F.interpolate(self.arm32(feat32) + F.interpolate(avg, feat32.shape[2:], mode="nearest"),
                             feat16.shape[2:], mode="nearest")
        up32 = self.conv_head32(up32)
        up16 = F.interpolate(self.arm16(feat16) + up32, feat8.shape[2:], mode="nearest")
        return feat8, self.conv_head16(up16), up32


class FeatureFusion(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, ks=1, padding=0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, fsp, fcp):
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(F.avg_pool2d(feat, feat.shape[2:])))))
        return feat * atten + feat


class Head(nn.Module):
    def __init__(self, cin: int, mid: int, n: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, n, 1, bias=False)

    def forward(self, x):
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    def __init__(self, num_class: int = 19, w: int = 64, ctx: int = 128, fuse: int = 256, mid16: int = 64):
        super().__init__()
        self.cp = ContextPath(w, ctx)
        self.ffm = FeatureFusion(2 * w + ctx, fuse)
        self.conv_out = Head(fuse, fuse, num_class)
        self.conv_out16 = Head(ctx, mid16, num_class)
        self.conv_out32 = Head(ctx, mid16, num_class)

    def forward(self, x):
        """The main head's logits at the input size (the 1/16 and 1/32 heads are
        training aids; PuLID reads only the main one)."""
        feat8, cp8, _ = self.cp(x)
        out = self.conv_out(self.ffm(feat8, cp8))
        return F.interpolate(out, x.shape[2:], mode="bilinear", align_corners=True)


def bisenet_from_state(state: dict[str, torch.Tensor]) -> BiSeNet:
    """A BiSeNet sized from a checkpoint's shapes, loaded strictly."""
    w = state["cp.resnet.conv1.weight"].shape[0]
    ctx = state["cp.arm16.conv.conv.weight"].shape[0]
    fuse = state["ffm.convblk.conv.weight"].shape[0]
    mid16 = state["conv_out16.conv.conv.weight"].shape[0]
    n = state["conv_out.conv_out.weight"].shape[0]
    net = BiSeNet(n, w, ctx, fuse, mid16)
    # a checkpoint saved before BatchNorm counted its batches has no num_batches_tracked; torch
    # fills them in only from a pickle's version metadata, which a safetensors copy does not keep
    # (they play no part in eval mode)
    state = dict(state)
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    net.load_state_dict(state, strict=True)
    return net.eval()
