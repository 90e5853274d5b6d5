"""com.microsoft quantized ops, as onnxruntime's quantizer writes them (QOperator format and
dynamic quantization): QuantizeLinear, DequantizeLinear, QGemm, QLinearAdd, QLinearMul,
QLinearSigmoid, QLinearLeakyRelu, QLinearWhere, QLinearConcat, QLinearSoftmax,
QLinearAveragePool, QLinearGlobalAveragePool, MatMulIntegerToFloat, DynamicQuantizeMatMul,
DynamicQuantizeLSTM, QAttention.

Semantics from onnxruntime's contrib-op documentation: a ``QLinear*`` op dequantizes its
inputs (``(x - zero_point) * scale``, float32, per-tensor), applies the float op and
quantizes the result (``saturate(round(y / y_scale) + y_zero_point)``, ties to even) to the
input's type. Integer matrix products accumulate exactly in int32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._core.registry import register, schema_defaults
from .._pipeline.module import OpContext
from ._common import normalize_axis
from .attention import _split_heads, attention
from .pool import average_pool
from .quantize import (_centered, _divide, _per_row_or_column, _saturate, _scalar,
                       dequantize_linear, dynamic_quantize_linear, quantize_linear)
from .recurrent import lstm

_MS = "com.microsoft"

# com.microsoft's take a per-axis scale from version 1 on.
register("QuantizeLinear", domain=_MS, layout="custom", defaults={"axis": 1})(quantize_linear)
register("DequantizeLinear", domain=_MS, layout="custom", defaults={"axis": 1})(dequantize_linear)


def _dequantized(ctx: OpContext, x, scale, zero_point, what: str):
    """``(x - zero_point) * scale`` in float32; scale and zero point are scalars."""
    y = jnp.asarray(x).astype(jnp.float32)
    if zero_point is not None:
        y = y - _scalar(ctx, zero_point, f"{what} zero point").astype(jnp.float32)
    return y * _scalar(ctx, scale, f"{what} scale").astype(jnp.float32)


def _quantized(ctx: OpContext, y, scale, zero_point, dtype):
    """``saturate(round(y / scale) + zero_point)`` in ``dtype`` (scalar scale, zero point)."""
    zero = None if zero_point is None else _scalar(ctx, zero_point, "output zero point")
    return _saturate(ctx, _divide(y, _scalar(ctx, scale, "output scale").astype(jnp.float32)),
                     zero, np.dtype(dtype))


def _check_8_bit(ctx: OpContext, x):
    if np.dtype(x.dtype) not in (np.dtype(np.uint8), np.dtype(np.int8)):
        raise ctx.invalid(f"quantized input must be uint8 or int8, got {np.dtype(x.dtype).name}")


def _binary(fn):
    def handler(ctx: OpContext, a, a_scale, a_zero_point, b, b_scale, b_zero_point, c_scale,
                c_zero_point=None):
        _check_8_bit(ctx, a)
        if a.dtype != b.dtype:
            raise ctx.invalid(f"A is {np.dtype(a.dtype).name}, B {np.dtype(b.dtype).name}; "
                              "they must match")
        y = fn(_dequantized(ctx, a, a_scale, a_zero_point, "A"),
               _dequantized(ctx, b, b_scale, b_zero_point, "B"))
        return _quantized(ctx, y, c_scale, c_zero_point, a.dtype)
    handler.__doc__ = f"""``quantize({fn.__name__}(dequantize(A), dequantize(B)))`` with
    NumPy broadcasting; the result has A's type."""
    return handler


register("QLinearAdd", domain=_MS, layout="elementwise")(_binary(jnp.add))
register("QLinearMul", domain=_MS, layout="elementwise")(_binary(jnp.multiply))


def _unary(fn):
    def handler(ctx: OpContext, x, x_scale, x_zero_point=None, y_scale=None, y_zero_point=None):
        _check_8_bit(ctx, x)
        if y_scale is None:
            raise ctx.invalid("Y_scale is required")
        y = fn(ctx, _dequantized(ctx, x, x_scale, x_zero_point, "X"))
        return _quantized(ctx, y, y_scale, y_zero_point, x.dtype)
    handler.__doc__ = fn.__doc__
    return handler


