"""Quantization: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, QLinearMatMul,
QLinearConv, ConvInteger, MatMulInteger, BitCast.

Quantizing is ``saturate(round(x / scale) + zero_point)`` with round-half-to-even and
saturation to the target type's range (integer types), or a saturating cast (float8 / float4
types). Integer products accumulate exactly in int32. QuantizeLinear / DequantizeLinear keep
their input's layout (the scale is laid out to match); the quantized convolutions take
channels-last input as Conv does.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax import lax
from onnx import helper

from .._core import layout as _layout
from .._core.registry import register
from .._pipeline.module import OpContext
from ._common import cast_to, normalize_axis, onnx_dtype
from .conv import integer_conv

_INT_TARGETS = {np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16, ml_dtypes.int4,
                                      ml_dtypes.uint4, ml_dtypes.int2, ml_dtypes.uint2)}
_FLOAT_TARGETS = {np.dtype(t) for t in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz,
                                        ml_dtypes.float8_e5m2, ml_dtypes.float8_e5m2fnuz,
                                        ml_dtypes.float4_e2m1fn)}
_REAL_TYPES = {np.dtype(t) for t in (np.float32, np.float16, ml_dtypes.bfloat16)}


def _saturate(ctx: OpContext, y, zero_point, dtype: np.dtype):
    """``saturate(round(y) + zero_point)`` in ``dtype``: integers round half to even and
    clip to the type's range; float8 / float4 types take a (saturating) cast of
    ``y + zero_point``."""
    zero = 0 if zero_point is None else jnp.asarray(zero_point).astype(jnp.float32)
    if dtype in _FLOAT_TARGETS:
        return cast_to(ctx, y + zero, dtype)
    info = ml_dtypes.iinfo(dtype)
    q = jnp.round(y).astype(jnp.float32) + zero
    return jnp.clip(q, info.min, info.max).astype(jnp.int32).astype(dtype)


def _divide(x, scale):
    """``x / scale`` rounded once, as IEEE division: XLA rewrites a division by a broadcast
    into a multiplication by the reciprocal, whose extra rounding moves results across
    rounding ties (0.045 / 0.01 would no longer be 4.5); the barrier keeps the division."""
    x, scale = jnp.broadcast_arrays(x, scale)
    return x / lax.optimization_barrier(scale)


def _onnx_shape(x, perm) -> list[int]:
    return [int(np.shape(x)[perm.index(i)]) for i in range(len(perm))]


def _laid_out(ctx: OpContext, value, index: int, dims: list[int], perm, what: str):
    """Input ``index`` (a scale or zero point) brought to broadcast against an input of ONNX
    shape ``dims`` held as ``perm``: one element is per-tensor; otherwise ``axis`` (default 1)
    picks the quantized axis, and the value is 1-D of that axis's length (per-axis) or, with
    ``block_size`` B, has the input's shape except ``ceil(dims[axis] / B)`` there (blocked)."""
    value = _layout.to_onnx(value, ctx.in_perms[index])
    shape = list(np.shape(value))
    if int(np.prod(shape)) == 1:
        return jnp.reshape(value, ())
    axis = normalize_axis(ctx, int(ctx.attr("axis")), len(dims))
    block = int(ctx.attr("block_size", 0))
    if block < 0:
        raise ctx.invalid(f"block_size must be positive, got {block}")
    if block == 0:
        if shape != [dims[axis]]:
            raise ctx.invalid(f"{what} of shape {shape} must have one element, or be 1-D of "
                              f"length {dims[axis]} (axis {axis} of the input {dims}); set "
                              f"block_size for blocked quantization")
        value = jnp.reshape(value, [dims[axis] if i == axis else 1 for i in range(len(dims))])
    else:
        want = [-(-d // block) if i == axis else d for i, d in enumerate(dims)]
        if shape != want:
            raise ctx.invalid(f"{what} of shape {shape} does not fit blocked quantization of "
                              f"the input {dims} along axis {axis} with block_size {block}: "
                              f"expected {want}")
        value = lax.slice_in_dim(jnp.repeat(value, block, axis=axis), 0, dims[axis], axis=axis)
    return _layout.convert(value, _layout.identity(len(dims)), perm)


def _zero_point_matches(ctx: OpContext, scale, zero_point):
    if (zero_point is not None and np.shape(zero_point) != np.shape(scale)
            and np.size(zero_point) * np.size(scale) != 1):
        raise ctx.invalid(f"scale {list(np.shape(scale))} and zero point "
                          f"{list(np.shape(zero_point))} must have the same shape")


def _per_tensor(ctx: OpContext, scale, zero_point, prefix: str) -> None:
    """Opset 10's scale and zero point: one element each (per-axis came with opset 13)."""
    for what, value in ((f"{prefix}_scale", scale), (f"{prefix}_zero_point", zero_point)):
        if value is not None and np.size(value) != 1:
            raise ctx.invalid(f"{what} must be a scalar before opset 13, got shape "
                              f"{list(np.shape(value))}")


@register("QuantizeLinear", since=10, layout="custom")
def quantize_linear_v10(ctx: OpContext, x, scale, zero_point=None):
    _per_tensor(ctx, scale, zero_point, "y")
    return quantize_linear(ctx, x, scale, zero_point)


@register("QuantizeLinear", since=13, layout="custom")
def quantize_linear(ctx: OpContext, x, scale, zero_point=None):
    """``saturate(round(x / scale) + zero_point)``, in the layout of ``x``. The output type
    is ``output_dtype``, else the zero point's, else uint8; ``x / scale`` is computed in the
    type ``precision`` names, else in the scale's (float32 for a float8e8m0 scale)."""
    perm = ctx.in_perms[0]
    dims = _onnx_shape(x, perm)
    _zero_point_matches(ctx, scale, zero_point)
    dtype = _quantized_type(ctx, zero_point)
    precision = int(ctx.attr("precision", 0))
    compute = onnx_dtype(ctx, precision) if precision else np.dtype(scale.dtype)
    if compute not in _REAL_TYPES:
        compute = np.dtype(np.float32)
    s = _laid_out(ctx, scale, 1, dims, perm, "y_scale")
    y = _divide(jnp.asarray(x).astype(compute), s.astype(compute))
    zero = None if zero_point is None else _laid_out(ctx, zero_point, 2, dims, perm, "y_zero_point")
    ctx.out_perms = [perm]
    return _saturate(ctx, y, zero, dtype)


def _quantized_type(ctx: OpContext, zero_point) -> np.dtype:
    declared = int(ctx.attr("output_dtype", 0))
    dtype = np.dtype(np.uint8) if zero_point is None else np.dtype(zero_point.dtype)
    if declared:
        wanted = onnx_dtype(ctx, declared)
        if zero_point is not None and wanted != dtype:
            raise ctx.invalid(f"output_dtype {wanted.name} differs from the zero point's type "
                              f"{dtype.name}")
        dtype = wanted
    if dtype.name.startswith("float6_"):
        raise ctx.fail(f"quantizing to {dtype.name} is not supported (JAX has no such dtype)")
    if dtype not in _INT_TARGETS | _FLOAT_TARGETS:
        raise ctx.invalid(f"cannot quantize to {dtype.name}")
    return dtype


@register("DequantizeLinear", since=10, layout="custom")
def dequantize_linear_v10(ctx: OpContext, x, scale, zero_point=None):
    _per_tensor(ctx, scale, zero_point, "x")
    return dequantize_linear(ctx, x, scale, zero_point)


@register("DequantizeLinear", since=13, layout="custom")
def dequantize_linear(ctx: OpContext, x, scale, zero_point=None):
    """``(x - zero_point) * scale`` computed in float32, in the layout of ``x``; the output
    type is ``output_dtype``, else the scale's."""
    perm = ctx.in_perms[0]
    dims = _onnx_shape(x, perm)
    _zero_point_matches(ctx, scale, zero_point)
    declared = int(ctx.attr("output_dtype", 0))
    out = onnx_dtype(ctx, declared) if declared else np.dtype(scale.dtype)
    if out not in _REAL_TYPES:
        raise ctx.invalid(f"the output type must be float32, float16 or bfloat16, got "
                          f"{out.name} (set output_dtype for a float8e8m0 scale)")
    y = jnp.asarray(x).astype(jnp.float32)
    if zero_point is not None:
        if np.dtype(zero_point.dtype) != np.dtype(x.dtype):
            raise ctx.invalid(f"x_zero_point is {np.dtype(zero_point.dtype).name}, x is "
                              f"{np.dtype(x.dtype).name}; they must match")
        y = y - _laid_out(ctx, zero_point, 2, dims, perm, "x_zero_point").astype(jnp.float32)
    ctx.out_perms = [perm]
    return (y * _laid_out(ctx, scale, 1, dims, perm, "x_scale").astype(jnp.float32)).astype(out)


@register("DynamicQuantizeLinear", since=11, layout="custom")
def dynamic_quantize_linear(ctx: OpContext, x):
    """uint8 quantization of float ``x`` over its range widened to include 0: returns
    ``y`` (``x``'s layout), ``y_scale = (max - min) / 255`` (1 for an all-zero x, as
    onnxruntime does, where the formula would divide by zero) and
    ``y_zero_point = round(clip(-min / y_scale, 0, 255))``. The scale is an IEEE division
    (XLA would multiply by 1/255, one ulp off, and a quantized value can move a step)."""
    lo = jnp.minimum(jnp.min(x), 0.0)
    hi = jnp.maximum(jnp.max(x), 0.0)
    scale = jnp.where(hi == lo, 1.0, _divide((hi - lo).astype(jnp.float32), np.float32(255)))
    zero = jnp.round(jnp.clip(-lo / scale, 0, 255))
    y = _saturate(ctx, _divide(x, scale), zero, np.dtype(np.uint8))
    ctx.out_perms = [ctx.in_perms[0], (), ()]
    return y, scale.astype(x.dtype), zero.astype(jnp.uint8)


def _centered(ctx: OpContext, v, zero_point, per_row: bool):
    """``v - zero_point`` (int32 for integer ``v``, float32 for float8): a 1-D zero point is
    per row (``per_row``, for the left operand) or per column of the last two axes."""
    if zero_point is not None and np.ndim(zero_point) > 0 and np.ndim(v) < 2:
        raise ctx.invalid(f"a 1-D operand {list(np.shape(v))} takes only a scalar zero point")
    acc = jnp.int32 if jnp.issubdtype(v.dtype, jnp.integer) else jnp.float32
    v = jnp.asarray(v).astype(acc)
    if zero_point is None:
        return v
    return v - _per_row_or_column(zero_point, per_row).astype(acc)


def _per_row_or_column(value, per_row: bool):
    """A 1-D scale / zero point of a matmul operand laid out to broadcast against it."""
    value = jnp.asarray(value)
    return value.reshape(-1, 1) if per_row and value.ndim == 1 else value


@register("MatMulInteger", since=10)
def matmul_integer(ctx: OpContext, a, b, a_zero_point=None, b_zero_point=None):
    """``(A - a_zero_point) @ (B - b_zero_point)`` in int32 (inputs int8 / uint8). A 1-D
    ``a_zero_point`` is per row of A, a 1-D ``b_zero_point`` per column of B."""
    return jnp.matmul(_centered(ctx, a, a_zero_point, True),
                      _centered(ctx, b, b_zero_point, False),
                      preferred_element_type=jnp.int32)


@register("QLinearMatMul", since=10)
def qlinear_matmul(ctx: OpContext, a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale,
                   y_zero_point):
    """``quantize((A - a_zp) @ (B - b_zp) * a_scale * b_scale / y_scale, y_zp)``; scales and
    zero points are scalars, or per row of A / per column of B (1-D, or N-D ``[..., M, 1]`` /
    ``[..., 1, N]``). Integer operands accumulate in int32, float8 ones in float32; the
    scales multiply in float32 whatever their type."""
    for scale, zero, what in ((a_scale, a_zero_point, "a"), (b_scale, b_zero_point, "b"),
                              (y_scale, y_zero_point, "y")):
        if np.shape(scale) != np.shape(zero) and np.size(scale) * np.size(zero) != 1:
            raise ctx.invalid(f"{what}_scale {list(np.shape(scale))} and {what}_zero_point "
                              f"{list(np.shape(zero))} must have the same shape")
    a, b = _centered(ctx, a, a_zero_point, True), _centered(ctx, b, b_zero_point, False)
    if a.dtype != b.dtype:
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    acc = jnp.matmul(a, b, preferred_element_type=a.dtype)
    a_scale, b_scale, y_scale = (jnp.asarray(v).astype(jnp.float32)  # as onnxruntime does
                                 for v in (a_scale, b_scale, y_scale))
    multiplier = _divide(_per_row_or_column(a_scale, True) * _per_row_or_column(b_scale, False),
                         y_scale)
    return _saturate(ctx, acc.astype(jnp.float32) * multiplier, y_zero_point,
                     _quantized_type(ctx, y_zero_point))


def _per_output_channel(ctx: OpContext, value, w, what: str):
    """A scalar or ``[C_out]`` weight scale / zero point, as a scalar or a 1-D array that
    broadcasts along the channels-last output's channel axis."""
    if value is None or np.size(value) == 1:
        return None if value is None else jnp.reshape(jnp.asarray(value), ())
    if np.shape(value) != (w.shape[0],):
        raise ctx.invalid(f"{what} of shape {list(np.shape(value))} must be a scalar or have "
                          f"one entry per output channel ({w.shape[0]})")
    return jnp.asarray(value)


def _scalar(ctx: OpContext, value, what: str):
    if np.size(value) != 1:
        raise ctx.invalid(f"{what} must be a scalar, got shape {list(np.shape(value))}")
    return jnp.reshape(jnp.asarray(value), ())


def _integer_conv(ctx: OpContext, x, w, x_zero_point, w_zero_point):
    """conv(X - x_zero_point, W - w_zero_point) in int32; X channels-last, W ONNX order."""
    x = jnp.asarray(x).astype(jnp.int32)
    if x_zero_point is not None:
        x = x - _scalar(ctx, x_zero_point, "x_zero_point").astype(jnp.int32)
    w = jnp.asarray(w).astype(jnp.int32)
    zero = _per_output_channel(ctx, w_zero_point, w, "w_zero_point")
    if zero is not None:
        w = w - zero.astype(jnp.int32).reshape((-1,) + (1,) * (w.ndim - 1))
    return integer_conv(ctx, x, w)


@register("ConvInteger", since=10, layout="channels_last")
def conv_integer(ctx: OpContext, x, w, x_zero_point=None, w_zero_point=None):
    """int32 ``conv(X - x_zero_point, W - w_zero_point)``; X ``[N, *spatial, C_in]``
    (channels-last) int8 / uint8, W ``[C_out, C_in/g, *k]``; padding counts as the zero
    point (zero after centering). Attributes as Conv's."""
    return _integer_conv(ctx, x, w, x_zero_point, w_zero_point)


@register("QLinearConv", since=10, layout="channels_last")
def qlinear_conv(ctx: OpContext, x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale,
                 y_zero_point, b=None):
    """``quantize((conv(X - x_zp, W - w_zp) + B) * x_scale * w_scale / y_scale, y_zp)``;
    X channels-last, ``w_scale`` / ``w_zero_point`` scalar or per output channel, B int32
    ``[C_out]``."""
    acc = _integer_conv(ctx, x, w, x_zero_point, w_zero_point)
    if b is not None:
        acc = acc + jnp.asarray(b).astype(jnp.int32)
    w_scale = _per_output_channel(ctx, w_scale, w, "w_scale")
    multiplier = _divide(_scalar(ctx, x_scale, "x_scale") * w_scale,
                         _scalar(ctx, y_scale, "y_scale"))
    return _saturate(ctx, acc.astype(jnp.float32) * multiplier.astype(jnp.float32),
                     _scalar(ctx, y_zero_point, "y_zero_point"), _quantized_type(ctx, y_zero_point))


def _bits(dtype: np.dtype) -> int:
    if dtype.kind in "bc":
        return 8 * dtype.itemsize
    info = ml_dtypes.iinfo if dtype.kind in "iu" or dtype in _INT_TARGETS else ml_dtypes.finfo
    return int(info(dtype).bits)


@register("BitCast", since=26, layout="elementwise")
def bitcast(ctx: OpContext, x):
    """The bits of ``x`` read as type ``to`` of the same width (bool is one byte, 0 or 1).
    64-bit types need ``jax_enable_x64``: JAX otherwise holds them in 32 bits."""
    to = int(ctx.attr("to"))
    target = onnx_dtype(ctx, to)
    if target != np.dtype(helper.tensor_dtype_to_np_dtype(to)):
        raise ctx.fail(f"bitcasting to {np.dtype(helper.tensor_dtype_to_np_dtype(to)).name} "
                       f"needs 64-bit JAX types (jax_enable_x64)")
    x = jnp.asarray(x)
    source = np.dtype(x.dtype)
    if _bits(source) != _bits(target):
        raise ctx.invalid(f"cannot bitcast {source.name} ({_bits(source)} bits) to "
                          f"{target.name} ({_bits(target)} bits)")
    if source.kind == "b":
        x = x.astype(jnp.uint8)
    if target.kind == "b":
        return lax.bitcast_convert_type(x, jnp.uint8) != 0
    return lax.bitcast_convert_type(x, target)
