"""Weights embedded in a large ``.onnx`` file are read lazily from the file (``_pipeline.wire``):
the model converts exactly as from its bytes, for every way a tensor can hold its data."""

from __future__ import annotations

import jax
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx2flax
from onnx2flax._pipeline import wire as _wire
from onnx2flax.errors import InvalidModelError

RNG = np.random.default_rng(0)


@pytest.fixture
def small_thresholds(monkeypatch):
    """Treat every file and every payload of 64 bytes or more as large."""
    monkeypatch.setattr(_wire, "MIN_FILE", 0)
    monkeypatch.setattr(_wire, "MIN_PAYLOAD", 64)


def _weight(shape, dtype=np.float32):
    return (RNG.standard_normal(shape) * 0.3).astype(dtype)


def _model() -> onnx.ModelProto:
    """MatMul (raw_data initializer) -> Add (packed float_data initializer) -> Mul by a
    Constant node's tensor -> If whose branches hold their own initializers and a Constant,
    plus a double-precision float_data initializer, a float16 raw one and a tiny one."""
    w = numpy_helper.from_array(_weight((8, 16)), "w")
    b = helper.make_tensor("b", TensorProto.FLOAT, [16], _weight(16).tolist())
    assert not b.raw_data and len(b.float_data) == 16
    d = helper.make_tensor("d", TensorProto.DOUBLE, [16], _weight(16, np.float64).tolist())
    h = numpy_helper.from_array(_weight((16,), np.float16), "h")
    tiny = numpy_helper.from_array(np.float32([2.0]), "tiny")
    scale = helper.make_node("Constant", [], ["scale"],
                             value=numpy_helper.from_array(_weight((16,)), "scale_value"))

    def branch(name, op):
        inner = numpy_helper.from_array(_weight((16,)), f"{name}_w")
        const = helper.make_node("Constant", [], [f"{name}_c"],
                                 value=numpy_helper.from_array(_weight((16,)), f"{name}_cv"))
        nodes = [const, helper.make_node(op, ["s", f"{name}_w"], [f"{name}_t"]),
                 helper.make_node("Add", [f"{name}_t", f"{name}_c"], [f"{name}_y"])]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(
            f"{name}_y", TensorProto.FLOAT, [2, 16])], [inner])

    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["a"]),
        scale,
        helper.make_node("Mul", ["a", "scale"], ["s"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", "Mul"),
                         else_branch=branch("else", "Sub")),
        helper.make_node("Cast", ["d"], ["d32"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["h"], ["h32"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["d32", "h32"], ["dh"]),
        helper.make_node("Mul", ["dh", "tiny"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes, "lazy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8]),
                        helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [16])], [w, b, d, h, tiny])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(flag: bool):
    return {"x": _weight((2, 8)), "cond": np.array(flag)}


def test_skeleton_moves_payloads_out_and_converts_identically(tmp_path, small_thresholds):
    model = _model()
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    data = _wire.skeleton(path)
    skeleton = onnx.load_from_string(data)
    moved = {t.name for t in skeleton.graph.initializer
             if t.data_location == TensorProto.EXTERNAL}
    assert moved == {"w", "b", "d"}  # float16 raw (32 B) and the 4-byte one stay inline
    assert len(data) < path.stat().st_size - 8 * 16 * 4

    from_path = onnx2flax.convert(path)
    from_bytes = onnx2flax.convert(model.SerializeToString())
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 from_path.variables, from_bytes.variables)
    import onnxruntime as ort
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for flag in (True, False):
        feeds = _feeds(flag)
        for got, want in zip(from_path.run(feeds), session.run(None, feeds)):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_packed_payload_of_another_type_stays_inline(tmp_path, small_thresholds):
    """float_data holding FLOAT16 values (as int32_data would) is not raw-compatible."""
    t = helper.make_tensor("w", TensorProto.INT32, [64], list(range(64)))
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [64])], [t])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    skeleton = onnx.load_from_string(_wire.skeleton(path))
    assert skeleton.graph.initializer[0].data_location == TensorProto.DEFAULT
    np.testing.assert_array_equal(onnx2flax.convert(path).run({})[0], np.arange(64))


def test_payload_disagreeing_with_its_shape_is_reported_as_before(tmp_path, small_thresholds):
    w = numpy_helper.from_array(_weight((8, 16)), "w")
    w.dims[:] = [8, 15]
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 15])],
                              [w])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(InvalidModelError, match="does not match its declared shape"):
        onnx2flax.convert(path)


@pytest.mark.parametrize("cut", [7, 100, -3])
def test_truncated_or_garbage_files_get_protobuf_errors(tmp_path, small_thresholds, cut):
    data = _model().SerializeToString()
    path = tmp_path / "m.onnx"
    path.write_bytes(data[:cut] if cut > 0 else data[:cut] + b"\xff\xff\xff")
    with pytest.raises(InvalidModelError, match="not a valid ONNX protobuf"):
        onnx2flax.convert(path)


def test_mutated_files_convert_as_their_bytes_do(tmp_path, small_thresholds):
    """Seeded byte-level mutants of the model: reading the file lazily gives the same result
    as parsing its bytes (same variables, or the same error class)."""
    from test_fuzz import _bytes_mutant

    rng = np.random.default_rng(7)
    data = _model().SerializeToString()
    path = tmp_path / "m.onnx"
    agreed = 0
    for _ in range(150):
        mutant = _bytes_mutant(data, rng)
        path.write_bytes(mutant)
        outcomes = []
        for source in (path, mutant):
            try:
                outcomes.append(onnx2flax.convert(source).variables)
            except onnx2flax.errors.OnnxConversionError as exc:
                outcomes.append(type(exc))
        lazy, eager = outcomes
        if isinstance(eager, type):
            assert lazy is eager
        else:
            jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                         lazy, eager)
            agreed += 1
    assert agreed > 10  # some mutants (in names, unused fields) still convert
