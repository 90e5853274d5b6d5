"""If, Loop, Scan and NonMaxSuppression against onnxruntime."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.numpy_helper import from_array

import onnx2flax
import onnx2flax.backend
from onnx2flax.errors import ResourceLimitError, UnsupportedOpError
from helpers import check_graph, make_model

F = np.float32
I64 = TensorProto.INT64
BOOL = TensorProto.BOOL
FLOAT = TensorProto.FLOAT


def _graph(nodes, name, inputs, outputs, initializers=()):
    """A subgraph; ``inputs``/``outputs``: ``(name, elem_type, shape)``."""
    return helper.make_graph(
        nodes, name, [helper.make_tensor_value_info(*i) for i in inputs],
        [helper.make_tensor_value_info(*o) for o in outputs],
        [from_array(np.asarray(v), n) for n, v in dict(initializers).items()])


def _branches():
    """then: x * w_then (own initializer); else: x - x (reads the outer x twice)."""
    then = _graph([helper.make_node("Mul", ["x", "w_then"], ["t"])], "then", [],
                  [("t", FLOAT, [2, 3])], {"w_then": np.full((2, 3), 3.0, F)})
    other = _graph([helper.make_node("Sub", ["x", "y"], ["e"])], "else", [], [("e", FLOAT, [2, 3])])
    return then, other


@pytest.mark.parametrize("flag", [True, False])
def test_if_constant_condition_runs_taken_branch(rng, flag):
    then, other = _branches()
    model = make_model(
        [helper.make_node("If", ["c"], ["out"], then_branch=then, else_branch=other)],
        [("x", F, [2, 3]), ("y", F, [2, 3])], [("out", F, [2, 3])], {"c": np.array(flag)})
    feeds = {"x": rng.standard_normal((2, 3)).astype(F), "y": rng.standard_normal((2, 3)).astype(F)}
    check_graph(model, feeds)


@pytest.mark.parametrize("flag", [True, False])
def test_if_runtime_condition_uses_lax_cond(rng, flag):
    then, other = _branches()
    model = make_model(
        [helper.make_node("If", ["c"], ["out"], then_branch=then, else_branch=other)],
        [("c", np.bool_, [1]), ("x", F, [2, 3]), ("y", F, [2, 3])], [("out", F, [2, 3])])
    feeds = {"c": np.array([flag]), "x": rng.standard_normal((2, 3)).astype(F),
             "y": rng.standard_normal((2, 3)).astype(F)}
    check_graph(model, feeds)


def test_if_reads_outer_value_defined_later_in_file(rng):
    """The If is listed before the node producing what its branch reads."""
    then = _graph([helper.make_node("Add", ["z", "z"], ["t"])], "then", [], [("t", FLOAT, [3])])
    other = _graph([helper.make_node("Neg", ["z"], ["e"])], "else", [], [("e", FLOAT, [3])])
    model = make_model(
        [helper.make_node("If", ["c"], ["out"], then_branch=then, else_branch=other),
         helper.make_node("Relu", ["x"], ["z"])],
        [("c", np.bool_, []), ("x", F, [3])], [("out", F, [3])])
    for flag in (True, False):
        check_graph(model, {"c": np.array(flag), "x": rng.standard_normal(3).astype(F)})


def test_if_runtime_condition_with_mismatched_branches_is_refused():
    """The condition is computed from float data (not a flag input ``run`` specializes on):
    ``lax.cond`` needs branches of the same shapes."""
    then = _graph([helper.make_node("Identity", ["x"], ["t"])], "then", [], [("t", FLOAT, None)])
    other = _graph([helper.make_node("Concat", ["x", "x"], ["e"], axis=0)], "else", [],
                   [("e", FLOAT, None)])
    model = make_model(
        [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
         helper.make_node("Greater", ["s", "zero"], ["c"]),
         helper.make_node("If", ["c"], ["out"], name="branchy", then_branch=then,
                          else_branch=other)],
        [("x", F, [2])], [("out", F, None)], {"zero": np.array(0, F)}, opset=11)
    with pytest.raises(UnsupportedOpError, match="If node 'branchy'.*same shapes"):
        onnx2flax.convert(model).run({"x": np.ones(2, F)})


def _counting_body(cond_from_data: bool, scan_output: bool = True):
    """Loop body: acc += x * i; optional scan output acc; cond either passed through or
    ``i + 1 != limit`` (an outer value), computed from the iteration number."""
    nodes = [helper.make_node("Cast", ["i"], ["fi"], to=FLOAT),
             helper.make_node("Mul", ["x", "fi"], ["xi"]),
             helper.make_node("Add", ["acc", "xi"], ["acc_out"])]
    if cond_from_data:
        nodes += [helper.make_node("Add", ["i", "one"], ["next"]),
                  helper.make_node("Sub", ["limit", "next"], ["left"]),
                  helper.make_node("Cast", ["left"], ["cond_out"], to=BOOL)]
    else:
        nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    outputs = [("cond_out", BOOL, []), ("acc_out", FLOAT, [3])]
    if scan_output:
        nodes.append(helper.make_node("Mul", ["acc_out", "acc_out"], ["sq"]))
        outputs.append(("sq", FLOAT, [3]))
    return _graph(nodes, "body", [("i", I64, []), ("cond_in", BOOL, []), ("acc", FLOAT, [3])],
                  outputs, {"one": np.array(1, np.int64)})


def _loop_model(body, m=None, cond=None, m_input=False, n_outputs=2):
    inputs = [("x", F, [3]), ("acc0", F, [3])]
    inits = {"limit": np.array(4, np.int64)}
    if m_input:
        inputs.append(("m", np.int64, []))
    elif m is not None:
        inits["m"] = np.array(m, np.int64)
    if cond is not None:
        inits["c"] = np.array(cond)
    node = helper.make_node("Loop", ["m" if (m is not None or m_input) else "",
                                     "c" if cond is not None else "", "acc0"],
                            ["acc", "sqs"][:n_outputs], name="loopy", body=body)
    outputs = [("acc", F, [3]), ("sqs", F, None)][:n_outputs]
    return make_model([node], inputs, outputs, inits)


def _loop_feeds(rng):
    return {"x": rng.standard_normal(3).astype(F), "acc0": rng.standard_normal(3).astype(F)}


@pytest.mark.parametrize("m,cond", [(5, True), (5, None), (0, True), (3, False)])
def test_loop_static_trip_count_with_scan_outputs(rng, m, cond):
    check_graph(_loop_model(_counting_body(False), m=m, cond=cond), _loop_feeds(rng))


@pytest.mark.parametrize("m", [2, 10])
def test_loop_condition_computed_in_body_uses_while_loop(rng, m):
    model = _loop_model(_counting_body(True, scan_output=False), m=m, cond=True, n_outputs=1)
    check_graph(model, _loop_feeds(rng))


def test_loop_runtime_trip_count(rng):
    model = _loop_model(_counting_body(False, scan_output=False), m_input=True, cond=True,
                        n_outputs=1)
    for m in (0, 3, 6):
        check_graph(model, {**_loop_feeds(rng), "m": np.array(m, np.int64)})


@pytest.mark.parametrize("m", [None, np.iinfo(np.int64).max])
def test_loop_bounded_only_by_condition_is_refused(m):
    model = _loop_model(_counting_body(True, scan_output=False), m=m, cond=True, n_outputs=1)
    with pytest.raises(ResourceLimitError, match="Loop node .loopy.*could run forever"):
        onnx2flax.convert(model).run({"x": np.ones(3, F), "acc0": np.ones(3, F)})


def test_loop_scan_outputs_with_runtime_condition_are_refused():
    model = _loop_model(_counting_body(True), m=10, cond=True)
    with pytest.raises(UnsupportedOpError, match="Loop node 'loopy'.*scan output"):
        onnx2flax.convert(model).run({"x": np.ones(3, F), "acc0": np.ones(3, F)})


def _growing_loop(m):
    body = _graph([helper.make_node("Identity", ["cond_in"], ["cond_out"]),
                   helper.make_node("Concat", ["acc", "acc"], ["acc_out"], axis=0)], "body",
                  [("i", I64, []), ("cond_in", BOOL, []), ("acc", FLOAT, None)],
                  [("cond_out", BOOL, []), ("acc_out", FLOAT, None)])
    return make_model([helper.make_node("Loop", ["m", "", "x"], ["y"], name="grow", body=body)],
                      [("x", F, [3])], [("y", F, None)], {"m": np.array(m, np.int64)})


def test_loop_carried_value_changing_shape_is_unrolled(rng):
    check_graph(_growing_loop(3), {"x": rng.standard_normal(3).astype(F)})


def test_loop_carried_value_changing_shape_is_refused_beyond_the_unroll_limit():
    model = _growing_loop(onnx2flax.ops.control.MAX_UNROLLED_ITERATIONS + 1)
    with pytest.raises(UnsupportedOpError, match="Loop node 'grow'.*changes shape"):
        onnx2flax.convert(model).run({"x": np.ones(3, F)})


def test_loop_slicing_by_iteration_number_is_unrolled(rng):
    """A Slice whose starts and ends come from the iteration number needs them at conversion
    time: the loop is unrolled (``lax.scan`` would make them run-time values)."""
    body = _graph([helper.make_node("Identity", ["cond_in"], ["cond_out"]),
                   helper.make_node("Add", ["i", "one"], ["end"]),
                   helper.make_node("Unsqueeze", ["i", "zero"], ["starts"]),
                   helper.make_node("Unsqueeze", ["end", "zero"], ["ends"]),
                   helper.make_node("Slice", ["x", "starts", "ends"], ["piece"]),
                   helper.make_node("Add", ["acc", "piece"], ["acc_out"]),
                   helper.make_node("Identity", ["acc_out"], ["scan"])], "body",
                  [("i", I64, []), ("cond_in", BOOL, []), ("acc", FLOAT, [1])],
                  [("cond_out", BOOL, []), ("acc_out", FLOAT, [1]), ("scan", FLOAT, [1])],
                  {"one": np.array(1, np.int64), "zero": np.array([0], np.int64)})
    model = make_model([helper.make_node("Loop", ["m", "", "acc0"], ["acc", "scans"], body=body)],
                       [("x", F, [5]), ("acc0", F, [1])], [("acc", F, [1]), ("scans", F, None)],
                       {"m": np.array(4, np.int64)})
    check_graph(model, {"x": rng.standard_normal(5).astype(F),
                               "acc0": rng.standard_normal(1).astype(F)})


def test_loop_carrying_a_sequence_is_unrolled(rng):
    """Each iteration appends ``x * i``: the sequence grows, so the loop is unrolled."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Cast", ["i"], ["fi"], to=FLOAT),
         helper.make_node("Mul", ["x", "fi"], ["xi"]),
         helper.make_node("SequenceInsert", ["seq", "xi"], ["seq_out"])], "body",
        [helper.make_tensor_value_info("i", I64, []), helper.make_tensor_value_info("cond_in", BOOL, []),
         helper.make_tensor_sequence_value_info("seq", FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", BOOL, []),
         helper.make_tensor_sequence_value_info("seq_out", FLOAT, None)])
    model = make_model([helper.make_node("SequenceEmpty", [], ["empty"], dtype=FLOAT),
                        helper.make_node("Loop", ["m", "", "empty"], ["seq"], body=body),
                        helper.make_node("ConcatFromSequence", ["seq"], ["y"], axis=0, new_axis=1)],
                       [("x", F, [3])], [("y", F, None)], {"m": np.array(4, np.int64)})
    check_graph(model, {"x": rng.standard_normal(3).astype(F)})


