"""Quantization ops, BitCast and Cast to float8e8m0 against onnxruntime, or ONNX's reference
evaluator where onnxruntime lacks the type (int4 / int2 / float8 / float4 outputs cannot
leave its Python API) or the opset."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from helpers import (after_conv, check_chain, check_graph, make_model, node_model, run_ort,
                     values_and_hlo)
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import onnx2flax
from onnx2flax.errors import OnnxConversionError

RNG = np.random.default_rng(0)


def check_reference(model, feeds, *, channels_last=True, atol=0.0):
    """Convert and run ``model``; outputs must equal the reference evaluator's in shape and
    dtype, and in value (exactly, unless ``atol``)."""
    expected = ReferenceEvaluator(model).run(None, feeds)
    got = onnx2flax.convert(model, channels_last=channels_last).run(feeds)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype, (g.shape, g.dtype, e.shape, e.dtype)
        np.testing.assert_allclose(g.astype(np.float32), e.astype(np.float32), atol=atol)


def _ties(shape, scale=1.0):
    """Values on and around rounding ties (k + 0.5) times ``scale``, and far out of range."""
    x = RNG.integers(-6, 6, shape) + RNG.choice([0.0, 0.5, 0.25, 0.75], shape)
    x.reshape(-1)[:2] = [1e4, -1e4]
    return (x * scale).astype(np.float32)


def _q(x, scale, zero_point=None, *, attrs=None, opset=21, out=None):
    consts = {"s": np.asarray(scale, np.float32)}
    if zero_point is not None:
        consts["z"] = np.asarray(zero_point)
    out = out or (np.asarray(zero_point).dtype if zero_point is not None else np.uint8)
    return node_model("QuantizeLinear", {"x": x}, consts=consts, attrs=attrs, opset=opset,
                      out_dtypes=[out]), {"x": x}


def _dq(x, scale, zero_point=None, *, attrs=None, opset=21, out=np.float32):
    consts = {"s": np.asarray(scale)}
    if zero_point is not None:
        consts["z"] = np.asarray(zero_point)
    return node_model("DequantizeLinear", {"x": x}, consts=consts, attrs=attrs, opset=opset,
                      out_dtypes=[out]), {"x": x}


# ---- QuantizeLinear ----------------------------------------------------------------------

@pytest.mark.parametrize("opset", [10, 13, 19, 21, 25])
@pytest.mark.parametrize("zero_point", [np.uint8(3), np.int8(-4), None])
def test_quantize_per_tensor_rounds_half_to_even(zero_point, opset):
    """2.5 -> 2, 3.5 -> 4, -2.5 -> -2; out-of-range values saturate."""
    check_graph(*_q(_ties((3, 8)), 1.0, zero_point, opset=opset))


@pytest.mark.parametrize("zero_point", [np.int16(-300), np.uint16(4000)])
def test_quantize_16_bit(zero_point):
    check_graph(*_q(_ties((4, 6), 0.01), 0.01, zero_point))


@pytest.mark.parametrize("axis", [0, 1, -1, -3])
def test_quantize_per_axis(axis):
    x = _ties((3, 4, 5), 0.1)
    n = x.shape[axis]
    scale = RNG.uniform(0.05, 0.2, n).astype(np.float32)
    zero = RNG.integers(0, 30, n).astype(np.uint8)
    check_graph(*_q(x, scale, zero, attrs={"axis": axis}, opset=13))


@pytest.mark.parametrize("shape, axis, block", [((3, 4), 1, 2), ((5, 3), 0, 2), ((2, 7, 3), -2, 3)])
def test_quantize_blocked(shape, axis, block):
    """Blocks along ``axis``; 5 and 7 rows leave a remainder block."""
    x = _ties(shape, 0.1)
    sshape = list(shape)
    sshape[axis] = -(-shape[axis] // block)
    scale = RNG.uniform(0.05, 0.2, sshape).astype(np.float32)
    zero = RNG.integers(-10, 10, sshape).astype(np.int8)
    check_graph(*_q(x, scale, zero, attrs={"axis": axis, "block_size": block}))


def test_quantize_output_dtype_without_zero_point():
    check_graph(*_q(_ties((2, 5)), 1.0, attrs={"output_dtype": TensorProto.INT8}, out=np.int8))


def test_quantize_float16_input_and_scale():
    x = _ties((3, 4), 0.5).astype(np.float16)
    model = node_model("QuantizeLinear", {"x": x}, opset=21, out_dtypes=[np.int8],
                       consts={"s": np.float16(0.5), "z": np.int8(1)})
    check_graph(model, {"x": x})


def test_quantize_channels_last_per_axis():
    """Per-channel quantization of a value held channels-last (after a Conv)."""
    model, feeds = after_conv([("QuantizeLinear", ["s", "z"], {"axis": 1}, np.uint8),
                               ("QuantizeLinear", ["s0", "z0"], {}, np.uint8)],
                              consts={"s": np.float32([0.01, 0.02, 0.05]),
                                      "z": np.uint8([100, 128, 50]),
                                      "s0": np.float32(0.02), "z0": np.uint8(128)}, opset=13)
    check_graph(model, feeds)


@pytest.mark.parametrize("zero_point", [ml_dtypes.int4(-1), ml_dtypes.uint4(3),
                                        ml_dtypes.int2(0), ml_dtypes.uint2(1)])
def test_quantize_narrow_integers(zero_point):
    """int4/uint4 (opset 21) and int2/uint2 (opset 25) saturate to their small ranges."""
    check_reference(*_q(_ties((3, 4), 0.5), 0.5, np.asarray(zero_point), opset=25))


@pytest.mark.parametrize("saturate", [1, 0])
@pytest.mark.parametrize("dtype", [ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2])
def test_quantize_float8(dtype, saturate):
    """saturate=0 lets out-of-range values become NaN (e4m3fn) or Inf (e5m2)."""
    x = (RNG.standard_normal((3, 5)) * 100).astype(np.float32)
    x[0, :2] = [1e6, -1e6]
    check_reference(*_q(x, 0.5, np.zeros((), dtype), attrs={"saturate": saturate}, opset=21))


def test_quantize_float4():
    x = np.float32([[0, 0.2, 0.3, 1.1, 2.4, 2.6, 5, 7, -1.25, -100]])
    check_reference(*_q(x, 0.5, np.zeros((), ml_dtypes.float4_e2m1fn), opset=23))


@pytest.mark.parametrize("precision", [TensorProto.FLOAT, TensorProto.FLOAT16])
def test_quantize_precision(precision):
    """``precision`` sets the type ``x / scale`` is computed in (opset 23)."""
    check_reference(*_q(_ties((4, 5), 0.3), 0.3, np.int8(2), attrs={"precision": precision},
                        opset=23))


# ---- DequantizeLinear --------------------------------------------------------------------

@pytest.mark.parametrize("opset", [10, 13, 21])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int32])
def test_dequantize_per_tensor(dtype, opset):
    info = np.iinfo(dtype)
    x = RNG.integers(max(info.min, -1000), min(info.max, 1000), (3, 4)).astype(dtype)
    zero = None if dtype == np.int32 else dtype(7)
    check_graph(*_dq(x, np.float32(0.25), zero, opset=opset))


@pytest.mark.parametrize("axis", [1, -1, 0])
def test_dequantize_per_axis(axis):
    x = RNG.integers(-128, 128, (2, 3, 4)).astype(np.int8)
    n = x.shape[axis]
    check_graph(*_dq(x, RNG.uniform(0.1, 1, n).astype(np.float32),
               RNG.integers(-5, 5, n).astype(np.int8), attrs={"axis": axis}, opset=13))


def test_dequantize_blocked():
    x = RNG.integers(0, 256, (5, 4)).astype(np.uint8)
    check_graph(*_dq(x, RNG.uniform(0.1, 1, (3, 4)).astype(np.float32),
               RNG.integers(0, 256, (3, 4)).astype(np.uint8),
               attrs={"axis": 0, "block_size": 2}))


def test_dequantize_float16_scale():
    x = RNG.integers(-128, 128, (3, 4)).astype(np.int8)
    check_graph(*_dq(x, np.float16(0.125), np.int8(3), out=np.float16), rtol=1e-3)


@pytest.mark.parametrize("dtype", [ml_dtypes.int4, ml_dtypes.uint4, ml_dtypes.int2,
                                   ml_dtypes.uint2, ml_dtypes.float8_e4m3fn,
                                   ml_dtypes.float8_e5m2, ml_dtypes.float4_e2m1fn])
def test_dequantize_narrow_types(dtype):
    x = RNG.integers(-2, 2, (3, 4)).astype(np.float32).astype(dtype)
    check_reference(*_dq(x, np.float32([0.5, 1, 2]), np.zeros(3, dtype), attrs={"axis": 0},
                         opset=25))


def test_dequantize_output_dtype_and_e8m0_scale():
    """opset 24: a float8e8m0 (power of two) scale, ``output_dtype`` float16."""
    x = RNG.integers(-128, 128, (2, 6)).astype(np.int8)
    scale = np.float32([[0.25, 4, 1], [2, 0.5, 8]]).astype(ml_dtypes.float8_e8m0fnu)
    check_reference(*_dq(x, scale, attrs={"axis": 1, "block_size": 2,
                                          "output_dtype": TensorProto.FLOAT16},
                         opset=24, out=np.float16))


def test_quantize_dequantize_channels_last_roundtrip():
    """A QDQ pair on a channels-last value, blocked along the channels."""
    scale = RNG.uniform(0.01, 0.05, (2, 2, 4, 5)).astype(np.float32)
    zero = RNG.integers(-3, 3, (2, 2, 4, 5)).astype(np.int8)
    x = (RNG.standard_normal((2, 3, 4, 5))).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"]),
             helper.make_node("QuantizeLinear", ["h", "s", "z"], ["q"], axis=1, block_size=2),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], axis=1, block_size=2),
             helper.make_node("Conv", ["d", "w"], ["y"])]
    w = (np.eye(3, dtype=np.float32)[:, :, None, None]
         + 0.1 * RNG.standard_normal((3, 3, 1, 1)).astype(np.float32))
    model = make_model(nodes, [("x", np.float32, x.shape)], [("y", np.float32, None)],
                       {"w": w, "s": scale, "z": zero}, opset=21)
    check_graph(model, {"x": x}, atol=1e-4)


@values_and_hlo
@pytest.mark.parametrize("per_channel", [False, True])
def test_qdq_between_convs_needs_no_transpose(per_channel, aspect):
    """Quantize / dequantize keep the channels-last layout of a Conv output."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    s = np.float32([0.05, 0.1, 0.02, 0.08]) if per_channel else np.float32(0.05)
    z = np.int8([0, 3, -2, 1]) if per_channel else np.int8(2)
    middle = [helper.make_node("QuantizeLinear", ["a", "s", "z"], ["q"]),
              helper.make_node("DequantizeLinear", ["q", "s", "z"], ["b"])]
    check_chain(middle, x, rng, aspect, extra={"s": s, "z": z}, opset=13)


