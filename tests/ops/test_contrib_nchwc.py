"""com.microsoft.nchwc: small hand-built CNNs saved by an onnxruntime session at
ORT_ENABLE_ALL (which rewrites them into the blocked-channel ops with block-reordered
weights) convert, match onnxruntime, and compile without a transpose."""

from __future__ import annotations

from collections import Counter

import jax
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _cases import transposes
from helpers import assert_matches_ort, make_model
from onnx import helper

RNG = np.random.default_rng(0)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _saved_by_onnxruntime(model, tmp_path):
    """The graph an onnxruntime session saves at ORT_ENABLE_ALL, and its op counts."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    saved = onnx.load(options.optimized_model_filepath)
    return saved, Counter((n.domain, n.op_type) for n in saved.graph.node)


def _conv(x, w, y, **attrs):
    return helper.make_node("Conv", [x, w, f"{w}_b"], [y], **attrs)


def _weights(name, o, i, k):
    return {name: _rand(o, i, k, k), f"{name}_b": _rand(o)}


@pytest.mark.parametrize("c_in", [3, 32])
def test_nchwc_cnn(tmp_path, c_in):
    """Plain (3 channels) and reordered (32) inputs; convolutions with fused activations
    and a fused residual sum, a depthwise one, 20 channels (padded to the block), max /
    average / global pools and nearest and linear upsampling."""
    nodes = [_conv("x", "w1", "a", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["a1"]),
             _conv("a1", "w2", "b", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["b", "a1"], ["s"]), helper.make_node("Relu", ["s"], ["s1"]),
             _conv("s1", "dw", "d", pads=[1, 1, 1, 1], group=32),
             helper.make_node("MaxPool", ["d"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
             _conv("m", "w3", "e", strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["e"], ["e1"]),
             helper.make_node("AveragePool", ["e1"], ["p"], kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["p", "", "up"], ["u"], mode="nearest"),
             helper.make_node("Resize", ["p", "", "up"], ["ul"], mode="linear",
                              coordinate_transformation_mode="asymmetric"),
             helper.make_node("GlobalAveragePool", ["u"], ["g"]),
             helper.make_node("GlobalMaxPool", ["ul"], ["gm"]),
             helper.make_node("Add", ["g", "gm"], ["y"])]
    consts = {**_weights("w1", 32, c_in, 3), **_weights("w2", 32, 32, 3),
              **_weights("dw", 32, 1, 3), **_weights("w3", 20, 32, 3),
              "up": np.array([1, 1, 2, 2], np.float32)}
    model = make_model(nodes, [("x", np.float32, [1, c_in, 16, 16])], [("y", np.float32, None)],
                       consts, opset=17)
    saved, ops = _saved_by_onnxruntime(model, tmp_path)
    assert ops[("com.microsoft.nchwc", "Conv")] == 4
    assert ("com.microsoft.nchwc", "ReorderOutput") in ops
    assert (("com.microsoft.nchwc", "ReorderInput") in ops) == (c_in == 32)
    x = _rand(1, c_in, 16, 16)
    converted, _, _ = assert_matches_ort(saved, {"x": x}, rtol=1e-4, atol=1e-4)
    # layout_only: XLA's gather lowering of the linear resize has one of its own
    assert transposes(converted, x, layout_only=True) == 0


def test_nchwc_nhwc_input_and_output(tmp_path):
    """An NHWC graph (Transpose -> Conv -> Transpose): onnxruntime folds the transposes into
    ReorderInput / ReorderOutput with ``channels_last=1``; the module takes and returns the
    NHWC tensors as they are, without a transpose."""
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
             _conv("xt", "w1", "a", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["a1"]),
             helper.make_node("Transpose", ["a1"], ["y"], perm=[0, 2, 3, 1])]
    model = make_model(nodes, [("x", np.float32, [1, 8, 8, 32])], [("y", np.float32, None)],
                       _weights("w1", 32, 32, 3), opset=17)
    saved, ops = _saved_by_onnxruntime(model, tmp_path)
    assert set(ops) == {("com.microsoft.nchwc", op)
                        for op in ("ReorderInput", "Conv", "ReorderOutput")}
    assert all(a.i == 1 for n in saved.graph.node for a in n.attribute
               if a.name == "channels_last")
    x = _rand(1, 8, 8, 32)
    converted, _, _ = assert_matches_ort(saved, {"x": x}, rtol=1e-4, atol=1e-4)
    # the NHWC input and output stay as they are at the module's boundary: no transpose
    assert not converted.inputs[0].channels_last
    hlo = jax.jit(converted.module.apply).lower(converted.variables, x).compile().as_text()
    assert " transpose(" not in hlo
