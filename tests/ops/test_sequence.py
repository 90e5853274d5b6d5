"""Sequence ops (Python lists while tracing) against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnx2flax
from onnx2flax.errors import InvalidModelError
from helpers import assert_matches_ort, make_model

F = np.float32


def test_split_insert_erase_concat(rng):
    nodes = [
        helper.make_node("SplitToSequence", ["x", "sizes"], ["s1"], axis=1),
        helper.make_node("SequenceInsert", ["s1", "y", "one"], ["s2"]),
        helper.make_node("SequenceErase", ["s2", "minus_one"], ["s3"]),
        helper.make_node("ConcatFromSequence", ["s3"], ["cat"], axis=1),
        helper.make_node("SequenceLength", ["s3"], ["n"]),
        helper.make_node("SequenceAt", ["s3", "minus_one"], ["last"]),
        helper.make_node("SplitToSequence", ["x"], ["rows"], axis=-1, keepdims=0),
        helper.make_node("ConcatFromSequence", ["rows"], ["stacked"], axis=-1, new_axis=1),
        helper.make_node("SplitToSequence", ["x", "two"], ["chunks"], axis=1),
        helper.make_node("SequenceAt", ["chunks", "minus_one"], ["tail"]),
    ]
    model = make_model(
        nodes, [("x", F, [2, 5]), ("y", F, [2, 4])],
        [("cat", F, None), ("n", np.int64, []), ("last", F, None), ("stacked", F, None),
         ("tail", F, None)],
        {"sizes": np.array([1, 3, 1], np.int64), "one": np.array(1, np.int64),
         "minus_one": np.array(-1, np.int64), "two": np.array(2, np.int64)})
    assert_matches_ort(model, {"x": rng.standard_normal((2, 5)).astype(F),
                               "y": rng.standard_normal((2, 4)).astype(F)})


def test_construct_empty_and_stack(rng):
    nodes = [
        helper.make_node("SequenceEmpty", [], ["e"], dtype=TensorProto.FLOAT),
        helper.make_node("SequenceInsert", ["e", "x"], ["s1"]),
        helper.make_node("SequenceConstruct", ["x", "y"], ["s2"]),
        helper.make_node("ConcatFromSequence", ["s1"], ["a"], axis=0),
        helper.make_node("ConcatFromSequence", ["s2"], ["b"], axis=1, new_axis=1),
    ]
    model = make_model(nodes, [("x", F, [2, 3]), ("y", F, [2, 3])],
                       [("a", F, None), ("b", F, None)])
    assert_matches_ort(model, {"x": rng.standard_normal((2, 3)).astype(F),
                               "y": rng.standard_normal((2, 3)).astype(F)})


def test_position_out_of_range_is_refused():
    model = make_model(
        [helper.make_node("SequenceConstruct", ["x"], ["s"]),
         helper.make_node("SequenceAt", ["s", "pos"], ["out"], name="at")],
        [("x", F, [2])], [("out", F, None)], {"pos": np.array(3, np.int64)})
    with pytest.raises(InvalidModelError, match="SequenceAt node 'at'.*out of range"):
        onnx2flax.convert(model).run({"x": np.ones(2, F)})
