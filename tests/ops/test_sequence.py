"""Sequence and optional ops (Python lists / ``None`` while tracing), and sequence and
optional graph inputs and outputs, against onnxruntime."""

from __future__ import annotations

import jax
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnx2flax
import onnx2flax.backend
from onnx2flax.errors import InvalidInputError, InvalidModelError, UnsupportedOpError
from helpers import check_graph, make_model, run_ort

F = np.float32
FLOAT = TensorProto.FLOAT


def _tensor_type(shape=None, elem=FLOAT):
    return helper.make_tensor_type_proto(elem, shape)


def _seq_type(shape=None, elem=FLOAT):
    return helper.make_sequence_type_proto(_tensor_type(shape, elem))


def _opt_type(inner):
    return helper.make_optional_type_proto(inner)


def _model(nodes, inputs, outputs, opset=18, check=True):
    """``inputs``/``outputs``: ``(name, TypeProto)``; checked by onnx's full checker."""
    graph = helper.make_graph(nodes, "test", [helper.make_value_info(n, t) for n, t in inputs],
                              [helper.make_value_info(n, t) for n, t in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def _assert_same(got, expected):
    """Equal outputs: tensors, sequences (lists) and empty optionals (None)."""
    if expected is None or isinstance(expected, list):
        assert type(got) is type(expected), (got, expected)
        assert expected is None or len(got) == len(expected)
        for g, e in zip(got or [], expected or []):
            _assert_same(g, e)
        return
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def _check(model, feeds):
    """``ConvertedModel.run`` equals onnxruntime, output by output."""
    expected = run_ort(model, feeds)
    got = onnx2flax.convert(model).run(feeds)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        _assert_same(g, e)


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
    check_graph(model, {"x": rng.standard_normal((2, 5)).astype(F),
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
    check_graph(model, {"x": rng.standard_normal((2, 3)).astype(F),
                               "y": rng.standard_normal((2, 3)).astype(F)})


def test_position_out_of_range_is_refused():
    model = make_model(
        [helper.make_node("SequenceConstruct", ["x"], ["s"]),
         helper.make_node("SequenceAt", ["s", "pos"], ["out"], name="at")],
        [("x", F, [2])], [("out", F, None)], {"pos": np.array(3, np.int64)})
    with pytest.raises(InvalidModelError, match="SequenceAt node 'at'.*out of range"):
        onnx2flax.convert(model).run({"x": np.ones(2, F)})


def _insert_model():
    """A sequence in, the sequence with ``x`` appended and its concatenation out."""
    return _model([helper.make_node("SequenceInsert", ["s", "x"], ["s2"]),
                   helper.make_node("ConcatFromSequence", ["s2"], ["cat"], axis=0)],
                  [("s", _seq_type([None])), ("x", _tensor_type([2]))],
                  [("s2", _seq_type([None])), ("cat", _tensor_type([None]))])


def test_sequence_input_and_output(rng):
    model = _insert_model()
    converted = onnx2flax.convert(model)
    assert [(s.sequence, s.optional) for s in converted.inputs] == [(True, False), (False, False)]
    assert converted.outputs[0].kind == "sequence"
    for lengths in ([3, 1], [], [4, 2, 5]):  # a new length retraces
        feeds = {"s": [rng.standard_normal(n).astype(F) for n in lengths],
                 "x": rng.standard_normal(2).astype(F)}
        expected = run_ort(model, feeds)
        got = converted.run(feeds)
        for g, e in zip(got, expected):
            _assert_same(g, e)


def test_sequence_input_through_module_apply(rng):
    converted = onnx2flax.convert(_insert_model())
    seq = [rng.standard_normal(n).astype(F) for n in (3, 1)]
    x = rng.standard_normal(2).astype(F)
    out_seq, cat = jax.jit(converted.module.apply)(converted.variables, seq, x)
    assert isinstance(out_seq, list) and len(out_seq) == 3
    np.testing.assert_array_equal(np.asarray(cat), np.concatenate([*seq, x]))


@pytest.mark.parametrize("given", [True, False])
def test_optional_inputs_and_outputs(rng, given):
    nodes = [helper.make_node("OptionalHasElement", ["t"], ["has_t"]),
             helper.make_node("OptionalHasElement", ["s"], ["has_s"]),
             helper.make_node("Identity", ["t"], ["t_out"]),
             helper.make_node("Identity", ["s"], ["s_out"])]
    t_type, s_type = _opt_type(_tensor_type([3])), _opt_type(_seq_type([None]))
    bool_type = _tensor_type([], TensorProto.BOOL)
    model = _model(nodes, [("t", t_type), ("s", s_type)],
                   [("has_t", bool_type), ("has_s", bool_type), ("t_out", t_type),
                    ("s_out", s_type)])
    feeds = ({"t": rng.standard_normal(3).astype(F), "s": [rng.standard_normal(2).astype(F)]}
             if given else {"t": None, "s": None})
    _check(model, feeds)


def test_optional_get_element_and_construct(rng):
    nodes = [helper.make_node("Optional", ["x"], ["o"]),
             helper.make_node("OptionalGetElement", ["o"], ["y"]),
             helper.make_node("OptionalGetElement", ["s"], ["s_out"]),
             helper.make_node("Optional", [], ["empty"], type=_tensor_type([2])),
             helper.make_node("OptionalHasElement", ["empty"], ["has"])]
    model = _model(nodes, [("x", _tensor_type([2])), ("s", _opt_type(_seq_type([2])))],
                   [("y", _tensor_type([2])), ("s_out", _seq_type([2])),
                    ("has", _tensor_type([], TensorProto.BOOL))])
    _check(model, {"x": rng.standard_normal(2).astype(F),
                   "s": [rng.standard_normal(2).astype(F) for _ in range(3)]})


def test_optional_get_element_of_empty_is_refused():
    model = _model([helper.make_node("OptionalGetElement", ["o"], ["y"], name="get")],
                   [("o", _opt_type(_tensor_type([2])))], [("y", _tensor_type([2]))])
    with pytest.raises(InvalidModelError, match="OptionalGetElement node 'get'.*empty"):
        onnx2flax.convert(model).run({"o": None})


def test_sequence_map_with_sequence_and_tensor_inputs(rng):
    """Elements of different lengths: the body runs once per element (unrolled)."""
    body = helper.make_graph(
        [helper.make_node("ReduceSum", ["a"], ["total"], keepdims=1),
         helper.make_node("Mul", ["total", "w"], ["scaled"]),
         helper.make_node("Add", ["b", "scaled"], ["sum"]),
         helper.make_node("Shape", ["a"], ["shape"])],
        "body", [helper.make_tensor_value_info("a", FLOAT, ["N"]),
                 helper.make_tensor_value_info("b", FLOAT, ["M"]),
                 helper.make_tensor_value_info("w", FLOAT, [2])],
        [helper.make_tensor_value_info("sum", FLOAT, ["M"]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [1])])
    model = _model([helper.make_node("SequenceMap", ["x", "y", "w"], ["sums", "shapes"],
                                     body=body)],
                   [("x", _seq_type(["N"])), ("y", _seq_type([2])), ("w", _tensor_type([2]))],
                   [("sums", _seq_type([2])), ("shapes", _seq_type([1], TensorProto.INT64))],
                   opset=17)
    _check(model, {"x": [rng.standard_normal(n).astype(F) for n in (3, 5, 1)],
                   "y": [rng.standard_normal(2).astype(F) for _ in range(3)],
                   "w": rng.standard_normal(2).astype(F)})


def test_sequence_map_sequences_of_different_lengths_are_refused():
    body = helper.make_graph([helper.make_node("Add", ["a", "b"], ["c"])], "body",
                             [helper.make_tensor_value_info(n, FLOAT, [2]) for n in "ab"],
                             [helper.make_tensor_value_info("c", FLOAT, [2])])
    model = _model([helper.make_node("SequenceMap", ["x", "y"], ["z"], body=body, name="map")],
                   [("x", _seq_type([2])), ("y", _seq_type([2]))], [("z", _seq_type([2]))],
                   opset=17)
    with pytest.raises(InvalidModelError, match="SequenceMap node 'map'.*different lengths"):
        onnx2flax.convert(model).run({"x": [np.ones(2, F)], "y": [np.ones(2, F)] * 2})


@pytest.mark.parametrize("feeds,message", [
    ({"s": np.ones(2, F), "x": np.ones(2, F)}, "input 's' is a sequence: it takes a list"),
    # run() reads a nested list given for a tensor as one array; apply() refuses a list
    ({"s": [np.ones(2, F)], "x": [np.ones(2, F)] * 2},
     "input 'x' (is a tensor, not a sequence|must have rank 1)"),
    ({"s": None, "x": np.ones(2, F)}, "input 's' is a sequence, got None"),
    ({"s": [np.ones(2, np.int32)], "x": np.ones(2, F)}, "element 0 of input 's' must be float32"),
    ({"s": [np.ones((2, 2), F)], "x": np.ones(2, F)}, "element 0 of input 's' must have rank 1"),
])
def test_wrong_kind_of_feed_is_refused(feeds, message):
    converted = onnx2flax.convert(_insert_model())
    with pytest.raises(InvalidInputError, match=message):
        converted.run(feeds)
    with pytest.raises(InvalidInputError, match=message):
        converted.module.apply(converted.variables, feeds["s"], feeds["x"])


def test_backend_takes_and_returns_sequences_and_optionals(rng):
    model = _model([helper.make_node("OptionalHasElement", ["o"], ["has"]),
                    helper.make_node("Identity", ["s"], ["s_out"])],
                   [("o", _opt_type(_tensor_type([2]))), ("s", _seq_type([None]))],
                   [("has", _tensor_type([], TensorProto.BOOL)), ("s_out", _seq_type([None]))])
    seq = [rng.standard_normal(n).astype(F) for n in (2, 4)]
    has, out = onnx2flax.backend.run_model(model, [None, seq])
    assert has.item() is False
    _assert_same(out, seq)


def test_sequence_of_sequences_is_refused():
    model = _model([helper.make_node("Identity", ["s"], ["t"])],
                   [("s", helper.make_sequence_type_proto(_seq_type([2])))],
                   [("t", helper.make_sequence_type_proto(_seq_type([2])))], check=False)
    with pytest.raises(UnsupportedOpError, match="graph input 's' is a sequence of sequences"):
        onnx2flax.convert(model)
