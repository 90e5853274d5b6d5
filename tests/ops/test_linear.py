"""Linear algebra (onnx2flax/ops/linear.py: Gemm, MatMul, Det) against onnxruntime: Gemm's
alpha/beta/transA/transB and C shapes, MatMul's broadcasting and 1-D operands, weights made
Dense layers."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import after_conv, check_graph, check_node

F32 = np.float32


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(F32)


# --- Gemm ---------------------------------------------------------------------------------

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
    converted, _, _ = check_node("Gemm", {"x": _rand(rng, *a_shape)}, weights, attrs=attrs)
    dense = c_shape != (4, 3)
    layer = converted.variables["params"]["b"]
    assert isinstance(layer, dict) == dense  # a Dense layer named after its weight, or a param


@pytest.mark.parametrize("opset, attrs, c_shape", [
    (11, dict(transA=1, transB=1, alpha=0.5, beta=-1.0), (4, 1)),  # C broadcast over columns
    (13, dict(transB=1), (4, 3)),
    (13, dict(alpha=2.0), None),                                     # C optional (opset 11+)
    (9, dict(beta=0.0), (3,)),                                       # C required, not used
])
def test_gemm_runtime_operands(rng, opset, attrs, c_shape):
    """A, B (and C) are graph inputs: no Dense layer, every attribute applied at run time."""
    trans_a, trans_b = attrs.get("transA", 0), attrs.get("transB", 0)
    feeds = {"a": _rand(rng, *((5, 4) if trans_a else (4, 5))),
             "b": _rand(rng, *((3, 5) if trans_b else (5, 3)))}
    if c_shape is not None:
        feeds["c"] = _rand(rng, *c_shape)
    converted, _, _ = check_node("Gemm", feeds, opset=opset, attrs=attrs)
    assert converted.variables.get("params", {}) == {}


# --- MatMul -------------------------------------------------------------------------------

def test_matmul_with_weight_is_dense_on_any_rank(rng):
    converted, _, _ = check_node("MatMul", {"x": _rand(rng, 2, 3, 5)}, {"w": _rand(rng, 5, 7)})
    (layer,) = converted.variables["params"].values()
    assert layer["kernel"].shape == (5, 7)


@pytest.mark.parametrize("a_shape, b_shape", [
    ((5,), (5, 3)),             # 1-D A: a row vector, its dim dropped
    ((2, 4, 5), (5,)),          # 1-D B: a column vector, its dim dropped
    ((5,), (2, 5, 3)),          # 1-D A against a batch
    ((2, 1, 4, 5), (3, 5, 6)),  # batch dims broadcast
    ((4, 5), (2, 3, 5, 6)),     # 2-D A against a batch
])
def test_matmul_broadcasting(rng, a_shape, b_shape):
    check_node("MatMul", {"a": _rand(rng, *a_shape), "b": _rand(rng, *b_shape)})


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_matmul_integer_types(rng, dtype):
    feeds = {"a": rng.integers(-5, 5, (2, 3, 4)).astype(dtype),
             "b": rng.integers(-5, 5, (4, 2)).astype(dtype)}
    check_node("MatMul", feeds, opset=13, rtol=0, atol=0)


def test_matmul_on_channels_last_activation(rng):
    """MatMul over the last (W) axis of a Conv output held channels-last: the value goes back
    to ONNX order first (the weight's axis is W, not C)."""
    model, feeds = after_conv([("MatMul", ["w"], None, F32)], consts={"w": _rand(rng, 5, 6)})
    check_graph(model, feeds)


# --- Det ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 3), (2, 4, 5, 5), (1, 1)])
def test_det(rng, shape):
    x = _rand(rng, *shape)
    check_node("Det", {"x": x}, opset=11, rtol=1e-4, atol=1e-4)