@values_and_hlo
def test_qlinear_conv_between_convs_needs_no_transpose(aspect):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    extra = {"sx": np.float32(0.05), "zx": np.uint8(128), "w": _ints(np.int8, (4, 4, 3, 3)),
             "sw": np.float32(0.01), "zw": np.int8(0), "sy": np.float32(0.2),
             "zy": np.uint8(120)}
    middle = [helper.make_node("QuantizeLinear", ["a", "sx", "zx"], ["qa"]),
              helper.make_node("QLinearConv", ["qa", "sx", "zx", "w", "sw", "zw", "sy", "zy"],
                               ["qb"], pads=[1, 1, 1, 1]),
              helper.make_node("DequantizeLinear", ["qb", "sy", "zy"], ["b"])]
    check_chain(middle, x, rng, aspect, extra=extra, opset=13)


# ---- DynamicQuantizeLinear ---------------------------------------------------------------

@pytest.mark.parametrize("values", ["mixed", "negative", "positive", "zeros"])
def test_dynamic_quantize(values):
    x = RNG.standard_normal((3, 7)).astype(np.float32) * 4
    x = {"mixed": x, "negative": -np.abs(x), "positive": np.abs(x), "zeros": 0 * x}[values]
    model = node_model("DynamicQuantizeLinear", {"x": x}, opset=11, outputs=3,
                       out_dtypes=[np.uint8, np.float32, np.uint8])
    check_graph(model, {"x": x})


