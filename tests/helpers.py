"""Test helpers: build one-node models, run them through onnx2flax and onnxruntime."""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import jax
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
    if os.environ.get("ONNX2FLAX_CHECK_CODEGEN"):
        inputs = [np.asarray(feeds[s.name]) for s in converted.inputs]
        inputs = [np.moveaxis(x, 1, -1) if s.channels_last else x
                  for s, x in zip(converted.inputs, inputs)]
        assert_codegen_matches(converted, inputs)
    return converted, got, expected


def load_generated(folder: Path, name: str):
    """Import ``folder/model.py`` written by ``onnx2flax.codegen.save``."""
    spec = importlib.util.spec_from_file_location(name, Path(folder) / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses (flax modules) need their module registered
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def assert_codegen_matches(converted, inputs):
    """The generated source computes the interpreter's outputs bit for bit (both jitted).
    Runs after every ``assert_matches_ort`` when ``ONNX2FLAX_CHECK_CODEGEN=1``."""
    from onnx2flax import codegen

    with tempfile.TemporaryDirectory() as folder:
        codegen.save(converted, folder, inputs=inputs)
        generated = load_generated(folder, "onnx2flax_generated_check")
        variables = generated.load_variables()
    got = jax.jit(generated.Model().apply)(variables, *inputs)
    expected = jax.jit(converted.module.apply)(converted.variables, *inputs)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 got, expected)
