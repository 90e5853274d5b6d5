"""NonZero, NonMaxSuppression and Unique: ops whose output size depends on the data.

On run-time inputs they need a static bound (``convert(bounds=...)``) and return results
padded to it; each test compares the valid part with onnxruntime's exact output (or the
official node tests' expected outputs) and checks the padding.
"""

from __future__ import annotations

import jax
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnx2flax
import onnx2flax.backend as backend
from conformance_cases import load_cases
from helpers import assert_codegen_matches, make_model, run_ort
from onnx2flax.errors import InvalidInputError, UnsupportedOpError

F = np.float32
I64 = np.int64


def _check_padded(got, want, fill):
    """``got`` is ``want`` padded at the end of every axis with ``fill``."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.ndim == want.ndim and all(g >= w for g, w in zip(got.shape, want.shape)), \
        (got.shape, want.shape)
    valid = tuple(slice(0, w) for w in want.shape)
    np.testing.assert_array_equal(got[valid], want)
    rest = np.ones(got.shape, bool)
    rest[valid] = False
    assert np.all(got[rest] == fill), got


# --- NonZero ---------------------------------------------------------------------------------

def _non_zero_gather_model():
    """``x[8] -> NonZero -> Squeeze -> Gather(x, .)``: the non-zero values themselves."""
    nodes = [helper.make_node("NonZero", ["x"], ["idx"], name="nz"),
             helper.make_node("Squeeze", ["idx", "axes"], ["flat"]),
             helper.make_node("Gather", ["x", "flat"], ["vals"])]
    return make_model(nodes, [("x", F, [8])], [("idx", I64, None), ("vals", F, None)],
                      {"axes": np.array([0], I64)}, opset=13)


def test_non_zero_bounded_feeds_gather(rng):
    """Padding columns are -1, and Gather reads -1 as the last element (documented)."""
    model = _non_zero_gather_model()
    converted = onnx2flax.convert(model, bounds={"nz": 6})
    for count in (0, 3, 6):  # one compiled program for every value
        x = np.zeros(8, F)
        x[rng.choice(7, count, replace=False)] = rng.standard_normal(count).astype(F) + 5
        x[7] = 0.5 if count == 0 else 0  # the element -1 reads
        idx, vals = converted.run({"x": x})
        want_idx, want_vals = run_ort(model, {"x": x})
        assert idx.shape == (1, 6) and idx.dtype == np.int64
        _check_padded(idx, want_idx, -1)
        np.testing.assert_array_equal(vals[:count], want_vals[:count])
        assert np.all(vals[count:] == x[-1])


def test_non_zero_bound_drops_results_past_it(rng):
    x = (rng.random((3, 4)) < 0.7).astype(F)
    model = make_model([helper.make_node("NonZero", ["x"], ["idx"])], [("x", F, [3, 4])],
                       [("idx", I64, None)], opset=13)
    (want,) = run_ort(model, {"x": x})
    (got,) = onnx2flax.convert(model, bounds={"idx": 3}).run({"x": x})
    np.testing.assert_array_equal(got, want[:, :3])
    (got,) = onnx2flax.convert(model, bounds={"idx": 20}).run({"x": x})
    _check_padded(got, want, -1)


def test_non_zero_without_bound_says_how_to_give_one():
    model = _non_zero_gather_model()
    with pytest.raises(UnsupportedOpError, match=r"NonZero node 'nz'.*bounds=\{'idx': N\}.*"
                       r"--bound idx=N.*at most 8"):
        onnx2flax.convert(model).run({"x": np.ones(8, F)})


# --- NonMaxSuppression -----------------------------------------------------------------------

def _nms_model(center_point_box=0, runtime_limits=False, score_threshold=True):
    """NMS on run-time boxes and scores; ``max_out`` / ``iou`` as inputs or initializers."""
    inputs = [("boxes", F, [2, 10, 4]), ("scores", F, [2, 3, 10])]
    limits = {"max_out": np.array([3], I64), "iou": np.array([0.3], F)}
    consts = {} if runtime_limits else dict(limits)
    if runtime_limits:
        inputs += [("max_out", I64, [1]), ("iou", F, [1])]
    names = ["boxes", "scores", "max_out", "iou"]
    if score_threshold:
        consts["score_th"] = np.array([0.2], F)
        names.append("score_th")
    node = helper.make_node("NonMaxSuppression", names, ["sel"], name="nms",
                            center_point_box=center_point_box)
    return make_model([node], inputs, [("sel", I64, None)], consts, opset=11), limits


def _nms_feeds(rng):
    corner = rng.random((2, 10, 2)).astype(F) * 4
    size = rng.random((2, 10, 2)).astype(F) + 0.5
    boxes = np.concatenate([corner, corner + size], axis=-1)
    return {"boxes": boxes, "scores": rng.random((2, 3, 10)).astype(F)}


@pytest.mark.parametrize("center_point_box", [0, 1])
@pytest.mark.parametrize("runtime_limits", [False, True])
@pytest.mark.parametrize("score_threshold", [True, False])
def test_nms_bounded_matches_ort(rng, center_point_box, runtime_limits, score_threshold):
    model, limits = _nms_model(center_point_box, runtime_limits, score_threshold)
    converted = onnx2flax.convert(model, bounds={"sel": 20})
    for _ in range(2):
        feeds = _nms_feeds(rng)
        if runtime_limits:
            feeds.update(limits)
        (want,) = run_ort(model, feeds)
        (got,) = converted.run(feeds)
        assert got.shape == (20, 3) and got.dtype == np.int64
        assert 0 < len(want) < 20
        _check_padded(got, want, -1)


def test_nms_bound_drops_rows_past_it_in_op_order(rng):
    model, _ = _nms_model()
    feeds = _nms_feeds(rng)
    (want,) = run_ort(model, feeds)
    (got,) = onnx2flax.convert(model, bounds={"nms": 4}).run(feeds)
    np.testing.assert_array_equal(got, want[:4])


def test_nms_without_max_output_selects_nothing(rng):
    """max_output_boxes_per_class absent (default 0): an empty result, no bound needed."""
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["sel"])
    model = make_model([node], [("boxes", F, [2, 10, 4]), ("scores", F, [2, 3, 10])],
                       [("sel", I64, None)], opset=11)
    feeds = _nms_feeds(rng)
    (want,) = run_ort(model, feeds)
    (got,) = onnx2flax.convert(model).run(feeds)
    assert got.shape == want.shape == (0, 3)


def test_nms_without_bound_names_the_node_and_the_natural_bound():
    model, _ = _nms_model()
    with pytest.raises(UnsupportedOpError, match=r"NonMaxSuppression node 'nms'.*output shape"
                       r".*bounds=\{'sel': N\}.*at most 18 results"):  # 2 batches 3 classes 3 max
        onnx2flax.convert(model).run(_nms_feeds(np.random.default_rng(0)))


@pytest.mark.parametrize("name", [n for n in load_cases() if n.startswith("test_nonmaxsuppression")])
def test_nms_node_tests_bounded(name):
    """The official node tests (ties, identical boxes, the IoU boundary...) on run-time data."""
    case = load_cases()[name]
    inputs, (want,) = case.data_sets[0]
    feeds = {i.name: v for i, v in zip(case.model.graph.input, inputs)}
    converted = onnx2flax.convert(case.model, bounds={case.model.graph.node[0].output[0]: 8})
    (got,) = converted.run(feeds)
    _check_padded(got, want, -1)


def test_nms_bounded_codegen_matches(rng):
    model, _ = _nms_model()
    converted = onnx2flax.convert(model, bounds={"sel": 20})
    feeds = _nms_feeds(rng)
    assert_codegen_matches(converted, feeds)


# --- Unique ----------------------------------------------------------------------------------

def _unique_model(shape, dtype=F, **attrs):
    node = helper.make_node("Unique", ["x"], ["y", "indices", "inverse", "counts"], name="u",
                            **attrs)
    outs = [("y", dtype, None)] + [(n, I64, None) for n in ("indices", "inverse", "counts")]
    return make_model([node], [("x", dtype, shape)], outs, opset=11)


def _repetitive(rng, shape, dtype=F):
    """Few distinct values, so slices repeat too."""
    return rng.integers(0, 3, shape).astype(dtype)


_UNIQUE_CASES = [((12,), None), ((3, 4), None), ((6, 2), 0), ((2, 6), 1), ((2, 5, 2), -2),
                 ((0,), None), ((0, 3), 0)]  # (onnxruntime aborts on empty slices: (4, 0))


@pytest.mark.parametrize("shape, axis", _UNIQUE_CASES)
@pytest.mark.parametrize("is_sorted", [1, 0])
def test_unique_bounded_matches_ort(rng, shape, axis, is_sorted):
    attrs = dict(sorted=is_sorted) if axis is None else dict(sorted=is_sorted, axis=axis)
    model = _unique_model(shape, **attrs)
    x = _repetitive(rng, shape)
    want = run_ort(model, {"x": x})
    n = np.shape(x)[axis] + 2 if axis is not None else x.size + 2
    got = onnx2flax.convert(model, bounds={"u": n}).run({"x": x})
    _check_padded(got[0], want[0], 0)
    _check_padded(got[1], want[1], -1)
    np.testing.assert_array_equal(got[2], want[2])
    _check_padded(got[3], want[3], 0)


@pytest.mark.parametrize("is_sorted", [1, 0])
def test_unique_bound_drops_values_past_it(rng, is_sorted):
    """Past the bound: values dropped in the op's order; inverse indices to them are -1."""
    model = _unique_model((10,), I64, sorted=is_sorted)
    x = np.array([5, 1, 5, 7, 1, 3, 9, 3, 0, 7], I64)
    y, indices, inverse, counts = run_ort(model, {"x": x})
    got = onnx2flax.convert(model, bounds={"y": 3}).run({"x": x})
    for g, w in zip([got[0], got[1], got[3]], [y, indices, counts]):
        np.testing.assert_array_equal(g, w[:3])
    np.testing.assert_array_equal(got[2], np.where(inverse < 3, inverse, -1))


