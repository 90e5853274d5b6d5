"""Gather/Scatter families, TensorScatter, OneHot and TopK against onnxruntime. Each test puts several
variants in one model (one compilation) to keep the suite fast."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import onnx2flax
from helpers import check_graph, check_node, node_model
from onnx2flax.errors import OnnxConversionError

I64 = np.int64
RNG = np.random.default_rng(0)


def _normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def node(op, inputs, out, **attrs):
    return helper.make_node(op, inputs, [out], **attrs)


@pytest.fixture
def x(rng):
    return rng.standard_normal((3, 4, 5)).astype(np.float32)


@pytest.mark.parametrize("opset", [1, 11, 13])
def test_gather(x, opset):
    nodes = [node("Gather", ["x", "i0"], "y0"),
             node("Gather", ["x", "i1"], "y1", axis=1),
             node("Gather", ["x", "i2"], "y2", axis=-1)]
    consts = {"i0": np.array([2, 0], I64), "i1": np.array([[0, 3], [1, 1]], I64),
              "i2": np.array(4, I64)}
    if opset >= 11:  # negative indices
        consts["i1"] = np.array([[0, -1], [-4, 1]], I64)
    check_graph(nodes, {"x": x}, consts, opset=opset)


def test_gather_runtime_indices_and_embedding_weight(rng):
    """Indices from the model's inputs; data an initializer (an embedding table)."""
    table = rng.standard_normal((10, 4)).astype(np.float32)
    ids = np.array([[1, 9, -1], [0, 0, 3]], I64)
    check_node("Gather", {"ids": ids}, {"table": table}, inputs=["table", "ids"],
               out_dtypes=[np.float32])


@pytest.mark.parametrize("opset", [11, 13])
def test_gather_elements(x, opset):
    nodes = [node("GatherElements", ["x", "i0"], "y0", axis=0),
             node("GatherElements", ["x", "i1"], "y1", axis=-1)]
    rng = np.random.default_rng(1)
    consts = {"i0": rng.integers(-3, 3, (2, 4, 5)), "i1": rng.integers(-5, 5, (3, 2, 2))}
    check_graph(nodes, {"x": x}, consts, opset=opset)


@pytest.mark.parametrize("opset", [11, 12, 13])
def test_gather_nd(x, opset):
    nodes = [node("GatherND", ["x", "i0"], "y0"), node("GatherND", ["x", "i1"], "y1")]
    consts = {"i0": np.array([[0, 1], [2, -1]], I64), "i1": np.array([[[1, 2, 3]], [[0, 0, -1]]], I64)}
    if opset >= 12:
        nodes.append(node("GatherND", ["x", "i2"], "y2", batch_dims=1))
        nodes.append(node("GatherND", ["x", "i3"], "y3", batch_dims=2))
        consts["i2"] = np.array([[[1], [0]], [[3], [2]], [[0], [0]]], I64)
        consts["i3"] = np.arange(12).reshape(3, 4, 1) % 5
    check_graph(nodes, {"x": x}, consts, opset=opset)


@pytest.mark.parametrize("opset, reductions", [
    (11, ["none"]), (13, ["none"]), (16, ["none", "add", "mul"]),
    (18, ["none", "add", "mul", "max", "min"])])
def test_scatter_elements(x, opset, reductions):
    rng = np.random.default_rng(2)
    # Unique indices along axis 1 for 'none' (duplicates are undefined there).
    unique = np.stack([rng.permutation(4)[:2] for _ in range(3 * 5)]).reshape(3, 5, 2)
    consts = {"iu": np.moveaxis(unique, 2, 1) - 4, "idup": rng.integers(0, 5, (3, 4, 3)),
              "u1": rng.standard_normal((3, 2, 5)).astype(np.float32),
              "u2": rng.standard_normal((3, 4, 3)).astype(np.float32)}
    nodes = []
    for r in reductions:
        attrs = {} if opset < 16 else dict(reduction=r)
        if r == "none":
            nodes.append(node("ScatterElements", ["x", "iu", "u1"], "y_none", axis=1, **attrs))
        else:
            nodes.append(node("ScatterElements", ["x", "idup", "u2"], f"y_{r}", axis=-1, **attrs))
    check_graph(nodes, {"x": x}, consts, opset=opset)


def test_scatter_deprecated_and_runtime_updates(x, rng):
    consts = {"i": np.array([[[1, 0, 2, 1, 0]]], I64)}
    u = rng.standard_normal((1, 1, 5)).astype(np.float32)
    check_graph([node("Scatter", ["x", "i", "u"], "y", axis=1)], {"x": x, "u": u}, consts,
                opset=9)


