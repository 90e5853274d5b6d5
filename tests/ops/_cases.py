"""Shared builders for the op tests: one-node models checked against onnxruntime, and
Conv -> op -> Conv chains that check layouts (and the transposes XLA is left with)."""

from __future__ import annotations

import re

import jax
import numpy as np
from onnx import helper
from onnx.reference import ReferenceEvaluator

import onnx2flax
from onnx2flax import _boundary
from helpers import assert_codegen_matches, assert_matches_ort, make_model


def assert_matches_reference(model, feeds, *, rtol=1e-5, atol=1e-5):
    """Like ``assert_matches_ort``, against ONNX's reference evaluator (for opsets
    onnxruntime does not implement)."""
    expected = ReferenceEvaluator(model).run(None, feeds)
    converted = onnx2flax.convert(model)
    got = converted.run(feeds)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape, (g.shape, e.shape)
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)
    assert_codegen_matches(converted, feeds, got)
    return converted, got, expected


def check_node(op, feeds, consts=None, *, opset=17, attrs=None, n_out=1, out_dtypes=None,
               input_names=None, rtol=1e-5, atol=1e-5, input_shapes=None, reference="ort"):
    """Build one ``op`` node whose inputs are ``feeds`` (graph inputs) then ``consts``
    (initializers, known at conversion time) in ``input_names`` order (default: feeds
    first), and compare onnx2flax with onnxruntime (``reference="onnx"``: with ONNX's
    reference evaluator)."""
    consts = consts or {}
    names = input_names or [*feeds, *consts]
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, **(attrs or {}))
    shapes = input_shapes or {}
    inputs = [(n, v.dtype, shapes.get(n, list(v.shape))) for n, v in feeds.items()]
    dtypes = out_dtypes or [next(iter(feeds.values())).dtype] * n_out
    model = make_model([node], inputs, [(o, d, None) for o, d in zip(outs, dtypes)],
                       consts, opset=opset)
    check = assert_matches_ort if reference == "ort" else assert_matches_reference
    return check(model, feeds, rtol=rtol, atol=atol)


def check_graph(nodes, feeds, consts=None, *, opset=17, out_dtypes=None, rtol=1e-5,
                atol=1e-5, input_shapes=None, reference="ort"):
    """Several nodes on shared inputs in one model (one compilation): every node output is
    a graph output; ``out_dtypes`` maps output names to dtypes (default: the first feed's)."""
    shapes = input_shapes or {}
    inputs = [(n, v.dtype, shapes.get(n, list(v.shape))) for n, v in feeds.items()]
    default = next(iter(feeds.values())).dtype
    outs = [(o, (out_dtypes or {}).get(o, default), None) for n in nodes for o in n.output]
    model = make_model(nodes, inputs, outs, consts or {}, opset=opset)
    check = assert_matches_ort if reference == "ort" else assert_matches_reference
    return check(model, feeds, rtol=rtol, atol=atol)


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


def transposes(converted, x_onnx, *, layout_only=False) -> int:
    """Transposes in the compiled HLO of ``module.apply`` on ``x_onnx`` in the module's
    layout (channels-last for an image input).
    ``layout_only``: only those from ``jnp.transpose`` (not those XLA's CPU gather
    lowering adds to gathers along inner axes)."""
    x = _boundary.to_module(x_onnx, converted.inputs[0])
    fn = jax.jit(lambda v, x: converted.module.apply(v, x))
    lines = [line for line in fn.lower(converted.variables, x).compile().as_text().splitlines()
             if " transpose(" in line]
    if layout_only:
        lines = [line for line in lines if re.search(r'op_name="[^"]*/transpose"', line)]
    return len(lines)


def check_chain(middle, x, rng, *, layout_only=False, allowed=0, **kw):
    """Conv -> middle -> Conv matches onnxruntime and compiles with no transpose (or
    ``allowed`` ones)."""
    model = conv_chain(middle, x, rng, **kw)
    converted, _, _ = assert_matches_ort(model, {"x": x}, rtol=1e-4, atol=1e-4)
    assert converted.inputs[0].channels_last
    assert transposes(converted, x, layout_only=layout_only) == allowed
    return converted

