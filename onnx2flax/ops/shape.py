"""Shapes, reshaping, casts and tensor constructors: Shape, Size, Reshape, Flatten, Cast,
CastLike, Expand, Tile, ConstantOfShape, Range, EyeLike, Trilu, Compress (NonZero is in
``dynamic.py``).

Shapes are static under ``jit``, so Shape returns NumPy and shape subgraphs fold at trace
time; nodes whose inputs are all known fold too, so these handlers see run-time data. They
take and return ONNX order (Reshape and Flatten are where a channels-last value goes back).
Layout-aware data movement lives in ``movement.py``."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from .._core import layout as _layout
from .._core.dims import as_dim, index_dtype, is_dim, is_symbolic, shape_array
from .._core.registry import register
from .._pipeline.module import OpContext
from ._common import cast_to, normalize_axis, onnx_dtype


@register("Shape", layout="custom")
def shape(ctx: OpContext, x):
    """The ONNX-order shape as int64 NumPy; ``start``/``end`` (opset 15) slice it."""
    perm = ctx.in_perms[0]
    dims = np.shape(x)
    onnx_dims = [dims[perm.index(i)] for i in range(len(dims))]
    start = int(ctx.attr("start", 0))
    end = ctx.attr("end", None)
    return shape_array(onnx_dims[start:None if end is None else int(end)])


@register("Size", layout="custom")
def size(ctx: OpContext, x):
    return shape_array([np.size(x)]).reshape(())


def _reshape_target(ctx: OpContext, dims, target, allowzero):
    """The output shape of reshaping ONNX-order ``dims`` to ``target`` (0s and -1 resolved)."""
    target = [as_dim(v) for v in target]  # ints, or symbolic dims (generated source)
    dims, size = list(dims), math.prod(dims)
    if not allowzero:
        target = [dims[i] if v == 0 and i < len(dims) else v for i, v in enumerate(target)]
    if target.count(-1) > 1:
        raise ctx.invalid(f"shape {target} has more than one -1")
    known = math.prod(v for v in target if is_dim(v) or v != -1)
    if -1 in target:
        if known == 0 or size % known != 0:
            raise ctx.invalid(f"cannot reshape {dims} to {target}")
        target[target.index(-1)] = size // known
    if math.prod(target) != size or any(v < 0 for v in target):
        raise ctx.invalid(f"cannot reshape {dims} ({size} elements) to {target}")
    return target


def _reshape(ctx: OpContext, x, target, allowzero):
    """Reshape held ``x`` to ONNX shape ``target``. A channels-last value whose batch and
    channel dims stay while only its spatial dims are regrouped (a ViT's patch embedding
    ``[N, C, H, W] -> [N, C, H*W]``) is reshaped in place and stays channels-last: the
    spatial order is the same in both layouts. Anything else goes through ONNX order."""
    held = ctx.in_perms[0]
    onnx_dims = [x.shape[held.index(i)] for i in range(x.ndim)]
    out = _reshape_target(ctx, onnx_dims, target, allowzero)
    if (x.ndim >= 3 and held == _layout.channels_last(x.ndim) and len(out) >= 3
            and out[:2] == onnx_dims[:2]):
        ctx.out_perms = [_layout.channels_last(len(out))]
        return jnp.reshape(x, (out[0], *out[2:], out[1]))
    ctx.out_perms = [_layout.identity(len(out))]
    return jnp.reshape(_layout.to_onnx(x, held), out)


@register("Reshape", layout="custom")
def reshape_v1(ctx: OpContext, x):
    return _reshape(ctx, x, ctx.attr("shape"), False)


@register("Reshape", since=5, static_inputs=(1,), layout="custom")
def reshape(ctx: OpContext, x, target):
    """``shape`` must be known at conversion time (it usually comes from a shape subgraph)."""
    target = ctx.static(target, "shape").reshape(-1)
    return _reshape(ctx, x, target, int(ctx.attr("allowzero", 0)))


@register("Flatten")
def flatten(ctx: OpContext, x):
    """``[d0..d(axis-1), d(axis)..]`` -> 2-D; the input is in ONNX order (the guide's
    transpose-before-flatten happens here, only when the input was channels-last)."""
    axis = int(ctx.attr("axis"))
    if not -x.ndim <= axis <= x.ndim:
        raise ctx.invalid(f"axis {axis} is out of range for a rank-{x.ndim} input")
    axis = axis + x.ndim if axis < 0 else axis
    # math.prod: a product of symbolic dims too (generated source)
    return jnp.reshape(x, (math.prod(x.shape[:axis]), math.prod(x.shape[axis:])))


@register("Cast", layout="elementwise")
def cast(ctx: OpContext, x):
    """Float -> int truncates toward zero, -> bool tests for non-zero (as C casts do)."""
    return cast_to(ctx, x, onnx_dtype(ctx, ctx.attr("to")))


@register("CastLike", since=15, layout="custom")
def cast_like(ctx: OpContext, x, target):
    """Cast to ``target``'s element type; the result keeps ``x``'s layout."""
    ctx.out_perms = [ctx.in_perms[0]]
    return cast_to(ctx, x, np.dtype(target.dtype))


@register("Expand", since=8, static_inputs=(1,))
def expand(ctx: OpContext, x, shape):
    """Numpy-style two-way broadcast of ``x`` with ``shape`` (a dim of 1 keeps ``x``'s)."""
    shape = [as_dim(d) for d in ctx.static(shape, "shape").reshape(-1)]
    try:  # jnp's: it also broadcasts symbolic dims (generated source)
        out = jnp.broadcast_shapes(np.shape(x), tuple(shape))
    except ValueError:
        raise ctx.invalid(f"cannot broadcast {list(np.shape(x))} with {shape}") from None
    return jnp.broadcast_to(x, out)


@register("Tile", static_inputs=(1, 2))
def tile_v1(ctx: OpContext, x, tiles, axis):
    """Opset 1: repeat ``tiles`` times along ``axis`` (scalar inputs)."""
    reps = [1] * x.ndim
    axis = normalize_axis(ctx, int(ctx.static(axis, "axis")), x.ndim)
    reps[axis] = int(ctx.static(tiles, "tiles"))
    return jnp.tile(x, reps)


@register("Tile", since=6, static_inputs=(1,))
def tile(ctx: OpContext, x, repeats):
    reps = [int(r) for r in ctx.static(repeats, "repeats").reshape(-1)]
    if len(reps) != x.ndim or any(r < 0 for r in reps):
        raise ctx.invalid(f"repeats {reps} must be {x.ndim} non-negative counts")
    return jnp.tile(x, reps)


@register("ConstantOfShape", since=9, static_inputs=(0,))
def constant_of_shape(ctx: OpContext, shape):
    """A tensor of ``shape`` filled with ``value`` (a 1-element tensor; float32 0 default).
    Normally folded at conversion time; reached only when the shape is not static."""
    shape = [as_dim(d) for d in ctx.static(shape, "shape").reshape(-1)]
    value = np.asarray(ctx.attr("value", np.zeros(1, np.float32)))
    if value.size != 1 or any(d < 0 for d in shape):
        raise ctx.invalid(f"value must have one element and shape {shape} be non-negative")
    full = jnp.full if any(is_dim(d) for d in shape) else np.full  # symbolic: traced
    return full(shape, value.reshape(()), value.dtype)


@register("Range", since=11, static_inputs=(0, 1, 2))
def range_(ctx: OpContext, start, limit, delta):
    """``start + delta * arange(n)``: the length depends on the values, which must be
    known at conversion time."""
    start, limit, delta = (ctx.static(v, name).reshape(()) for v, name in
                           ((start, "start"), (limit, "limit"), (delta, "delta")))
    if delta == 0:
        raise ctx.invalid("delta must be non-zero")
    if is_symbolic(start) or is_symbolic(limit) or is_symbolic(delta):
        return _symbolic_range(ctx, start, limit, delta)
    n = max(int(np.ceil((limit - start) / delta)), 0)
    return (start + delta * np.arange(n)).astype(start.dtype)


def _symbolic_range(ctx: OpContext, start, limit, delta):
    """A Range whose limit is a symbolic dim (generated source): integer ``start`` and
    positive ``delta`` known, the length ``ceil((limit - start) / delta)``, traced."""
    if is_symbolic(start) or is_symbolic(delta) or not np.issubdtype(start.dtype, np.integer) \
            or int(delta) <= 0:
        raise ctx.fail(f"a Range from {start} by {delta} to a size known only at run time "
                       "needs integer start and a positive integer delta")
    n = (limit[()] - int(start) + int(delta) - 1) // int(delta)
    return int(start) + int(delta) * jnp.arange(n, dtype=index_dtype())


@register("EyeLike", since=9)
def eye_like(ctx: OpContext, x):
    """A 2-D identity of ``x``'s shape with ones on diagonal ``k``; dtype ``dtype`` or
    ``x``'s. Only the shape is read, so the result is a conversion-time constant."""
    if np.ndim(x) != 2:
        raise ctx.invalid(f"input must be 2-D, got shape {list(np.shape(x))}")
    dtype = x.dtype if ctx.attr("dtype", None) is None else onnx_dtype(ctx, ctx.attr("dtype"))
    return np.eye(*np.shape(x), k=int(ctx.attr("k")), dtype=dtype)


@register("Trilu", since=14, static_inputs=(1,))
def trilu(ctx: OpContext, x, k=None):
    """Upper (``upper=1``) or lower triangle of the last two axes, from diagonal ``k``."""
    k = 0 if k is None else int(ctx.static(k, "k").reshape(()))
    return jnp.triu(x, k) if int(ctx.attr("upper")) else jnp.tril(x, k)


@register("Compress", since=9, static_inputs=(1,))
def compress(ctx: OpContext, x, condition):
    """Keep the slices along ``axis`` (the flattened input when absent) where
    ``condition`` (known at conversion time) is true."""
    keep = np.nonzero(ctx.static(condition, "condition").reshape(-1))[0]
    axis = ctx.attr("axis", None)
    if axis is None:
        x, axis = jnp.reshape(x, (-1,)), 0
    axis = normalize_axis(ctx, int(axis), x.ndim)
    if keep.size and keep[-1] >= x.shape[axis]:
        raise ctx.invalid(f"condition selects index {keep[-1]} of an axis of size {x.shape[axis]}")
    return jnp.take(x, keep, axis=axis)
