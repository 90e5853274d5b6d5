"""Convolutions (onnx2flax/ops/conv.py: Conv, ConvTranspose, Col2Im) against onnxruntime:
the attributes torch exporters never emit (asymmetric pads, auto_pad, output_shape, groups
with dilations, 1-D and 3-D), and the module boundary."""

from __future__ import annotations

import numpy as np
import pytest

import onnx2flax
from helpers import check_graph, check_node, node_model
from onnx2flax.errors import OnnxConversionError

F32 = np.float32


RNG = np.random.default_rng(0)


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(F32)


def _normal(*shape):
    return RNG.standard_normal(shape).astype(F32)


# --- Conv ---------------------------------------------------------------------------------

@pytest.mark.parametrize("attrs", [
    dict(pads=[1, 0, 2, 1]),
    dict(pads=[0, 2, 1, 0], strides=[2, 1]),
    dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(auto_pad="SAME_LOWER", strides=[2, 2]),
    dict(auto_pad="VALID", strides=[1, 2]),
])
def test_conv_padding(rng, attrs):
    w = {"w": _rand(rng, 6, 3, 4, 3), "b": _rand(rng, 6)}
    check_node("Conv", {"x": _rand(rng, 2, 3, 9, 8)}, w, attrs=attrs)


def test_conv_without_bias_and_dynamic_weight(rng):
    converted, _, _ = check_node("Conv", {"x": _rand(rng, 1, 3, 5, 5),
                                          "w": _rand(rng, 4, 3, 3, 3)},
                                 attrs=dict(pads=[1, 1, 1, 1]))
    assert converted.variables["params"] == {}


