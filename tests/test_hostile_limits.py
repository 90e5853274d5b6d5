"""Issue 12: the ``Limits`` budget, memory safety, linear-time passes and the error
hierarchy at the entry points. Each hostile class runs from its seeded generator
(``hostile_models.py``) in a child process with a memory cap and a timeout; the stress
command there runs thousands."""

from __future__ import annotations

import os
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import onnx2flax
from onnx2flax import Limits
from onnx2flax.cli import main
from onnx2flax.errors import InvalidInputError, ResourceLimitError

import hostile_models
from helpers import convert_and_run, make_model

F = np.float32


def test_every_hostile_class_ends_cleanly_in_a_capped_child():
    """One model of each class (seed 0) in one child process (3 GiB address space): each
    ends in the expected onnx2flax error or a correct result, within the time and memory
    per case (``hostile_models.CASE_SECONDS`` / ``CASE_MEMORY``)."""
    results = hostile_models.run_cases([(name, 0) for name in sorted(hostile_models.GENERATORS)])
    assert len(results) == len(hostile_models.GENERATORS)
    bad = [r for r in results if not r["ok"]]
    assert not bad, bad


# ------------------------------------------------------------------ the Limits object

def test_limits_are_checked_and_parsed():
    with pytest.raises(InvalidInputError, match="tensor_bytes must be a positive int"):
        Limits(tensor_bytes=0)
    with pytest.raises(InvalidInputError, match="positive int"):
        Limits(name_length=True)
    assert Limits.parse(["tensor_bytes=8G", "loop-iterations=5"]) == Limits(
        tensor_bytes=8 * 2 ** 30, loop_iterations=5)
    with pytest.raises(InvalidInputError, match="unknown limit 'nope'"):
        Limits.parse(["nope=1"])
    with pytest.raises(InvalidInputError, match="positive integer"):
        Limits.parse(["tensor_bytes=lots"])
    with pytest.raises(InvalidInputError, match="limits must be an onnx2flax.Limits"):
        onnx2flax.convert(make_model([helper.make_node("Relu", ["x"], ["y"])],
                                     [("x", F, [2])], [("y", F, [2])]), limits={"a": 1})


def _split_model(n):
    return make_model([helper.make_node("SplitToSequence", ["x"], ["s"], axis=0),
                       helper.make_node("ConcatFromSequence", ["s"], ["y"], axis=0)],
                      [("x", F, [n, 1])], [("y", F, [n, 1])])


def test_a_limit_names_node_and_how_to_raise_it_and_raising_it_works():
    x = np.arange(40, dtype=F).reshape(40, 1)
    converted = onnx2flax.convert(_split_model(40), limits=Limits(sequence_length=39))
    with pytest.raises(ResourceLimitError) as info:
        converted.run({"x": x})
    message = str(info.value)
    assert "SplitToSequence node" in message and "sequence_length=39" in message
    assert "Limits(sequence_length=...)" in message and "--limit sequence_length=" in message
    got = convert_and_run(_split_model(40), {"x": x}, limits=Limits(sequence_length=40))
    np.testing.assert_array_equal(got[0], ReferenceEvaluator(_split_model(40)).run(None, {"x": x})[0])


def test_tensor_bytes_counts_bytes_not_elements():
    value = numpy_helper.from_array(np.ones(1, np.float64))
    model = make_model([helper.make_node("ConstantOfShape", ["s"], ["c"], value=value),
                        helper.make_node("Add", ["x", "c"], ["y"])],
                       [("x", np.float64, [64])], [("y", np.float64, [64])],
                       {"s": np.array([64], np.int64)})
    with pytest.raises(ResourceLimitError, match="ConstantOfShape node.*512.*tensor_bytes=511"):
        onnx2flax.convert(model, limits=Limits(tensor_bytes=511))
    x = np.arange(64, dtype=np.float64)
    np.testing.assert_array_equal(convert_and_run(model, {"x": x}, limits=Limits(tensor_bytes=512))[0],
                                  ReferenceEvaluator(model).run(None, {"x": x})[0])


def test_folded_bytes_bound_values_computed_beyond_the_stored_ones():
    """Pad-18 with ``axes`` (no per-op size rule: ONNX shape inference sizes it before
    evaluation): refused below its output size, folded exactly above."""
    model = make_model([helper.make_node("Pad", ["d", "p", "", "a"], ["c"]),
                        helper.make_node("Mul", ["x", "c"], ["y"])],
                       [("x", F, [2, 506])], [("y", F, [2, 506])],
                       {"d": np.arange(6, dtype=F).reshape(2, 3),
                        "p": np.array([3, 500], np.int64), "a": np.array([1], np.int64)}, opset=18)
    stored, folded = 6 * 4 + 2 * 8 + 8, 2 * 506 * 4  # the limit is folded_bytes + 2 x stored
    with pytest.raises(ResourceLimitError, match="Pad node.*folded_bytes=4,047"):
        onnx2flax.convert(model, limits=Limits(folded_bytes=folded - 2 * stored - 1))
    x = np.ones((2, 506), F)
    np.testing.assert_array_equal(convert_and_run(model, {"x": x})[0],
                                  ReferenceEvaluator(model).run(None, {"x": x})[0])