def test_if_runtime_condition_with_optional_branches_is_specialized():
    """An empty optional in one branch and a set one in the other: ``lax.cond`` cannot pick,
    so ``run`` (and the backend) convert once per condition value; the module refuses."""
    empty = helper.make_graph(
        [helper.make_node("Optional", [], ["o"], type=helper.make_tensor_type_proto(FLOAT, [2]))],
        "then", [], [helper.make_value_info("o", helper.make_optional_type_proto(
            helper.make_tensor_type_proto(FLOAT, [2])))])
    full = helper.make_graph(
        [helper.make_node("Optional", ["x"], ["o"])], "else", [],
        [helper.make_value_info("o", helper.make_optional_type_proto(
            helper.make_tensor_type_proto(FLOAT, [2])))])
    model = make_model(
        [helper.make_node("If", ["c"], ["o"], name="pick", then_branch=empty, else_branch=full),
         helper.make_node("OptionalHasElement", ["o"], ["has"])],
        [("c", np.bool_, []), ("x", F, [2])], [("has", np.bool_, [])], opset=18)
    converted = onnx2flax.convert(model)
    with pytest.raises(UnsupportedOpError, match="If node 'pick'.*optionals both empty"):
        converted.module.apply(converted.variables, np.array(True), np.ones(2, F))
    for flag in (True, False):
        has, = converted.run({"c": np.array(flag), "x": np.ones(2, F)})
        assert has.item() is (not flag)
        has, = onnx2flax.backend.run_model(model, [np.array(flag), np.ones(2, F)])
        assert has.item() is (not flag)


