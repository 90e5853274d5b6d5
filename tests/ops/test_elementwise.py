"""Elementwise math, logical, comparison and variadic ops against onnxruntime.

Many ops share one model (one output each) so that a parameter set costs one conversion."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import (check_graph, convert_and_run, make_model, multi_node_model, node_model,
                     run_ort, sandwich)
from onnx import helper

import onnx2flax

RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 3, 4)).astype(np.float32) * 2
P = RNG.uniform(0.1, 0.9, (2, 3, 4)).astype(np.float32)  # in the domain of log, asin, atanh...
Q = (1 + P * 3).astype(np.float32)  # > 1, for acosh
B = RNG.standard_normal((3, 1)).astype(np.float32) + 2  # broadcasts against X

_UNARY = {  # op -> (first opset, feed)
    "Relu": (1, "x"), "Sigmoid": (1, "x"), "Tanh": (1, "x"), "Abs": (1, "x"), "Neg": (1, "x"),
    "Ceil": (1, "x"), "Floor": (1, "x"), "Exp": (1, "x"), "Log": (1, "p"), "Sqrt": (1, "p"),
    "Reciprocal": (1, "x"), "Identity": (1, "x"), "Sin": (7, "x"), "Cos": (7, "x"),
    "Tan": (7, "p"), "Asin": (7, "p"), "Acos": (7, "p"), "Atan": (7, "x"), "Sign": (9, "x"),
    "Erf": (9, "x"), "Sinh": (9, "x"), "Cosh": (9, "x"), "Asinh": (9, "x"),
    "Acosh": (9, "q"), "Atanh": (9, "p"), "Round": (11, "x"),
}


@pytest.mark.parametrize("opset", [6, 22])
def test_unary_float(opset):
    x = X.copy()
    x.flat[:4] = [0.5, -0.5, 1.5, -2.5]  # Round: halves go to even
    feeds = {"x": x, "p": P, "q": Q}
    specs = [(op, [feed], None, np.float32) for op, (since, feed) in _UNARY.items()
             if since <= opset]
    check_graph(multi_node_model(specs, feeds, opset=opset), feeds, rtol=2e-6, atol=1e-6)


_BINARY_FLOAT = ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean"]
_COMPARE = {"Equal": 11, "Greater": 7, "Less": 7, "GreaterOrEqual": 12, "LessOrEqual": 12}


@pytest.mark.parametrize("opset", [7, 14])
def test_binary_float_broadcasting(opset):
    """``[2, 3, 4]`` against ``[3, 1]`` (numpy broadcasting from opset 7)."""
    b = B.copy()
    b[0] = P[0, 0, 0]  # some equal elements for the comparisons
    feeds = {"p": P, "b": b}
    specs = [(op, ["p", "b"], None, np.float32) for op in _BINARY_FLOAT
             if opset >= 8 or op not in ("Max", "Min", "Sum", "Mean")]
    specs += [(op, ["p", "b"], None, bool) for op, since in _COMPARE.items() if since <= opset]
    specs += [("Mod", ["p", "b"], {"fmod": 1}, np.float32)] if opset >= 10 else []
    if opset >= 8:  # variadic ops broadcast from opset 8
        specs += [("Sum", ["p", "b", "p"], None, np.float32),
                  ("Mean", ["p", "b", "b"], None, np.float32), ("Max", ["p"], None, np.float32)]
    check_graph(multi_node_model(specs, feeds, opset=opset), feeds)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_integer_ops(dtype):
    """Div truncates toward zero; Mod fmod=0 follows the divisor's sign, fmod=1 the dividend's;
    int64 runs as int32 in JAX and comes back as int64."""
    a = np.array([[7, -7, 7, -7, 0, 5], [9, -9, 3, 1, -4, 2]], dtype)
    b = np.array([3, 3, -3, -3, 2, 5], dtype)
    e = np.array([2, 3, 0, 1, 2, 1], dtype)
    feeds = {"a": a, "b": b, "e": e}
    specs = [(op, ["a", "b"], None, dtype) for op in ["Add", "Sub", "Mul", "Div", "Max", "Min"]]
    specs += [("Mod", ["a", "b"], {"fmod": 0}, dtype), ("Mod", ["a", "b"], {"fmod": 1}, dtype),
              ("Pow", ["a", "e"], None, dtype), ("Abs", ["a"], None, dtype),
              ("Neg", ["a"], None, dtype), ("Sign", ["a"], None, dtype),
              ("Equal", ["a", "b"], None, bool),
              ("Greater", ["a", "b"], None, bool), ("LessOrEqual", ["a", "b"], None, bool)]
    check_graph(multi_node_model(specs, feeds, opset=14), feeds, rtol=0, atol=0)


def test_pow_mixed_types():
    """Opset 12+: the exponent may have another type; the result has the base's type."""
    feeds = {"x": P, "n": np.array([2, 3, 0, -1], np.int64),
             "i": np.array([2, 3, 4, 5], np.int32), "f": np.array([2.0, 0.5, 1.0, 3.0], np.float32)}
    specs = [("Pow", ["x", "n"], None, np.float32), ("Pow", ["i", "f"], None, np.int32)]
    check_graph(multi_node_model(specs, feeds, opset=15), feeds)