@register("QLinearSigmoid", domain=_MS, layout="elementwise")
@_unary
def _sigmoid(ctx: OpContext, x):
    """``quantize(sigmoid(dequantize(X)))``."""
    return jax.nn.sigmoid(x)


@register("QLinearLeakyRelu", domain=_MS, layout="elementwise", defaults={"alpha": 0.01})
@_unary
def _leaky_relu(ctx: OpContext, x):
    """``quantize(leaky_relu(dequantize(X), alpha))``."""
    alpha = float(ctx.attr("alpha"))
    return jnp.where(x >= 0, x, x * np.float32(alpha))


@register("QLinearWhere", domain=_MS, layout="elementwise")
def qlinear_where(ctx: OpContext, condition, x, x_scale, x_zero_point, y, y_scale, y_zero_point,
                  z_scale, z_zero_point):
    """``where(condition, X, Y)`` with X and Y each requantized to Z's scale and zero point."""
    _check_8_bit(ctx, x)
    pick_x = _quantized(ctx, _dequantized(ctx, x, x_scale, x_zero_point, "X"), z_scale,
                        z_zero_point, x.dtype)
    pick_y = _quantized(ctx, _dequantized(ctx, y, y_scale, y_zero_point, "Y"), z_scale,
                        z_zero_point, x.dtype)
    return jnp.where(jnp.asarray(condition).astype(bool), pick_x, pick_y)


@register("QLinearConcat", domain=_MS)
def qlinear_concat(ctx: OpContext, y_scale, y_zero_point, *triples):
    """Inputs ``Y_scale, Y_zero_point, (X_i, X_i_scale, X_i_zero_point)...``: each X_i
    requantized to Y's scale and zero point, concatenated along ``axis``."""
    if not triples or len(triples) % 3:
        raise ctx.invalid(f"inputs after Y_scale and Y_zero_point must come in (tensor, scale, "
                          f"zero point) triples, got {len(triples)}")
    xs = triples[0::3]
    dtype = np.dtype(y_zero_point.dtype)
    rank = np.ndim(xs[0])
    axis = normalize_axis(ctx, int(ctx.attr("axis")), rank)
    if any(np.ndim(x) != rank for x in xs):
        raise ctx.invalid(f"inputs must share rank {rank}, got {[list(np.shape(x)) for x in xs]}")
    parts = [_quantized(ctx, _dequantized(ctx, x, s, z, f"input {3 * i + 2}"), y_scale,
                        y_zero_point, dtype)
             for i, (x, s, z) in enumerate(zip(xs, triples[1::3], triples[2::3]))]
    return jnp.concatenate(parts, axis=axis)


@register("QLinearSoftmax", domain=_MS)
def qlinear_softmax(ctx: OpContext, x, x_scale, x_zero_point=None, y_scale=None, y_zero_point=None):
    """``quantize(softmax(dequantize(X)))``: attribute ``opset`` picks Softmax's meaning,
    before 13 over the trailing axes from ``axis`` together, from 13 along ``axis``."""
    _check_8_bit(ctx, x)
    if y_scale is None or y_zero_point is None:
        raise ctx.invalid("y_scale and y_zero_point are required")
    version = int(ctx.attr("opset"))
    axis = normalize_axis(ctx, int(ctx.attr("axis", -1 if version >= 13 else 1)), x.ndim)
    axes = (axis,) if version >= 13 else tuple(range(axis, x.ndim))
    y = jax.nn.softmax(_dequantized(ctx, x, x_scale, x_zero_point, "X"), axis=axes)
    return _quantized(ctx, y, y_scale, y_zero_point, x.dtype)


def _channels_first(ctx: OpContext):
    if int(ctx.attr("channels_last")):
        raise ctx.fail("channels_last=1 (an NHWC graph from onnxruntime's layout optimizer) "
                       "is not supported; convert the model before that optimization")


