"""The op tests' one dialect: build models (``node_model``, ``graph_model``, Conv chains),
convert and run them, and compare with a reference (``check_node``, ``check_graph``:
onnxruntime or ONNX's reference evaluator, dtypes always checked), generated source
included."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import types
import weakref
from pathlib import Path

import jax
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

import onnx2flax
from onnx2flax._core import boundary as _boundary


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


def graph_model(nodes, feeds, consts=None, *, out_dtypes=None, input_shapes=None, opset=17):
    """``nodes`` on graph inputs ``feeds`` (name -> array; ``input_shapes`` overrides a
    shape, e.g. with symbolic dims) and initializers ``consts``; every node output is a graph
    output, of dtype ``out_dtypes[name]`` (default: the first feed's)."""
    shapes = input_shapes or {}
    inputs = [(n, v.dtype, shapes.get(n, list(v.shape))) for n, v in feeds.items()]
    dtypes = out_dtypes or {}
    outs = [(o, np.dtype(dtypes[o] if o in dtypes else next(iter(feeds.values())).dtype), None)
            for node in nodes for o in node.output if o]
    return make_model(nodes, inputs, outs, consts or {}, opset=opset)


def node_model(op, feeds, consts=None, *, attrs=None, inputs=None, outputs=1, out_dtypes=None,
               input_shapes=None, opset=17):
    """One ``op`` node (the one-node builder). ``feeds`` become graph inputs, ``consts``
    initializers; ``inputs`` (default: the feeds then the consts, in order) names the node's
    inputs, ``''`` for omitted ones. Outputs ``y0..``: dtypes ``out_dtypes`` (a list;
    default: the first feed's)."""
    consts = consts or {}
    inputs = [*feeds, *consts] if inputs is None else inputs
    names = [f"y{i}" for i in range(outputs)]
    node = helper.make_node(op, inputs, names, **(attrs or {}))
    return graph_model([node], feeds, consts, input_shapes=input_shapes, opset=opset,
                       out_dtypes=dict(zip(names, out_dtypes or [])))


def multi_node_model(specs, feeds, *, consts=None, opset=17):
    """``graph_model`` of single-output nodes ``specs``: ``(op, inputs, attrs, out_dtype)``,
    the output of the k-th named ``{op}_{k}``."""
    names = [f"{op}_{k}" for k, (op, *_) in enumerate(specs)]
    nodes = [helper.make_node(op, inputs, [name], **(attrs or {}))
             for name, (op, inputs, attrs, _) in zip(names, specs)]
    return graph_model(nodes, feeds, consts, opset=opset,
                       out_dtypes={name: spec[3] for name, spec in zip(names, specs)})


def run_ort(model: onnx.ModelProto, feeds: dict, *, fused: bool = True) -> list[np.ndarray]:
    """onnxruntime's outputs; ``fused=False`` turns its graph rewrites off (they replace
    DequantizeLinear -> MatMul by a dynamically quantized matmul, for one)."""
    options = ort.SessionOptions()
    if not fused:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


REFERENCES = ("onnxruntime", "onnx")


def run_reference(model: onnx.ModelProto, feeds: dict, reference: str = "onnxruntime", *,
                  fused: bool = True) -> list:
    """The outputs of ``reference``: ``"onnxruntime"`` (``run_ort``) or ``"onnx"``
    (``onnx.reference.ReferenceEvaluator``, for ops or opsets onnxruntime lacks)."""
    if reference == "onnxruntime":
        return run_ort(model, feeds, fused=fused)
    if reference == "onnx":
        return ReferenceEvaluator(model).run(None, feeds)
    raise ValueError(f"reference must be one of {REFERENCES}, not {reference!r}")


def assert_same(name: str, got, expected, *, rtol: float, atol: float) -> None:
    """``got`` (onnx2flax) equals ``expected`` (a reference): the same dtype and shape and
    values within ``rtol``/``atol``; sequences element by element, ``None`` for an absent
    optional."""
    if expected is None:
        assert got is None, (name, got)
        return
    if isinstance(expected, (list, tuple)):
        assert isinstance(got, (list, tuple)), (name, type(got))
        assert len(got) == len(expected), (name, len(got), len(expected))
        for k, (g, e) in enumerate(zip(got, expected)):
            assert_same(f"{name}[{k}]", g, e, rtol=rtol, atol=atol)
        return
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.dtype == expected.dtype, (name, got.dtype, expected.dtype)
    assert got.shape == expected.shape, (name, got.shape, expected.shape)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=name)