@pytest.mark.parametrize("shape, axis", _UNIQUE_CASES[:5])
@pytest.mark.parametrize("is_sorted", [1, 0])
def test_unique_on_constants_is_exact(rng, shape, axis, is_sorted):
    """A constant input (here a float initializer, which would otherwise be a param) gives
    the exact result, unsorted along an axis too (where ONNX's reference evaluator errs)."""
    attrs = dict(sorted=is_sorted) if axis is None else dict(sorted=is_sorted, axis=axis)
    x = _repetitive(rng, shape)
    node = helper.make_node("Unique", ["c"], ["y", "indices", "inverse", "counts"], **attrs)
    outs = [("y", F, None)] + [(n, I64, None) for n in ("indices", "inverse", "counts")]
    model = make_model([node], [], outs, {"c": x}, opset=11)
    want = run_ort(model, {})
    converted = onnx2flax.convert(model)
    assert converted.variables["params"] == {}
    for g, w in zip(converted.run({}), want):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)


def test_unique_treats_nans_as_equal():
    """As numpy.unique does (onnxruntime merges every value with a NaN: not a reference)."""
    x = np.array([np.nan, 1, np.nan, 0.5, 1], F)
    want = np.unique(x, return_index=True, return_inverse=True, return_counts=True)
    got = onnx2flax.convert(_unique_model((5,)), bounds={"y": 4}).run({"x": x})
    _check_padded(np.nan_to_num(got[0], nan=-7), np.nan_to_num(want[0], nan=-7), 0)
    _check_padded(got[1], want[1], -1)
    np.testing.assert_array_equal(got[2], want[2])
    _check_padded(got[3], want[3], 0)


