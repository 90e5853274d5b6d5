"""Reductions (Reduce*, ArgMax / ArgMin), CumSum / CumProd, and the contraction Einsum
(MatMulInteger lives with the quantized ops in ``quantize.py``).

Reductions work in the layout the value is held in: ONNX axes are mapped to held axes, and
without ``keepdims`` the result keeps the remaining axes' relative layout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .._core import layout as _layout
from .._core.registry import register
from .._pipeline.module import OpContext
from ._common import normalize_axis


def _extreme(x, sign):
    """The value ReduceMax (``sign=-1``) / ReduceMin (``+1``) give an empty set: -inf / inf,
    or the integer type's limits, or False / True."""
    dtype = jnp.result_type(x)
    if dtype == jnp.bool_:
        return sign > 0
    if jnp.issubdtype(dtype, jnp.integer):
        info = jnp.iinfo(dtype)
        return info.max if sign > 0 else info.min
    return sign * jnp.inf


_REDUCERS = {
    "ReduceSum": lambda x, axes, keep: jnp.sum(x, axes, keepdims=keep),
    "ReduceMean": lambda x, axes, keep: jnp.mean(x, axes, keepdims=keep),
    "ReduceMax": lambda x, axes, keep: jnp.max(x, axes, keepdims=keep, initial=_extreme(x, -1)),
    "ReduceMin": lambda x, axes, keep: jnp.min(x, axes, keepdims=keep, initial=_extreme(x, 1)),
    "ReduceProd": lambda x, axes, keep: jnp.prod(x, axes, keepdims=keep),
    "ReduceL1": lambda x, axes, keep: jnp.sum(jnp.abs(x), axes, keepdims=keep),
    "ReduceL2": lambda x, axes, keep: jnp.sqrt(jnp.sum(x * x, axes, keepdims=keep)),
    "ReduceSumSquare": lambda x, axes, keep: jnp.sum(x * x, axes, keepdims=keep),
    "ReduceLogSum": lambda x, axes, keep: jnp.log(jnp.sum(x, axes, keepdims=keep)),
    "ReduceLogSumExp": lambda x, axes, keep: jax.nn.logsumexp(x, axes, keepdims=keep),
}

#: The opset from which ``axes`` is an input instead of an attribute.
_AXES_INPUT_SINCE = {name: 13 if name == "ReduceSum" else 18 for name in _REDUCERS}


def _reduce(ctx: OpContext, fn, x, axes, noop_with_empty_axes):
    """Reduce ``x`` over ONNX ``axes`` (all when empty, unless ``noop_with_empty_axes``)."""
    perm = ctx.in_perms[0]
    keep = bool(ctx.attr("keepdims"))
    axes = [int(a) for a in axes]
    if not axes:
        if noop_with_empty_axes:
            ctx.out_perms = [perm]
            return x
        axes = list(range(x.ndim))
    axes = sorted({normalize_axis(ctx, a, x.ndim) for a in axes})
    ctx.out_perms = [perm if keep else _layout.remove_axes(perm, axes)]
    # Integer inputs give integer results (ReduceMean truncates, like ONNX Runtime).
    return fn(x, tuple(perm.index(a) for a in axes), keep).astype(x.dtype)


def _reduce_attr(fn):
    def handler(ctx: OpContext, x):
        """``axes`` is an attribute (default: every axis)."""
        return _reduce(ctx, fn, x, ctx.attr("axes", []), False)
    return handler


def _reduce_input(fn):
    def handler(ctx: OpContext, x, axes=None):
        """``axes`` is an optional input known at conversion time."""
        axes = [] if axes is None else ctx.static(axes, "axes").reshape(-1)
        return _reduce(ctx, fn, x, axes, int(ctx.attr("noop_with_empty_axes")))
    return handler


for _name, _fn in _REDUCERS.items():
    register(_name, layout="custom")(_reduce_attr(_fn))
    register(_name, since=_AXES_INPUT_SINCE[_name], layout="custom",
             static_inputs=(1,))(_reduce_input(_fn))


def _arg_reduce(fn):
    def handler(ctx: OpContext, x):
        """Index of the first (``select_last_index=0``) or last extreme along ``axis``
        (int64 in ONNX; JAX's default integer here, cast back by ``run``)."""
        perm = ctx.in_perms[0]
        axis = normalize_axis(ctx, int(ctx.attr("axis")), x.ndim)
        keep = bool(ctx.attr("keepdims"))
        held = perm.index(axis)
        if int(ctx.attr("select_last_index", 0)):
            index = x.shape[held] - 1 - fn(jnp.flip(x, held), axis=held, keepdims=keep)
        else:
            index = fn(x, axis=held, keepdims=keep)
        ctx.out_perms = [perm if keep else _layout.remove_axes(perm, [axis])]
        return index
    return handler


register("ArgMax", layout="custom")(_arg_reduce(jnp.argmax))
register("ArgMin", layout="custom")(_arg_reduce(jnp.argmin))


def _cumulative(ctx: OpContext, x, axis, fn, identity):
    """Running ``fn`` (``jnp.cumsum`` / ``jnp.cumprod``) along ``axis`` (an input known at
    conversion time); ``exclusive`` leaves out the current element (starting from
    ``identity``), ``reverse`` runs from the end."""
    perm = ctx.in_perms[0]
    axis = normalize_axis(ctx, int(ctx.static(axis, "axis").reshape(-1)[0]), x.ndim)
    held = perm.index(axis)
    ctx.out_perms = [perm]
    reverse = bool(ctx.attr("reverse"))
    x = jnp.flip(x, held) if reverse else jnp.asarray(x)
    if int(ctx.attr("exclusive")):
        n = x.shape[held]
        first = lax.slice_in_dim(x, 0, min(n, 1), axis=held)
        x = jnp.concatenate([jnp.full_like(first, identity),
                             lax.slice_in_dim(x, 0, max(n - 1, 0), axis=held)], axis=held)
    y = fn(x, axis=held, dtype=x.dtype)
    return jnp.flip(y, held) if reverse else y


register("CumSum", since=11, layout="custom", static_inputs=(1,))(
    lambda ctx, x, axis: _cumulative(ctx, x, axis, jnp.cumsum, 0))
register("CumProd", since=26, layout="custom", static_inputs=(1,))(
    lambda ctx, x, axis: _cumulative(ctx, x, axis, jnp.cumprod, 1))


@register("Einsum", since=12)
def einsum(ctx: OpContext, *operands):
    """``equation`` in numpy's notation (ellipsis, implicit output); inputs in ONNX order."""
    equation = ctx.attr("equation").replace(" ", "")
    return jnp.einsum(equation, *operands)
