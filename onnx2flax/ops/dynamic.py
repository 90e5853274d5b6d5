"""Ops whose output size depends on the input values: NonZero, NonMaxSuppression, Unique.

On inputs known at conversion time the result is exact (NonZero and NonMaxSuppression are
folded by ONNX's reference evaluator, Unique is computed here with NumPy). A traced JAX program
cannot return a data-dependent number of results, so on run-time inputs each node needs a
static bound ``N`` from the user, ``onnx2flax.convert(model, bounds={name: N})``, and returns
exactly ``N`` results: the real ones first, in the op's own order, then padding; results past
``N`` are dropped. Padding never looks like a result: indices are -1 (ONNX's Gather reads -1
as the last element, so mask padded rows with ``index >= 0`` before using them) and counts 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._core.registry import register
from .._pipeline.module import OpContext
from ._common import normalize_axis


def _bound(ctx: OpContext, why: str, most: int) -> int:
    """The node's static bound; without one, an error saying how to give it. ``most``: a
    count the results never exceed (the bound that never drops a result)."""
    if ctx.bound is not None:
        return ctx.bound
    name = ctx.node.outputs[0]
    raise ctx.fail(f"{why}, so its output shape is not known when tracing. Give a static bound "
                   f"N, onnx2flax.convert(model, bounds={{{name!r}: N}}) (command line: --bound "
                   f"{name}=N), to get exactly N results, padded (indices with -1; here at most "
                   f"{most} results can occur), or make its inputs constants")


def _fit(a, n: int, fill):
    """``a`` cut or padded with ``fill`` along axis 0 to length ``n``."""
    if n <= a.shape[0]:
        return a[:n]
    return jnp.concatenate([a, jnp.full((n - a.shape[0], *a.shape[1:]), fill, a.dtype)])


@register("NonZero", since=9, bounded=True)
def non_zero(ctx: OpContext, x):
    """``[rank, count]`` indices of the non-zero elements in row-major order. With a bound
    ``N``: ``[rank, N]``, the columns past the count are -1."""
    n = _bound(ctx, "the number of non-zero elements depends on the input's values", np.size(x))
    if np.ndim(x) == 0:
        return np.zeros((0, n), np.int64)
    return jnp.stack(jnp.nonzero(x, size=n, fill_value=-1))


# --- NonMaxSuppression -----------------------------------------------------------------------

def _scalar(ctx: OpContext, value, what: str):
    """An optional one-element input as a scalar (``None`` when absent or empty)."""
    if value is None or np.size(value) == 0:
        return None
    if np.size(value) != 1:
        raise ctx.invalid(f"{what} must hold one value, got shape {list(np.shape(value))}")
    return value.reshape(())


def _corners(ctx: OpContext, boxes):
    """``ymin, xmin, ymax, xmax``, each ``[batch, boxes]``, from ``[y1, x1, y2, x2]`` (any
    two opposite corners) or, with ``center_point_box=1``, ``[x_center, y_center, w, h]``."""
    center = int(ctx.attr("center_point_box"))
    a, b, c, d = (boxes[..., k] for k in range(4))
    if center == 1:
        return b - d / 2, a - c / 2, b + d / 2, a + c / 2
    if center != 0:
        raise ctx.invalid(f"center_point_box must be 0 or 1, got {center}")
    return jnp.minimum(a, c), jnp.minimum(b, d), jnp.maximum(a, c), jnp.maximum(b, d)


def _select_class(ymin, xmin, ymax, xmax, scores, limit, iou_threshold, score_threshold):
    """Greedy selection for one batch entry and class. Boxes are visited by descending score
    (ties: lower index first); one is taken unless its IoU with a taken box exceeds
    ``iou_threshold`` (boxes without a positive-area overlap never suppress each other), its
    score is not above ``score_threshold``, or ``limit`` boxes were taken. Returns the visiting
    order and whether each visited box was taken."""
    order = jnp.argsort(-scores, stable=True)
    area = (xmax - xmin) * (ymax - ymin)
    candidate = jnp.ones(scores.shape, bool) if score_threshold is None \
        else scores[order] > score_threshold

    def visit(carry, i):
        taken, count = carry  # taken: by box index
        k = order[i]
        width = jnp.minimum(xmax[k], xmax) - jnp.maximum(xmin[k], xmin)
        height = jnp.minimum(ymax[k], ymax) - jnp.maximum(ymin[k], ymin)
        inter = width * height
        union = area[k] + area - inter
        overlap = (width > 0) & (height > 0) & (inter > 0) & (area[k] > 0) & (area > 0) \
            & (union > 0)
        iou = inter / jnp.where(overlap, union, 1)
        suppressed = jnp.any(taken & overlap & (iou > iou_threshold))
        take = candidate[i] & ~suppressed & (count < limit)
        return (taken.at[k].set(taken[k] | take), count + take), take

    start = (jnp.zeros(scores.shape, bool), jnp.zeros((), jnp.int32))
    _, took = lax.scan(visit, start, jnp.arange(scores.shape[0]))
    return order, took


@register("NonMaxSuppression", since=10, bounded=True)
def non_max_suppression(ctx: OpContext, boxes, scores, max_per_class=None, iou_threshold=None,
                        score_threshold=None):
    """``boxes [B, S, 4]``, ``scores [B, C, S]`` -> ``[count, 3]`` rows ``(batch, class,
    box)``, per batch entry and class in descending score order (see ``_select_class``). With
    a bound ``N``: ``[N, 3]``, the rows past the count are ``(-1, -1, -1)``. An absent or
    non-positive constant ``max_output_boxes_per_class`` selects nothing (``[0, 3]``)."""
    if np.ndim(boxes) != 3 or np.ndim(scores) != 3 or np.shape(boxes)[2] != 4 \
            or np.shape(boxes)[:2] != (np.shape(scores)[0], np.shape(scores)[2]):
        raise ctx.invalid(f"boxes {list(np.shape(boxes))} and scores {list(np.shape(scores))} "
                          "must be [batches, boxes, 4] and [batches, classes, boxes]")
    batches, classes, count = np.shape(scores)
    limit = _scalar(ctx, max_per_class, "max_output_boxes_per_class")
    known = limit is None or isinstance(limit, np.ndarray)
    limit = min(max(int(0 if limit is None else limit), 0), count) if known else limit
    if known and limit == 0 and ctx.bound is None:
        return np.zeros((0, 3), np.int64)
    n = _bound(ctx, "the number of selected boxes depends on the boxes and scores",
               batches * classes * (limit if known else count))
    if batches * classes * count == 0:
        return jnp.full((n, 3), -1, jnp.int32)
    iou = _scalar(ctx, iou_threshold, "iou_threshold")
    iou = 0.0 if iou is None else iou
    per_class = jax.vmap(_select_class, in_axes=(None, None, None, None, 0, None, None, None))
    per_batch = jax.vmap(per_class, in_axes=(0, 0, 0, 0, 0, None, None, None))
    order, took = per_batch(*_corners(ctx, jnp.asarray(boxes)), jnp.asarray(scores), limit,
                            iou, _scalar(ctx, score_threshold, "score_threshold"))
    size = took.size
    (at,) = jnp.nonzero(took.reshape(-1), size=n, fill_value=size)
    rows = jnp.stack([at // (classes * count), at // count % classes,
                      order.reshape(-1)[jnp.minimum(at, size - 1)]], axis=1)
    return jnp.where((at < size)[:, None], rows, -1)


# --- Unique ----------------------------------------------------------------------------------

def _unique_exact(x: np.ndarray, axis: int | None, is_sorted: bool):
    """Unique on a conversion-time constant, in NumPy (exact in the input's dtype)."""
    y, first, inverse, counts = np.unique(x, return_index=True, return_inverse=True,
                                          return_counts=True, axis=axis)
    inverse = inverse.reshape(-1)
    if not is_sorted:  # order of first occurrence
        perm = np.argsort(first, kind="stable")
        rank = np.empty_like(perm)
        rank[perm] = np.arange(perm.size)
        y, first, inverse, counts = (np.take(y, perm, axis=axis or 0), first[perm],
                                     rank[inverse], counts[perm])
    return y, *(a.astype(np.int64) for a in (first, inverse, counts))


def _unique_bounded(x, axis: int | None, is_sorted: bool, n: int):
    """Unique on run-time data, padded to ``n`` (see :func:`unique`)."""
    slices = jnp.reshape(x, (-1,)) if axis is None else jnp.moveaxis(x, axis, 0)
    m = slices.shape[0]
    if m == 0:
        y = jnp.zeros((n, *slices.shape[1:]), x.dtype)
        return (y if axis is None else jnp.moveaxis(y, 0, axis), jnp.full((n,), -1, jnp.int32),
                jnp.zeros((0,), jnp.int32), jnp.zeros((n,), jnp.int32))
    rows = jnp.reshape(slices, (m, -1))
    if rows.shape[1] == 0:  # every slice is empty: all equal
        rows = jnp.zeros((m, 1), x.dtype)
    order = jnp.lexsort(rows.T[::-1])  # stable: the first occurrence leads each group
    ranked = rows[order]
    same = ranked[1:] == ranked[:-1]
    if jnp.issubdtype(x.dtype, jnp.inexact):  # NaNs count as equal, as in numpy.unique
        same |= jnp.isnan(ranked[1:]) & jnp.isnan(ranked[:-1])
    new = jnp.concatenate([jnp.ones((1,), bool), ~jnp.all(same, axis=1)])
    group = jnp.cumsum(new) - 1
    (starts,) = jnp.nonzero(new, size=m, fill_value=m)
    valid = starts < m
    first = jnp.where(valid, order[jnp.minimum(starts, m - 1)], -1)
    counts = jnp.diff(starts, append=m)
    inverse = jnp.zeros(m, group.dtype).at[order].set(group)
    if not is_sorted:  # groups by first occurrence; padding stays last
        perm = jnp.argsort(jnp.where(valid, first, m + jnp.arange(m)))
        first, counts = first[perm], counts[perm]
        inverse = jnp.zeros(m, perm.dtype).at[perm].set(jnp.arange(m))[inverse]
    first = _fit(first, n, -1)
    y = jnp.take(slices, jnp.maximum(first, 0), axis=0)
    y = jnp.where(jnp.reshape(first >= 0, (n,) + (1,) * (y.ndim - 1)), y, jnp.zeros((), y.dtype))
    y = y if axis is None else jnp.moveaxis(y, 0, axis)
    return y, first, jnp.where(inverse < n, inverse, -1), _fit(counts, n, 0)


@register("Unique", since=11, bounded=True)
def unique(ctx: OpContext, x):
    """Distinct values (``axis`` absent: of the flattened input) or distinct slices along
    ``axis``, sorted ascending (slices lexicographically) or, with ``sorted=0``, in order of
    first occurrence. Outputs: ``Y``, the index of each one's first occurrence, for each
    input element (slice) the index of its value in ``Y``, and the count of each. NaNs count
    as equal. With a bound ``N``, ``Y``, indices and counts have ``N`` entries (``Y``: along
    ``axis``): past the number of distinct values ``Y`` is 0, indices -1 and counts 0; an
    inverse index whose value was dropped (past ``N``) is -1."""
    axis = ctx.attr("axis", None)
    is_sorted = bool(int(ctx.attr("sorted")))
    if axis is not None:
        axis = normalize_axis(ctx, int(axis), np.ndim(x))
    if isinstance(x, np.ndarray):
        return _unique_exact(x, axis, is_sorted)
    m = np.size(x) if axis is None else np.shape(x)[axis]
    n = _bound(ctx, "the number of distinct values depends on the input's values", m)
    return _unique_bounded(x, axis, is_sorted, n)
