"""LpPool, GlobalLpPool and MaxUnpool against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import check_graph, make_model, node_model, sandwich
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import onnx2flax
from onnx2flax.errors import OnnxConversionError

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("attrs, opset", [
    ({"kernel_shape": [2, 2]}, 11),
    ({"kernel_shape": [3, 2], "p": 3, "strides": [2, 1], "pads": [1, 0, 1, 1]}, 11),
    ({"kernel_shape": [2, 2], "p": 1, "auto_pad": "SAME_UPPER", "strides": [2, 2]}, 11),
    ({"kernel_shape": [3, 3], "auto_pad": "SAME_LOWER"}, 11),
    ({"kernel_shape": [2, 2], "dilations": [2, 1], "ceil_mode": 1, "strides": [2, 2]}, 18),
])
def test_lp_pool_channels_last(attrs, opset):
    check_graph(*sandwich("LpPool", attrs=attrs, opset=opset, shape=(2, 3, 7, 6)), rtol=1e-4)


@pytest.mark.parametrize("shape, k", [((2, 3, 9), [3]), ((1, 2, 4, 5, 6), [2, 3, 2])])
def test_lp_pool_1d_3d_onnx_order(shape, k):
    x = RNG.standard_normal(shape).astype(np.float32)
    model = node_model("LpPool", {"x": x}, attrs={"kernel_shape": k, "p": 3}, opset=18)
    check_graph(model, {"x": x}, rtol=1e-4, channels_last=False)


def test_lp_pool_v1_float_p():
    """Opset 1 (p a float attribute), against ONNX's reference (onnxruntime lacks it)."""
    x = RNG.standard_normal((2, 3, 5, 6)).astype(np.float32)
    model = node_model("LpPool", {"x": x}, attrs={"kernel_shape": [2, 3], "p": 2.5}, opset=1)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(onnx2flax.convert(model).run({"x": x})[0], want, rtol=1e-5)


@pytest.mark.parametrize("p", [1, 2, 3])
def test_global_lp_pool(p):
    check_graph(*sandwich("GlobalLpPool", attrs={"p": p}, opset=2), rtol=1e-4)


def test_lp_pool_bad_p_is_refused():
    x = RNG.standard_normal((1, 2, 4, 4)).astype(np.float32)
    model = node_model("LpPool", {"x": x}, attrs={"kernel_shape": [2, 2], "p": 0}, opset=18)
    with pytest.raises(OnnxConversionError, match="LpPool.*p must be positive"):
        onnx2flax.convert(model).run({"x": x})


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("pool, in_shape, out_shape", [
    ({"kernel_shape": [2, 2], "strides": [2, 2]}, [2, 3, 6, 8], None),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, [1, 2, 7, 7], None),
    ({"kernel_shape": [2, 2], "strides": [2, 2]}, [1, 2, 5, 7], [1, 2, 5, 7]),  # odd sizes
    ({"kernel_shape": [2], "strides": [2]}, [2, 3, 9], [2, 3, 9]),
])
def test_max_pool_then_unpool(pool, in_shape, out_shape, channels_last):
    """MaxPool's values and Indices unpooled: the maxima back in place, zeros elsewhere
    (``output_shape`` restores odd input sizes, which Indices then refer to)."""
    nodes = [helper.make_node("MaxPool", ["x"], ["v", "i"], **pool)]
    unpool = {k: v for k, v in pool.items()}
    inputs = ["v", "i"] + (["shape"] if out_shape else [])
    nodes.append(helper.make_node("MaxUnpool", inputs, ["y"], **unpool))
    consts = {"shape": np.array(out_shape, np.int64)} if out_shape else {}
    model = make_model(nodes, [("x", np.float32, in_shape)], [("y", np.float32, None)],
                       consts, opset=11)
    x = RNG.standard_normal(in_shape).astype(np.float32)
    check_graph(model, {"x": x}, channels_last=channels_last)


def test_max_unpool_with_smaller_output_shape_is_refused():
    x = RNG.standard_normal((1, 1, 2, 2)).astype(np.float32)
    i = np.array([0, 2, 8, 10], np.int64).reshape(1, 1, 2, 2)
    model = node_model("MaxUnpool", {"x": x}, attrs={"kernel_shape": [2, 2]},
                       consts={"i": i, "shape": np.array([1, 1, 3], np.int64)}, opset=11)
    with pytest.raises(OnnxConversionError, match="MaxUnpool.*output shape"):
        onnx2flax.convert(model).run({"x": x})


def test_max_unpool_indices_input():
    """Indices given as a graph input (int64), not computed by a MaxPool."""
    x = RNG.standard_normal((2, 2, 2, 3)).astype(np.float32)
    i = RNG.permutation(2 * 2 * 4 * 6)[:24].reshape(2, 2, 2, 3).astype(np.int64)
    model = make_model([helper.make_node("MaxUnpool", ["x", "i"], ["y"], kernel_shape=[2, 2],
                                         strides=[2, 2])],
                       [("x", np.float32, x.shape), ("i", TensorProto.INT64, i.shape)],
                       [("y", np.float32, None)], opset=11)
    check_graph(model, {"x": x, "i": i})