def test_unique_without_bound_is_refused():
    with pytest.raises(UnsupportedOpError, match=r"Unique node 'u'.*bounds=\{'y': N\}"):
        onnx2flax.convert(_unique_model((4,))).run({"x": np.ones(4, F)})


# --- bounds: errors, the backend, the command line -------------------------------------------

@pytest.mark.parametrize("bounds, message", [
    ({"nope": 3}, "no node or node output of that name"),
    ({"axes": 3}, "no node or node output"),
    ({"flat": 3}, "a Squeeze node 'Squeeze_1'; bounds apply only to ops"),
    ({"nz": 3, "idx": 4}, "NonZero node 'nz' twice"),
    ({"nz": -1}, "non-negative int"),
    ({"nz": 2.5}, "non-negative int"),
])
def test_bad_bounds_are_refused(bounds, message):
    with pytest.raises(InvalidInputError, match=message):
        onnx2flax.convert(_non_zero_gather_model(), bounds=bounds)


def test_bounds_reach_nodes_inside_subgraphs(rng):
    """A NonZero in an If branch (run-time condition: lax.cond needs equal shapes)."""
    def branch(name, op):
        nodes = [helper.make_node(op, ["x"], ["t"]),
                 helper.make_node("NonZero", ["t"], [f"{name}_idx"])]
        return helper.make_graph(nodes, name, [],
                                 [helper.make_tensor_value_info(f"{name}_idx", TensorProto.INT64,
                                                                None)])

    node = helper.make_node("If", ["c"], ["idx"], then_branch=branch("then", "Relu"),
                            else_branch=branch("else", "Neg"))
    model = make_model([node], [("c", bool, []), ("x", F, [6])], [("idx", I64, None)], opset=13)
    converted = onnx2flax.convert(model, bounds={"then_idx": 6, "else_idx": 6})
    x = rng.standard_normal(6).astype(F)
    for c in (True, False):
        feeds = {"c": np.array(c), "x": x}
        _check_padded(converted.run(feeds)[0], run_ort(model, feeds)[0], -1)


