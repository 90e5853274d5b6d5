"""CenterCropPad, ReverseSequence, Col2Im, Det and TensorScatter against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import after_conv, check_graph, node_model

import onnx2flax
from onnx2flax.errors import OnnxConversionError

RNG = np.random.default_rng(0)


def _normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("shape, axes", [
    ([2, 3, 2, 8], None),        # crop H (odd difference), pad W
    ([4, 10], [2, 3]),           # crop H by one, pad W by three
    ([6], [-1]),
    ([3, 6], [1, 3]),            # channels: unchanged; W cropped by two
])
def test_center_crop_pad_held_channels_last(shape, axes):
    """After a Conv (held channels-last), axes are remapped and the layout kept."""
    attrs = {} if axes is None else {"axes": axes}
    model, feeds = after_conv([("CenterCropPad", ["shape"], attrs, np.float32)],
                              consts={"shape": np.array(shape, np.int64)},
                              opset=18, shape=(2, 3, 5, 7))
    check_graph(model, feeds)


def test_center_crop_pad_shape_mismatch_is_refused():
    x = _normal(2, 3)
    model = node_model("CenterCropPad", {"x": x}, consts={"s": np.array([2], np.int64)},
                       opset=18)
    with pytest.raises(OnnxConversionError, match="CenterCropPad.*one non-negative size"):
        onnx2flax.convert(model).run({"x": x})


@pytest.mark.parametrize("time_axis, batch_axis, shape", [(0, 1, (5, 4, 3)), (1, 0, (4, 5)),
                                                          (0, 1, (5, 4))])
def test_reverse_sequence(time_axis, batch_axis, shape):
    x = _normal(*shape)
    lens = np.array([5, 1, 3, 2], np.int64)
    model = node_model("ReverseSequence", {"x": x, "lens": lens}, opset=10,
                       attrs={"time_axis": time_axis, "batch_axis": batch_axis})
    check_graph(model, {"x": x, "lens": lens})


def test_reverse_sequence_same_axes_are_refused():
    x, lens = _normal(3, 3), np.array([1, 2, 3], np.int64)
    model = node_model("ReverseSequence", {"x": x, "lens": lens}, opset=10,
                       attrs={"time_axis": 0, "batch_axis": 0})
    with pytest.raises(OnnxConversionError, match="ReverseSequence.*time_axis"):
        onnx2flax.convert(model).run({"x": x, "lens": lens})


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


@pytest.mark.parametrize("shape", [(3, 3), (2, 4, 5, 5), (1, 1)])
def test_det(shape):
    x = _normal(*shape)
    check_graph(node_model("Det", {"x": x}, opset=11), {"x": x}, rtol=1e-4, atol=1e-4)


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
