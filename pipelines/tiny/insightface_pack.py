"""Tiny insightface model packs ("insightface-buffalo_l", "insightface-antelopev2").

Each pack writes the ONNX files its catalog entry lists, under the published
file names, with the ONNX *signatures* insightface routes on
(`insightface.model_zoo.model_zoo.ModelRouter`), so `FaceAnalysis` loads them
unchanged:

- detector (det_10g.onnx / scrfd_10g_bnkps.onnx): SCRFD layout, 9 outputs =
  scores (N,1), box distances (N,4), keypoint offsets (N,10) for strides 8/16/32
  with 2 anchors per cell, N = (640/s)^2 * 2. The input is fixed at 640x640 (so
  insightface uses exactly that detection size). It is deterministic: one
  face at the centre of the 640x640 detection canvas (the image is letterboxed
  into its top-left corner), score `TINY_DET_SCORE`. It cannot find real faces;
  demo mode detects with MTCNN instead (pipelines/faces/detectors.py).
- recogniser (w600k_r50.onnx / glintr100.onnx): ArcFace signature, input
  (N,3,112,112), one output (N,512). A small random conv net, so the embedding is
  a real function of the pixels: same crop -> same embedding, different faces ->
  different embeddings. The two packs use different seeds (two different
  recognisers, like the real R50 and R100).
- 1k3d68.onnx (192x192 -> 3309), 2d106det.onnx (192x192 -> 212), genderage.onnx
  (96x96 -> 3): pooled colour -> linear heads, only so the routing and the
  optional modules load and run.

No node among the recogniser's first nodes is named Sub*/Mul*, so insightface
treats it as a PyTorch export and normalises the input as (x - 127.5) / 127.5,
the same as the published w600k_r50 / glintr100.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import pack

OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime that supports opset 17
DET_SIZE = 640
STRIDES = (8, 16, 32)
CELL_ANCHOR_COUNT = 2
EMBED_DIM = 512
TINY_DET_SCORE = 0.87

# the one face, in stride-32 units around the canvas centre: box distances
# (left, top, right, bottom) and the 5 keypoints in insightface order (left eye,
# right eye, nose, left mouth corner, right mouth corner), proportioned like the
# ArcFace alignment template
_FACE_BOX = (3.5, 4.0, 3.5, 3.5)
_FACE_KPS = ((-1.2, -1.36), (1.2, -1.36), (0.0, 0.0), (-1.0, 1.42), (1.0, 1.42))


def _onnx():
    import onnx
    from onnx import helper, numpy_helper

    return onnx, helper, numpy_helper


def _save(graph, dest: Path) -> None:
    onnx, helper, _ = _onnx()
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="likeness-tiny",
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model)
    dest.write_bytes(model.SerializeToString())


def _init(name: str, array: np.ndarray):
    _, _, numpy_helper = _onnx()
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def build_scrfd(dest: Path) -> None:
    """SCRFD-signature detector: one face at the centre of the detection canvas."""
    _, helper, _ = _onnx()
    from onnx import TensorProto

    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, DET_SIZE, DET_SIZE])
    nodes = [
        # outputs depend on the input (a zero times its mean) so the graph is an
        # ordinary function of the image, not a constant
        helper.make_node("ReduceMean", ["input.1"], ["pix_mean"], name="pool_all", keepdims=0),
        helper.make_node("Mul", ["pix_mean", "zero"], ["z"], name="zero_out"),
    ]
    inits = [_init("zero", np.zeros((), np.float32))]
    outputs: dict[str, list] = {"score": [], "bbox": [], "kps": []}
    centre_cell = DET_SIZE // 32 // 2
    for s in STRIDES:
        cells = DET_SIZE // s
        n = cells * cells * CELL_ANCHOR_COUNT
        scores = np.full((n, 1), 0.01, np.float32)
        if s == 32:
            scores[(centre_cell * cells + centre_cell) * CELL_ANCHOR_COUNT, 0] = TINY_DET_SCORE
        scale = 32.0 / s  # distances are in units of this level's stride
        box = np.asarray(_FACE_BOX, np.float32)[None] * scale
        kps = np.asarray(_FACE_KPS, np.float32).reshape(1, 10) * scale
        inits += [
            _init(f"score_c{s}", scores),
            _init(f"bbox_c{s}", box),
            _init(f"kps_c{s}", kps),
            _init(f"bbox_shape{s}", np.array([n, 4], np.int64)),
            _init(f"kps_shape{s}", np.array([n, 10], np.int64)),
        ]
        nodes += [
            helper.make_node("Add", [f"score_c{s}", "z"], [f"score_{s}"], name=f"score_{s}"),
            helper.make_node("Add", [f"bbox_c{s}", "z"], [f"bbox_r{s}"], name=f"bbox_add{s}"),
            helper.make_node("Expand", [f"bbox_r{s}", f"bbox_shape{s}"], [f"bbox_{s}"], name=f"bbox_{s}"),
            helper.make_node("Add", [f"kps_c{s}", "z"], [f"kps_r{s}"], name=f"kps_add{s}"),
            helper.make_node("Expand", [f"kps_r{s}", f"kps_shape{s}"], [f"kps_{s}"], name=f"kps_{s}"),
        ]
        outputs["score"].append(helper.make_tensor_value_info(f"score_{s}", TensorProto.FLOAT, [n, 1]))
        outputs["bbox"].append(helper.make_tensor_value_info(f"bbox_{s}", TensorProto.FLOAT, [n, 4]))
        outputs["kps"].append(helper.make_tensor_value_info(f"kps_{s}", TensorProto.FLOAT, [n, 10]))
    # SCRFD output order: scores 8/16/32, boxes 8/16/32, keypoints 8/16/32
    outs = outputs["score"] + outputs["bbox"] + outputs["kps"]
    graph = helper.make_graph(nodes, "tiny_scrfd", [inp], outs, initializer=inits)
    _save(graph, dest)


def build_arcface(dest: Path, seed: int) -> None:
    """ArcFace-signature recogniser: a small random conv net, 112x112 -> 512."""
    _, helper, _ = _onnx()
    from onnx import TensorProto

    rng = np.random.default_rng(seed)

    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    w1 = he((16, 3, 4, 4), 3 * 16)
    w2 = he((32, 16, 4, 4), 16 * 16)
    fc = he((32 * 7 * 7, EMBED_DIM), 32 * 7 * 7)
    inits = [
        _init("conv1.weight", w1),
        _init("conv1.bias", (rng.standard_normal(16) * 0.1).astype(np.float32)),
        _init("conv2.weight", w2),
        _init("conv2.bias", (rng.standard_normal(32) * 0.1).astype(np.float32)),
        _init("features.weight", fc),
        _init("features.bias", np.zeros(EMBED_DIM, np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["input.1", "conv1.weight", "conv1.bias"], ["c1"], name="Conv_0",
                         kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Tanh", ["c1"], ["a1"], name="Tanh_1"),
        helper.make_node("Conv", ["a1", "conv2.weight", "conv2.bias"], ["c2"], name="Conv_2",
                         kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Tanh", ["c2"], ["a2"], name="Tanh_3"),
        helper.make_node("Flatten", ["a2"], ["flat"], name="Flatten_4", axis=1),
        helper.make_node("Gemm", ["flat", "features.weight", "features.bias"], ["embedding"],
                         name="Gemm_5"),
    ]
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])
    out = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["None", EMBED_DIM])
    _save(helper.make_graph(nodes, "tiny_arcface", [inp], [out], initializer=inits), dest)


def build_head(dest: Path, size: int, out_dim: int, seed: int) -> None:
    """Landmark / attribute signature: (1,3,size,size) -> (1,out_dim), bounded values."""
    _, helper, _ = _onnx()
    from onnx import TensorProto

    rng = np.random.default_rng(seed)
    inits = [
        _init("fc.weight", (rng.standard_normal((3, out_dim)) * 0.5).astype(np.float32)),
        _init("fc.bias", (rng.standard_normal(out_dim) * 0.5).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("GlobalAveragePool", ["data"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc"),
        helper.make_node("Tanh", ["logits"], ["fc1"], name="squash"),
    ]
    inp = helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, size, size])
    out = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, out_dim])
    _save(helper.make_graph(nodes, f"tiny_head_{size}_{out_dim}", [inp], [out], initializer=inits), dest)


def _common_heads(dest: Path) -> None:
    build_head(dest / "1k3d68.onnx", 192, 3309, seed=68)
    build_head(dest / "2d106det.onnx", 192, 212, seed=106)
    build_head(dest / "genderage.onnx", 96, 3, seed=3)


@pack("insightface-buffalo_l", version=1)
def build_buffalo_l(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    _common_heads(dest)
    build_scrfd(dest / "det_10g.onnx")
    build_arcface(dest / "w600k_r50.onnx", seed=50)


@pack("insightface-antelopev2", version=1)
def build_antelopev2(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    _common_heads(dest)
    build_scrfd(dest / "scrfd_10g_bnkps.onnx")
    build_arcface(dest / "glintr100.onnx", seed=100)