@pytest.mark.parametrize("opset, reductions", [
    (11, ["none"]), (16, ["none", "add", "mul"]), (18, ["none", "add", "mul", "max", "min"])])
def test_scatter_nd(x, opset, reductions):
    rng = np.random.default_rng(3)
    consts = {"i1": np.array([[2], [0]], I64), "u1": rng.standard_normal((2, 4, 5)).astype(np.float32),
              "i2": np.array([[0, 1], [0, 1], [-1, 3]], I64),
              "u2": rng.standard_normal((3, 5)).astype(np.float32)}
    nodes = []
    for r in reductions:
        attrs = {} if opset < 16 else dict(reduction=r)
        nodes.append(node("ScatterND", ["x", "i1", "u1"], f"a_{r}", **attrs))
        if r != "none":  # duplicate index rows: reductions accumulate
            nodes.append(node("ScatterND", ["x", "i2", "u2"], f"b_{r}", **attrs))
    check_graph(nodes, {"x": x}, consts, opset=opset)


@pytest.mark.parametrize("opset", [9, 11])
def test_one_hot(opset):
    idx = np.array([[0, 2, 5], [1, -1, 4]], I64 if opset >= 11 else I64)
    if opset < 11:
        idx = np.abs(idx)
    consts = {"d": np.array(5, I64), "v": np.array([-1.0, 3.0], np.float32),
              "vi": np.array([0, 1], I64)}
    nodes = [node("OneHot", ["idx", "d", "v"], "y0"),
             node("OneHot", ["idx", "d", "v"], "y1", axis=0),
             node("OneHot", ["idx", "d", "vi"], "y2", axis=1)]
    check_graph(nodes, {"idx": idx}, consts, opset=opset,
                out_dtypes={"y0": np.float32, "y1": np.float32, "y2": I64})


@pytest.mark.parametrize("opset", [1, 10, 11])
def test_top_k(rng, opset):
    x = rng.integers(0, 6, (3, 7)).astype(np.float32)  # ties: lower index first
    outs = {"v0": np.float32, "i0": I64, "v1": np.float32, "i1": I64}
    if opset == 1:
        nodes = [helper.make_node("TopK", ["x"], ["v0", "i0"], k=3),
                 helper.make_node("TopK", ["x"], ["v1", "i1"], k=2, axis=0)]
        check_graph(nodes, {"x": x}, opset=opset, out_dtypes=outs, reference="onnx")
        return
    consts = {"k3": np.array([3], I64), "k2": np.array([2], I64)}
    nodes = [helper.make_node("TopK", ["x", "k3"], ["v0", "i0"]),
             helper.make_node("TopK", ["x", "k2"], ["v1", "i1"], axis=0)]
    if opset >= 11:
        nodes.append(helper.make_node("TopK", ["x", "k3"], ["v2", "i2"], largest=0))
        nodes.append(helper.make_node("TopK", ["xi", "k2"], ["v3", "i3"], axis=0, largest=0,
                                      sorted=1))
        outs.update(v2=np.float32, i2=I64, v3=np.int32, i3=I64)
    check_graph(nodes, {"x": x, "xi": x.astype(np.int32) - 3}, consts, opset=opset,
                out_dtypes=outs)


# --- TensorScatter ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["linear", "circular"])
@pytest.mark.parametrize("axis, past_shape, update_len", [(-2, (3, 2, 6, 4), 3),
                                                          (1, (3, 6, 5), 2),
                                                          (2, (3, 2, 6), 6)])
@pytest.mark.parametrize("with_indices", [True, False])
def test_tensor_scatter(mode, axis, past_shape, update_len, with_indices):
    past = _normal(*past_shape)
    shape = list(past_shape)
    shape[axis] = update_len
    update = _normal(*shape)
    feeds = {"past": past, "update": update}
    length = past_shape[axis]
    if with_indices:  # circular mode wraps around; linear writes stay inside
        feeds["where"] = (np.array([0, length - 1, 2]) if mode == "circular"
                          else np.array([0, length - update_len, 1]).clip(0, length - update_len)
                          ).astype(np.int64)
    model = node_model("TensorScatter", feeds, attrs={"mode": mode, "axis": axis}, opset=24)
    check_graph(model, feeds)


def test_tensor_scatter_bad_mode_is_refused():
    feeds = {"past": _normal(1, 4, 2), "update": _normal(1, 2, 2)}
    model = node_model("TensorScatter", feeds, attrs={"mode": "wrap"}, opset=24)
    with pytest.raises(OnnxConversionError, match="TensorScatter.*mode"):
        onnx2flax.convert(model).run(feeds)