def check_graph(model, feeds, consts=None, *, out_dtypes=None, input_shapes=None, opset=17,
                reference="onnxruntime", rtol=1e-5, atol=1e-5, channels_last=True,
                fused=True):
    """Convert ``model`` (a ModelProto, or nodes ``graph_model`` builds one from with
    ``consts``, ``out_dtypes``, ``input_shapes`` and ``opset``), ``run`` it on ``feeds`` and
    compare every output with ``reference`` (``run_reference``): dtype, shape and values
    (``assert_same``); then its generated source with the interpreter, bit for bit
    (``assert_codegen_matches``). ``fused=False`` turns onnxruntime's graph rewrites off.
    Returns ``(converted, got, expected)``."""
    if not isinstance(model, onnx.ModelProto):
        model = graph_model(model, feeds, consts, out_dtypes=out_dtypes,
                            input_shapes=input_shapes, opset=opset)
    else:
        assert consts is None and out_dtypes is None and input_shapes is None, (
            "consts, out_dtypes and input_shapes build a model from nodes")
    expected = run_reference(model, feeds, reference, fused=fused)
    converted = onnx2flax.convert(model, channels_last=channels_last)
    got = converted.run(feeds)
    assert len(got) == len(expected), (len(got), len(expected))
    for out, g, e in zip(model.graph.output, got, expected):
        assert_same(out.name, g, e, rtol=rtol, atol=atol)
    assert_codegen_matches(converted, feeds, got)
    return converted, got, expected


def check_node(op, feeds, consts=None, *, attrs=None, inputs=None, outputs=1, out_dtypes=None,
               input_shapes=None, opset=17, **check):
    """``check_graph`` on the one-node model ``node_model`` builds (same arguments);
    ``check``: ``check_graph``'s ``reference``, ``rtol``, ``atol``, ``channels_last``,
    ``fused``."""
    model = node_model(op, feeds, consts, attrs=attrs, inputs=inputs, outputs=outputs,
                       out_dtypes=out_dtypes, input_shapes=input_shapes, opset=opset)
    return check_graph(model, feeds, **check)


def convert_and_run(model, feeds, **convert_kwargs) -> list[np.ndarray]:
    """``onnx2flax.convert(model, **convert_kwargs).run(feeds)``, the generated source checked
    against it (``assert_codegen_matches``)."""
    converted = onnx2flax.convert(model, **convert_kwargs)
    got = converted.run(feeds)
    assert_codegen_matches(converted, feeds, got)
    return got


def _conv_weights(rng, c, prefix):
    """A 1x1 ``c -> c`` Conv near the identity (outputs of order one), with a bias."""
    eye = np.eye(c, dtype=np.float32)[:, :, None, None]
    weight = rng.standard_normal((c, c, 1, 1)).astype(np.float32) * 0.3 + eye
    return {f"{prefix}.weight": weight, f"{prefix}.bias": rng.standard_normal(c).astype(np.float32)}


def sandwich(op, *, attrs=None, extra=None, opset=17, shape=(2, 3, 4, 5),
             out_dtype=np.float32, tail=True, seed=0):
    """``x -> Conv(1x1) -> op(h, *extra) -> [Conv(1x1)] -> y`` with ``x`` NCHW: the op sees
    its input held channels-last. ``extra``: further inputs as initializers (name -> array,
    or ``None`` for an omitted one). Returns ``(model, feeds)``."""
    rng = np.random.default_rng(seed)
    extra = extra or {}
    consts = {**_conv_weights(rng, shape[1], "conv1"),
              **{k: v for k, v in extra.items() if v is not None}}
    more = [k if v is not None else "" for k, v in extra.items()]
    nodes = [helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["h"]),
             helper.make_node(op, ["h", *more], ["z" if tail else "y"], **(attrs or {}))]
    if tail:
        consts.update(_conv_weights(rng, shape[1], "conv2"))
        nodes.append(helper.make_node("Conv", ["z", "conv2.weight", "conv2.bias"], ["y"]))
    x = rng.standard_normal(shape).astype(np.float32)
    model = make_model(nodes, [("x", np.float32, shape)], [("y", np.dtype(out_dtype), None)],
                       consts, opset=opset)
    return model, {"x": x}


