"""Version differences handled by registering a handler per op version (``since=``)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import onnx2flax
from helpers import convert_and_run, make_model
from onnx2flax.errors import InvalidModelError, UnsupportedOpError

F32 = np.float32


def _x(*shape):
    return np.random.default_rng(0).standard_normal(shape).astype(F32)


@pytest.mark.parametrize("opset, mask_dtype", [(9, F32), (10, bool)])
def test_dropout_mask_is_bool_from_opset_10(opset, mask_dtype):
    x = _x(2, 3)
    model = make_model([helper.make_node("Dropout", ["x"], ["y", "mask"])], [("x", F32, x.shape)],
                       [("y", F32, None), ("mask", mask_dtype, None)], opset=opset)
    y, mask = convert_and_run(model, {"x": x})
    np.testing.assert_array_equal(y, x)
    assert mask.dtype == mask_dtype and mask.all()


def test_pad_wrap_needs_opset_19():
    x = _x(2, 3)
    model = make_model([helper.make_node("Pad", ["x", "pads"], ["y"], mode="wrap")],
                       [("x", F32, x.shape)], [("y", F32, None)],
                       {"pads": np.array([0, 1, 0, 1], np.int64)}, opset=18)
    with pytest.raises(UnsupportedOpError, match="wrap from opset 19"):
        onnx2flax.convert(model).run({"x": x})


def test_quantize_linear_takes_a_per_axis_scale_from_opset_13():
    x = _x(2, 3)
    scale = np.array([0.1, 0.2, 0.3], F32)
    for opset in (10, 13):
        model = make_model([helper.make_node("QuantizeLinear", ["x", "s"], ["y"])],
                           [("x", F32, x.shape)], [("y", np.uint8, None)], {"s": scale},
                           opset=opset)
        if opset == 10:
            with pytest.raises(InvalidModelError, match="scalar before opset 13"):
                onnx2flax.convert(model).run({"x": x})
        else:
            convert_and_run(model, {"x": x})


@pytest.mark.parametrize("opset", [23, 25])
def test_attention_head_counts_with_4d_inputs_are_refused_from_opset_25(opset):
    q = _x(1, 2, 3, 4)
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], q_num_heads=2, kv_num_heads=2)
    model = make_model([node], [(n, F32, q.shape) for n in "qkv"], [("y", F32, None)],
                       opset=opset)
    feeds = {n: q for n in "qkv"}
    if opset == 25:
        with pytest.raises(InvalidModelError, match="do not apply to 4-D inputs"):
            onnx2flax.convert(model).run(feeds)
    else:
        convert_and_run(model, feeds)


def test_grid_sample_16_takes_4d_inputs_only():
    x, grid = _x(1, 1, 2, 2, 2), np.zeros((1, 2, 2, 2, 3), F32)
    model = make_model([helper.make_node("GridSample", ["x", "grid"], ["y"])],
                       [("x", F32, x.shape), ("grid", F32, grid.shape)], [("y", F32, None)],
                       opset=16)
    with pytest.raises(InvalidModelError, match="4-D inputs only"):
        onnx2flax.convert(model).run({"x": x, "grid": grid})
