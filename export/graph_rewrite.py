"""Rewrites of the exported ONNX graphs that compute the same function with fewer passes over memory on ONNX Runtime's
CPU provider. The torch model (and so the weights' meaning) is untouched; only the graph's form changes.

Why: on CPU the convolutions run at the MatMul probe's speed in ORT's blocked NCHWc layout; what keeps the graphs
below it is GroupNorm, which ORT cannot run in NCHWc (a per-sample, per-channel scale has no NCHWc kernel), so each
GroupNorm costs layout reorders plus several full passes over the activation. This module removes one of those passes.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

# BatchNormalization computes x·γ/√(var + ε) + β − mean·γ/√(var + ε); with mean 0 and var + ε = 1 exactly in fp32
# that is x·γ + β. ε is cuDNN's smallest (1e-5: ORT's CUDA kernel raises a smaller ε to it, with a warning per node),
# var is 1 − ε rounded to fp32, whose fp32 sum with ε is exactly 1 (asserted below; in double it is 1 within 1.4e-8,
# under half an fp32 ulp, so a kernel that adds in double rounds to the same 1).
_BN_EPS = np.float32(1e-5)
_BN_VAR = np.float32(1) - _BN_EPS
assert _BN_VAR + _BN_EPS == np.float32(1)


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _channel_vector(inits: dict[str, onnx.TensorProto], name: str) -> np.ndarray | None:
    """An fp32 constant of shape [C, 1, 1] (GroupNorm's γ or β as the exporter writes them) as [C], else None."""
    if name not in inits:
        return None
    a = numpy_helper.to_array(inits[name])
    if a.dtype != np.float32 or a.ndim != 3 or a.shape[1:] != (1, 1):
        return None
    return a.reshape(-1)


def fuse_group_norm_affine(proto: onnx.ModelProto) -> int:
    """Replace GroupNorm's affine `Mul(γ) → Add(β)` by one BatchNormalization (mean 0, var + ε = 1).

    torch's exporter lowers GroupNorm to Reshape → InstanceNormalization (unit scale, per group) → Reshape → Mul(γ) →
    Add(β); Mul and Add each read and write the whole activation. BatchNormalization with scale γ, bias β, mean 0 and
    var + ε = 1 (see _BN_EPS) is the same x·γ + β in one pass. The statistics stay in InstanceNormalization (two-pass
    mean and variance: no E[x²] − E[x]² cancellation).
    Edits `proto` in place; returns the number of GroupNorms rewritten.
    """
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    users = _consumers(graph)
    graph_outputs = {o.name for o in graph.output}
    replaced: dict[int, onnx.NodeProto | None] = {}  # id(node) → its replacement (None: drop)
    new_inits: list[onnx.TensorProto] = []
    for norm in graph.node:
        if norm.op_type != "InstanceNormalization" or len(users.get(norm.output[0], [])) != 1:
            continue
        reshape = users[norm.output[0]][0]
        if reshape.op_type != "Reshape" or len(users.get(reshape.output[0], [])) != 1:
            continue
        mul = users[reshape.output[0]][0]
        if mul.op_type != "Mul" or mul.input[0] != reshape.output[0] or len(users.get(mul.output[0], [])) != 1:
            continue
        add = users[mul.output[0]][0]
        if add.op_type != "Add" or add.input[0] != mul.output[0] or mul.output[0] in graph_outputs:
            continue
        gamma, beta = _channel_vector(inits, mul.input[1]), _channel_vector(inits, add.input[1])
        if gamma is None or beta is None or gamma.shape != beta.shape:
            continue
        prefix = f"{add.output[0]}_affine"
        c = gamma.size
        new_inits += [numpy_helper.from_array(gamma, f"{prefix}_scale"),
                      numpy_helper.from_array(beta, f"{prefix}_bias"),
                      numpy_helper.from_array(np.zeros(c, np.float32), f"{prefix}_mean"),
                      numpy_helper.from_array(np.full(c, _BN_VAR, np.float32), f"{prefix}_var")]
        replaced[id(mul)] = None
        replaced[id(add)] = helper.make_node(
            "BatchNormalization", [reshape.output[0]] + [f"{prefix}_{k}" for k in ("scale", "bias", "mean", "var")],
            [add.output[0]], name=f"{prefix}_bn", epsilon=float(_BN_EPS))
    if not replaced:
        return 0
    nodes = [replaced.get(id(n), n) for n in graph.node]
    del graph.node[:]
    graph.node.extend(n for n in nodes if n is not None)
    graph.initializer.extend(new_inits)
    # γ and β are now held by the BatchNormalization inputs; drop the [C, 1, 1] copies nothing reads any more.
    used = {name for n in graph.node for name in n.input} | graph_outputs
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return len(replaced) // 2