@pytest.mark.parametrize("attrs, c_in, c_out", [
    (dict(group=3), 6, 9),                                           # grouped
    (dict(group=4), 4, 8),                                           # depthwise, multiplier 2
    (dict(group=2, dilations=[2, 3], pads=[2, 3, 1, 0]), 4, 6),      # grouped and dilated
    (dict(dilations=[2, 2], strides=[2, 1], pads=[2, 1, 1, 2]), 3, 5),
    (dict(kernel_shape=[3, 2], strides=[3, 2], pads=[0, 1, 2, 0]), 3, 4),
])
def test_conv_groups_and_dilations(rng, attrs, c_in, c_out):
    group = attrs.get("group", 1)
    kernel = attrs.get("kernel_shape", [3, 3])
    w = {"w": _rand(rng, c_out, c_in // group, *kernel), "b": _rand(rng, c_out)}
    check_node("Conv", {"x": _rand(rng, 2, c_in, 9, 8)}, w, attrs=attrs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spatial, kernel, attrs", [
    ((11,), (3,), dict(strides=[2], pads=[2, 1], dilations=[2])),
    ((11,), (4,), dict(auto_pad="SAME_LOWER", group=2)),
    ((5, 6, 7), (3, 2, 3), dict(strides=[1, 2, 2], pads=[1, 0, 1, 1, 1, 0])),
    ((5, 6, 7), (2, 2, 2), dict(group=2, dilations=[1, 2, 2])),
])
def test_conv_1d_and_3d(rng, spatial, kernel, attrs):
    group = attrs.get("group", 1)
    w = {"w": _rand(rng, 4, 4 // group, *kernel), "b": _rand(rng, 4)}
    check_node("Conv", {"x": _rand(rng, 2, 4, *spatial)}, w, attrs=attrs, rtol=1e-4, atol=1e-4)


def test_channels_first_module_boundary(rng):
    converted, _, _ = check_node("Conv", {"x": _rand(rng, 1, 3, 6, 6)},
                                 {"w": _rand(rng, 4, 3, 3, 3)}, channels_last=False)
    assert not converted.inputs[0].channels_last and not converted.outputs[0].channels_last


# --- ConvTranspose ------------------------------------------------------------------------

@pytest.mark.parametrize("attrs", [
    dict(strides=[2, 2], output_shape=[10, 11]),
    dict(strides=[2, 3], auto_pad="SAME_UPPER"),
    dict(strides=[2, 3], auto_pad="SAME_LOWER"),
    dict(strides=[2, 2], pads=[2, 0, 1, 1], output_padding=[1, 0]),
    dict(strides=[1, 1], pads=[0, 1, 1, 0], dilations=[2, 2]),
    dict(strides=[3, 2], group=2, output_padding=[2, 1]),
    dict(strides=[2, 1], group=4, dilations=[1, 2], pads=[1, 2, 0, 1]),   # depthwise, dilated
    dict(strides=[2, 2], kernel_shape=[3, 3], output_shape=[9, 10], pads=[1, 1, 1, 1]),
])
def test_conv_transpose_attributes(rng, attrs):
    group = attrs.get("group", 1)
    w = {"w": _rand(rng, 4, 4 // group, 3, 3), "b": _rand(rng, 4)}
    check_node("ConvTranspose", {"x": _rand(rng, 1, 4, 5, 5)}, w, attrs=attrs)


@pytest.mark.parametrize("spatial, kernel, attrs", [
    ((7,), (4,), dict(strides=[3], pads=[1, 2], output_padding=[1])),
    ((7,), (3,), dict(strides=[2], group=2, auto_pad="SAME_UPPER")),
    ((3, 4, 5), (2, 3, 2), dict(strides=[2, 1, 2], pads=[0, 1, 1, 1, 0, 0])),
    ((3, 4, 5), (3, 3, 3), dict(strides=[1, 2, 1], dilations=[2, 1, 1], output_padding=[0, 1, 0])),
])
def test_conv_transpose_1d_and_3d(rng, spatial, kernel, attrs):
    group = attrs.get("group", 1)
    w = {"w": _rand(rng, 4, 6 // group, *kernel), "b": _rand(rng, 6)}
    check_node("ConvTranspose", {"x": _rand(rng, 2, 4, *spatial)}, w, attrs=attrs, rtol=1e-4,
               atol=1e-4)


def test_conv_transpose_dynamic_weight(rng):
    converted, _, _ = check_node("ConvTranspose", {"x": _rand(rng, 1, 3, 4, 5),
                                                   "w": _rand(rng, 3, 2, 3, 3)},
                                 attrs=dict(strides=[2, 2], pads=[1, 0, 0, 1]))
    assert converted.variables["params"] == {}


# --- Col2Im -------------------------------------------------------------------------------


@pytest.mark.parametrize("image, block, attrs", [
    ([5, 5], [2, 2], {}),
    ([6, 7], [3, 2], {"strides": [2, 1], "pads": [1, 0, 1, 2], "dilations": [1, 2]}),
    ([4, 3, 5], [2, 2, 3], {"strides": [1, 1, 2]}),
])
def test_col2im(image, block, attrs):
    strides = attrs.get("strides", [1] * len(block))
    dil = attrs.get("dilations", [1] * len(block))
    pads = attrs.get("pads", [0] * 2 * len(block))
    n = len(block)
    count = int(np.prod([(s + pads[i] + pads[i + n] - (b - 1) * d - 1) // st + 1
                         for i, (s, b, d, st) in enumerate(zip(image, block, dil, strides))]))
    x = _normal(2, 3 * int(np.prod(block)), count)
    model = node_model("Col2Im", {"x": x}, attrs=attrs, opset=18,
                       consts={"image": np.array(image, np.int64),
                               "block": np.array(block, np.int64)})
    check_graph(model, {"x": x})


def test_col2im_wrong_column_count_is_refused():
    x = _normal(1, 4, 5)
    model = node_model("Col2Im", {"x": x}, opset=18,
                       consts={"image": np.array([3, 3], np.int64),
                               "block": np.array([2, 2], np.int64)})
    with pytest.raises(OnnxConversionError, match="Col2Im.*columns"):
        onnx2flax.convert(model).run({"x": x})