@register("QLinearAveragePool", domain=_MS, layout="channels_last",
          defaults={**schema_defaults("", "AveragePool"), "channels_last": 0})
def qlinear_average_pool(ctx: OpContext, x, x_scale, x_zero_point=None, y_scale=None,
                         y_zero_point=None):
    """``quantize(AveragePool(dequantize(X)))`` with AveragePool's attributes; X
    channels-last."""
    _check_8_bit(ctx, x)
    _channels_first(ctx)
    y = average_pool(ctx, _dequantized(ctx, x, x_scale, x_zero_point, "X"))
    return _quantized(ctx, y, y_scale, y_zero_point, x.dtype)


@register("QLinearGlobalAveragePool", domain=_MS, layout="channels_last",
          defaults={"channels_last": 0})
def qlinear_global_average_pool(ctx: OpContext, x, x_scale, x_zero_point, y_scale, y_zero_point):
    """``quantize(mean over spatial positions(dequantize(X)))``; X channels-last."""
    _check_8_bit(ctx, x)
    _channels_first(ctx)
    y = jnp.mean(_dequantized(ctx, x, x_scale, x_zero_point, "X"),
                 axis=tuple(range(1, x.ndim - 1)), keepdims=True)
    return _quantized(ctx, y, y_scale, y_zero_point, x.dtype)


def _matmul_int32(ctx: OpContext, a, b, a_zero_point, b_zero_point):
    return jnp.matmul(_centered(ctx, a, a_zero_point, False),
                      _centered(ctx, b, b_zero_point, False), preferred_element_type=jnp.int32)


@register("QGemm", domain=_MS, defaults=schema_defaults("", "Gemm"))  # Gemm's attributes, no beta
def qgemm(ctx: OpContext, a, a_scale, a_zero_point, b, b_scale, b_zero_point, c=None, y_scale=None,
          y_zero_point=None):
    """``Y = alpha * a_scale * b_scale * ((A - a_zp) @ (B - b_zp) + C)`` (C int32, the
    product's scale), quantized with ``y_scale`` / ``y_zero_point`` when given, else
    float32. ``transA`` / ``transB``; B's scale and zero point scalar or per column."""
    if int(ctx.attr("transA")):
        a = jnp.swapaxes(a, 0, 1)
    if int(ctx.attr("transB")):
        b = jnp.swapaxes(b, 0, 1)
    acc = _matmul_int32(ctx, a, b, a_zero_point, b_zero_point)
    if c is not None:
        acc = acc + jnp.asarray(c).astype(jnp.int32)
    scale = (np.float32(ctx.attr("alpha")) * _scalar(ctx, a_scale, "a_scale")
             * jnp.asarray(b_scale, jnp.float32))
    if y_scale is None:
        return acc.astype(jnp.float32) * scale
    dtype = np.dtype(a.dtype) if y_zero_point is None else np.dtype(y_zero_point.dtype)
    multiplier = _divide(scale, _scalar(ctx, y_scale, "y_scale"))
    return _saturate(ctx, acc.astype(jnp.float32) * multiplier,
                     None if y_zero_point is None else _scalar(ctx, y_zero_point, "y_zero_point"),
                     dtype)


def _to_float(ctx: OpContext, acc, a_scale, b_scale, bias, dtype):
    """``acc * a_scale * b_scale (+ bias)``; a 1-D scale is per column."""
    y = acc.astype(jnp.float32) * (_per_row_or_column(jnp.asarray(a_scale, jnp.float32), False)
                                   * _per_row_or_column(jnp.asarray(b_scale, jnp.float32), False))
    if bias is not None:
        y = y + jnp.asarray(bias).astype(jnp.float32)
    return y.astype(dtype)


