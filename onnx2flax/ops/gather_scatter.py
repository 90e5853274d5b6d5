"""Indexing ops: Gather, GatherElements, GatherND, ScatterElements (Scatter), ScatterND,
TensorScatter, OneHot, TopK. Inputs in ONNX order; negative indices count from the end of
their axis."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from .._core.registry import register
from .._pipeline.module import OpContext
from ._common import normalize_axis


def _wrap(indices, size):
    """Negative indices count from the end (``size`` may be per-position, broadcast)."""
    indices = jnp.asarray(indices)
    return jnp.where(indices < 0, indices + size, indices)


def _grid(shape, axis: int):
    """``arange(shape[axis])`` shaped to broadcast against an array of ``shape``."""
    return lax.broadcasted_iota(jnp.int32, shape, axis)


@register("Gather")
def gather(ctx: OpContext, x, indices):
    """``take`` along ``axis``: output ``x.shape[:axis] + indices.shape + x.shape[axis+1:]``."""
    axis = normalize_axis(ctx, int(ctx.attr("axis")), x.ndim)
    return jnp.take(x, _wrap(indices, x.shape[axis]), axis=axis)


@register("GatherElements", since=11)
def gather_elements(ctx: OpContext, x, indices):
    """``out[i][j][k] = x[indices[i][j][k]][j][k]`` for ``axis`` 0 (output: indices' shape)."""
    axis = normalize_axis(ctx, int(ctx.attr("axis")), x.ndim)
    if np.ndim(indices) != x.ndim:
        raise ctx.invalid(f"indices {list(np.shape(indices))} must have the rank of data "
                          f"{list(x.shape)}")
    index = _element_index(np.shape(indices), axis, _wrap(indices, x.shape[axis]))
    return x[index]


def _element_index(shape, axis, indices):
    """The advanced index addressing ``data[..., indices (on axis), ...]`` elementwise."""
    return tuple(indices if a == axis else _grid(shape, a) for a in range(len(shape)))


def _nd_index(ctx: OpContext, x, indices, batch_dims: int):
    """The advanced index for GatherND / ScatterND: ``indices[..., -1]`` addresses the
    ``k`` axes after the first ``batch_dims`` (shared with ``indices``' leading axes)."""
    k = np.shape(indices)[-1]
    lead = np.shape(indices)[:-1]
    if batch_dims + k > x.ndim or lead[:batch_dims] != x.shape[:batch_dims]:
        raise ctx.invalid(f"indices {list(np.shape(indices))} do not fit data {list(x.shape)} "
                          f"with batch_dims {batch_dims}")
    dims = jnp.asarray(x.shape[batch_dims:batch_dims + k])
    indices = _wrap(indices, dims)
    batch = tuple(_grid(lead, a) for a in range(batch_dims))
    return batch + tuple(indices[..., i] for i in range(k))


@register("GatherND", since=11)
def gather_nd(ctx: OpContext, x, indices):
    """Output ``indices.shape[:-1] + x.shape[batch_dims + indices.shape[-1]:]``."""
    return x[_nd_index(ctx, x, indices, int(ctx.attr("batch_dims", 0)))]


_REDUCTIONS = {"none": "set", "add": "add", "mul": "multiply", "max": "max", "min": "min"}


def _scatter(ctx: OpContext, x, index, updates):
    reduction = ctx.attr("reduction", "none")
    if reduction not in _REDUCTIONS:
        raise ctx.fail(f"reduction {reduction!r} is not supported ({', '.join(_REDUCTIONS)})")
    return getattr(x.at[index], _REDUCTIONS[reduction])(jnp.asarray(updates, x.dtype))


@register("Scatter", since=9)
@register("ScatterElements", since=11)
def scatter_elements(ctx: OpContext, x, indices, updates):
    """``out = x`` then ``out[... indices[i][j] (on axis) ...] <reduction>= updates[i][j]``.
    Duplicate indices with ``reduction='none'`` are undefined in ONNX."""
    axis = normalize_axis(ctx, int(ctx.attr("axis")), x.ndim)
    if np.shape(indices) != np.shape(updates) or np.ndim(indices) != x.ndim:
        raise ctx.invalid(f"indices {list(np.shape(indices))} and updates "
                          f"{list(np.shape(updates))} must share a shape of data's rank")
    index = _element_index(np.shape(indices), axis, _wrap(indices, x.shape[axis]))
    return _scatter(ctx, x, index, updates)


@register("ScatterND", since=11)
def scatter_nd(ctx: OpContext, x, indices, updates):
    """``out[indices[i]] <reduction>= updates[i]`` over the leading axes of ``indices``."""
    return _scatter(ctx, x, _nd_index(ctx, x, indices, 0), updates)


@register("OneHot", since=9, static_inputs=(1, 2))
def one_hot(ctx: OpContext, indices, depth, values):
    """A new axis ``axis`` of size ``depth``: ``values[1]`` at ``indices`` (negative ones
    count from ``depth``; out-of-range ones give a row of ``values[0]``)."""
    depth = int(np.asarray(ctx.static(depth, "depth")).reshape(()))
    values = jnp.asarray(values).reshape(-1)
    rank = np.ndim(indices) + 1
    axis = normalize_axis(ctx, int(ctx.attr("axis")), rank)
    indices = _wrap(jnp.asarray(indices).astype(jnp.int32), depth)
    hot = jnp.expand_dims(indices, axis) == _grid((1,) * axis + (depth,) + (1,) * (rank - 1 - axis), axis)
    return jnp.where(hot, values[1], values[0])


def _top_k(ctx: OpContext, x, k, largest: bool):
    """Values and int64 (int32 inside JAX) indices of the ``k`` largest / smallest along
    ``axis``, sorted; ties keep the lower index first, as onnxruntime does."""
    axis = normalize_axis(ctx, int(ctx.attr("axis")), x.ndim)
    k = int(np.asarray(k).reshape(()))
    if not 0 <= k <= x.shape[axis]:
        raise ctx.invalid(f"k = {k} is out of range for an axis of size {x.shape[axis]}")
    moved = jnp.moveaxis(x, axis, -1)
    if not largest:  # order-reversing map that cannot overflow
        moved = ~moved if jnp.issubdtype(moved.dtype, jnp.integer) else -moved
    values, indices = lax.top_k(moved, k)
    if not largest:
        values = ~values if jnp.issubdtype(values.dtype, jnp.integer) else -values
    return jnp.moveaxis(values, -1, axis), jnp.moveaxis(indices, -1, axis)


@register("TopK")
def top_k_v1(ctx: OpContext, x):
    return _top_k(ctx, x, ctx.attr("k"), True)


@register("TopK", since=10, static_inputs=(1,))
def top_k(ctx: OpContext, x, k):
    """``K`` is an input (known at conversion time); opset 11 adds ``largest`` and
    ``sorted`` (unsorted output may be in any order: it is sorted here)."""
    return _top_k(ctx, x, ctx.static(k, "K"), bool(int(ctx.attr("largest", 1))))


@register("TensorScatter", since=24)
def tensor_scatter(ctx: OpContext, past, update, write_indices=None):
    """KV-cache update: ``present = past`` with ``update`` (``past``'s shape but
    ``sequence_length <= max_sequence_length`` along ``axis``) written at
    ``write_indices[b]`` (default 0) for batch entry ``b``; "circular" wraps around,
    "linear" drops writes past the end (onnxruntime refuses them; the indices are run-time
    values here)."""
    mode = ctx.attr("mode")
    if mode not in ("linear", "circular"):
        raise ctx.invalid(f"mode must be linear or circular, got {mode!r}")
    axis = normalize_axis(ctx, int(ctx.attr("axis")), past.ndim)
    if axis == 0:
        raise ctx.invalid("axis must not be the batch axis 0")
    length, steps = past.shape[axis], update.shape[axis]
    others = [d for i, d in enumerate(past.shape) if i != axis]
    if update.ndim != past.ndim or steps > length or \
            [d for i, d in enumerate(update.shape) if i != axis] != others:
        raise ctx.invalid(f"update {list(update.shape)} must match past {list(past.shape)} "
                          f"except along axis {axis}, where it may not be longer")
    if steps == 0:
        return past
    start = (jnp.zeros(past.shape[0], np.int32) if write_indices is None
             else jnp.asarray(write_indices).astype(np.int32))
    # For every cache slot: which update step lands there (if any).
    step = np.arange(length).reshape([length if i == axis else 1 for i in range(past.ndim)])
    step = step - start.reshape([-1] + [1] * (past.ndim - 1))
    if mode == "circular":
        step = jnp.mod(step, length)
    written = (step >= 0) & (step < steps)
    source = jnp.broadcast_to(jnp.clip(step, 0, steps - 1), past.shape)
    return jnp.where(written, jnp.take_along_axis(update, source, axis=axis), past)
