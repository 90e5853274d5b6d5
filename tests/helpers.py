"""Test helpers: build one-node models, run them through onnx2flax and onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

import onnx2flax


def make_model(nodes, inputs, outputs, initializers=(), opset=17, ir_version=None):
    """``inputs``/``outputs``: lists of ``(name, np.dtype or TensorProto type, shape)``."""
    def info(name, dtype, shape):
        elem = dtype if isinstance(dtype, int) else helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        return helper.make_tensor_value_info(name, elem, shape)

    graph = helper.make_graph(
        nodes, "test", [info(*i) for i in inputs], [info(*o) for o in outputs],
        [onnx.numpy_helper.from_array(np.asarray(v), n) for n, v in dict(initializers).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version or min(model.ir_version, 10)
    return model


def run_ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def assert_matches_ort(model, feeds, *, rtol=1e-5, atol=1e-5, channels_last=True):
    """Convert ``model``, run it with ``.run`` and compare every output with onnxruntime."""
    expected = run_ort(model, feeds)
    converted = onnx2flax.convert(model, channels_last=channels_last)
    got = converted.run(feeds)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape, (g.shape, e.shape)
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)
    return converted, got, expected
