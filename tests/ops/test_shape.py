"""Shape ops (onnx2flax/ops/shape.py) against onnxruntime: every attribute and opset form
(data movement: test_movement.py)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnx2flax
from helpers import (check_graph, check_node, check_source_at_sizes, convert_and_run,
                     make_model)
from onnx2flax.errors import UnsupportedOpError

I64 = np.int64
INT64_MAX, INT64_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min


@pytest.fixture
def x4(rng):
    return rng.standard_normal((2, 3, 4, 5)).astype(np.float32)


# --- Reshape, Flatten, Shape, Size ----------------------------------------------------------


@pytest.mark.parametrize("shape, allowzero", [([0, -1], 0), ([3, 0, 2, 20], 1), ([-1], 0),
                                              ([2, 0, 20], 0)])
def test_reshape(x4, shape, allowzero):
    x = x4 if allowzero == 0 or 0 not in shape else np.zeros((3, 0, 2, 20), np.float32)
    check_node("Reshape", {"x": x}, {"s": np.array(shape, I64)}, opset=14,
               attrs=dict(allowzero=allowzero))


def test_reshape_opset1_and_flatten(x4):
    check_node("Reshape", {"x": x4}, opset=1, attrs=dict(shape=[6, -1]))
    for axis in (0, 2, 4, -1):
        check_node("Flatten", {"x": x4}, opset=13, attrs=dict(axis=axis))


@pytest.mark.parametrize("start, end", [(None, None), (1, None), (-3, -1), (2, 100)])
def test_shape_and_size(x4, start, end):
    attrs = {k: v for k, v in dict(start=start, end=end).items() if v is not None}
    check_node("Shape", {"x": x4}, opset=15, attrs=attrs, out_dtypes=[I64])
    check_node("Size", {"x": x4}, out_dtypes=[I64])


# --- Cast, CastLike ----------------------------------------------------------------------

@pytest.mark.parametrize("to, opset", [(TensorProto.INT32, 13), (TensorProto.BOOL, 13),
                                       (TensorProto.FLOAT16, 13), (TensorProto.DOUBLE, 6),
                                       (TensorProto.UINT8, 21), (TensorProto.INT64, 19)])
def test_cast(rng, to, opset):
    x = (rng.standard_normal((3, 4)) * 5).astype(np.float32)
    x[0, 0] = 0.0
    dtype = helper.tensor_dtype_to_np_dtype(to)
    if dtype == np.uint8:
        x = np.abs(x)
    check_node("Cast", {"x": x}, opset=opset, attrs=dict(to=to), out_dtypes=[dtype],
               rtol=1e-3, atol=1e-3)


def test_cast_float8_saturates(rng):
    x = np.array([1.0, -3.3, 1e6, -1e6, 0.1], np.float32)
    nodes = [helper.make_node("Cast", ["x"], ["f8"], to=TensorProto.FLOAT8E4M3FN),
             helper.make_node("Cast", ["f8"], ["y"], to=TensorProto.FLOAT)]
    model = make_model(nodes, [("x", np.float32, [5])], [("y", np.float32, None)], opset=19)
    check_graph(model, {"x": x})


def test_cast_like(rng):
    x = (rng.standard_normal((3, 4)) * 5).astype(np.float32)
    check_node("CastLike", {"x": x}, {"t": np.zeros(2, np.int32)}, out_dtypes=[np.int32])


# --- Expand, Tile, ConstantOfShape, Range, EyeLike, Trilu -----------------------------------

@pytest.mark.parametrize("opset", [8, 13])
@pytest.mark.parametrize("shape", [[2, 1, 4], [3, 1, 1, 1], [1]])
def test_expand(rng, opset, shape):
    x = rng.standard_normal((3, 1)).astype(np.float32)
    check_node("Expand", {"x": x}, {"s": np.array(shape, I64)}, opset=opset)


@pytest.mark.parametrize("opset", [6, 13])
def test_tile(x4, opset):
    check_node("Tile", {"x": x4}, {"r": np.array([1, 2, 1, 3], I64)}, opset=opset)


def test_tile_opset1(x4):
    model = make_model([helper.make_node("Tile", ["x", "t", "a"], ["y"])],
                       [("x", np.float32, list(x4.shape))], [("y", np.float32, None)],
                       {"t": np.array(3, I64), "a": np.array(2, I64)}, opset=1)
    np.testing.assert_array_equal(convert_and_run(model, {"x": x4})[0],
                                  np.tile(x4, (1, 1, 3, 1)))


def test_constant_of_shape_and_range_from_shapes(x4):
    """Both fold at trace time when fed by Shape (the dynamic-shape idiom)."""
    value = helper.make_tensor("v", TensorProto.FLOAT, [1], [2.5])
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("ConstantOfShape", ["s"], ["c"], value=value),
             helper.make_node("Add", ["x", "c"], ["y0"]),
             helper.make_node("Gather", ["s", "three"], ["n"]),
             helper.make_node("Range", ["zero", "n", "two"], ["y1"])]
    model = make_model(nodes, [("x", np.float32, ["batch", 3, 4, 5])],
                       [("y0", np.float32, None), ("y1", I64, None)],
                       {"three": np.array(3, I64), "zero": np.array(0, I64),
                        "two": np.array(2, I64)}, opset=11)
    check_graph(model, {"x": x4})


@pytest.mark.parametrize("k, dtype", [(0, None), (2, TensorProto.INT32), (-1, TensorProto.FLOAT)])
def test_eye_like(rng, k, dtype):
    x = rng.standard_normal((3, 5)).astype(np.float32)
    attrs = dict(k=k) if dtype is None else dict(k=k, dtype=dtype)
    out = np.float32 if dtype is None else helper.tensor_dtype_to_np_dtype(dtype)
    check_node("EyeLike", {"x": x}, attrs=attrs, out_dtypes=[out])


@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [None, -1, 2])
def test_trilu(rng, upper, k):
    x = rng.standard_normal((2, 4, 5)).astype(np.float32)
    consts = {} if k is None else {"k": np.array(k, I64)}
    check_node("Trilu", {"x": x}, consts, opset=14, attrs=dict(upper=upper))


# --- NonZero, Compress -----------------------------------------------------------------------

def test_non_zero_constant_folds_and_dynamic_is_refused(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    nodes = [helper.make_node("NonZero", ["c"], ["idx"]),
             helper.make_node("Cast", ["idx"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["f"], ["s"], keepdims=1),
             helper.make_node("Add", ["x", "s"], ["y"])]
    model = make_model(nodes, [("x", np.float32, [3, 4])], [("y", np.float32, None)],
                       {"c": np.array([[0, 1], [1, 1]], np.float32)}, opset=13)
    check_graph(model, {"x": x})
    model = make_model([helper.make_node("NonZero", ["x"], ["y"], name="nz")],
                       [("x", np.float32, [3, 4])], [("y", I64, None)], opset=13)
    with pytest.raises(UnsupportedOpError, match="NonZero node 'nz'.*bounds="):
        onnx2flax.convert(model).run({"x": x})


@pytest.mark.parametrize("axis", [None, 1, -1])
def test_compress(x4, axis):
    cond = np.array([True, False, True], bool)
    attrs = {} if axis is None else dict(axis=axis)
    check_node("Compress", {"x": x4}, {"c": cond}, opset=11, attrs=attrs)


def _shape_graph():
    """Shape arithmetic in ONNX ops only: a [N, S, 6] input reshaped to [N, S*2, 3] from
    Shape, Slice, Gather, Mul, Div, Concat; a Range over S cast to float and expanded to
    [N, S, 6]; the size and shape as outputs; a Slice to the end of N."""
    n = helper.make_node
    def i64(name, v):
        return helper.make_tensor(name, TensorProto.INT64, [len(v)], v)

    nodes = [
        n("Shape", ["x"], ["shape"]),
        n("Slice", ["shape", "zero", "one"], ["n"]),
        n("Gather", ["shape", "one_scalar"], ["s"], axis=0),
        n("Unsqueeze", ["s", "zero"], ["s1"]),
        n("Mul", ["s1", "two"], ["s2"]),
        n("Gather", ["shape", "two_scalar"], ["c"], axis=0),
        n("Div", ["c", "two_scalar"], ["c2"]),
        n("Unsqueeze", ["c2", "zero"], ["c3"]),
        n("Concat", ["n", "s2", "c3"], ["target"], axis=0),
        n("Reshape", ["x", "target"], ["y"]),
        n("Range", ["zero_scalar", "s", "one_scalar"], ["r_int"]),
        n("Cast", ["r_int"], ["r"], to=TensorProto.FLOAT),
        n("Expand", ["r6", "shape"], ["e"]),
        n("Unsqueeze", ["r", "last"], ["r6"]),
        n("Add", ["x", "e"], ["z"]),
        n("Size", ["x"], ["size"]),
        n("Slice", ["x", "zero", "far"], ["head"]),  # tf2onnx's "to the end": 1e9
    ]
    nodes.insert(13, nodes.pop(12))  # Unsqueeze before the Expand reading it
    inits = [i64("zero", [0]), i64("one", [1]), i64("two", [2]), i64("last", [-1]),
             i64("far", [10 ** 9]),
             helper.make_tensor("one_scalar", TensorProto.INT64, [], [1]),
             helper.make_tensor("two_scalar", TensorProto.INT64, [], [2]),
             helper.make_tensor("zero_scalar", TensorProto.INT64, [], [0])]
    graph = helper.make_graph(
        nodes, "shapes", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("shape", TensorProto.INT64, None),
         helper.make_tensor_value_info("size", TensorProto.INT64, None),
         helper.make_tensor_value_info("head", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_onnx_shape_arithmetic_at_two_sizes(tmp_path):
    source = check_source_at_sizes(tmp_path, _shape_graph(), [{"N": 1, "S": 2}, {"N": 3, "S": 5}])
    assert "N = x_x.shape[0]" in source and "S = x_x.shape[1]" in source
