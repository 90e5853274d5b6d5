"""Weights stored in Constant nodes or computed by constant subgraphs (how Paddle, Caffe2 and
spox exports store them) become Flax params exactly like initializers."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from helpers import assert_matches_ort, make_model


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
    converted, _, _ = assert_matches_ort(model, {"x": rng.standard_normal((2, 3, 5, 5)).astype(np.float32)})
    params = converted.variables["params"]
    np.testing.assert_array_equal(params["conv_w"]["kernel"], w.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["add_b"], bias)
    # a folded value keeps the name of the one weight it was computed from
    np.testing.assert_array_equal(params["half"], np.full((1, 4, 1, 1), 1.5, np.float32))
