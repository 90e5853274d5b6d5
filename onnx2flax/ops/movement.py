"""Layout-aware data movement: Transpose, Concat, Split, Slice, Pad, Squeeze, Unsqueeze,
DepthToSpace, SpaceToDepth, CenterCropPad, ReverseSequence.

These handlers take their input as held (e.g. channels-last after a Conv), remap ONNX axes
onto the held axes with ``_layout.axis_in`` and return the result in the same layout, so a
channels-last value flowing through them is never transposed back. Index arithmetic
(starts, ends, pads, splits) is done on Python ints: Slice's INT64_MAX / INT64_MIN
sentinels would overflow JAX's default int32.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from .._core import layout as _layout
from .._core.dims import as_dim, is_dim
from .._core.registry import register
from .._pipeline.module import OpContext
from ._common import normalize_axis


def _ints(values) -> list[int]:
    return [int(v) for v in np.asarray(values).reshape(-1)]


def _held_axes(ctx: OpContext, onnx_axes, rank: int) -> list[int]:
    """ONNX axes (may be negative) -> positions in input 0 as held; repeats are invalid."""
    axes = [normalize_axis(ctx, int(a), rank) for a in onnx_axes]
    if len(set(axes)) != len(axes):
        raise ctx.invalid(f"axes {list(onnx_axes)} repeat an axis")
    return [_layout.axis_in(ctx.in_perms[0], a) for a in axes]


def _keep_layout(ctx: OpContext, n_outputs: int = 1) -> None:
    ctx.out_perms = [ctx.in_perms[0]] * n_outputs


# --- Transpose, Concat ---------------------------------------------------------------

@register("Transpose", layout="custom")
def transpose(ctx: OpContext, x):
    """Free when the input is held in a layout of ours (e.g. channels-last after a Conv):
    the data stays where it is and only its recorded layout changes. A tensor held in ONNX
    order is transposed, so that it and everything computed from it stay in ONNX order
    instead of being transposed back at each reader (a transformer's residual stream after
    its patch embedding). Before a layer that wants channels-last (tf2onnx's NHWC -> NCHW
    Transpose before a Conv), XLA cancels this transpose against the layer's own."""
    held = ctx.in_perms[0]
    perm = [int(p) for p in ctx.attr("perm", list(range(x.ndim))[::-1])]
    if sorted(perm) != list(range(x.ndim)):
        raise ctx.invalid(f"perm {perm} is not a permutation of {x.ndim} axes")
    recorded = tuple(perm.index(p) for p in held)
    if not _layout.is_identity(held):
        ctx.out_perms = [recorded]
        return x
    ctx.out_perms = [_layout.identity(x.ndim)]
    return jnp.transpose(x, perm)


@register("Concat", layout="custom")
def concat(ctx: OpContext, *xs):
    """Concatenate in the layout of the first input not held in ONNX order (others, e.g.
    constants, are brought into it)."""
    xs = [x for x in xs if x is not None]
    perms = [p for p in ctx.in_perms if p is not None]
    target = next((p for p in perms if not _layout.is_identity(p)), perms[0])
    rank = len(target)
    axis = normalize_axis(ctx, int(ctx.attr("axis")), rank)
    if any(np.ndim(x) != rank for x in xs):
        raise ctx.invalid(f"inputs must share rank {rank}, got {[list(np.shape(x)) for x in xs]}")
    xs = [_layout.convert(x, p, target) for x, p in zip(xs, perms)]
    ctx.out_perms = [target]
    return jnp.concatenate(xs, axis=_layout.axis_in(target, axis))


# --- Split -----------------------------------------------------------------------------

