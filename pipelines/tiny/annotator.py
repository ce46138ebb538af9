"""Tiny stand-in for `openpose-annotator` (lllyasviel/Annotators): the three
published pickles `body_pose_model.pth`, `hand_pose_model.pth` and
`facenet.pth`, written with `torch.save` in the published key layout
(controlnet-aux's `bodypose_model` / `handpose_model` keys without their first
module name, `FaceNet` keys as they are).

The architectures are fixed by controlnet-aux, so the files cannot be shrunk;
they are stored in float16 (half the published size) with weights from fixed
seeds.

A body model with random weights is useless for a test: its part heatmaps either
fade to a constant (nothing found) or break into hundreds of peaks that
OpenPose's pure-Python grouping takes minutes to pair up. So the body model is a
deterministic "always sees the same person" detector, like the constant-logit
face detector of the insightface pack. The backbone and the part-affinity
branches keep random weights; the part-heatmap branch ignores the image: a
constant map is blurred by box kernels through every stage (zero padding makes
it peak in the middle of the map), and in the last layers each part's kernels
lean to one side, which moves that part's single, smooth peak to its place in
`DESIGNED_POSE`. The last affinity layer outputs each limb's direction as a
constant field, so the 18 peaks join into one person. The extraction code then
runs end to end on any photo and must return that pose (`part_cells`); on very
narrow or very wide photos (beyond about 1:2 or 3:1) some parts fall below
OpenPose's threshold and come back missing. A tiny model proves the wiring, not
pose accuracy."""

from __future__ import annotations

import functools
from pathlib import Path

from . import pack

BODY_FILE = "body_pose_model.pth"
HAND_FILE = "hand_pose_model.pth"
FACE_FILE = "facenet.pth"

# Part positions of the designed person, in heatmap cells (8 input pixels of the
# 184-pixel-high network input) from the middle of a square map, (dx, dy), y down
# (`part_cells` says where the peaks land, to a fraction of a cell).
# COCO-18 order: nose, neck, r_shoulder, r_elbow, r_wrist, l_shoulder, l_elbow,
# l_wrist, r_hip, r_knee, r_ankle, l_hip, l_knee, l_ankle, r_eye, l_eye, r_ear, l_ear.
DESIGNED_POSE: tuple[tuple[int, int], ...] = (
    (0, -6), (0, -3),
    (-2, -3), (-3, 0), (-3, 3),
    (2, -3), (3, 0), (3, 3),
    (-1, 2), (-1, 5), (-1, 8),
    (1, 2), (1, 5), (1, 8),
    (-1, -7), (1, -7), (-2, -6), (2, -6),
)  # fmt: skip
# OpenPose's limbs (parts, 0-based) and the (x, y) channels of their affinity
# field in the 38-channel PAF output, as the published body model lays them out.
LIMB_PAF: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (
    ((1, 2), (12, 13)), ((1, 5), (20, 21)), ((2, 3), (14, 15)), ((3, 4), (16, 17)),
    ((5, 6), (22, 23)), ((6, 7), (24, 25)), ((1, 8), (0, 1)), ((8, 9), (2, 3)),
    ((9, 10), (4, 5)), ((1, 11), (6, 7)), ((11, 12), (8, 9)), ((12, 13), (10, 11)),
    ((1, 0), (28, 29)), ((0, 14), (30, 31)), ((14, 16), (34, 35)), ((0, 15), (32, 33)),
    ((15, 17), (36, 37)), ((2, 16), (18, 19)), ((5, 17), (26, 27)),
)  # fmt: skip
_N_PARTS = 18
_HEAT_IN = 38  # where the previous stage's heatmaps start in a stage's 185-channel input
# the 7x7 layers whose kernels lean, per part, to place its peak
_LEAN_LAYERS = tuple(f"Mconv{i}_stage{s}_L2" for s in (5, 6) for i in (2, 3, 4, 5))
# a small extra lean to the left for every part: on a map of even width the
# middle falls between two cells, and this picks one instead of two peaks
_TIE_BREAK = 0.007
# the carried map peaks at ~0.33 on a square photo but much lower on a narrow
# one (less of the blur fits in the map); OpenPose wants parts above 0.1
_HEAT_GAIN = 8.0
_SQUARE_MAP = 23  # cells of the 184-pixel network input, the map's height always
_POOL = 1 << 20


def _shapes(model_cls, strip_first: bool) -> dict[str, tuple[int, ...]]:
    """Published key -> shape, read from controlnet-aux's module on the meta
    device (no memory, no init)."""
    import torch

    with torch.device("meta"):
        model = model_cls()
    return {(k.split(".", 1)[1] if strip_first else k): tuple(t.shape) for k, t in model.state_dict().items()}