@register("MatMulIntegerToFloat", domain=_MS)
def matmul_integer_to_float(ctx: OpContext, a, b, a_scale, b_scale, a_zero_point=None,
                            b_zero_point=None,
                            bias=None):
    """``(A - a_zp) @ (B - b_zp) * a_scale * b_scale + bias`` (int32 product; output in the
    scales' type)."""
    acc = _matmul_int32(ctx, a, b, a_zero_point, b_zero_point)
    return _to_float(ctx, acc, a_scale, b_scale, bias, np.dtype(a_scale.dtype))


@register("DynamicQuantizeMatMul", domain=_MS)
def dynamic_quantize_matmul(ctx: OpContext, a, b, b_scale, b_zero_point=None, bias=None):
    """float A quantized to uint8 as DynamicQuantizeLinear does, then
    ``(A_q - a_zp) @ (B - b_zp) * a_scale * b_scale + bias``."""
    a_q, a_scale, a_zero_point = dynamic_quantize_linear(ctx, a)
    ctx.out_perms = None
    acc = _matmul_int32(ctx, a_q, b, a_zero_point, b_zero_point)
    return _to_float(ctx, acc, a_scale, b_scale, bias, np.dtype(np.float32))


def _lstm_weight(ctx: OpContext, w, scale, zero_point, what: str):
    """A ``[dirs, k, 4*hidden]`` quantized weight as ONNX LSTM's float ``[dirs, 4*hidden, k]``;
    scale and zero point ``[dirs]`` (per direction) or ``[dirs, 4*hidden]`` (per column)."""
    dirs, _, columns = np.shape(w)
    if np.shape(scale) not in ((dirs,), (dirs, columns)) or np.shape(zero_point) != np.shape(scale):
        raise ctx.invalid(f"{what}_scale {list(np.shape(scale))} and {what}_zero_point "
                          f"{list(np.shape(zero_point))} must both be [{dirs}] or "
                          f"[{dirs}, {columns}]")
    shape = (dirs, 1, 1) if np.ndim(scale) == 1 else (dirs, 1, columns)
    centered = (jnp.asarray(w).astype(jnp.float32)
                - jnp.reshape(jnp.asarray(zero_point), shape).astype(jnp.float32))
    return jnp.swapaxes(centered * jnp.reshape(jnp.asarray(scale, jnp.float32), shape), 1, 2)


@register("DynamicQuantizeLSTM", domain=_MS, defaults=schema_defaults("", "LSTM"))
def dynamic_quantize_lstm(ctx: OpContext, x, w, r, b=None, sequence_lens=None, initial_h=None,
                          initial_c=None, p=None, w_scale=None, w_zero_point=None, r_scale=None,
                          r_zero_point=None):
    """LSTM (attributes and outputs as ONNX's) whose W ``[dirs, input, 4*hidden]`` and R
    ``[dirs, hidden, 4*hidden]`` are quantized (note: transposed from LSTM's layout). The
    weights are dequantized and the recurrence runs in float32; onnxruntime also quantizes
    X and each step's hidden state to uint8 on the fly, so its results differ by that
    rounding (see docs/quantization.md)."""
    if w_scale is None or w_zero_point is None or r_scale is None or r_zero_point is None:
        raise ctx.invalid("W_scale, W_zero_point, R_scale and R_zero_point are required")
    return lstm(ctx, x, _lstm_weight(ctx, w, w_scale, w_zero_point, "W"),
                _lstm_weight(ctx, r, r_scale, r_zero_point, "R"), b, sequence_lens, initial_h,
                initial_c, p)