def test_if_inside_loop_reads_top_level_value(rng):
    """Nested subgraphs: an If in a Loop body reads the top graph's input ``x``."""
    then = _graph([helper.make_node("Add", ["acc", "x"], ["t"])], "then", [], [("t", FLOAT, [3])])
    other = _graph([helper.make_node("Sub", ["acc", "x"], ["e"])], "else", [], [("e", FLOAT, [3])])
    body = _graph([helper.make_node("Identity", ["cond_in"], ["cond_out"]),
                   helper.make_node("If", ["flag"], ["acc_out"], then_branch=then, else_branch=other)],
                  "body", [("i", I64, []), ("cond_in", BOOL, []), ("acc", FLOAT, [3])],
                  [("cond_out", BOOL, []), ("acc_out", FLOAT, [3])])
    model = make_model([helper.make_node("Loop", ["m", "", "acc0"], ["acc"], body=body)],
                       [("flag", np.bool_, []), ("x", F, [3]), ("acc0", F, [3])],
                       [("acc", F, [3])], {"m": np.array(3, np.int64)})
    for flag in (True, False):
        check_graph(model, {"flag": np.array(flag), **_loop_feeds(rng)})


def _scan_body():
    """state s [2]; scan inputs a [2], b [2]; outputs s' = s + a * b, y1 = s', y2 = a - s."""
    return _graph([helper.make_node("Mul", ["a", "b"], ["ab"]),
                   helper.make_node("Add", ["s", "ab"], ["s_out"]),
                   helper.make_node("Identity", ["s_out"], ["y1"]),
                   helper.make_node("Sub", ["a", "s"], ["y2"])], "body",
                  [("s", FLOAT, [2]), ("a", FLOAT, [2]), ("b", FLOAT, [2])],
                  [("s_out", FLOAT, [2]), ("y1", FLOAT, [2]), ("y2", FLOAT, [2])])


