"""Test helpers: build one-node models, run them through onnx2flax and onnxruntime."""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
import types
import weakref
from pathlib import Path

import jax
import jax.numpy as jnp
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


def run_ort(model: onnx.ModelProto, feeds: dict, *, fused: bool = True) -> list[np.ndarray]:
    """onnxruntime's outputs; ``fused=False`` turns its graph rewrites off (they replace
    DequantizeLinear -> MatMul by a dynamically quantized matmul, for one)."""
    options = ort.SessionOptions()
    if not fused:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def assert_matches_ort(model, feeds, *, rtol=1e-5, atol=1e-5, channels_last=True, fused=True):
    """Convert ``model``, run it with ``.run`` and compare every output with onnxruntime."""
    expected = run_ort(model, feeds, fused=fused)
    converted = onnx2flax.convert(model, channels_last=channels_last)
    got = converted.run(feeds)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape, (g.shape, e.shape)
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)
    assert_codegen_matches(converted, feeds, got)
    return converted, got, expected


def convert_and_run(model, feeds, **convert_kwargs) -> list[np.ndarray]:
    """``onnx2flax.convert(model, **convert_kwargs).run(feeds)``, the generated source checked
    against it (``assert_codegen_matches``)."""
    converted = onnx2flax.convert(model, **convert_kwargs)
    got = converted.run(feeds)
    assert_codegen_matches(converted, feeds, got)
    return got


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


#: The names generated source imports libraries as.
_LIBRARIES = frozenset(("jax", "jnp", "lax", "nn", "nnx", "np", "serialization"))


def check_generated_source(source: str) -> ast.Module:
    """Generated source uses public JAX only (no primitive ``bind``, no ``*_p`` primitives,
    nothing of ``jax._src``) and imports only jax, flax and numpy. Returns its AST."""
    tree = ast.parse(source)
    assert "jax._src" not in source
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):  # lax.add_p.bind(...); self.fc_p is a weight
            root = node
            while isinstance(root, ast.Attribute):
                root = root.value
            library = isinstance(root, ast.Name) and root.id in _LIBRARIES
            assert node.attr != "bind" and not (library and node.attr.endswith("_p")), \
                ast.unparse(node)
        if isinstance(node, ast.Import):
            roots = {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots = {(node.module or "").split(".")[0]}
        else:
            continue
        assert roots <= {"__future__", "jax", "flax", "numpy"}, ast.dump(node)
    return tree


def import_source(source: str, name: str):
    """Import generated ``source`` as module ``name`` without writing it anywhere."""
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses (flax modules) need their module registered
    try:
        exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    finally:
        del sys.modules[name]
    return module


#: converted model -> input signatures whose generated source was checked.
_CODEGEN_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def assert_codegen_matches(converted, feeds, expected=None):
    """The generated source of ``converted`` uses public JAX only and computes the
    interpreter's outputs bit for bit on ``feeds`` (name -> array, ONNX layout), both jitted: the linen source, and for models
    with layers (the only part written differently) the NNX source too. ``expected``: the
    outputs of ``converted.run(feeds)`` when the caller has them.

    Runs on every model the op tests convert (``assert_matches_ort``, the op tests' helpers)
    and the ONNX node tests run (``check_codegen_on_run``); ``ONNX2FLAX_SKIP_CODEGEN=1`` turns
    it off. Cheap by construction: the source is compiled in memory, the weights take a
    msgpack round trip in memory, and only the generated module is compiled anew (the
    interpreter's compiled ``run`` is reused)."""
    from flax import nnx, serialization

    from onnx2flax import codegen

    if os.environ.get("ONNX2FLAX_SKIP_CODEGEN"):
        return
    if converted.specialized_inputs:  # run() ran the conversion for these values: check it
        rest = {n: v for n, v in feeds.items() if n not in converted.specialized_inputs}
        return assert_codegen_matches(converted.specialized(feeds), rest, expected)
    if any(s.sequence or s.optional for s in converted.inputs + converted.outputs):
        return  # refused by codegen with a CodegenError (tests/test_codegen.py)
    inputs = [np.asarray(feeds[s.name], dtype=s.dtype) for s in converted.inputs]
    signature = tuple((x.shape, x.dtype.str) for x in inputs)
    checked = _CODEGEN_CHECKED.setdefault(converted, set())
    if signature in checked:  # the same source again (a test's run already checked it)
        return
    checked.add(signature)
    if expected is None:
        expected = converted.run(feeds)
    module_inputs = [np.moveaxis(x, 1, -1) if s.channels_last else x
                     for s, x in zip(converted.inputs, inputs)]

    def onnx_layout(call, *xs):  # a generated module with ConvertedModel.run's layout moves
        xs = [jnp.moveaxis(x, 1, -1) if s.channels_last else x
              for s, x in zip(converted.inputs, xs)]
        outs = call(*xs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        return [jnp.moveaxis(y, -1, 1) if s.channels_last else y
                for s, y in zip(converted.outputs, outs)]

    apis = ["linen", "nnx"] if converted._program.layers else ["linen"]
    for api in apis:
        generated = codegen._generator(converted, module_inputs, api)
        variables = serialization.msgpack_restore(serialization.msgpack_serialize(
            jax.tree.map(np.asarray, generated.variables)))
        check_generated_source(generated.source)
        module = import_source(generated.source, "onnx2flax_generated_check")
        with jax.default_matmul_precision("highest"):  # as ConvertedModel.run
            if api == "nnx":
                got = nnx.jit(lambda m, *xs: onnx_layout(m, *xs))(module.Model(variables),
                                                                  *inputs)
            else:
                got = jax.jit(lambda v, *xs: onnx_layout(
                    lambda *a: module.Model().apply(v, *a), *xs))(variables, *inputs)
        assert len(got) == len(expected)
        for spec, g, e in zip(converted.outputs, got, expected):
            g = np.asarray(g).astype(e.dtype)  # as run casts int32 to int64
            assert g.shape == e.shape, (api, spec.name, g.shape, e.shape)
            if g.tobytes() != e.tobytes():  # bit for bit: NaNs, signed zeros
                np.testing.assert_array_equal(g, e, err_msg=f"{api}: output {spec.name!r}")
                raise AssertionError(f"{api}: output {spec.name!r}: equal values, different bits")


def check_codegen_on_run(monkeypatch):
    """Make ``ConvertedModel.run`` also check the generated source (``assert_codegen_matches``):
    in every test (tests/conftest.py)."""
    run = onnx2flax.ConvertedModel.run

    def checked(self, feeds):
        got = run(self, feeds)
        assert_codegen_matches(self, feeds, got)
        return got

    monkeypatch.setattr(onnx2flax.ConvertedModel, "run", checked)
