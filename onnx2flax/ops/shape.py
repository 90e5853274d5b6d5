"""Shape and data-movement ops. Shapes are static under ``jit``, so Shape returns NumPy
and shape subgraphs fold at trace time; these handlers see run-time data."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .. import _layout
from .._registry import register
from ._common import normalize_axis


@register("Shape", layout="custom")
def shape(ctx, x):
    """The ONNX-order shape as int64 NumPy; ``start``/``end`` (opset 15) slice it."""
    perm = ctx.in_perms[0]
    dims = np.shape(x)
    onnx_dims = [dims[perm.index(i)] for i in range(len(dims))]
    start = int(ctx.attr("start", 0))
    end = ctx.attr("end", None)
    return np.asarray(onnx_dims[start:None if end is None else int(end)], np.int64)


@register("Size", layout="custom")
def size(ctx, x):
    return np.asarray(np.size(x), np.int64)


def _reshape_target(ctx, x, target, allowzero):
    target = [int(v) for v in target]
    dims = list(x.shape)
    if not allowzero:
        target = [dims[i] if v == 0 and i < len(dims) else v for i, v in enumerate(target)]
    if target.count(-1) > 1:
        raise ctx.invalid(f"shape {target} has more than one -1")
    known = int(np.prod([v for v in target if v != -1]))
    if -1 in target:
        if known == 0 or x.size % known:
            raise ctx.invalid(f"cannot reshape {dims} to {target}")
        target[target.index(-1)] = x.size // known
    if int(np.prod(target)) != x.size or any(v < 0 for v in target):
        raise ctx.invalid(f"cannot reshape {dims} ({x.size} elements) to {target}")
    return target


@register("Reshape")
def reshape_v1(ctx, x):
    return jnp.reshape(x, _reshape_target(ctx, x, ctx.attr("shape"), False))


@register("Reshape", since=5, static_inputs=(1,))
def reshape(ctx, x, target):
    """``shape`` must be known at conversion time (it usually comes from a shape subgraph)."""
    target = ctx.static(target, "shape").reshape(-1)
    return jnp.reshape(x, _reshape_target(ctx, x, target, int(ctx.attr("allowzero", 0))))


@register("Flatten")
def flatten(ctx, x):
    """``[d0..d(axis-1), d(axis)..]`` -> 2-D; the input is in ONNX order (the guide's
    transpose-before-flatten happens here, only when the input was channels-last)."""
    axis = normalize_axis(ctx, int(ctx.attr("axis", 1)), x.ndim + 1)
    lead = int(np.prod(x.shape[:axis]))
    return jnp.reshape(x, (lead, int(np.prod(x.shape[axis:]))))


@register("Transpose", layout="custom")
def transpose(ctx, x):
    """Free: the data stays where it is and only its recorded layout changes."""
    held = ctx.in_perms[0]
    perm = [int(p) for p in ctx.attr("perm", list(range(x.ndim))[::-1])]
    if sorted(perm) != list(range(x.ndim)):
        raise ctx.invalid(f"perm {perm} is not a permutation of {x.ndim} axes")
    ctx.out_perms = [tuple(perm.index(p) for p in held)]
    return x


@register("Concat", layout="custom")
def concat(ctx, *xs):
    """Concatenate in the first input's layout (others are brought into it)."""
    xs = [x for x in xs if x is not None]
    perms = [p for p in ctx.in_perms if p is not None]
    target = perms[0]
    rank = len(target)
    axis = normalize_axis(ctx, int(ctx.attr("axis")), rank)
    if any(np.ndim(x) != rank for x in xs):
        raise ctx.invalid(f"inputs must share rank {rank}, got {[list(np.shape(x)) for x in xs]}")
    xs = [_layout.convert(x, p, target) for x, p in zip(xs, perms)]
    ctx.out_perms = [target]
    return jnp.concatenate(xs, axis=_layout.axis_in(target, axis))


def _axes_input(ctx, axes, rank_out):
    axes = [int(a) for a in ctx.static(axes, "axes").reshape(-1)]
    return sorted(normalize_axis(ctx, a, rank_out) for a in axes)


@register("Unsqueeze")
def unsqueeze_v1(ctx, x):
    axes = [int(a) for a in ctx.attr("axes")]
    return jnp.expand_dims(x, sorted(normalize_axis(ctx, a, x.ndim + len(axes)) for a in axes))


@register("Unsqueeze", since=13, static_inputs=(1,))
def unsqueeze(ctx, x, axes):
    return jnp.expand_dims(x, _axes_input(ctx, axes, x.ndim + np.size(axes)))


def _squeeze(ctx, x, axes):
    if axes is None:
        return jnp.squeeze(x)
    axes = [normalize_axis(ctx, int(a), x.ndim) for a in axes]
    if any(x.shape[a] != 1 for a in axes):
        raise ctx.invalid(f"cannot squeeze axes {axes} of shape {list(x.shape)}")
    return jnp.squeeze(x, tuple(axes))


@register("Squeeze")
def squeeze_v1(ctx, x):
    return _squeeze(ctx, x, ctx.attr("axes", None))


@register("Squeeze", since=13, static_inputs=(1,))
def squeeze(ctx, x, axes=None):
    return _squeeze(ctx, x, None if axes is None else ctx.static(axes, "axes").reshape(-1))


@register("Gather", static_inputs=())
def gather(ctx, x, indices):
    """``take`` along ``axis``; negative indices count from the end."""
    axis = normalize_axis(ctx, int(ctx.attr("axis", 0)), x.ndim)
    indices = jnp.asarray(indices)
    indices = jnp.where(indices < 0, indices + x.shape[axis], indices)
    return jnp.take(x, indices, axis=axis)


@register("Cast", layout="elementwise")
def cast(ctx, x):
    import onnx

    to = int(ctx.attr("to"))
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(to)
    except (KeyError, ValueError):
        raise ctx.invalid(f"'to' is not a known element type: {to}") from None
    return jnp.asarray(x).astype(dtype)