@pytest.mark.parametrize("attrs", [
    {},
    {"scan_input_axes": [1, -1], "scan_input_directions": [1, 0],
     "scan_output_axes": [1, -2], "scan_output_directions": [0, 1]},
])
def test_scan_opset9_axes_and_directions(rng, attrs):
    in_axes = attrs.get("scan_input_axes", [0, 0])
    shape_a = [5, 2] if in_axes[0] == 0 else [2, 5]
    shape_b = [5, 2] if in_axes[1] == 0 else [2, 5]
    model = make_model(
        [helper.make_node("Scan", ["s0", "a", "b"], ["s", "y1", "y2"], body=_scan_body(),
                          num_scan_inputs=2, **attrs)],
        [("s0", F, [2]), ("a", F, shape_a), ("b", F, shape_b)],
        [("s", F, [2]), ("y1", F, None), ("y2", F, None)])
    feeds = {"s0": rng.standard_normal(2).astype(F), "a": rng.standard_normal(shape_a).astype(F),
             "b": rng.standard_normal(shape_b).astype(F)}
    check_graph(model, feeds)


def test_scan_opset8_batched(rng):
    model = make_model(
        [helper.make_node("Scan", ["", "s0", "a", "b"], ["s", "y1", "y2"], body=_scan_body(),
                          num_scan_inputs=2, directions=[0, 1])],
        [("s0", F, [3, 2]), ("a", F, [3, 4, 2]), ("b", F, [3, 4, 2])],
        [("s", F, [3, 2]), ("y1", F, [3, 4, 2]), ("y2", F, [3, 4, 2])], opset=8)
    feeds = {"s0": rng.standard_normal((3, 2)).astype(F),
             "a": rng.standard_normal((3, 4, 2)).astype(F),
             "b": rng.standard_normal((3, 4, 2)).astype(F)}
    check_graph(model, feeds)