def test_dynamic_quantize_channels_last():
    model, feeds = after_conv([("DynamicQuantizeLinear", [], {}, np.uint8)], opset=11)
    model.graph.node[-1].output.extend(["scale", "zero"])
    model.graph.output.extend([helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
                               helper.make_tensor_value_info("zero", TensorProto.UINT8, [])])
    check_graph(model, feeds)


# ---- MatMulInteger / QLinearMatMul ---------------------------------------------------------

def _ints(dtype, shape):
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max + 1, shape).astype(dtype)


@pytest.mark.parametrize("a_type, b_type", [(np.uint8, np.int8), (np.int8, np.uint8),
                                            (np.uint8, np.uint8)])
def test_matmul_integer(a_type, b_type):
    a, b = _ints(a_type, (2, 4, 5)), _ints(b_type, (5, 3))
    consts = {"za": _ints(a_type, ()), "zb": _ints(b_type, ())}
    check_graph(node_model("MatMulInteger", {"a": a, "b": b}, consts=consts, opset=10,
                     out_dtypes=[np.int32]), {"a": a, "b": b})


@pytest.mark.parametrize("zero_points", ["none", "scalar", "vector"])
def test_matmul_integer_zero_points(zero_points):
    feeds = {"a": RNG.integers(0, 255, (2, 3, 4)).astype(np.uint8),
             "b": RNG.integers(0, 255, (4, 5)).astype(np.uint8)}
    consts = {"none": {}, "scalar": {"az": np.array(7, np.uint8), "bz": np.array(200, np.uint8)},
              "vector": {"az": np.array([9], np.uint8),  # ORT takes only 1-element A zero points
                         "bz": RNG.integers(0, 255, 5).astype(np.uint8)}}[zero_points]
    model = node_model("MatMulInteger", feeds, consts=consts, opset=10, out_dtypes=[np.int32])
    check_graph(model, feeds, rtol=0, atol=0)


