"""Weights stored in Constant nodes or computed by constant subgraphs (how Paddle, Caffe2 and
spox exports store them) become Flax params exactly like initializers."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

import onnx2flax
from helpers import assert_codegen_matches, check_graph, make_model, run_ort


def test_constant_node_and_constant_subgraph_weights_are_params(rng):
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal((1, 4, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["conv_w"], value=onnx.numpy_helper.from_array(w, "conv_w")),
        helper.make_node("Conv", ["x", "conv_w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Constant", [], ["add_b"], value=onnx.numpy_helper.from_array(bias, "b")),
        helper.make_node("Add", ["c", "add_b"], ["a"]),
        # a scale made at conversion time: ConstantOfShape([1, 4, 1, 1], 0.5) * 3
        helper.make_node("Constant", [], ["shape"], value_ints=[1, 4, 1, 1]),
        helper.make_node("ConstantOfShape", ["shape"], ["half"],
                         value=helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [0.5])),
        helper.make_node("Constant", [], ["three"], value_float=3.0),
        helper.make_node("Mul", ["half", "three"], ["scale"]),
        helper.make_node("Mul", ["a", "scale"], ["y"]),
    ]
    model = make_model(nodes, [("x", np.float32, (2, 3, 5, 5))], [("y", np.float32, None)])
    converted, _, _ = check_graph(model, {"x": rng.standard_normal((2, 3, 5, 5)).astype(np.float32)})
    params = converted.variables["params"]
    np.testing.assert_array_equal(params["conv_w"]["kernel"], w.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["add_b"], bias)
    # a folded value keeps the name of the one weight it was computed from
    np.testing.assert_array_equal(params["half"], np.full((1, 4, 1, 1), 1.5, np.float32))


def _positions_model(rng, scaled_output=False):
    """tf2onnx's Keras positional slice: ``pos[:T]`` with ``T`` = the input's dynamic length
    clamped in float, ``Cast(Max(Cast(Gather(Shape(x))), clamp))``; ``clamp`` is a float
    initializer of two elements (tf2onnx's ``const_fold_opt``) needed only for the ends.
    ``scaled_output`` adds ``z = x[:, :1, :2] * Max(sizes_f, scale)``: the same shape
    arithmetic, but its result is used at run time."""
    pos = rng.standard_normal((16, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "dims"], ["sizes"]),
        helper.make_node("Cast", ["sizes"], ["sizes_f"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Max", ["sizes_f", "clamp"], ["ends_f"]),
        helper.make_node("Cast", ["ends_f"], ["ends"], to=onnx.TensorProto.INT64),
        helper.make_node("Slice", ["pos", "starts", "ends", "axes"], ["pos_t"]),
        helper.make_node("Add", ["x", "pos_t"], ["y"]),
    ]
    if scaled_output:
        nodes += [helper.make_node("Slice", ["x", "starts", "two", "axes2"], ["x2"]),
                  helper.make_node("Max", ["sizes_f", "scale"], ["m"]),
                  helper.make_node("Mul", ["x2", "m"], ["z"])]
    model = make_model(
        nodes, [("x", np.float32, (2, "T", 4))],
        [("y", np.float32, None)] + [("z", np.float32, None)] * scaled_output,
        initializers={"pos": pos, "clamp": np.array([1.0, 2.0], np.float32),
                      "scale": np.array([1.5, 0.5], np.float32), "dims": np.array([1, 2], np.int64),
                      "starts": np.zeros(2, np.int64), "axes": np.array([0, 1], np.int64),
                      "two": np.array([1, 2], np.int64), "axes2": np.array([1, 2], np.int64)})
    return model, pos


def test_float_constant_needed_only_for_slice_ends_is_not_a_param(rng):
    model, pos = _positions_model(rng)
    converted = onnx2flax.convert(model)
    params = converted.variables["params"]
    assert "clamp" not in params
    np.testing.assert_array_equal(params["pos"], pos)  # added to activations: still a param
    for length in (5, 9):  # one conversion, two lengths: the ends are folded per trace
        feeds = {"x": rng.standard_normal((2, length, 4)).astype(np.float32)}
        got = converted.run(feeds)
        np.testing.assert_allclose(got[0], run_ort(model, feeds)[0], rtol=1e-6, atol=1e-6)
        assert_codegen_matches(converted, feeds, got)


def test_shape_arithmetic_used_at_run_time_keeps_its_float_constant_a_param(rng):
    model, _ = _positions_model(rng, scaled_output=True)
    converted, _, _ = check_graph(model, {"x": rng.standard_normal((2, 5, 4)).astype(np.float32)})
    params = converted.variables["params"]
    assert "clamp" not in params
    np.testing.assert_array_equal(params["scale"], [1.5, 0.5])
