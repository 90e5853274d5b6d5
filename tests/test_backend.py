"""``onnx2flax.backend``: the onnx Backend API (prepare / run_model / run_node / devices)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import make_model, run_ort
from onnx import helper

import onnx2flax
import onnx2flax.backend as backend
from onnx2flax.errors import InvalidInputError


def _conv_relu():
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    return make_model(nodes, [("x", np.float32, [2, 3, 5, 5])], [("y", np.float32, None)],
                      {"w": w})


@pytest.mark.parametrize("channels_last", [True, False])
def test_prepare_runs_in_onnx_layout(channels_last):
    """Whatever layout the module uses inside, ``run`` takes and returns ONNX layout."""
    model = _conv_relu()
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 5)).astype(np.float32)
    rep = backend.prepare(model, "CPU", channels_last=channels_last)
    (expected,) = run_ort(model, {"x": x})
    for feeds in ([x], {"x": x}, x):
        got = rep.run(feeds)
        assert len(got) == 1 and got.y.shape == (2, 4, 5, 5)
        np.testing.assert_allclose(got[0], expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got["y"], got[0])


def test_run_model_checks_input_count():
    model = _conv_relu()
    with pytest.raises(InvalidInputError, match="takes 1 input"):
        backend.run_model(model, [np.zeros((2, 3, 5, 5), np.float32)] * 2)


def test_run_node_infers_output_types():
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    b = np.array([1, 2, 3], np.int32)
    node = helper.make_node("Add", ["a", "b"], ["c"])
    (c,) = backend.run_node(node, [a, b])
    assert c.dtype == np.int32
    np.testing.assert_array_equal(c, a + b)
    (c,) = backend.run_node(node, {"a": a, "b": b}, opset_version=13,
                            outputs_info=[(np.int32, (2, 3))])
    np.testing.assert_array_equal(c, a + b)


def test_run_node_with_omitted_optional_input():
    x = np.linspace(-2, 2, 9, dtype=np.float32)
    node = helper.make_node("Clip", ["x", "", "hi"], ["y"])
    (y,) = backend.run_node(node, [x, np.float32(1.0)])
    np.testing.assert_array_equal(y, np.minimum(x, 1.0))


def test_devices():
    assert backend.supports_device("CPU")
    assert not backend.supports_device("TPU")
    with pytest.raises(ValueError, match="device"):
        backend.prepare(_conv_relu(), "NPU")


def test_is_an_onnx_backend():
    assert issubclass(backend.OnnxFlaxBackend, onnx.backend.base.Backend)
    assert isinstance(backend.prepare(_conv_relu()), onnx.backend.base.BackendRep)


def test_shape_inputs_are_bound_per_value():
    """A Reshape whose target shape is a graph input: converted once per shape value."""
    model = make_model([helper.make_node("Reshape", ["x", "s"], ["y"])],
                       [("x", np.float32, [2, 3, 4]), ("s", np.int64, [2])],
                       [("y", np.float32, None)], opset=14)
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    rep = backend.prepare(model)
    for shape in ([6, 4], [-1, 12], [6, 4]):
        s = np.array(shape, np.int64)
        (y,) = rep.run([x, s])
        np.testing.assert_array_equal(y, run_ort(model, {"x": x, "s": s})[0])
    assert len(rep.converted._specializations) == 2


def test_values_reaching_shapes_are_bound_but_shape_reads_are_not():
    """``s`` reaches Reshape's shape through Add: bound. ``x`` reaches it only through
    Shape: stays a run-time input (its values do not matter)."""
    nodes = [helper.make_node("Add", ["s", "one"], ["s1"]),
             helper.make_node("Reshape", ["x", "s1"], ["y"]),
             helper.make_node("Shape", ["x"], ["xs"]),
             helper.make_node("Reshape", ["y", "xs"], ["z"])]
    model = make_model(nodes, [("x", np.float32, [2, 3, 4]), ("s", np.int64, [2])],
                       [("y", np.float32, None), ("z", np.float32, None)],
                       {"one": np.array([1, 0], np.int64)}, opset=14)
    rep = backend.prepare(model)
    assert rep.converted.specialized_inputs == ["s"]
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    s = np.array([5, 4], np.int64)
    for got, want in zip(rep.run({"x": x, "s": s}), run_ort(model, {"x": x, "s": s})):
        np.testing.assert_array_equal(got, want)


def test_string_inputs_are_refused_clearly():
    model = make_model([helper.make_node("Identity", ["x"], ["y"])],
                       [("x", onnx.TensorProto.STRING, [2])], [("y", onnx.TensorProto.STRING, [2])])
    with pytest.raises(onnx2flax.UnsupportedOpError, match="string tensor"):
        backend.prepare(model)
