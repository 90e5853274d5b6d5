"""Helpers for the math-op tests: small one-node models and a channels-last sandwich
(Conv -> op -> Conv), each converted once and compared output by output with onnxruntime."""

from __future__ import annotations

import numpy as np
from helpers import assert_codegen_matches, make_model, run_ort
from onnx import helper

import onnx2flax


def check(model, feeds, *, rtol=1e-5, atol=1e-5, channels_last=True):
    """Convert ``model``, ``run`` it and compare every output (values, shape, dtype) with ORT;
    then its generated source with the interpreter, bit for bit."""
    expected = run_ort(model, feeds)
    converted = onnx2flax.convert(model, channels_last=channels_last)
    got = converted.run(feeds)
    assert len(got) == len(expected)
    for out, g, e in zip(model.graph.output, got, expected):
        assert g.shape == e.shape, (out.name, g.shape, e.shape)
        assert g.dtype == e.dtype, (out.name, g.dtype, e.dtype)
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, err_msg=out.name)
    assert_codegen_matches(converted, feeds, got)
    return converted


def node_model(op, feeds, *, attrs=None, inputs=None, consts=None, opset=17, out_dtypes=None,
               outputs=1):
    """One ``op`` node. ``feeds`` become graph inputs, ``consts`` initializers; ``inputs``
    (default: the feeds then the consts, in order) names the node's inputs, ``''`` for
    omitted ones. Outputs ``y0..``: dtypes ``out_dtypes`` (default: the first feed's)."""
    consts = consts or {}
    inputs = list(feeds) + list(consts) if inputs is None else inputs
    names = [f"y{i}" for i in range(outputs)]
    dtypes = out_dtypes or [next(iter(feeds.values())).dtype] * outputs
    node = helper.make_node(op, inputs, names, **(attrs or {}))
    return make_model([node], [(n, v.dtype, v.shape) for n, v in feeds.items()],
                      [(n, np.dtype(d), None) for n, d in zip(names, dtypes)],
                      consts, opset=opset)


def multi_node_model(specs, feeds, *, opset=17, consts=None):
    """Several single-output nodes reading the feeds, one graph output each. ``specs``:
    ``(op, inputs, attrs, out_dtype)``."""
    nodes, outs = [], []
    for k, (op, inputs, attrs, dtype) in enumerate(specs):
        name = f"{op}_{k}"
        nodes.append(helper.make_node(op, inputs, [name], **(attrs or {})))
        outs.append((name, np.dtype(dtype), None))
    return make_model(nodes, [(n, v.dtype, v.shape) for n, v in feeds.items()], outs,
                      consts or {}, opset=opset)


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
