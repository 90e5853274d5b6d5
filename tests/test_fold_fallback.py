"""Constant folding falls back to the op's own handler where ONNX's reference evaluator
lacks the op's version (DequantizeLinear at opset 17) or fails on the inputs (the
GatherElements of HuggingFace BERT's token_type_ids buffer, paddle2onnx's OneHot with a
float depth); results checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import check_graph, make_model
from onnx import helper
from onnx.reference import ReferenceEvaluator

import onnx2flax
from onnx2flax.errors import InvalidModelError

RNG = np.random.default_rng(0)


def _reference_fails(model, feeds):
    with pytest.raises(Exception):  # noqa: B017  (any failure: that is the point)
        ReferenceEvaluator(model).run(None, feeds)


def test_dequantize_weight_at_opset_17():
    """A QDQ weight: DequantizeLinear(int8 constant) folded although the reference has no
    DequantizeLinear-13 (its versions are 19, 21, ...)."""
    w = RNG.integers(-128, 128, (4, 6)).astype(np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"]),
             helper.make_node("MatMul", ["x", "wf"], ["y"])]
    model = make_model(nodes, [("x", np.float32, (3, 4))], [("y", np.float32, None)],
                       {"w": w, "s": np.float32(0.02), "z": np.int8(3)}, opset=17)
    feeds = {"x": RNG.standard_normal((3, 4)).astype(np.float32)}
    _reference_fails(make_model(nodes[:1], [], [("wf", np.float32, None)],
                                {"w": w, "s": np.float32(0.02), "z": np.int8(3)}, opset=17), {})
    check_graph(model, feeds, fused=False)  # fused, x is quantized too


def test_gather_elements_on_a_buffer():
    """BERT's ``token_type_ids`` path: GatherElements of a [1, 512] int64 buffer by [1, 16]
    constant indices (the reference evaluator cannot reshape its result)."""
    buffer = (np.arange(512, dtype=np.int64) * 1000 + 7).reshape(1, 512)
    indices = np.arange(16, dtype=np.int64).reshape(1, 16) * 3
    nodes = [helper.make_node("GatherElements", ["buf", "idx"], ["g"], axis=1),
             helper.make_node("Add", ["x", "g"], ["y"])]
    consts = {"buf": buffer, "idx": indices}
    model = make_model(nodes, [("x", np.int64, (1, 16))], [("y", np.int64, None)], consts)
    feeds = {"x": RNG.integers(0, 9, (1, 16)).astype(np.int64)}
    _reference_fails(make_model(nodes[:1], [], [("g", np.int64, None)], consts), {})
    got = check_graph(model, feeds)[1][0]
    assert got.dtype == np.int64 and got[0, 5] == 15 * 1000 + 7 + feeds["x"][0, 5]


@pytest.mark.parametrize("types", [(np.int64, np.float32), (np.int32, np.float32)])
def test_one_hot_with_float_depth(types):
    """paddle2onnx writes OneHot(indices, depth: float32, values): the reference evaluator
    refuses the types."""
    index_type, depth_type = types
    consts = {"ind": np.array([[0, 3], [2, 1]], index_type), "depth": np.array([4], depth_type),
              "vals": np.array([0.0, 1.0], np.float32)}
    nodes = [helper.make_node("OneHot", ["ind", "depth", "vals"], ["o"], axis=-1),
             helper.make_node("Mul", ["x", "o"], ["y"])]
    model = make_model(nodes, [("x", np.float32, (2, 2, 4))], [("y", np.float32, None)],
                       consts, opset=11)
    _reference_fails(make_model(nodes[:1], [], [("o", np.float32, None)], consts, opset=11), {})
    check_graph(model, {"x": RNG.standard_normal((2, 2, 4)).astype(np.float32)})


def test_a_failure_of_both_names_the_node():
    """Inputs neither the reference evaluator nor the handler accept: one package error
    naming the node and both failures."""
    consts = {"a": np.ones((2, 3), np.float32), "b": np.ones((4, 5), np.float32)}
    nodes = [helper.make_node("MatMul", ["a", "b"], ["m"], name="bad_matmul"),
             helper.make_node("Add", ["x", "m"], ["y"])]
    model = make_model(nodes, [("x", np.float32, (2, 5))], [("y", np.float32, None)], consts)
    with pytest.raises(InvalidModelError, match=r"bad_matmul.*reference evaluator failed too"):
        onnx2flax.convert(model)


def test_fallback_keeps_int64():
    """The handler folds with 64-bit JAX types: INT64_MAX Slice ends made by a OneHot the
    reference evaluator refuses (float depth) stay INT64_MAX (wrapped to int32 they would be
    -1 and drop the last row and column)."""
    consts = {"ind": np.array([1, 1], np.int64), "depth": np.array([2.0], np.float32),
              "vals": np.array([0, np.iinfo(np.int64).max], np.int64),
              "start": np.array([0, 0], np.int64), "axes": np.array([0, 1], np.int64)}
    nodes = [helper.make_node("OneHot", ["ind", "depth", "vals"], ["o"], axis=-1),
             helper.make_node("ReduceMax", ["o"], ["end"], axes=[1], keepdims=0),
             helper.make_node("Slice", ["x", "start", "end", "axes"], ["y"])]
    model = make_model(nodes, [("x", np.float32, (4, 3))], [("y", np.float32, None)], consts)
    _reference_fails(make_model(nodes[:1], [], [("o", np.int64, None)], consts), {})
    x = RNG.standard_normal((4, 3)).astype(np.float32)
    # onnxruntime has no OneHot for these types: NumPy's x[0:INT64_MAX, 0:INT64_MAX] is x
    np.testing.assert_array_equal(onnx2flax.convert(model).run({"x": x})[0], x)