def _attention_bias(ctx: OpContext, mask_index, batch: int, sq: int, past: int):
    """The additive ``[B, 1, Sq, P+Sq]`` bias of com.microsoft attention: ``mask_filter_value``
    (default -10000) where ``unidirectional`` or ``mask_index`` forbids a key, else 0.
    ``mask_index``: ``[B]`` key lengths, ``[2B]`` ends then starts, ``[B, P+Sq]`` or
    ``[B, Sq, P+Sq]`` 1/0 masks."""
    total = past + sq
    keys, queries = jnp.arange(total), jnp.arange(sq)
    allowed = jnp.ones((batch, 1, sq, total), bool)
    if int(ctx.attr("unidirectional")):
        allowed = allowed & (keys[None, :] <= queries[:, None] + past)
    if mask_index is not None:
        m = jnp.asarray(mask_index)
        if m.shape == (batch,):
            allowed = allowed & (keys < m[:, None])[:, None, None, :]
        elif m.shape == (2 * batch,):
            window = (keys >= m[batch:, None]) & (keys < m[:batch, None])
            allowed = allowed & window[:, None, None, :]
        elif m.shape in ((batch, total), (batch, sq, total)):
            allowed = allowed & jnp.reshape(m != 0, (batch, 1, -1, total))
        else:
            raise ctx.invalid(f"mask_index of shape {list(m.shape)} is not [{batch}], "
                              f"[{2 * batch}], [{batch}, {total}] or [{batch}, {sq}, {total}]")
    return jnp.where(allowed, 0.0, np.float32(ctx.attr("mask_filter_value")))


#: QAttention computes as ONNX Attention (whose attributes it is read with), plus its own.
_QATTENTION = {**schema_defaults("", "Attention"), "unidirectional": 0,
               "mask_filter_value": -10000.0, "do_rotary": 0, "past_present_share_buffer": 0}


@register("QAttention", domain=_MS, defaults=_QATTENTION)
def qattention(ctx: OpContext, x, weight, bias, input_scale, weight_scale, mask_index=None,
               input_zero_point=None, weight_zero_point=None, past=None):
    """Self-attention on a quantized input ``[B, S, in]`` and weight ``[in, 3*hidden]``:
    ``QKV = (X - x_zp) @ (W - w_zp) * x_scale * w_scale + bias`` (int32 product; weight
    scale / zero point scalar or per column), split into Q, K, V of ``num_heads`` heads, then
    the ONNX Attention path (``scale`` default ``1/sqrt(head size)``; ``unidirectional``;
    ``mask_index``; ``past`` ``[2, B, heads, P, head size]``). Outputs ``[B, S, hidden]``
    and ``present`` ``[2, B, heads, P+S, head size]``."""
    if int(ctx.attr("do_rotary")) or int(ctx.attr("past_present_share_buffer")):
        raise ctx.fail("do_rotary and past_present_share_buffer are not supported")
    if np.ndim(x) != 3 or np.ndim(weight) != 2 or np.shape(weight)[1] % 3:
        raise ctx.invalid(f"input must be [batch, sequence, in] and weight [in, 3*hidden], got "
                          f"{list(np.shape(x))} and {list(np.shape(weight))}")
    heads = int(ctx.attr("num_heads"))
    qkv = _to_float(ctx, _matmul_int32(ctx, x, weight, input_zero_point, weight_zero_point),
                    input_scale, weight_scale, bias, np.dtype(bias.dtype))
    q, k, v = (_split_heads(ctx, t, heads, what) for t, what in zip(jnp.split(qkv, 3, -1), "QKV"))
    batch, sq = np.shape(x)[:2]
    past_k = past_v = None
    if past is not None:
        if np.shape(past)[:3] != (2, batch, heads) or np.shape(past)[4] != k.shape[3]:
            raise ctx.invalid(f"past must be [2, {batch}, {heads}, past length, {k.shape[3]}], "
                              f"got {list(np.shape(past))}")
        past_k, past_v = past[0].astype(q.dtype), past[1].astype(q.dtype)
    past_len = 0 if past is None else np.shape(past)[3]
    mask_bias = _attention_bias(ctx, mask_index, batch, sq, past_len)
    y = attention(ctx, q, k, v, mask_bias.astype(q.dtype), past_k, past_v)[0]
    y = jnp.reshape(jnp.transpose(y, (0, 2, 1, 3)), (batch, sq, -1))
    if len(ctx.node.outputs) < 2:
        return y
    if past is not None:
        k, v = jnp.concatenate([past_k, k], 2), jnp.concatenate([past_v, v], 2)
    return y, jnp.stack([k, v])
