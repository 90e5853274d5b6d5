"""ONNX attributes of the layer ops that torch exporters never emit (asymmetric pads,
auto_pad, output_shape, Gemm's alpha/beta/transA, ...), checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from helpers import check_graph, make_model

F32 = np.float32


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(F32)


def _one_node(op, x_shape, weights, opset=17, **attrs):
    names = ["x", *weights]
    node = helper.make_node(op, names, ["y"], **attrs)
    return make_model([node], [("x", F32, x_shape)], [("y", F32, None)], weights, opset=opset)


@pytest.mark.parametrize("attrs", [
    dict(pads=[1, 0, 2, 1]),
    dict(pads=[0, 2, 1, 0], strides=[2, 1]),
    dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(auto_pad="SAME_LOWER", strides=[2, 2]),
    dict(auto_pad="VALID", strides=[1, 2]),
])
def test_conv_padding(rng, attrs):
    w = {"w": _rand(rng, 6, 3, 4, 3), "b": _rand(rng, 6)}
    model = _one_node("Conv", (2, 3, 9, 8), w, **attrs)
    check_graph(model, {"x": _rand(rng, 2, 3, 9, 8)})


def test_conv_without_bias_and_dynamic_weight(rng):
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    model = make_model([node], [("x", F32, (1, 3, 5, 5)), ("w", F32, (4, 3, 3, 3))],
                       [("y", F32, None)])
    converted, _, _ = check_graph(model, {"x": _rand(rng, 1, 3, 5, 5),
                                                 "w": _rand(rng, 4, 3, 3, 3)})
    assert converted.variables["params"] == {}


@pytest.mark.parametrize("attrs", [
    dict(strides=[2, 2], output_shape=[10, 11]),
    dict(strides=[2, 3], auto_pad="SAME_UPPER"),
    dict(strides=[2, 3], auto_pad="SAME_LOWER"),
    dict(strides=[2, 2], pads=[2, 0, 1, 1], output_padding=[1, 0]),
    dict(strides=[1, 1], pads=[0, 1, 1, 0], dilations=[2, 2]),
    dict(strides=[3, 2], group=2, output_padding=[2, 1]),
])
def test_conv_transpose_attributes(rng, attrs):
    group = attrs.get("group", 1)
    w = {"w": _rand(rng, 4, 4 // group, 3, 3), "b": _rand(rng, 4)}
    model = _one_node("ConvTranspose", (1, 4, 5, 5), w, **attrs)
    check_graph(model, {"x": _rand(rng, 1, 4, 5, 5)})


@pytest.mark.parametrize("attrs,c_shape", [
    (dict(alpha=0.5, beta=2.0, transB=1), (3,)),
    (dict(transA=1), (1, 3)),
    (dict(transA=1, transB=1, alpha=1.5), ()),
    (dict(beta=0.25), (4, 3)),  # a full [M, N] C cannot be a Dense bias: plain matmul
    (dict(), None),
])
def test_gemm_attributes(rng, attrs, c_shape):
    trans_a, trans_b = attrs.get("transA", 0), attrs.get("transB", 0)
    a_shape = (5, 4) if trans_a else (4, 5)
    weights = {"b": _rand(rng, *((3, 5) if trans_b else (5, 3)))}
    if c_shape is not None:
        weights["c"] = _rand(rng, *c_shape)
    model = _one_node("Gemm", a_shape, weights, **attrs)
    converted, _, _ = check_graph(model, {"x": _rand(rng, *a_shape)})
    dense = c_shape != (4, 3)
    layer = converted.variables["params"]["b"]
    assert isinstance(layer, dict) == dense  # a Dense layer named after its weight, or a param


def test_matmul_with_weight_is_dense_on_any_rank(rng):
    model = _one_node("MatMul", (2, 3, 5), {"w": _rand(rng, 5, 7)})
    converted, _, _ = check_graph(model, {"x": _rand(rng, 2, 3, 5)})
    (layer,) = converted.variables["params"].values()
    assert layer["kernel"].shape == (5, 7)


@pytest.mark.parametrize("opset", [7, 9, 15])
def test_batchnorm_epsilon_and_opsets(rng, opset):
    c = 5
    weights = {"s": _rand(rng, c), "b": _rand(rng, c), "m": _rand(rng, c),
               "v": np.abs(_rand(rng, c)) + 0.1}
    model = _one_node("BatchNormalization", (2, c, 4, 3), weights, opset=opset, epsilon=1e-2)
    converted, _, _ = check_graph(model, {"x": _rand(rng, 2, c, 4, 3)})
    assert set(converted.variables["batch_stats"]) == set(converted.variables["params"])


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2])),
    ("MaxPool", dict(kernel_shape=[2, 3], auto_pad="SAME_LOWER", strides=[2, 2])),
    ("AveragePool", dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2])),
    ("AveragePool", dict(kernel_shape=[3, 2], pads=[2, 0, 1, 1], count_include_pad=1)),
    ("AveragePool", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2], ceil_mode=1,
                         dilations=[2, 1])),
    ("MaxPool", dict(kernel_shape=[3, 3], pads=[1, 0, 1, 2], strides=[2, 3], ceil_mode=1)),
    ("GlobalAveragePool", {}),
    ("GlobalMaxPool", {}),
])
def test_pool_attributes(rng, op, attrs):
    model = _one_node(op, (2, 3, 9, 8), {}, opset=19, **attrs)
    check_graph(model, {"x": _rand(rng, 2, 3, 9, 8)})


def test_channels_first_module_boundary(rng):
    model = _one_node("Conv", (1, 3, 6, 6), {"w": _rand(rng, 4, 3, 3, 3)})
    converted, _, _ = check_graph(model, {"x": _rand(rng, 1, 3, 6, 6)}, channels_last=False)
    assert not converted.inputs[0].channels_last and not converted.outputs[0].channels_last
