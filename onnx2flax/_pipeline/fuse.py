"""Graph rewrites on weighted nodes, after normalization.

``drop_exporter_zero_biases`` (always): a bias that the exporter computed as zeros (dynamo
exports give every bias-free Conv ``Expand(CastLike(0, x), ...)``) is removed, so the layer
has no ``bias`` the PyTorch module never had, and no zero add.

``fold_batchnorm`` (inference only, ``convert(..., fold_batchnorm=True)``): fold
BatchNormalization into the Conv / ConvTranspose / Gemm that feeds it.

With ``s = scale / sqrt(var + epsilon)`` per output channel, ``BN(W * x + b)`` equals
``(W * s) * x + ((b - mean) * s + B)``: the producer's weight is scaled along its output
channels and its bias replaced, and the BatchNormalization node disappears (so does its
``batch_stats``). Applies only where the producer's output feeds that BatchNormalization
alone and every weight involved is a constant. The fused tensors keep their origin's name,
so the layer keeps its place in the parameter tree.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .._core.graph import Graph, Node

_PRODUCERS = ("Conv", "ConvTranspose", "Gemm")


def drop_exporter_zero_biases(graph: Graph) -> None:
    """Remove bias inputs that are all-zero constants computed by the graph (not weights)."""
    for i, node in enumerate(graph.nodes):
        if node.op_type not in _PRODUCERS or node.domain != "" or len(node.inputs) != 3:
            continue
        name = node.inputs[2]
        value = graph.constants.get(name)
        if (value is None or name in graph.initializers or name in graph.origins
                or value.dtype.kind != "f" or np.any(value)):
            continue
        graph.nodes[i] = replace(node, inputs=node.inputs[:2])


def fold_batchnorm(graph: Graph) -> int:
    """Rewrite ``graph`` in place; returns how many BatchNormalization nodes were folded."""
    producer = {out: node for node in graph.nodes for out in node.outputs if out}
    readers = graph.read_counts()

    fused: dict[Node, Node] = {}  # producer -> producer with the BatchNormalization folded in
    dropped: set[Node] = set()
    for bn in graph.nodes:
        if bn.op_type != "BatchNormalization" or bn.domain != "" or not bn.inputs:
            continue
        prev = producer.get(bn.inputs[0])
        if (prev is None or prev.op_type not in _PRODUCERS or prev.domain != ""
                or readers.get(bn.inputs[0]) != 1):
            continue
        node = _fuse(graph, prev, bn)
        if node is not None:
            fused[prev] = node
            dropped.add(bn)
    graph.nodes = [fused.get(n, n) for n in graph.nodes if n not in dropped]
    return len(dropped)


def _bn_factors(graph: Graph, bn: Node):
    """``(s, shift)`` with ``BN(y) = y * s + shift``, or None when BN cannot be folded."""
    if (len(bn.inputs) != 5 or len([o for o in bn.outputs if o]) != 1
            or int(bn.attrs.get("training_mode", 0)) or int(bn.attrs.get("spatial", 1)) != 1):
        return None
    values = [graph.constants.get(name) for name in bn.inputs[1:]]
    if any(v is None or v.dtype.kind != "f" or v.ndim != 1 for v in values):
        return None
    scale, bias, mean, var = (v.astype(np.float64) for v in values)
    if not scale.shape == bias.shape == mean.shape == var.shape:
        return None
    s = scale / np.sqrt(var + float(bn.attrs["epsilon"]))
    return s, bias - mean * s


def _fuse(graph: Graph, prev: Node, bn: Node) -> Node | None:
    factors = _bn_factors(graph, bn)
    weight = graph.constants.get(prev.inputs[1]) if len(prev.inputs) > 1 else None
    has_bias = len(prev.inputs) > 2 and bool(prev.inputs[2])
    bias = graph.constants.get(prev.inputs[2]) if has_bias else None
    if factors is None or weight is None or weight.dtype.kind != "f" or (has_bias and bias is None):
        return None
    s, shift = factors
    attrs = dict(prev.attrs)
    w = weight.astype(np.float64)
    if prev.op_type == "Conv":
        if weight.ndim < 3 or weight.shape[0] != s.size:
            return None
        w = w * s.reshape(-1, *[1] * (w.ndim - 1))
        b = np.zeros(s.size) if bias is None else bias.astype(np.float64)
    elif prev.op_type == "ConvTranspose":
        group = int(attrs["group"])
        c_in, c_out_g = weight.shape[:2] if weight.ndim >= 3 else (0, 0)
        if weight.ndim < 3 or group < 1 or c_in % group or c_out_g * group != s.size:
            return None
        split = w.reshape(group, c_in // group, c_out_g, *w.shape[2:])
        w = (split * s.reshape(group, 1, c_out_g, *[1] * (w.ndim - 2))).reshape(w.shape)
        b = np.zeros(s.size) if bias is None else bias.astype(np.float64)
    else:  # Gemm: Y = alpha * A' B' + beta * C, channels are the columns of Y
        trans_b = int(attrs["transB"])
        if weight.ndim != 2 or weight.shape[0 if trans_b else 1] != s.size:
            return None
        w = w * (s[:, None] if trans_b else s[None, :])
        beta = float(attrs["beta"])
        if bias is None:
            b = np.zeros(s.size)
        elif bias.size in (1, s.size) and (bias.ndim < 2 or bias.shape[0] == 1):
            b = np.broadcast_to(bias.astype(np.float64).reshape(-1), (s.size,)) * beta
        else:
            return None  # a C with one row per sample: not a per-channel bias
        attrs["beta"] = 1.0
    new_w = _constant(graph, prev.inputs[1], "bn_folded", w.astype(weight.dtype))
    new_b = _constant(graph, prev.inputs[2] if has_bias else prev.inputs[1], "bn_folded_bias",
                      (b * s + shift).astype(weight.dtype))
    return replace(prev, inputs=[prev.inputs[0], new_w, new_b], outputs=list(bn.outputs),
                   attrs=attrs)


def _constant(graph: Graph, source: str, tag: str, value: np.ndarray) -> str:
    """Store ``value`` under a fresh name whose origin is ``source``'s (for naming)."""
    name, n = f"{source}::{tag}", 0
    while name in graph.constants:
        n += 1
        name = f"{source}::{tag}{n}"
    graph.constants[name] = value
    graph.origins[name] = graph.origins.get(source, source)
    return name