def test_mod_float_floor_opset28():
    """Opset 28 allows fmod=0 on floats (floor mod); before it the converter refuses, as ORT."""
    a = np.array([5.5, -5.5, 5.5, -5.5, 0.0, 3.0], np.float32)
    b = np.array([2.0, 2.0, -2.0, -2.0, 3.0, np.inf], np.float32)
    expected = run_ort(node_model("Mod", {"a": a, "b": b}, attrs={"fmod": 1}, opset=13),
                       {"a": a, "b": b})[0]
    got = convert_and_run(node_model("Mod", {"a": a, "b": b}, attrs={"fmod": 0}, opset=28),
                          {"a": a, "b": b})[0]
    # a - floor(a / b) * b from ORT's fmod: add b where the signs differ.
    fix = (expected != 0) & ((expected < 0) != (b < 0))
    np.testing.assert_allclose(got, np.where(fix, expected + b, expected))
    with pytest.raises(onnx2flax.errors.InvalidModelError, match="fmod=0"):
        onnx2flax.convert(node_model("Mod", {"a": a, "b": b}, attrs={"fmod": 0}, opset=13)).run(
            {"a": a, "b": b})


def test_logical_and_where():
    a = RNG.random((3, 4)) > 0.5
    b = RNG.random((4,)) > 0.5
    feeds = {"a": a, "b": b, "x": X[0], "y": P[0, 0]}
    specs = [("And", ["a", "b"], None, bool), ("Or", ["a", "b"], None, bool),
             ("Xor", ["a", "b"], None, bool), ("Not", ["a"], None, bool),
             ("Where", ["a", "x", "y"], None, np.float32), ("Equal", ["a", "b"], None, bool)]
    check_graph(multi_node_model(specs, feeds, opset=16), feeds)


@pytest.mark.parametrize("opset", [10, 20])
def test_isinf_isnan(opset):
    x = np.array([[np.inf, -np.inf, np.nan, 0.0, 1.0, -2.0]], np.float32)
    specs = [("IsInf", ["x"], {"detect_negative": neg, "detect_positive": pos}, bool)
             for neg in (0, 1) for pos in (0, 1)] + [("IsNaN", ["x"], None, bool)]
    check_graph(multi_node_model(specs, {"x": x}, opset=opset), {"x": x})


@pytest.mark.parametrize("dtype", [np.uint8, np.uint32])
def test_bit_shift(dtype):
    x = np.array([1, 2, 15, 200], dtype)
    y = np.array([1, 2, 3, 0], dtype)
    specs = [("BitShift", ["x", "y"], {"direction": d}, dtype) for d in ("LEFT", "RIGHT")]
    check_graph(multi_node_model(specs, {"x": x, "y": y}, opset=11), {"x": x, "y": y}, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [np.int32, np.uint8])
def test_bitwise(dtype):
    feeds = {"x": np.array([[1, 2, 15, 100]], dtype), "y": np.array([3, 6, 9, 77], dtype)}
    specs = [(op, ["x", "y"], None, dtype) for op in ("BitwiseAnd", "BitwiseOr", "BitwiseXor")]
    specs.append(("BitwiseNot", ["x"], None, dtype))
    check_graph(multi_node_model(specs, feeds, opset=18), feeds, rtol=0, atol=0)