def _split(ctx: OpContext, x, sizes):
    """Split held input ``x`` along ONNX ``axis`` into pieces of ``sizes`` (None: as many
    equal pieces as the node has outputs, or ``num_outputs`` from opset 18)."""
    axis = _held_axes(ctx, [ctx.attr("axis", 0)], x.ndim)[0]
    dim = x.shape[axis]
    n_out = len(ctx.node.outputs)
    if sizes is None:
        num = ctx.attr("num_outputs", None)
        if num is not None:
            num = int(num)
            if num < 1 or num != n_out:
                raise ctx.invalid(f"num_outputs {num} must equal the number of outputs {n_out}")
            chunk = -(-dim // num)  # ceil: the last piece is smaller
            sizes = [min(chunk, max(dim - i * chunk, 0)) for i in range(num)]
        else:
            if dim % n_out:
                raise ctx.invalid(f"axis of size {dim} cannot be split into {n_out} equal parts")
            sizes = [dim // n_out] * n_out
    sizes = _ints(sizes)
    if sum(sizes) != dim or any(s < 0 for s in sizes) or len(sizes) != n_out:
        raise ctx.invalid(f"split {sizes} must be {n_out} non-negative sizes summing to {dim}")
    _keep_layout(ctx, n_out)
    bounds = np.cumsum([0] + sizes)
    return tuple(lax.slice_in_dim(x, int(b), int(e), axis=axis)
                 for b, e in zip(bounds[:-1], bounds[1:]))


@register("Split", layout="custom", static_inputs=(1,))
def split_v1(ctx: OpContext, x, split=None):
    """Opset 1: ``split`` is an optional input or attribute."""
    if split is not None:
        split = ctx.static(split, "split")
    return _split(ctx, x, split if split is not None else ctx.attr("split", None))


@register("Split", since=2, layout="custom")
def split_v2(ctx: OpContext, x):
    return _split(ctx, x, ctx.attr("split", None))


@register("Split", since=13, layout="custom", static_inputs=(1,))
def split(ctx: OpContext, x, split=None):
    """Opset 13: ``split`` is an input; 18 adds ``num_outputs`` (uneven last piece)."""
    return _split(ctx, x, None if split is None else ctx.static(split, "split"))


# --- Slice -----------------------------------------------------------------------------

def _slice(ctx: OpContext, x, starts, ends, axes, steps):
    # starts / ends may be symbolic dims (generated source: ``x[:, :seq]``)
    starts, ends = ([as_dim(v) for v in np.asarray(b).reshape(-1)] for b in (starts, ends))
    rank = x.ndim
    axes = list(range(len(starts))) if axes is None else _ints(axes)
    steps = [1] * len(starts) if steps is None else _ints(steps)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ctx.invalid(f"starts {starts}, ends {ends}, axes {axes} and steps {steps} "
                          "must have the same length")
    if 0 in steps:
        raise ctx.invalid(f"steps {steps} must be non-zero")
    index = [slice(None)] * rank
    for axis, start, end, step in zip(_held_axes(ctx, axes, rank), starts, ends, steps):
        dim = x.shape[axis]
        if is_dim(dim) or is_dim(start) or is_dim(end):
            index[axis] = _open_slice(start, end, step, dim)
            continue
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        else:  # end == -1 means "through index 0"
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        step = max(min(step, dim), -dim) or 1  # same elements; older jax takes int32 steps only
        index[axis] = slice(start, None if end < 0 else end, step)
    _keep_layout(ctx)
    if not any(is_dim(b) for i in index for b in (i.start, i.stop)):
        return x[tuple(index)]
    # a symbolic bound: lax.slice (indexing would gather, with a min() of sizes)
    if any((i.step or 1) < 0 for i in index):
        raise ctx.fail("a negative-step slice with bounds known only at run time")
    return lax.slice(x, [i.start or 0 for i in index],
                     [x.shape[a] if i.stop is None else i.stop for a, i in enumerate(index)],
                     [i.step or 1 for i in index])


def _open_slice(start: int, end: int, step: int, dim) -> slice:
    """Bounds on an axis of symbolic size, or symbolic bounds (generated source):
    exporters' "to the end" values (1e9 for tf2onnx, int32 / int64 extremes for others)
    are the axis' ends, negative ones count from its end, others (and symbolic ones) are
    taken as in range (clamping them would need the size). ``None`` for the axis' own
    ends keeps the slice static."""
    far = 10 ** 9

    def bound(v, high, low):
        if is_dim(v):  # a size: in range
            return v
        return high if v >= far else low if v <= -far else v + dim if v < 0 else v

    if step > 0:
        first = bound(start, dim, None)
        return slice(None if type(first) is int and first == 0 else first,
                     bound(end, None, 0), step)
    return slice(bound(start, None, 0), bound(end, dim - 1, None), step)


@register("Slice", layout="custom")
def slice_v1(ctx: OpContext, x):
    return _slice(ctx, x, ctx.attr("starts"), ctx.attr("ends"), ctx.attr("axes", None), None)


@register("Slice", since=10, layout="custom", static_inputs=(1, 2, 3, 4))
def slice_(ctx: OpContext, x, starts, ends, axes=None, steps=None):
    """``x[starts:ends:steps]`` along ``axes``; all four must be known at conversion time."""
    return _slice(ctx, x, ctx.static(starts, "starts"), ctx.static(ends, "ends"),
                  ctx.static(axes, "axes"), ctx.static(steps, "steps"))


# --- Pad -------------------------------------------------------------------------------

_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


def _pad(ctx: OpContext, x, pads, value, axes=None, wrap=False):
    """Pad held ``x``; ``pads`` is ``[begins..., ends...]`` over ONNX ``axes`` (all axes by
    default). Negative pads crop. ``wrap``: the mode exists (opset 19)."""
    mode = ctx.attr("mode")
    if mode not in _PAD_MODES or (mode == "wrap" and not wrap):
        raise ctx.fail(f"mode {mode!r} is not supported (constant, reflect, edge; wrap from "
                       "opset 19)")
    pads = _ints(pads)
    rank = x.ndim
    axes = list(range(rank)) if axes is None else _ints(axes)
    if len(pads) != 2 * len(axes):
        raise ctx.invalid(f"pads {pads} must have 2 entries per axis of {axes}")
    widths = [(0, 0)] * rank
    for i, axis in enumerate(_held_axes(ctx, axes, rank)):
        widths[axis] = (pads[i], pads[len(axes) + i])
    _keep_layout(ctx)
    if mode == "constant":
        value = jnp.zeros((), x.dtype) if value is None else jnp.asarray(value).reshape(())
        return lax.pad(x, value.astype(x.dtype), [(lo, hi, 0) for lo, hi in widths])
    # Crop the negative pads first, then pad the positive ones.
    x = x[tuple(slice(max(-lo, 0), x.shape[a] - max(-hi, 0)) for a, (lo, hi) in enumerate(widths))]
    if mode in ("reflect", "wrap"):  # as onnxruntime; larger pads would also unroll jnp.pad
        for a, (lo, hi) in enumerate(widths):
            most = x.shape[a] - (mode == "reflect")
            if max(lo, hi) > most:
                raise ctx.invalid(f"{mode} pads {pads} exceed {most} on an axis of size "
                                  f"{x.shape[a]}")
    return jnp.pad(x, [(max(lo, 0), max(hi, 0)) for lo, hi in widths], mode=_PAD_MODES[mode])


@register("Pad", layout="custom")
def pad_v1(ctx: OpContext, x):
    """Opset 1 names the attribute ``paddings`` (opset 2: ``pads``); ``value`` is a float."""
    return _pad(ctx, x, ctx.attr("paddings"), np.asarray(ctx.attr("value")))


@register("Pad", since=2, layout="custom")
def pad_v2(ctx: OpContext, x):
    return _pad(ctx, x, ctx.attr("pads"), np.asarray(ctx.attr("value")))


@register("Pad", since=11, layout="custom", static_inputs=(1, 3))
def pad(ctx: OpContext, x, pads, constant_value=None, axes=None):
    """Opset 11: ``pads`` (and, from 18, ``axes``) are inputs known at conversion time;
    ``constant_value`` may be computed at run time."""
    return _pad(ctx, x, ctx.static(pads, "pads"), constant_value, ctx.static(axes, "axes"))


@register("Pad", since=19, layout="custom", static_inputs=(1, 3))
def pad_v19(ctx: OpContext, x, pads, constant_value=None, axes=None):
    """Opset 19 adds mode ``wrap``."""
    return _pad(ctx, x, ctx.static(pads, "pads"), constant_value, ctx.static(axes, "axes"),
                wrap=True)


# --- Squeeze, Unsqueeze --------------------------------------------------------------------

def _squeeze(ctx: OpContext, x, axes):
    perm = ctx.in_perms[0]
    if axes is None:
        onnx_shape = [x.shape[perm.index(i)] for i in range(x.ndim)]
        axes = [i for i, d in enumerate(onnx_shape) if d == 1]
    held = _held_axes(ctx, axes, x.ndim)
    if any(x.shape[a] != 1 for a in held):
        raise ctx.invalid(f"cannot squeeze axes {list(axes)}: they are not all of size 1")
    ctx.out_perms = [_layout.remove_axes(perm, [perm[a] for a in held])]
    return jnp.squeeze(x, tuple(held))


@register("Squeeze", layout="custom")
def squeeze_v1(ctx: OpContext, x):
    return _squeeze(ctx, x, ctx.attr("axes", None))


@register("Squeeze", since=13, layout="custom", static_inputs=(1,))
def squeeze(ctx: OpContext, x, axes=None):
    return _squeeze(ctx, x, None if axes is None else _ints(ctx.static(axes, "axes")))


def _unsqueeze(ctx: OpContext, x, axes):
    """New size-1 axes go last in the held array, so a channels-last input stays so."""
    perm = ctx.in_perms[0]
    rank_out = x.ndim + len(axes)
    new = sorted(normalize_axis(ctx, int(a), rank_out) for a in axes)
    if len(set(new)) != len(new):
        raise ctx.invalid(f"axes {list(axes)} repeat an axis")
    if _layout.is_identity(perm):
        ctx.out_perms = [_layout.identity(rank_out)]
        return jnp.expand_dims(x, new)
    kept = [i for i in range(rank_out) if i not in new]
    ctx.out_perms = [tuple(kept[p] for p in perm) + tuple(new)]
    return jnp.reshape(x, x.shape + (1,) * len(new))


@register("Unsqueeze", layout="custom")
def unsqueeze_v1(ctx: OpContext, x):
    return _unsqueeze(ctx, x, ctx.attr("axes"))


@register("Unsqueeze", since=13, layout="custom", static_inputs=(1,))
def unsqueeze(ctx: OpContext, x, axes):
    return _unsqueeze(ctx, x, _ints(ctx.static(axes, "axes")))


# --- DepthToSpace, SpaceToDepth ----------------------------------------------------------

def _block_attrs(ctx: OpContext, x, default_mode: str):
    b = int(ctx.attr("blocksize"))
    mode = ctx.attr("mode", default_mode)
    if b < 1 or mode not in ("DCR", "CRD"):
        raise ctx.invalid(f"blocksize {b} must be >= 1 and mode {mode!r} DCR or CRD")
    if x.ndim != 4:
        raise ctx.invalid(f"input must be 4-D, got shape {list(x.shape)}")
    return b, mode


@register("DepthToSpace", layout="custom")
def depth_to_space(ctx: OpContext, x):
    """``[N, C*b*b, H, W]`` -> ``[N, C, H*b, W*b]``, computed in the layout ``x`` is held in
    (channels-last or ONNX). DCR: channel ``(i*b + j)*C + c``; CRD: ``(c*b + i)*b + j``."""
    b, mode = _block_attrs(ctx, x, "DCR")
    if ctx.in_perms[0] == _layout.channels_last(4):
        n, h, w, c = x.shape
        _check_divisible(ctx, c, b * b, "channels")
        if mode == "DCR":
            y = jnp.reshape(x, (n, h, w, b, b, c // b // b)).transpose(0, 1, 3, 2, 4, 5)
        else:
            y = jnp.reshape(x, (n, h, w, c // b // b, b, b)).transpose(0, 1, 4, 2, 5, 3)
        _keep_layout(ctx)
        return jnp.reshape(y, (n, h * b, w * b, c // b // b))
    x = _layout.to_onnx(x, ctx.in_perms[0])
    n, c, h, w = x.shape
    _check_divisible(ctx, c, b * b, "channels")
    if mode == "DCR":
        y = jnp.reshape(x, (n, b, b, c // b // b, h, w)).transpose(0, 3, 4, 1, 5, 2)
    else:
        y = jnp.reshape(x, (n, c // b // b, b, b, h, w)).transpose(0, 1, 4, 2, 5, 3)
    return jnp.reshape(y, (n, c // b // b, h * b, w * b))


@register("SpaceToDepth", layout="custom")
def space_to_depth(ctx: OpContext, x):
    """``[N, C, H*b, W*b]`` -> ``[N, C*b*b, H, W]``, the inverse of DepthToSpace (``mode``
    from opset 28, DCR before), computed in the layout ``x`` is held in."""
    b, mode = _block_attrs(ctx, x, "DCR")
    if ctx.in_perms[0] == _layout.channels_last(4):
        n, h, w, c = x.shape
        _check_divisible(ctx, h, b, "height")
        _check_divisible(ctx, w, b, "width")
        y = jnp.reshape(x, (n, h // b, b, w // b, b, c))
        y = y.transpose(0, 1, 3, 2, 4, 5) if mode == "DCR" else y.transpose(0, 1, 3, 5, 2, 4)
        _keep_layout(ctx)
        return jnp.reshape(y, (n, h // b, w // b, c * b * b))
    x = _layout.to_onnx(x, ctx.in_perms[0])
    n, c, h, w = x.shape
    _check_divisible(ctx, h, b, "height")
    _check_divisible(ctx, w, b, "width")
    y = jnp.reshape(x, (n, c, h // b, b, w // b, b))
    y = y.transpose(0, 3, 5, 1, 2, 4) if mode == "DCR" else y.transpose(0, 1, 3, 5, 2, 4)
    return jnp.reshape(y, (n, c * b * b, h // b, w // b))


def _check_divisible(ctx: OpContext, size: int, block: int, what: str) -> None:
    if size % block:
        raise ctx.invalid(f"{what} {size} is not divisible by {block}")


# --- CenterCropPad, ReverseSequence ------------------------------------------------------

@register("CenterCropPad", since=18, layout="custom", static_inputs=(1,))
def center_crop_pad(ctx: OpContext, x, shape):
    """Crop or zero-pad each of ``axes`` (all by default) to ``shape``, centered; an odd
    difference leaves the extra cell at the end."""
    sizes = _ints(ctx.static(shape, "shape"))
    axes = ctx.attr("axes", None)
    axes = _held_axes(ctx, range(x.ndim) if axes is None else axes, x.ndim)
    if len(sizes) != len(axes) or any(s < 0 for s in sizes):
        raise ctx.invalid(f"shape {sizes} must give one non-negative size per axis ({len(axes)})")
    pads = [(0, 0)] * x.ndim
    for axis, size in zip(axes, sizes):
        diff = x.shape[axis] - size
        if diff > 0:
            x = lax.slice_in_dim(x, diff // 2, diff // 2 + size, axis=axis)
        else:
            pads[axis] = (-diff // 2, -diff - (-diff // 2))
    _keep_layout(ctx)
    return jnp.pad(x, pads)


@register("ReverseSequence", since=10)
def reverse_sequence(ctx: OpContext, x, lens):
    """Reverse the first ``lens[b]`` steps along ``time_axis`` of every batch entry ``b``
    (``batch_axis``); the rest is copied. Axes 0 and 1, defaults time 0, batch 1."""
    time_axis = int(ctx.attr("time_axis"))
    batch_axis = int(ctx.attr("batch_axis"))
    if {time_axis, batch_axis} != {0, 1} or x.ndim < 2:
        raise ctx.invalid(f"time_axis {time_axis} and batch_axis {batch_axis} must be 0 and 1 "
                          f"(in some order) of an input of rank >= 2, got rank {x.ndim}")
    if lens.shape != (x.shape[batch_axis],):
        raise ctx.invalid(f"sequence_lens of shape {list(lens.shape)} must be "
                          f"[{x.shape[batch_axis]}]")
    steps = x.shape[time_axis]
    t = np.arange(steps).reshape((steps, 1) if time_axis == 0 else (1, steps))
    lens = jnp.clip(jnp.asarray(lens).astype(np.int32), 0, steps)
    lens = lens.reshape((1, -1) if batch_axis == 1 else (-1, 1))
    source = jnp.where(t < lens, lens - 1 - t, t)  # [time, batch] in the axes' order
    source = jnp.broadcast_to(source.reshape(source.shape + (1,) * (x.ndim - 2)), x.shape)
    return jnp.take_along_axis(x, source, axis=time_axis)