def _per_row_pair(op, a, b, consts, a_names, **kwargs):
    """``op`` with 1-D per-row constants ``a_names`` for A, and the same model with them as
    ``[M, 1]`` columns (the form the reference evaluator broadcasts per row)."""
    column = {k: v.reshape(-1, 1) if k in a_names else v for k, v in consts.items()}
    return [node_model(op, {"a": a, "b": b}, consts=c, opset=10, **kwargs)
            for c in (consts, column)]


def test_matmul_integer_per_row_and_column():
    a, b = _ints(np.uint8, (4, 5)), _ints(np.int8, (5, 3))
    consts = {"za": _ints(np.uint8, 4), "zb": _ints(np.int8, 3)}
    ours, theirs = _per_row_pair("MatMulInteger", a, b, consts, ["za"], out_dtypes=[np.int32])
    feeds = {"a": a, "b": b}
    check_reference(theirs, feeds)
    np.testing.assert_array_equal(onnx2flax.convert(ours).run(feeds)[0],
                                  ReferenceEvaluator(theirs).run(None, feeds)[0])


@pytest.mark.parametrize("opset, scale_type", [(10, np.float32), (21, np.float16)])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("shape_a, shape_b", [((3, 5), (5, 4)), ((2, 3, 5), (2, 5, 4))])
def test_qlinear_matmul(dtype, shape_a, shape_b, opset, scale_type):
    a, b = _ints(dtype, shape_a), _ints(dtype, shape_b)
    consts = {"sa": scale_type(0.02), "za": _ints(dtype, ()), "sb": scale_type(0.03),
              "zb": _ints(dtype, ()), "sy": scale_type(0.5), "zy": _ints(dtype, ())}
    model = node_model("QLinearMatMul", {"a": a, "b": b}, consts=consts, opset=opset,
                       inputs=["a", "sa", "za", "b", "sb", "zb", "sy", "zy"])
    check_graph(model, {"a": a, "b": b})