def test_nested_static_loops_multiply():
    case = hostile_models.nested_loops(np.random.default_rng(0), None, False)
    with pytest.raises(ResourceLimitError, match="loop_iterations"):
        onnx2flax.convert(case.model).run(case.feeds)


def test_cli_limit_flag(tmp_path, capsys):
    path = tmp_path / "split.onnx"
    onnx.save(_split_model(40), path)
    assert main(["inspect", str(path), "--limit", "bogus=1"]) == 2
    assert "unknown limit 'bogus'" in capsys.readouterr().err
    assert main(["compare", str(path), "--limit", "sequence_length=39"]) == 2
    assert "sequence_length=39" in capsys.readouterr().err
    assert main(["compare", str(path), "--limit", "sequence_length=40"]) == 0


# ------------------------------------------------------------------ entry points

def test_export_does_not_import_from_the_working_directory(tmp_path, monkeypatch):
    from onnx2flax._export import load_factory

    monkeypatch.setattr(sys, "path", ["", str(tmp_path), *sys.path])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "planted.py").write_text(
        "open('ran', 'w').write('x')\ndef factory():\n    return 1\n")
    with pytest.raises(InvalidInputError, match="cannot import 'planted'.*--path"):
        load_factory("planted:factory")
    assert not (tmp_path / "ran").exists()
    assert load_factory("planted:factory", path=".")() == 1  # asked for explicitly
    with pytest.raises(InvalidInputError, match="no callable 'nope'"):
        load_factory("os:nope")
    with pytest.raises(InvalidInputError, match="package.module:factory"):
        load_factory("os")


def test_convert_api_and_progress_are_checked():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", F, [2])], [("y", F, [2])])
    with pytest.raises(InvalidInputError, match="api must be"):
        onnx2flax.convert(model, api="evil")


def test_run_refuses_feeds_that_are_not_numeric_arrays():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", F, [2])], [("y", F, [2])])
    converted = onnx2flax.convert(model)
    with pytest.raises(InvalidInputError, match="unknown input name"):
        converted.run({"x": np.ones(2, F), 3: 1, "z": 2})
    with pytest.raises(InvalidInputError, match="cannot be read as an array"):
        converted.run({"x": [[1.0], [2.0, 3.0]]})
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(converted.run({"x": torch.tensor([-1.0, 2.0])})[0], [0, 2])


def test_the_error_classifier_describes_sequences():
    from onnx2flax._core.graph import Node
    from onnx2flax._core.guard import handler_error

    error = handler_error(ValueError("boom"), Node("n", "ConcatFromSequence", "", ["s"], ["y"]),
                          [[np.ones(3), np.ones(2)]])
    assert "['seq', [3], [2]]" in str(error)


def test_codegen_writes_complex_constants():
    value = numpy_helper.from_array(np.array([1 + 2j, -3j], np.complex64))
    model = make_model([helper.make_node("Constant", [], ["c"], value=value),
                        helper.make_node("Mul", ["x", "c"], ["y"])],
                       [("x", np.complex64, [2])], [("y", np.complex64, [2])])
    x = np.array([2 - 1j, 1 + 1j], np.complex64)
    got = convert_and_run(model, {"x": x})  # checks the generated source too
    np.testing.assert_allclose(got[0], ReferenceEvaluator(model).run(None, {"x": x})[0])


def test_sharding_helpers_raise_package_errors():
    import jax

    from onnx2flax.sharding import data_parallel_apply, shard_variables

    mesh = jax.make_mesh((1,), ("data",))
    with pytest.raises(InvalidInputError, match="mesh must be"):
        shard_variables({}, "mesh")
    with pytest.raises(InvalidInputError, match="mode must be"):
        shard_variables({}, mesh, "everything")
    with pytest.raises(InvalidInputError, match="axis 'model'"):
        shard_variables({}, mesh, axis="model")
    converted = onnx2flax.convert(make_model([helper.make_node("Relu", ["x"], ["y"])],
                                             [("x", F, [2])], [("y", F, [2])]))
    with pytest.raises(InvalidInputError, match="batch axis"):
        data_parallel_apply(converted, mesh)(np.float32(1))
