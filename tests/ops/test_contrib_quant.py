"""com.microsoft quantized ops (onnxruntime's QOperator and dynamic quantization formats)
against onnxruntime.

Exact (bit for bit) unless a test says otherwise: QLinearAdd (onnxruntime's fixed-point
kernel), QLinearLeakyRelu with alpha 0.3 and QLinearAveragePool with pads, where a value on
a rounding tie moves by one step (measured fractions in each test).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_codegen_matches, run_ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import onnx2flax

RNG = np.random.default_rng(0)
_MS = "com.microsoft"


def _model(op, feeds, consts, *, inputs=None, attrs=None, out_dtype, out_count=1):
    """One com.microsoft ``op``; ``inputs`` (default: feeds then consts) names its inputs."""
    inputs = list(feeds) + list(consts) if inputs is None else inputs
    outs = [f"y{i}" for i in range(out_count)]
    node = helper.make_node(op, inputs, outs, domain=_MS, **(attrs or {}))
    graph = helper.make_graph(
        [node], "t",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for n, v in feeds.items()],
        [helper.make_tensor_value_info(o, helper.np_dtype_to_tensor_dtype(np.dtype(out_dtype)),
                                       None) for o in outs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(_MS, 1)])
    model.ir_version = 9
    return model


def _check(model, feeds, *, steps=0, exact_fraction=1.0, channels_last=True):
    """Outputs equal onnxruntime's in shape and dtype, integers within ``steps`` quantization
    steps with at least ``exact_fraction`` of them exact; float outputs to 1e-5."""
    expected = run_ort(model, feeds, fused=False)
    converted = onnx2flax.convert(model, channels_last=channels_last)
    got = converted.run(feeds)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype, (g.shape, g.dtype, e.shape, e.dtype)
        if e.dtype.kind == "f":
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
            continue
        diff = np.abs(g.astype(np.int64) - e.astype(np.int64))
        assert diff.max() <= steps, diff.max()
        assert (diff == 0).mean() >= exact_fraction, (diff == 0).mean()
    assert_codegen_matches(converted, feeds, got)
    return got


def _q8(shape, dtype=np.uint8):
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max + 1, shape).astype(dtype)


def _column_scales(n, per_column):
    return (RNG.uniform(0.01, 0.03, n) if per_column else np.array(0.02)).astype(np.float32)


def _params(dtype, scale):
    zero = {np.uint8: 128, np.int8: -3}[dtype]
    return np.float32(scale), np.array(zero, dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
def test_qlinear_add_mul(op, dtype):
    """Broadcasting [2, 3, 4, 5] with [4, 1]; the output scale saturates some results.
    QLinearMul is exact; onnxruntime's x86 QLinearAdd kernel uses fixed-point multipliers
    for the scale ratios, which round differently from the documented float formula near
    ties (measured: 4 % (uint8) and 13 % (int8) of these elements, each by one step)."""
    a, b = _q8((2, 3, 4, 5), dtype), _q8((4, 1), dtype)
    sa, za = _params(dtype, 0.05)
    sb, zb = _params(dtype, 0.03)
    sc, zc = _params(dtype, 0.04 if op == "QLinearAdd" else 0.1)
    consts = {"sa": sa, "za": za, "sb": sb, "zb": zb, "sc": sc, "zc": zc}
    model = _model(op, {"a": a, "b": b}, consts,
                   inputs=["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], out_dtype=dtype)
    if op == "QLinearMul":
        _check(model, {"a": a, "b": b})
    else:
        _check(model, {"a": a, "b": b}, steps=1, exact_fraction=0.8)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("op, attrs", [("QLinearSigmoid", {}), ("QLinearLeakyRelu", {}),
                                       ("QLinearLeakyRelu", {"alpha": 0.3})])
def test_qlinear_unary_every_value(op, attrs, dtype):
    """All 256 input values (one of them is a tie onnxruntime's lookup table rounds the other
    way with alpha 0.3); then X's zero point omitted (onnxruntime aborts the process when
    the trailing Y_zero_point is omitted, so it stays)."""
    x = np.arange(256).astype(np.uint8).view(dtype).reshape(4, 64)
    sx, zx = _params(dtype, 0.07)
    sy, zy = _params(dtype, 1 / 256 if op == "QLinearSigmoid" else 0.05)
    _check(_model(op, {"x": x}, {"sx": sx, "zx": zx, "sy": sy, "zy": zy}, attrs=attrs,
                  out_dtype=dtype), {"x": x}, steps=1, exact_fraction=0.99)
    _check(_model(op, {"x": x}, {"sx": sx, "sy": sy, "zy": zy}, inputs=["x", "sx", "", "sy", "zy"],
                  attrs=attrs, out_dtype=dtype), {"x": x}, steps=1, exact_fraction=0.99)


def test_qlinear_where():
    x, y = _q8((3, 4)), _q8((4,))
    cond = RNG.integers(0, 2, (3, 1)).astype(bool)
    consts = {"sx": np.float32(0.02), "zx": np.uint8(100), "sy": np.float32(0.05),
              "zy": np.uint8(7), "sz": np.float32(0.03), "zz": np.uint8(120)}
    model = _model("QLinearWhere", {"c": cond, "x": x, "y": y}, consts,
                   inputs=["c", "x", "sx", "zx", "y", "sy", "zy", "sz", "zz"], out_dtype=np.uint8)
    _check(model, {"c": cond, "x": x, "y": y})


@pytest.mark.parametrize("axis", [1, -1])
def test_qlinear_concat(axis):
    a, b = _q8((2, 3, 4), np.int8), _q8((2, 3, 4), np.int8)
    consts = {"sy": np.float32(0.05), "zy": np.int8(2), "s1": np.float32(0.02),
              "z1": np.int8(-5), "s2": np.float32(0.09), "z2": np.int8(10)}
    model = _model("QLinearConcat", {"a": a, "b": b}, consts,
                   inputs=["sy", "zy", "a", "s1", "z1", "b", "s2", "z2"], attrs={"axis": axis},
                   out_dtype=np.int8)
    _check(model, {"a": a, "b": b})


@pytest.mark.parametrize("opset, axis", [(13, -1), (13, 1), (12, 1), (11, 2)])
def test_qlinear_softmax(opset, axis):
    """The ``opset`` attribute: before 13 the trailing axes from ``axis`` are one."""
    x = _q8((2, 3, 5))
    consts = {"sx": np.float32(0.1), "zx": np.uint8(128), "sy": np.float32(1 / 256),
              "zy": np.uint8(0)}
    model = _model("QLinearSoftmax", {"x": x}, consts, attrs={"opset": opset, "axis": axis},
                   out_dtype=np.uint8)
    _check(model, {"x": x})


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [3, 3]},
    {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 0, 1, 1]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
])
@pytest.mark.parametrize("channels_last", [True, False])
def test_qlinear_average_pool(attrs, channels_last):
    x = _q8((2, 3, 7, 6), np.int8)
    consts = {"sx": np.float32(0.05), "zx": np.int8(1), "sy": np.float32(0.03),
              "zy": np.int8(-2)}
    model = _model("QLinearAveragePool", {"x": x}, consts, attrs=attrs, out_dtype=np.int8)
    _check(model, {"x": x}, steps=1, exact_fraction=0.97, channels_last=channels_last)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_qlinear_global_average_pool(dtype):
    x = _q8((2, 5, 4, 3), dtype)
    sx, zx = _params(dtype, 0.05)
    sy, zy = _params(dtype, 0.01)
    model = _model("QLinearGlobalAveragePool", {"x": x}, {"sx": sx, "zx": zx, "sy": sy, "zy": zy},
                   out_dtype=dtype)
    _check(model, {"x": x})


def test_channels_last_pool_is_refused():
    x = _q8((1, 4, 4, 3))
    consts = {"sx": np.float32(0.05), "zx": np.uint8(1), "sy": np.float32(0.03),
              "zy": np.uint8(2)}
    model = _model("QLinearGlobalAveragePool", {"x": x}, consts, attrs={"channels_last": 1},
                   out_dtype=np.uint8)
    with pytest.raises(onnx2flax.errors.UnsupportedOpError, match="channels_last=1"):
        onnx2flax.convert(model).run({"x": x})


@pytest.mark.parametrize("trans_a, trans_b", [(0, 0), (1, 0), (0, 1)])
@pytest.mark.parametrize("quantized_output", [False, True])
@pytest.mark.parametrize("per_column", [False, True])
def test_qgemm(trans_a, trans_b, quantized_output, per_column):
    """A uint8, B int8 (the quantizer's default), int32 C, alpha; float or uint8 output."""
    a = _q8((5, 4) if trans_a else (4, 5))
    b = _q8((6, 5) if trans_b else (5, 6), np.int8)
    consts = {"sa": np.float32(0.02), "za": np.uint8(120), "b": b,
              "sb": _column_scales(6, per_column),
              "zb": np.zeros(6 if per_column else (), np.int8),
              "c": RNG.integers(-500, 500, 6).astype(np.int32)}
    inputs = ["a", "sa", "za", "b", "sb", "zb", "c"]
    if quantized_output:
        consts.update(sy=np.float32(0.05), zy=np.uint8(128))
        inputs += ["sy", "zy"]
    model = _model("QGemm", {"a": a}, consts, inputs=inputs,
                   attrs={"transA": trans_a, "transB": trans_b, "alpha": 0.5},
                   out_dtype=np.uint8 if quantized_output else np.float32)
    _check(model, {"a": a})


@pytest.mark.parametrize("per_column", [False, True])
def test_matmul_integer_to_float(per_column):
    a, b = _q8((2, 3, 5)), _q8((5, 4), np.int8)
    consts = {"b": b, "sa": np.float32(0.03),
              "sb": _column_scales(4, per_column),
              "za": np.uint8(130), "zb": np.zeros(4 if per_column else (), np.int8),
              "bias": RNG.standard_normal(4).astype(np.float32)}
    _check(_model("MatMulIntegerToFloat", {"a": a}, consts, out_dtype=np.float32), {"a": a})


@pytest.mark.parametrize("values", ["mixed", "positive"])
def test_dynamic_quantize_matmul(values):
    a = RNG.standard_normal((3, 6)).astype(np.float32)
    if values == "positive":
        a = np.abs(a)
    b = _q8((6, 4), np.int8)
    consts = {"b": b, "sb": RNG.uniform(0.01, 0.03, 4).astype(np.float32),
              "zb": np.zeros(4, np.int8), "bias": RNG.standard_normal(4).astype(np.float32)}
    _check(_model("DynamicQuantizeMatMul", {"a": a}, consts, out_dtype=np.float32), {"a": a})


def test_contrib_quantize_dequantize_per_axis():
    """com.microsoft QuantizeLinear / DequantizeLinear take a per-axis scale at version 1."""
    x = (RNG.standard_normal((2, 3, 4)) * 3).astype(np.float32)
    consts = {"s": np.array([0.02, 0.05, 0.1], np.float32), "z": np.array([0, 10, -7], np.int8)}
    _check(_model("QuantizeLinear", {"x": x}, consts, attrs={"axis": 1}, out_dtype=np.int8),
           {"x": x})
    q = _q8((2, 3, 4), np.int8)
    _check(_model("DequantizeLinear", {"q": q}, consts, attrs={"axis": 1},
                  out_dtype=np.float32), {"q": q})


@pytest.mark.parametrize("direction, per_column, dtype", [
    ("forward", False, np.uint8), ("bidirectional", True, np.int8), ("reverse", False, np.int8)])
def test_dynamic_quantize_lstm(direction, per_column, dtype):
    """DynamicQuantizeLSTM (ddddocr's common_old) is LSTM with dequantized, transposed
    weights: equal to ONNX's reference LSTM on those weights; onnxruntime also quantizes X
    and the hidden state to uint8 per step, which costs it ~1e-2 here. (onnxruntime takes
    int8 weights only with zero points 0.)"""
    dirs, seq, batch, size, hidden = (2 if direction == "bidirectional" else 1), 5, 2, 6, 4
    x = RNG.standard_normal((seq, batch, size)).astype(np.float32)
    cols = (dirs, 4 * hidden) if per_column else (dirs,)
    zero = (lambda: RNG.integers(120, 136, cols)) if dtype == np.uint8 else (lambda: np.zeros(cols))
    consts = {"w": _q8((dirs, size, 4 * hidden), dtype),
              "r": _q8((dirs, hidden, 4 * hidden), dtype),
              "b": RNG.standard_normal((dirs, 8 * hidden)).astype(np.float32) * 0.1,
              "h0": RNG.standard_normal((dirs, batch, hidden)).astype(np.float32),
              "c0": RNG.standard_normal((dirs, batch, hidden)).astype(np.float32),
              "ws": RNG.uniform(0.002, 0.01, cols).astype(np.float32),
              "wz": zero().astype(dtype),
              "rs": RNG.uniform(0.002, 0.01, cols).astype(np.float32),
              "rz": zero().astype(dtype)}
    attrs = {"direction": direction, "hidden_size": hidden}
    model = _model("DynamicQuantizeLSTM", {"x": x}, consts, attrs=attrs, out_dtype=np.float32,
                   inputs=["x", "w", "r", "b", "", "h0", "c0", "", "ws", "wz", "rs", "rz"],
                   out_count=3)
    converted = onnx2flax.convert(model)
    got = converted.run({"x": x})
    assert_codegen_matches(converted, {"x": x}, got)

    def dequantized(q, s, z):
        shape = (dirs, 1, -1) if per_column else (dirs, 1, 1)
        return ((q.astype(np.float32) - z.reshape(shape)) * s.reshape(shape)).transpose(0, 2, 1)

    float_lstm = helper.make_model(helper.make_graph(
        [helper.make_node("LSTM", ["x", "W", "R", "b", "", "h0", "c0"], ["y0", "y1", "y2"],
                          **attrs)], "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(3)],
        [numpy_helper.from_array(v, n) for n, v in (
            ("W", dequantized(consts["w"], consts["ws"], consts["wz"])),
            ("R", dequantized(consts["r"], consts["rs"], consts["rz"])),
            ("b", consts["b"]), ("h0", consts["h0"]), ("c0", consts["c0"]))]),
        opset_imports=[helper.make_opsetid("", 17)])
    reference = ReferenceEvaluator(float_lstm).run(None, {"x": x})
    ort_out = run_ort(model, {"x": x}, fused=False)
    for g, r, o in zip(got, reference, ort_out):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(g, o, atol=0.05)


def test_qoperator_chain():
    """What quantize_static's QOperator format writes for conv -> residual add -> pool ->
    fc: QuantizeLinear, QLinearConv (per-channel int8 weights), QLinearAdd,
    QLinearGlobalAveragePool, Flatten, QGemm, DequantizeLinear; exact against onnxruntime."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    s = {f"s{i}": np.float32(v) for i, v in enumerate([0.03, 0.05, 0.04, 0.06, 0.02, 0.1])}
    z = {f"z{i}": np.uint8(v) for i, v in enumerate([128, 120, 131, 125, 128, 127])}
    consts = {**s, **z,
              "w1": rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8),
              "w2": rng.integers(-127, 128, (4, 3, 1, 1)).astype(np.int8),
              "ws": rng.uniform(0.002, 0.01, 4).astype(np.float32), "wz": np.zeros(4, np.int8),
              "b1": rng.integers(-200, 200, 4).astype(np.int32),
              "fc": rng.integers(-127, 128, (5, 4)).astype(np.int8), "fs": np.float32(0.01),
              "fz": np.int8(0), "fb": rng.integers(-300, 300, 5).astype(np.int32)}
    ms = {"domain": _MS}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s0", "z0"], ["xq"]),
        helper.make_node("QLinearConv", ["xq", "s0", "z0", "w1", "ws", "wz", "s1", "z1", "b1"],
                         ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("QLinearConv", ["xq", "s0", "z0", "w2", "ws", "wz", "s2", "z2"], ["c2"]),
        helper.make_node("QLinearAdd", ["c1", "s1", "z1", "c2", "s2", "z2", "s3", "z3"], ["a"],
                         **ms),
        helper.make_node("QLinearGlobalAveragePool", ["a", "s3", "z3", "s4", "z4"], ["p"], **ms),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("QGemm", ["f", "s4", "z4", "fc", "fs", "fz", "fb", "s5", "z5"], ["g"],
                         transB=1, **ms),
        helper.make_node("DequantizeLinear", ["g", "s5", "z5"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "qop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(_MS, 1)])
    model.ir_version = 9
    y = _check(model, {"x": x})[0]
    assert len(np.unique(y)) > 5  # not saturated


@pytest.mark.parametrize("case", ["plain", "unidirectional", "key_lengths", "raw_mask", "past",
                                  "per_column"])
def test_qattention(case):
    """uint8 input, int8 weight (zero points as the quantizer writes them), 2 heads of 4."""
    batch, seq, hidden, heads, past_len = 2, 5, 8, 2, 3
    x = _q8((batch, seq, 6))
    per_column = case == "per_column"
    consts = {"w": _q8((6, 3 * hidden), np.int8),
              "b": RNG.standard_normal(3 * hidden).astype(np.float32) * 0.1,
              "xs": np.float32(0.01),
              "ws": (RNG.uniform(0.005, 0.02, 3 * hidden) if per_column
                     else np.array(0.01)).astype(np.float32)}
    inputs = ["x", "w", "b", "xs", "ws", "", "xz", "wz"]
    consts.update(xz=np.uint8(120), wz=np.zeros(3 * hidden if per_column else (), np.int8))
    attrs = {"num_heads": heads}
    feeds = {"x": x}
    if case == "unidirectional":
        attrs["unidirectional"] = 1
    if case == "key_lengths":
        consts["mask"] = np.array([5, 3], np.int32)
        inputs[5] = "mask"
    if case == "raw_mask":
        consts["mask"] = np.array([[1, 1, 0, 1, 1], [1, 0, 1, 1, 0]], np.int32)
        inputs[5] = "mask"
    if case == "past":
        past = RNG.standard_normal((2, batch, heads, past_len, hidden // heads))
        feeds["past"] = past.astype(np.float32)
        inputs.append("past")
        attrs["unidirectional"] = 1
    model = _model("QAttention", feeds, consts, inputs=inputs, attrs=attrs, out_dtype=np.float32,
                   out_count=2 if case == "past" else 1)
    _check(model, feeds)