def test_qlinear_matmul_per_column():
    a, b = _ints(np.uint8, (3, 5)), _ints(np.int8, (5, 4))
    consts = {"sa": np.float32(0.02), "za": np.uint8(7),
              "sb": RNG.uniform(0.01, 0.03, 4).astype(np.float32), "zb": np.zeros(4, np.int8),
              "sy": np.float32(0.3), "zy": np.uint8(128)}
    check_graph(node_model("QLinearMatMul", {"a": a, "b": b}, consts=consts, opset=10,
                     inputs=["a", "sa", "za", "b", "sb", "zb", "sy", "zy"],
                     out_dtypes=[np.uint8]), {"a": a, "b": b})


def test_qlinear_matmul_per_row():
    """onnxruntime refuses per-row A parameters; the reference evaluator takes them as
    ``[M, 1]``."""
    a, b = _ints(np.uint8, (3, 5)), _ints(np.int8, (5, 4))
    consts = {"sa": RNG.uniform(0.01, 0.03, 3).astype(np.float32), "za": _ints(np.uint8, 3),
              "sb": np.float32(0.02), "zb": np.int8(-2), "sy": np.float32(0.3),
              "zy": np.uint8(128)}
    ours, theirs = _per_row_pair("QLinearMatMul", a, b, consts, ["sa", "za"],
                                 inputs=["a", "sa", "za", "b", "sb", "zb", "sy", "zy"],
                                 out_dtypes=[np.uint8])
    feeds = {"a": a, "b": b}
    check_reference(theirs, feeds)
    np.testing.assert_array_equal(onnx2flax.convert(ours).run(feeds)[0],
                                  ReferenceEvaluator(theirs).run(None, feeds)[0])


# ---- ConvInteger / QLinearConv -----------------------------------------------------------

_CONV_ATTRS = [{}, {"pads": [1, 0, 2, 1], "strides": [2, 1]}, {"group": 2, "dilations": [2, 1]},
               {"auto_pad": "SAME_UPPER", "strides": [2, 2]}]