def _random_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict:
    """float16 He-normal convolution weights and zero biases (the default init
    fades to a constant through these deep stacks). 128 M values are drawn from
    a seeded pool, each tensor from its own seeded offset: these networks are
    too big to draw value by value in a test's time budget."""
    import torch

    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(_POOL, generator=g).repeat(2)  # any window of _POOL values is a view
    sd = {}
    for key, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        if not key.endswith(".weight"):
            sd[key] = torch.zeros(shape, dtype=torch.float16)
            continue
        start = int(torch.randint(0, _POOL, (1,), generator=g))
        std = (2.0 / (n // shape[0])) ** 0.5
        chunk = (pool[start : start + _POOL] * std).to(torch.float16)
        # clone: a slice would make torch.save write the whole repeated buffer
        sd[key] = chunk.repeat(-(-n // _POOL))[:n].clone().reshape(shape)
    return sd


# ---- the heatmap chain, as data: (layer name, kernel size, leans, source offset)
def _chain() -> list[tuple[str, int, bool, int]]:
    layers = [("conv5_2_CPM_L2", 3, False, 0), ("conv5_3_CPM_L2", 3, False, 0)]
    layers += [("conv5_4_CPM_L2", 1, False, 0), ("conv5_5_CPM_L2", 1, False, 0)]
    for stage in range(2, 7):
        layers.append((f"Mconv1_stage{stage}_L2", 7, False, _HEAT_IN))
        for i in range(2, 6):
            name = f"Mconv{i}_stage{stage}_L2"
            layers.append((name, 7, name in _LEAN_LAYERS, 0))
        layers += [(f"Mconv6_stage{stage}_L2", 1, False, 0), (f"Mconv7_stage{stage}_L2", 1, False, 0)]
    return layers


def _kernel_1d(size: int, lean: float):
    """Weights 1 + lean * offset, summing to 1 (lean < 1/3 keeps them positive)."""
    import numpy as np

    w = 1.0 + lean * (np.arange(size) - size // 2)
    return w / w.sum()


def _profile(cells: int, lean: float):
    """The part map along one axis: the constant 1 carried through the chain
    with zero padding (the 2-D map is the product of the two axes' profiles)."""
    import numpy as np

    f = np.ones(cells)
    for _name, size, leans, _src in _chain():
        w = _kernel_1d(size, lean if leans else 0.0)
        c = size // 2
        f = np.maximum(np.correlate(np.concatenate([np.zeros(c), f, np.zeros(c)]), w, "valid"), 0.0)
    return f


def _peak(f) -> float:
    """Sub-cell position of the maximum (parabola through the top three cells)."""
    i = int(f.argmax())
    if 0 < i < len(f) - 1:
        a, b, c = f[i - 1], f[i], f[i + 1]
        return i + 0.5 * (a - c) / (a - 2 * b + c)
    return float(i)


@functools.cache
def _lean_for(offset: int, cells: int = _SQUARE_MAP) -> float:
    """The lean that puts the peak `offset` cells from the middle (bisection:
    the peak moves monotonically against the lean)."""
    lo, hi = -0.32, 0.32
    target = (cells - 1) / 2 + offset
    for _ in range(30):
        mid = (lo + hi) / 2
        if _peak(_profile(cells, mid)) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@functools.lru_cache(maxsize=1)
def _leans() -> tuple[tuple[float, float], ...]:
    """(x lean, y lean) of each part."""
    return tuple((_lean_for(dx) + _TIE_BREAK, _lean_for(dy)) for dx, dy in DESIGNED_POSE)


def part_cells(height: int = _SQUARE_MAP, width: int = _SQUARE_MAP) -> list[tuple[float, float]]:
    """Where the tiny body model's 18 part peaks lie on a heatmap of
    height x width cells, (x, y) in cells. The height is always 23; on other
    widths the x places draw in a little toward the middle."""
    out = []
    for lx, ly in _leans():
        out.append((_peak(_profile(width, lx)), _peak(_profile(height, ly))))
    return out


def _design_body(sd: dict) -> None:
    """Overwrite the part-heatmap branch and the last affinity layer (see module doc)."""
    import numpy as np
    import torch

    leans = _leans()
    # stage 1: a constant 1 on the 18 part channels (zero weights, bias 1)
    sd["conv5_1_CPM_L2.weight"] = torch.zeros_like(sd["conv5_1_CPM_L2.weight"])
    bias = torch.zeros_like(sd["conv5_1_CPM_L2.bias"])
    bias[:_N_PARTS] = 1.0
    sd["conv5_1_CPM_L2.bias"] = bias
    # then every layer carries part p from channel src + p to channel p
    for name, size, leans_here, src in _chain():
        w = torch.zeros_like(sd[f"{name}.weight"])
        for p, (lx, ly) in enumerate(leans):
            ky = _kernel_1d(size, ly if leans_here else 0.0)
            kx = _kernel_1d(size, lx if leans_here else 0.0)
            gain = _HEAT_GAIN if name == "Mconv7_stage6_L2" else 1.0
            w[p, src + p] = torch.from_numpy(gain * np.outer(ky, kx)).to(w.dtype)
        sd[f"{name}.weight"] = w
        sd[f"{name}.bias"] = torch.zeros_like(sd[f"{name}.bias"])
    # the final affinity field: each limb's unit direction, everywhere
    cells = part_cells()
    w = sd["Mconv7_stage6_L1.weight"]
    sd["Mconv7_stage6_L1.weight"] = torch.zeros_like(w)
    paf = torch.zeros(w.shape[0], dtype=w.dtype)
    for (a, b), (ch_x, ch_y) in LIMB_PAF:
        dx, dy = cells[b][0] - cells[a][0], cells[b][1] - cells[a][1]
        n = (dx * dx + dy * dy) ** 0.5
        paf[ch_x], paf[ch_y] = dx / n, dy / n
    sd["Mconv7_stage6_L1.bias"] = paf


@pack("openpose-annotator", version=1)
def build(dest: Path) -> None:
    import torch

    from ..pose.extract import controlnet_aux_open_pose

    op = controlnet_aux_open_pose()
    body = _random_state(_shapes(op.bodypose_model, strip_first=True), seed=1801)
    _design_body(body)
    hand = _random_state(_shapes(op.handpose_model, strip_first=True), seed=1802)
    face = _random_state(_shapes(op.FaceNet, strip_first=False), seed=1803)
    dest = Path(dest)
    torch.save(body, dest / BODY_FILE)
    torch.save(hand, dest / HAND_FILE)
    torch.save(face, dest / FACE_FILE)