def test_clip_versions():
    """Opset 6: min/max attributes; 11+: optional inputs (float and integer)."""
    lo, hi = np.array(-0.5, np.float32), np.array(0.7, np.float32)
    check_graph(multi_node_model([("Clip", ["x"], {"min": -0.5, "max": 0.7}, np.float32),
                            ("Clip", ["x"], {"max": 0.2}, np.float32),
                            ("Clip", ["x"], None, np.float32)], {"x": X}, opset=6), {"x": X})
    i = np.array([[-5, 0, 3, 9]], np.int64)
    feeds = {"x": X, "lo": lo, "hi": hi, "i": i, "ilo": np.array(-1, np.int64),
             "ihi": np.array(4, np.int64)}
    specs = [("Clip", ["x", "lo", "hi"], None, np.float32),
             ("Clip", ["x", "", "hi"], None, np.float32),
             ("Clip", ["x", "lo"], None, np.float32), ("Clip", ["i", "ilo", "ihi"], None, np.int64)]
    check_graph(multi_node_model(specs, feeds, opset=13), feeds)


@pytest.mark.parametrize("op, attrs", [("Add", {"axis": 1}), ("Mul", {"axis": -3}),
                                       ("Sub", {})])
def test_legacy_broadcast_opset6(op, attrs):
    """Opset < 7 broadcasts B only with broadcast=1, aligned at ``axis``. Neither ORT nor the
    reference evaluator runs opset 6 Add, so ORT runs the opset-7 model with B pre-shaped."""
    a = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    b = RNG.standard_normal((3, 4) if attrs else (4, 5)).astype(np.float32)
    axis = attrs.get("axis", 2) % 4
    reshaped = b.reshape((1,) * axis + b.shape + (1,) * (4 - axis - b.ndim))
    expected = run_ort(node_model(op, {"a": a, "b": reshaped}, opset=7), {"a": a, "b": reshaped})[0]
    # The same op on a channels-last value (after a Conv): B is re-laid out, not A.
    model = node_model(op, {"a": a, "b": b}, attrs={"broadcast": 1, **attrs}, opset=6)
    np.testing.assert_allclose(convert_and_run(model, {"a": a, "b": b})[0], expected,
                               rtol=1e-6)
    legacy, feeds = sandwich(op, attrs={"broadcast": 1, "axis": 1},
                             extra={"c": np.arange(1, 4, dtype=np.float32)}, opset=6, tail=False)
    modern, _ = sandwich(op, extra={"c": np.arange(1, 4, dtype=np.float32).reshape(3, 1, 1)},
                         opset=7, tail=False)
    np.testing.assert_allclose(convert_and_run(legacy, feeds)[0], run_ort(modern, feeds)[0],
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(onnx2flax.errors.InvalidModelError, match="broadcast=0"):
        onnx2flax.convert(node_model(op, {"a": a, "b": b}, opset=6)).run({"a": a, "b": b})


@pytest.mark.parametrize("op, extra", [
    ("Add", {"c": RNG.standard_normal((3, 1, 1)).astype(np.float32)}),
    ("Pow", {"c": np.array(2.0, np.float32)}),
    ("Max", {"c": RNG.standard_normal((1, 3, 1, 5)).astype(np.float32)}),
])
def test_channels_last(op, extra):
    """Conv -> op(h, constant) -> Conv: the constant operand is re-laid out to match."""
    model, feeds = sandwich(op, extra=extra, opset=17)
    check_graph(model, feeds, rtol=1e-5, atol=1e-5)


def test_where_channels_last_mixed_layouts():
    """A channels-last operand meets an ONNX-order one in Where."""
    model, feeds = sandwich("Relu", tail=False)
    graph = model.graph
    cond = helper.make_node("Greater", ["x", "zero"], ["mask"])
    where = helper.make_node("Where", ["mask", "y", "x"], ["out"])
    graph.node.extend([cond, where])
    graph.initializer.append(helper.make_tensor("zero", 1, [], [0.0]))
    graph.output.append(helper.make_tensor_value_info("out", 1, None))
    check_graph(model, feeds)


def test_variadic_legacy():
    """Variadic ops at opset 6 (equal shapes; ORT runs the opset-8 model as reference)."""
    specs = [(op, ["x", "x", "x"], None, np.float32) for op in ("Sum", "Mean", "Max", "Min")]
    model = multi_node_model(specs, {"x": X}, opset=6)
    expected = run_ort(multi_node_model(specs, {"x": X}, opset=8), {"x": X})
    for got, want in zip(convert_and_run(model, {"x": X}), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_unknown_bitshift_direction():
    x = np.array([1, 2], np.uint8)
    model = make_model([helper.make_node("BitShift", ["x", "x"], ["y"], direction="UP")],
                       [("x", np.uint8, [2])], [("y", np.uint8, [2])], opset=11)
    with pytest.raises(onnx2flax.errors.InvalidModelError, match="direction"):
        onnx2flax.convert(model).run({"x": x})