@pytest.mark.parametrize("attrs", _CONV_ATTRS)
@pytest.mark.parametrize("channels_last", [True, False])
def test_qlinear_conv(attrs, channels_last):
    """Per-output-channel weight scales and zero points, an int32 bias."""
    group = attrs.get("group", 1)
    x, w = _ints(np.uint8, (2, 4, 6, 5)), _ints(np.int8, (6, 4 // group, 3, 2))
    consts = {"sx": np.float32(0.02), "zx": np.uint8(120), "w": w,
              "sw": RNG.uniform(0.005, 0.02, 6).astype(np.float32), "zw": np.zeros(6, np.int8),
              "sy": np.float32(0.25), "zy": np.uint8(100),
              "b": RNG.integers(-2000, 2000, 6).astype(np.int32)}
    model = node_model("QLinearConv", {"x": x}, consts=consts, attrs=attrs, opset=10,
                       inputs=["x", "sx", "zx", "w", "sw", "zw", "sy", "zy", "b"])
    check_graph(model, {"x": x}, channels_last=channels_last)


@pytest.mark.parametrize("attrs", _CONV_ATTRS)
def test_conv_integer(attrs):
    """Padding counts as the zero point (onnxruntime refuses padding with a non-zero x zero
    point, so the reference evaluator checks)."""
    group = attrs.get("group", 1)
    x, w = _ints(np.uint8, (1, 4, 5, 6)), _ints(np.uint8, (2, 4 // group, 2, 3))
    model = node_model("ConvInteger", {"x": x}, consts={"w": w, "zx": np.uint8(128),
                                                        "zw": np.uint8([3, 250])},
                       attrs=attrs, opset=10, out_dtypes=[np.int32])
    check_reference(model, {"x": x})


def test_conv_integer_against_onnxruntime():
    x, w = _ints(np.int8, (2, 3, 5, 5)), _ints(np.int8, (4, 3, 3, 3))
    model = node_model("ConvInteger", {"x": x}, consts={"w": w, "zx": np.int8(-3)},
                       attrs={"strides": [2, 1]}, opset=10, out_dtypes=[np.int32])
    check_graph(model, {"x": x})


# ---- BitCast / Cast to float8e8m0 --------------------------------------------------------

@pytest.mark.parametrize("source, to", [(np.float32, TensorProto.INT32),
                                        (np.int32, TensorProto.FLOAT),
                                        (np.float16, TensorProto.INT16),
                                        (np.int8, TensorProto.UINT8),
                                        (np.uint16, TensorProto.FLOAT16)])
def test_bitcast(source, to):
    x = RNG.standard_normal((3, 4)).astype(np.float32) * 1000
    x = x.astype(source) if np.dtype(source).kind == "f" else x.astype(np.int64).astype(source)
    model = node_model("BitCast", {"x": x}, attrs={"to": to}, opset=26,
                       out_dtypes=[helper.tensor_dtype_to_np_dtype(to)])
    check_graph(model, {"x": x}, rtol=0, atol=0)


def test_bitcast_bool_and_float8():
    x = RNG.integers(0, 256, (2, 5)).astype(np.uint8)
    for to, dtype in ((TensorProto.FLOAT8E4M3FN, ml_dtypes.float8_e4m3fn),
                      (TensorProto.INT8, np.int8)):
        check_reference(node_model("BitCast", {"x": x}, attrs={"to": to}, opset=26,
                                   out_dtypes=[dtype]), {"x": x})
    b = RNG.integers(0, 2, (4,)).astype(bool)
    check_reference(node_model("BitCast", {"b": b}, attrs={"to": TensorProto.UINT8}, opset=26,
                               out_dtypes=[np.uint8]), {"b": b})


@pytest.mark.parametrize("round_mode", ["up", "down", "nearest"])
@pytest.mark.parametrize("saturate", [1, 0])
def test_cast_to_e8m0(round_mode, saturate):
    x = np.float32([0, 1e-40, 0.1, 0.25, 0.375, 0.376, 1, 1.5, 1.49, 3, 3e38, 1.7e38, np.nan])
    model = node_model("Cast", {"x": x}, attrs={"to": TensorProto.FLOAT8E8M0,
                                                "round_mode": round_mode, "saturate": saturate},
                       opset=24, out_dtypes=[ml_dtypes.float8_e8m0fnu])
    check_reference(model, {"x": x})


# ---- errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("scale, attrs, message", [
    (np.ones(3, np.float32), {"axis": 1}, "length 4"),
    (np.ones(4, np.float32), {"axis": 3}, "out of range"),
    (np.ones((3, 3), np.float32), {"axis": 1, "block_size": 2}, "expected \\[3, 2\\]"),
    (np.ones((3, 2), np.float32), {"axis": 1, "block_size": -1}, "block_size"),
])
def test_bad_scale_shapes_are_refused(scale, attrs, message):
    model, feeds = _q(np.zeros((3, 4), np.float32), scale, attrs=attrs)
    with pytest.raises(OnnxConversionError, match=f"QuantizeLinear.*{message}"):
        onnx2flax.convert(model).run(feeds)


def test_bad_quantization_attributes_are_refused():
    x = np.zeros((2, 3), np.float32)
    cases = [
        (_q(x, 1.0, np.int8(0), attrs={"output_dtype": TensorProto.UINT8}), "output_dtype"),
        (_q(x, 1.0, attrs={"output_dtype": TensorProto.FLOAT}, out=np.float32), "quantize to"),
        (_q(x, np.ones(3, np.float32), np.zeros(2, np.uint8)), "same shape"),
        (_dq(np.zeros((2, 3), np.int8), np.float32(1), np.uint8(0)), "must match"),
    ]
    for (model, feeds), message in cases:
        with pytest.raises(OnnxConversionError, match=message):
            onnx2flax.convert(model).run(feeds)


def test_bitcast_width_and_64_bit():
    x = np.zeros(3, np.float32)
    model = node_model("BitCast", {"x": x}, attrs={"to": TensorProto.INT16}, opset=26,
                       out_dtypes=[np.int16])
    with pytest.raises(OnnxConversionError, match="32 bits.*16 bits"):
        onnx2flax.convert(model).run({"x": x})
    model = node_model("BitCast", {"x": x.astype(np.float64)}, attrs={"to": TensorProto.INT64},
                       opset=26, out_dtypes=[np.int64])
    with pytest.raises(OnnxConversionError, match="jax_enable_x64"):
        onnx2flax.convert(model).run({"x": x.astype(np.float64)})


def _dynamic_mlp(widths, rng):
    """What ``onnxruntime.quantization.quantize_dynamic`` writes for a Linear-ReLU-Linear
    MLP: per layer DynamicQuantizeLinear -> MatMulInteger (int8 weight) -> Cast -> Mul by
    ``x_scale * w_scale`` -> Add bias."""
    nodes, consts, h = [], {}, "x"
    for i, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        w = rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)
        scale = np.float32(np.abs(w).max() / 127)
        consts.update({f"w{i}": np.round(w / scale).astype(np.int8), f"ws{i}": scale,
                       f"wz{i}": np.int8(0), f"b{i}": rng.standard_normal(n_out).astype(np.float32)})
        nodes += [helper.make_node("DynamicQuantizeLinear", [h], [f"q{i}", f"s{i}", f"z{i}"]),
                  helper.make_node("Mul", [f"s{i}", f"ws{i}"], [f"m{i}"]),
                  helper.make_node("MatMulInteger", [f"q{i}", f"w{i}", f"z{i}", f"wz{i}"], [f"a{i}"]),
                  helper.make_node("Cast", [f"a{i}"], [f"c{i}"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", [f"c{i}", f"m{i}"], [f"f{i}"]),
                  helper.make_node("Add", [f"f{i}", f"b{i}"], [f"l{i}"])]
        h = f"l{i}"
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [h], [f"r{i}"]))
            h = f"r{i}"
    nodes[-1].output[0] = "y"
    return make_model(nodes, [("x", np.float32, (None, widths[0]))], [("y", np.float32, None)],
                      consts, opset=17)


def test_dynamically_quantized_mlp_follows_the_reference():
    """Issue 14 reported a 3.7e-2 relative difference from onnxruntime on such an MLP. With
    ONNX's reference evaluator as the arbiter: onnxruntime (graph rewrites on or off) equals
    it to float rounding, and so does onnx2flax; inputs on rounding ties (k + 1/2 quantization
    steps) included, where a tie rounded the other way moves a whole step."""
    rng = np.random.default_rng(3)
    model = _dynamic_mlp([32, 64, 64, 8], rng)
    # x spans [-11, 244] / 32: its scale is exactly 1/32, zero point 11; row 0 sits on ties
    # (m + 1/2) / 32.
    x = (rng.uniform(-11, 244, (6, 32)) / 32).astype(np.float32)
    x[0] = np.concatenate([[-11, 244], rng.integers(-11, 243, 30) + 0.5]) / 32
    expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
    got = onnx2flax.convert(model).run({"x": x})[0]
    ort_fused = run_ort(model, {"x": x})[0]
    ort_plain = run_ort(model, {"x": x}, fused=False)[0]
    magnitude = np.abs(expected).max()
    for other in (got, ort_fused, ort_plain):
        assert np.abs(other - expected).max() / magnitude < 1e-5


def test_dynamic_quantize_scale_is_a_division():
    """``y_scale = range / 255`` divided, not multiplied by 1/255 (XLA's rewrite, one ulp
    off here: 3.3859136 then quantized to 82 instead of 83; values from ddddocr's
    common_old model). Outputs bit-exact against the reference and onnxruntime."""
    x = np.array([-0.27846456, 11.007914, 3.3859136], np.float32)
    model = node_model("DynamicQuantizeLinear", {"x": x}, opset=11, outputs=3,
                       out_dtypes=[np.uint8, np.float32, np.uint8])
    got = onnx2flax.convert(model).run({"x": x})
    for expected in (ReferenceEvaluator(model).run(None, {"x": x}), run_ort(model, {"x": x})):
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(g, e)