def test_backend_computes_exact_results_on_run_time_inputs(rng):
    """``onnx2flax.backend`` binds the inputs of an unbounded data-sized op: exact shapes."""
    model, _ = _nms_model()
    feeds = _nms_feeds(rng)
    rep = backend.prepare(model)
    (want,) = run_ort(model, feeds)
    np.testing.assert_array_equal(rep.run(feeds)[0], want)
    x = _repetitive(rng, (2, 6))
    node = helper.make_node("Unique", ["x"], ["y", "i", "inv", "n"], axis=1, sorted=0)
    got = backend.run_node(node, [x], opset_version=11)
    want = run_ort(_unique_model((2, 6), axis=1, sorted=0), {"x": x})
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_backend_with_bounds_pads(rng):
    model, _ = _nms_model()
    feeds = _nms_feeds(rng)
    rep = backend.prepare(model, bounds={"sel": 20})
    (got,) = rep.run(feeds)
    _check_padded(got, run_ort(model, feeds)[0], -1)


def test_cli_bound(tmp_path, capsys):
    from onnx2flax.cli import main

    model, _ = _nms_model()
    path = tmp_path / "nms.onnx"
    onnx.save(model, path)
    assert main(["compare", str(path)]) == 2
    assert "--bound sel=N" in capsys.readouterr().err
    assert main(["compare", str(path), "--bound", "sel=20", "--per-node"]) == 0
    assert "20x3 (first" in capsys.readouterr().out
    assert main(["convert", str(path), "-o", str(tmp_path / "out"), "--bound", "nms=20"]) == 0
    with pytest.raises(SystemExit):
        main(["compare", str(path), "--bound", "sel"])


def test_bounded_model_jits(rng):
    """The converted module stays an ordinary traced function (jit, one compile)."""
    model = _non_zero_gather_model()
    converted = onnx2flax.convert(model, bounds={"nz": 8})
    apply = jax.jit(converted.module.apply)
    x = rng.standard_normal(8).astype(F)
    idx, vals = apply(converted.variables, x)
    np.testing.assert_array_equal(np.asarray(vals), x)
