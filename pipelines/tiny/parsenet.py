"""Tiny face-parsing pack in the published layout: PSFRGAN release v0.1.0
`parse_multi_iter_90000.pth`, a torch pickle of a flat ParseNet state dict
(`encoder.0.conv2d.*`, `encoder.{1..4}.{shortcut_func,conv1,conv2}.*`,
`body.{0..9}.{conv1,conv2}.*`, `decoder.{0..3}.*`, `out_img_conv.*`,
`out_mask_conv.*`, BatchNorm under `.norm.norm.*`; an OrderedDict as
`state_dict()` gives it), at 1/16 of the channels.

The structure (4 down, 10 body, 4 up blocks, 19 classes, 512² input) is the
published one; only widths shrink. BatchNorm statistics and the output bias are
calibrated so that the random network labels a face crop with several classes,
background and cloth among them (the whitening then has something to do): the
output layer keeps four classes in play (background, skin, hair, cloth) and
their biases are set to minus their mean response on a synthetic face, so the
winner changes across the image."""

from __future__ import annotations

from pathlib import Path

from . import pack

SEED = 43
WIDTH = 1 / 16
FILE = "parse_multi_iter_90000.pth"
IN_PLAY = (0, 1, 13, 18)  # background, skin, hair, cloth


def _synthetic_face(size: int = 512):
    """A grey gradient with a lighter ellipse and a dark band: enough structure
    for the calibration, no image files."""
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([0.3 + 0.4 * xx, 0.3 + 0.3 * yy, 0.5 - 0.2 * xx], axis=-1)
    face = ((xx - 0.5) / 0.28) ** 2 + ((yy - 0.45) / 0.36) ** 2 < 1
    img[face] = (0.85, 0.7, 0.6)
    img[yy > 0.85] = (0.15, 0.2, 0.35)
    return (img * 255).astype(np.uint8)


def tiny_parsenet_state() -> dict:
    import torch

    from ..wplus.parsing import ParseNet

    torch.manual_seed(SEED)
    net = ParseNet(width=WIDTH)
    gen = torch.Generator().manual_seed(SEED)
    # an OrderedDict with `_metadata`, as `torch.save(model.state_dict())` writes it
    state = net.state_dict()
    for k, v in list(state.items()):
        if k.endswith("running_mean"):
            v = torch.randn(v.shape, generator=gen) * 0.1
        elif k.endswith("running_var"):
            v = 1.0 + torch.rand(v.shape, generator=gen) * 0.5
        state[k] = v.clone()
    net.load_state_dict(state)
    net.eval()
    with torch.no_grad():
        x = torch.from_numpy(_synthetic_face()).permute(2, 0, 1).float()[None] / 127.5 - 1
        w = state["out_mask_conv.conv2d.weight"]
        w *= 20.0  # spatial differences dominate the class choice
        net.out_mask_conv.conv2d.weight.copy_(w)
        assert net.out_mask_conv.conv2d.bias is not None  # the output conv has a bias (no norm after it)
        net.out_mask_conv.conv2d.bias.zero_()
        logits, _ = net(x)
        bias = torch.full((w.shape[0],), -1e4)
        for c in IN_PLAY:
            bias[c] = -logits[0, c].mean()
    state["out_mask_conv.conv2d.bias"] = bias
    return state


@pack("parsenet", version=2)
def build_parsenet(dest: Path) -> None:
    import torch

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_parsenet_state(), dest / FILE)
