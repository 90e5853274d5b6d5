"""Reductions, ArgMax/ArgMin, CumSum/CumProd, and Einsum against onnxruntime,
on ONNX-order and channels-last values."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from helpers import after_conv, check_graph, multi_node_model, node_model

import onnx2flax

RNG = np.random.default_rng(0)
X = RNG.uniform(0.2, 1.5, (2, 3, 4)).astype(np.float32)  # positive: ReduceLogSum
REDUCE_OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
              "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"]


def _axes_since(op):
    return 13 if op == "ReduceSum" else 18


def _reduce_specs(opset, axes, keepdims, ops=REDUCE_OPS, dtype=np.float32, data=()):
    """One spec per op reading ``data`` (none: ``after_conv`` supplies it): ``axes`` as
    attribute or as the input named ``axes`` (by opset)."""
    specs = []
    for op in ops:
        attrs = {} if keepdims is None else {"keepdims": keepdims}
        inputs = list(data)
        if opset >= _axes_since(op):
            inputs += ["axes"] if axes is not None else []
        elif axes is not None:
            attrs["axes"] = list(axes)
        specs.append((op, inputs, attrs, dtype))
    return specs


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("axes, keepdims", [([1], None), ([0, -1], 0), (None, 0)])
def test_reductions_channels_last(opset, axes, keepdims):
    """On a channels-last value; axes as attribute or input (ReduceSum from 13, the
    others from 18)."""
    specs = _reduce_specs(opset, axes, keepdims)
    consts = {} if axes is None else {"axes": np.array(axes, np.int64)}
    model, feeds = after_conv(specs, consts=consts, opset=opset, pre="Abs")
    check_graph(model, feeds, rtol=2e-5, atol=1e-5)


def test_reductions_empty_axes_input():
    """Opset 18: an empty ``axes`` input reduces everything, or nothing with
    ``noop_with_empty_axes=1``; an omitted one likewise."""
    consts = {"axes": np.zeros((0,), np.int64)}
    specs = [(op, ["x", "axes"], {"noop_with_empty_axes": noop, "keepdims": keep}, np.float32)
             for op in ("ReduceSum", "ReduceMax", "ReduceL2") for noop in (0, 1) for keep in (0, 1)]
    specs += [("ReduceMean", ["x"], {"noop_with_empty_axes": 1}, np.float32)]
    check_graph(multi_node_model(specs, {"x": X}, opset=18, consts=consts), {"x": X}, rtol=2e-5)


@pytest.mark.parametrize("dtype, opset", [(np.int32, 11), (np.int64, 18)])
def test_reductions_integer(dtype, opset):
    """Integer inputs give integer results (ReduceMean truncates as ORT does); axes as
    attribute (opset 11) or input (18)."""
    x = RNG.integers(-5, 6, (2, 3, 4)).astype(dtype)
    ops = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
           "ReduceSumSquare"]
    specs = _reduce_specs(opset, [1], 0, ops, dtype, data=["x"])
    specs += [("ArgMax", ["x"], {"axis": 2}, np.int64), ("ArgMin", ["x"], {"axis": 1}, np.int64)]
    feeds = {"x": x}
    check_graph(multi_node_model(specs, feeds, opset=opset, consts={"axes": np.array([1], np.int64)}),
          feeds, rtol=0, atol=0)


def test_reduce_max_bool_opset20():
    x = RNG.random((3, 4)) > 0.6
    specs = [(op, ["x", "axes"], None, bool) for op in ("ReduceMax", "ReduceMin")]
    check_graph(multi_node_model(specs, {"x": x}, opset=20, consts={"axes": np.array([1], np.int64)}),
          {"x": x})


@pytest.mark.parametrize("opset", [11, 13])
def test_arg_reductions_channels_last(opset):
    """ArgMax / ArgMin with keepdims and select_last_index (opset 12+) on rounded values
    (ties), output int64."""
    specs = [(op, [], {"axis": axis, "keepdims": keep, **({"select_last_index": last}
                                                          if opset >= 12 else {})}, np.int64)
             for op in ("ArgMax", "ArgMin") for axis, keep, last in
             ((1, 1, 0), (1, 0, 1), (-1, 0, 0), (0, 1, 1))]
    specs.append(("ArgMax", [], None, np.int64))
    model, feeds = after_conv(specs, opset=opset, pre="Round")
    check_graph(model, feeds)


_FLAGS = [{"exclusive": e, "reverse": r} for e in (0, 1) for r in (0, 1)]


def test_cumsum_cumprod():
    """Every exclusive/reverse pair on a channels-last value (along channels and width,
    axis int64 or int32, scalar or 1-element), and on int64 data."""
    consts = {"ax1": np.array(1, np.int64), "axm1": np.array([-1], np.int32)}
    specs = [(op, [axis], flags, np.float32) for op in ("CumSum", "CumProd") for axis in consts
             for flags in _FLAGS]
    model, feeds = after_conv(specs, consts=consts, opset=26)
    check_graph(model, feeds)
    feeds = {"i": RNG.integers(-9, 9, (3, 4)).astype(np.int64)}
    specs = [("CumSum", ["i", "a"], flags, np.int64) for flags in _FLAGS]
    check_graph(multi_node_model(specs, feeds, opset=11, consts={"a": np.array(0, np.int64)}),
          feeds, rtol=0, atol=0)


@pytest.mark.parametrize("equation, shapes", [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("bij, bjk -> bik", [(2, 3, 4), (2, 4, 5)]),
    ("...ij->...ji", [(2, 3, 4)]),
    ("ii", [(3, 3)]),
    ("ij,ij", [(3, 4), (3, 4)]),
    ("bhid,bhjd->bhij", [(1, 2, 3, 4), (1, 2, 5, 4)]),
])
def test_einsum(equation, shapes):
    feeds = {f"in{k}": RNG.standard_normal(s).astype(np.float32) for k, s in enumerate(shapes)}
    check_graph(node_model("Einsum", feeds, attrs={"equation": equation}, opset=12), feeds, rtol=1e-5)


def test_einsum_integer():
    feeds = {"a": RNG.integers(-3, 4, (2, 3)).astype(np.int64),
             "b": RNG.integers(-3, 4, (3, 2)).astype(np.int64)}
    check_graph(node_model("Einsum", feeds, attrs={"equation": "ij,jk->ik"}, opset=12), feeds)


def test_reduce_axes_from_an_input_are_specialized():
    """``run`` specializes on a run-time ``axes`` (one conversion per value); the module
    alone cannot trace it."""
    feeds = {"x": X, "axes": np.array([1], np.int64)}
    model = node_model("ReduceSum", feeds, opset=13)
    converted, _, _ = check_graph(model, feeds)
    check_graph(model, {"x": X, "axes": np.array([-1], np.int64)})
    assert converted.specialized_inputs == ["axes"]
    with pytest.raises(onnx2flax.errors.UnsupportedOpError, match="axes"):
        converted.module.apply(converted.variables, X, feeds["axes"])


def test_reductions_of_empty_sets():
    """Reducing a zero-size axis gives each reduction's identity (-inf for ReduceMax...)."""
    feeds = {"x": np.zeros((2, 0, 4), np.float32)}
    specs = _reduce_specs(18, [1], 1, ["ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd",
                                       "ReduceLogSumExp"], data=["x"])
    check_graph(multi_node_model(specs, feeds, opset=18, consts={"axes": np.array([1], np.int64)}),
          feeds)


def test_axis_ops_stay_channels_last():
    """Reductions, ArgMax and CumSum over a channels-last value remap their axes instead of
    transposing it: the traced module has no transpose (and still matches ORT)."""
    consts = {"hw": np.array([2, 3], np.int64), "c": np.array([1], np.int64),
              "ax": np.array(1, np.int64)}
    specs = [("ReduceMean", ["hw"], {"keepdims": 0}, np.float32),
             ("ReduceSum", ["c"], None, np.float32),
             ("ReduceMax", ["c"], {"keepdims": 0}, np.float32),
             ("ArgMax", [], {"axis": 1, "keepdims": 0}, np.int64),
             ("CumSum", ["ax"], None, np.float32)]
    model, feeds = after_conv(specs, consts=consts, opset=18)
    converted, _, _ = check_graph(model, feeds)
    x = np.moveaxis(feeds["x"], 1, -1)
    assert "transpose" not in str(jax.make_jaxpr(converted.module.apply)(converted.variables, x))