def _nms_model(boxes_const, center_point_box):
    boxes = np.array([[[0, 0, 1, 1], [0, 0.1, 1, 1.1], [0, -0.1, 1, 0.9], [0, 10, 1, 11],
                       [0, 10.1, 1, 11.1], [0, 100, 1, 101]]], F)
    scores = np.array([[[0.9, 0.75, 0.6, 0.95, 0.5, 0.3], [0.1, 0.8, 0.3, 0.2, 0.7, 0.6]]], F)
    inits = {"scores": scores, "max_out": np.array([2], np.int64), "iou": np.array([0.5], F),
             "score_th": np.array([0.25], F)}
    inputs = []
    if boxes_const:
        inits["boxes"] = boxes
    else:
        inputs = [("boxes", F, [1, 6, 4])]
    model = make_model(
        [helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "score_th"],
                          ["sel"], name="nms", center_point_box=center_point_box),
         helper.make_node("Add", ["sel", "zero"], ["out"])],
        inputs, [("out", np.int64, None)], {**inits, "zero": np.array(0, np.int64)})
    return model, boxes


@pytest.mark.parametrize("center_point_box", [0, 1])
def test_nms_with_constant_inputs_is_folded(center_point_box):
    model, _ = _nms_model(True, center_point_box)
    converted, _, _ = check_graph(model, {}, rtol=0, atol=0)
    assert not converted._program.graph.nodes  # folded at conversion time


def test_nms_on_runtime_boxes_is_refused():
    model, boxes = _nms_model(False, 0)
    with pytest.raises(UnsupportedOpError, match="NonMaxSuppression node 'nms'.*output shape"):
        onnx2flax.convert(model).run({"boxes": boxes})


def test_weights_read_inside_a_loop_body_are_params(rng):
    """An outer float initializer used only in the body becomes a (trainable) param."""
    body = _graph([helper.make_node("Identity", ["cond_in"], ["cond_out"]),
                   helper.make_node("Mul", ["acc", "w"], ["acc_out"])], "body",
                  [("i", I64, []), ("cond_in", BOOL, []), ("acc", FLOAT, [3])],
                  [("cond_out", BOOL, []), ("acc_out", FLOAT, [3])])
    model = make_model([helper.make_node("Loop", ["m", "", "acc0"], ["acc"], body=body)],
                       [("acc0", F, [3])], [("acc", F, [3])],
                       {"m": np.array(3, np.int64), "w": rng.standard_normal(3).astype(F)})
    acc0 = rng.standard_normal(3).astype(F)
    converted, _, _ = check_graph(model, {"acc0": acc0})
    params = converted.variables["params"]
    assert set(params) == {"w"}
    grad = jax.grad(lambda p: converted.module.apply({"params": p}, acc0).sum())(params)
    np.testing.assert_allclose(grad["w"], 3 * params["w"] ** 2 * acc0, rtol=1e-5)


def test_loop_runtime_initial_condition(rng):
    body = _counting_body(False, scan_output=False)
    model = make_model([helper.make_node("Loop", ["m", "c", "acc0"], ["acc"], body=body)],
                       [("c", np.bool_, []), ("x", F, [3]), ("acc0", F, [3])],
                       [("acc", F, [3])], {"m": np.array(4, np.int64)})
    for flag in (True, False):
        check_graph(model, {"c": np.array(flag), **_loop_feeds(rng)})