def after_conv(specs, *, consts=None, opset=17, shape=(2, 3, 4, 5), seed=0, pre=None):
    """``x -> Conv(1x1) -> h`` (then ``h = pre(h)``, an elementwise op), then one node per
    spec ``(op, more_inputs, attrs, out_dtype)`` reading ``h`` (held channels-last) and the
    named ``more_inputs`` (``consts``), one graph output each. Returns ``(model, feeds)``."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["h0" if pre else "h"])]
    if pre:
        nodes.append(helper.make_node(pre, ["h0"], ["h"]))
    outs = []
    for k, (op, more, attrs, dtype) in enumerate(specs):
        nodes.append(helper.make_node(op, ["h", *more], [f"{op}_{k}"], **(attrs or {})))
        outs.append((f"{op}_{k}", np.dtype(dtype), None))
    consts = {**_conv_weights(rng, shape[1], "conv"), **(consts or {})}
    x = rng.standard_normal(shape).astype(np.float32)
    return make_model(nodes, [("x", np.float32, shape)], outs, consts, opset=opset), {"x": x}


def conv_chain(middle, x, rng, *, opset=17, c_mid=4, extra=None, c_out=3):
    """``x -> Conv(3x3, pad 1, 4 channels) -> middle nodes ('a' -> 'b', ``c_mid``
    channels) -> Conv(1x1) -> y``."""
    c_in = x.shape[1]
    inits = {"w1": rng.standard_normal((4, c_in, 3, 3)).astype(np.float32),
             "w2": rng.standard_normal((c_out, c_mid, 1, 1)).astype(np.float32),
             **(extra or {})}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]), *middle,
             helper.make_node("Conv", ["b", "w2"], ["y"])]
    return make_model(nodes, [("x", np.float32, list(x.shape))], [("y", np.float32, None)],
                      inits, opset=opset)


#: Parametrizes a test over ``aspect``: ``"values"`` (outputs against the reference) and
#: ``"hlo"`` (the structure of the compiled program, marked ``hlo``: XLA upgrades may change
#: it while the values stay right).
values_and_hlo = pytest.mark.parametrize(
    "aspect", ["values", pytest.param("hlo", marks=pytest.mark.hlo)])


def check_chain(middle, x, rng, aspect, *, layout_only=False, allowed=0, reference="onnxruntime",
                **kw):
    """Conv -> middle -> Conv (``conv_chain``) with a channels-last input: ``aspect="values"``
    matches ``reference``; ``"hlo"`` compiles with no transpose (or ``allowed`` ones:
    ``transposes``)."""
    model = conv_chain(middle, x, rng, **kw)
    if aspect == "values":
        converted, _, _ = check_graph(model, {"x": x}, reference=reference, rtol=1e-4,
                                      atol=1e-4)
    else:
        converted = onnx2flax.convert(model)
        assert transposes(converted, x, layout_only=layout_only) == allowed
    assert converted.inputs[0].channels_last
    return converted


def transposes(converted, *xs_onnx, layout_only=False) -> int:
    """Transposes in the compiled HLO of ``module.apply`` on inputs ``xs_onnx`` (ONNX
    layout; those the module takes channels-last moved there). ``layout_only``: only those
    from ``jnp.transpose`` (not those XLA's CPU gather lowering adds to gathers along inner
    axes). For tests marked ``hlo``."""
    xs = [_boundary.to_module(x, s) for s, x in zip(converted.inputs, xs_onnx, strict=True)]
    fn = jax.jit(lambda v, *xs: converted.module.apply(v, *xs))
    lines = [line for line in fn.lower(converted.variables, *xs).compile().as_text().splitlines()
             if " transpose(" in line]
    if layout_only:
        lines = [line for line in lines if re.search(r'op_name="[^"]*/transpose"', line)]
    return len(lines)


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

    Runs on every model the op tests convert (``check_graph``, ``check_node``)
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
    module_inputs = [_boundary.to_module(x, s) for s, x in zip(converted.inputs, inputs)]

    def onnx_layout(call, *xs):  # a generated module with ConvertedModel.run's layout moves
        xs = [_boundary.to_module(x, s) for s, x in zip(converted.inputs, xs)]
        outs = call(*xs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        return [_boundary.to_onnx(y, s) for s, y in zip(converted.outputs, outs)]

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


#: Runs in a fresh interpreter: imports DIR/model.py, loads its weights, applies it (jitted)
#: to the arrays of DIR/inputs.npz (module layout) and saves the outputs to DIR/outputs.npz.
_RUNNER = textwrap.dedent("""
    import importlib.util, sys
    import jax, numpy as np
    folder, api = sys.argv[1], sys.argv[2]
    spec = importlib.util.spec_from_file_location("generated_model", folder + "/model.py")
    model = importlib.util.module_from_spec(spec)
    sys.modules["generated_model"] = model
    spec.loader.exec_module(model)
    with np.load(folder + "/inputs.npz") as data:
        xs = [data[f"x{i}"] for i in range(len(data.files))]
    if api == "nnx":
        from flax import nnx
        outs = nnx.jit(lambda m, *a: m(*a))(model.load_model(), *xs)
    else:
        outs = jax.jit(lambda v, *a: model.Model().apply(v, *a))(model.load_variables(), *xs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    flat = jax.tree.leaves(jax.tree.map(np.asarray, model.load_variables()))
    np.savez(folder + "/outputs.npz", *[np.asarray(o) for o in outs])
    np.savez(folder + "/weights.npz", *flat)
""")


def _run_generated_source(folder, api, module_inputs):
    np.savez(folder / "inputs.npz", **{f"x{i}": x for i, x in enumerate(module_inputs)})
    result = subprocess.run([sys.executable, "-c", _RUNNER, str(folder), api],
                            capture_output=True, text=True, timeout=600,
                            env={"JAX_PLATFORMS": "cpu", "PATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(folder / "outputs.npz") as data:
        outs = [data[f"arr_{i}"] for i in range(len(data.files))]
    with np.load(folder / "weights.npz") as data:
        weights = [data[f"arr_{i}"] for i in range(len(data.files))]
    return outs, weights


def _open_feeds(converted, sizes: dict[str, int], seed=0):
    """Random feeds: each open dim at ``sizes[its dim_param]``; integer inputs in [0, 50)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in converted.inputs:
        shape = [d if isinstance(d, int) else sizes[d] for d in spec.shape]
        feeds[spec.name] = (rng.integers(0, 50, shape) if spec.dtype.kind in "iu"
                            else rng.standard_normal(shape)).astype(spec.dtype)
    return feeds


def check_source_at_sizes(tmp_path, model, size_list, *, api="linen", channels_last=True):
    """Generated source at any size the ONNX file allows: save ``model``'s source once
    (``codegen.save``, the file's open dims kept open), then import and run it (jitted) in a
    fresh Python process at each ``sizes`` of ``size_list`` (``dim_param`` -> size) against
    onnxruntime on the same file; its weights are ``converted.variables``. Returns the
    source."""
    from onnx2flax import codegen

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(model)
    converted = onnx2flax.convert(proto, channels_last=channels_last)
    assert any(not isinstance(d, int) for s in converted.inputs for d in s.shape)
    codegen.save(converted, tmp_path, api=api)
    source = (tmp_path / codegen.MODEL_FILE).read_text()
    check_generated_source(source)
    session = ort.InferenceSession(proto.SerializeToString())
    for k, sizes in enumerate(size_list):
        feeds = _open_feeds(converted, sizes, seed=k)
        expected = session.run(None, feeds)
        module_inputs = [_boundary.to_module(feeds[s.name], s) for s in converted.inputs]
        got, weights = _run_generated_source(tmp_path, api, module_inputs)
        assert len(got) == len(expected)
        # the outputs' layouts at these sizes (converted.outputs traces open dims as 1)
        for spec, g, e in zip(converted._output_specs(module_inputs), got, expected):
            g = _boundary.to_onnx(g, spec)
            assert g.shape == e.shape, (sizes, spec.name)
            np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-5, err_msg=f"{sizes} {spec.name}")
    reference = jax.tree.leaves(jax.tree.map(np.asarray, converted.variables))
    assert len(weights) == len(reference)
    for a, b in zip(weights, reference):
        np.testing.assert_array_equal(a, b)
    return source
