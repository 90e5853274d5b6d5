"""Pooling over channels-last inputs with ``lax.reduce_window``.

ONNX semantics kept explicitly: ``count_include_pad`` (ONNX default 0, Flax's avg_pool
counts pads), ``ceil_mode`` (extra end padding that never counts in the divisor), and
dilations (Flax's max_pool has none).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from .._core.registry import register
from .._pipeline.module import OpContext
from ._common import auto_pads, check_window_fits, spatial_attrs


def _window(ctx: OpContext, x):
    """kernel, strides, dilations, explicit pads and ceil-mode extra end pads."""
    k = tuple(int(v) for v in ctx.attr("kernel_shape"))
    n = len(k)
    if x.ndim != n + 2:
        raise ctx.invalid(f"input has rank {x.ndim}, kernel_shape {list(k)} needs rank {n + 2}")
    if any(v < 1 for v in k):
        raise ctx.invalid(f"kernel_shape {list(k)} must be positive")
    strides, dilations, pads = spatial_attrs(ctx, k)
    sizes = x.shape[1:-1]
    pads = auto_pads(ctx, sizes, k, strides, dilations, pads)
    ceil = int(ctx.attr("ceil_mode", 0))
    check_window_fits(ctx, sizes, k, dilations, pads)
    if any(p >= (kk - 1) * d + 1 for kk, d, pad in zip(k, dilations, pads) for p in pad):
        # A window lying entirely in the padding has no input cell (as onnxruntime, refuse).
        raise ctx.invalid(f"pads {pads} must be smaller than the (dilated) kernel {list(k)}")
    extra = []
    for size, kk, s, d, (pb, pe) in zip(sizes, k, strides, dilations, pads):
        span = size + pb + pe - ((kk - 1) * d + 1)
        out = (-(-span // s) if ceil else span // s) + 1
        if ceil and (out - 1) * s >= size + pb:  # the last window must start inside
            out -= 1
        extra.append(max((out - 1) * s + (kk - 1) * d + 1 - (size + pb + pe), 0))
    return k, strides, dilations, pads, extra


def _reduce(x, init, op, k, strides, dilations, padding):
    """``lax.reduce_window`` over the spatial dims of channels-last ``x``. ``init``: NumPy,
    so that JAX sees the max / add window reduction it is (what ``nn.max_pool`` is)."""
    return lax.reduce_window(x, init, op, (1, *k, 1), (1, *strides, 1),
                             [(0, 0), *padding, (0, 0)], window_dilation=(1, *dilations, 1))


@register("MaxPool", layout="channels_last")
def max_pool(ctx: OpContext, x):
    """Y ``[N, *out, C]``; with a second output, also Indices ``[N, *out, C]``: where each
    maximum is in the input flattened in ONNX order (NCHW, spatial dims column-major with
    ``storage_order=1``)."""
    storage_order = int(ctx.attr("storage_order", 0))
    if storage_order not in (0, 1):
        raise ctx.invalid("storage_order must be 0 or 1")
    k, strides, dilations, pads, extra = _window(ctx, x)
    padding = [(pb, pe + e) for (pb, pe), e in zip(pads, extra)]
    low = -jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
    y = _reduce(x, np.array(low, x.dtype), lax.max, k, strides, dilations, padding)
    if len([o for o in ctx.node.outputs if o]) == 1:
        return y
    return y, _argmax_indices(x, low, storage_order, k, strides, dilations, padding)


def _argmax_indices(x, low, storage_order, k, strides, dilations, padding):
    """ONNX MaxPool's Indices for channels-last ``x``: the first maximum of each window
    (row-major window order, as onnxruntime), as an index into the ONNX-order input."""
    n, *spatial, c = x.shape
    size = int(np.prod(spatial))
    # Row-major position of every cell within its [N, C] plane, held channels-last.
    position = np.broadcast_to(np.arange(size, dtype=np.int32).reshape(1, *spatial, 1), x.shape)

    def pick(a, b):
        a_wins = (a[0] > b[0]) | ((a[0] == b[0]) & (a[1] < b[1]))
        return jnp.where(a_wins, a[0], b[0]), jnp.where(a_wins, a[1], b[1])

    _, best = lax.reduce_window(
        (x, position), (jnp.array(low, x.dtype), np.int32(np.iinfo(np.int32).max)), pick,
        (1, *k, 1), (1, *strides, 1), [(0, 0), *padding, (0, 0)],
        window_dilation=(1, *dilations, 1))
    if storage_order:  # column-major over the spatial dims
        best = jnp.asarray(np.arange(size).reshape(spatial[::-1]).T.reshape(-1), jnp.int32)[best]
    plane = (np.arange(n).reshape(n, *[1] * len(spatial), 1) * c
             + np.arange(c).reshape(1, *[1] * len(spatial), c)) * size
    return best + jnp.asarray(plane, jnp.int32)


@register("AveragePool", layout="channels_last")
def average_pool(ctx: OpContext, x):
    """Mean over each window; pads count in the divisor only with count_include_pad=1."""
    include = int(ctx.attr("count_include_pad", 0))
    k, strides, dilations, pads, extra = _window(ctx, x)
    padding = [(pb, pe + e) for (pb, pe), e in zip(pads, extra)]
    total = _reduce(x, np.array(0, x.dtype), lax.add, k, strides, dilations, padding)
    # The divisor: window cells inside the input (plus the explicit pads when counted).
    sizes = x.shape[1:-1]
    if include:
        ones = np.ones([s + pb + pe for s, (pb, pe) in zip(sizes, pads)], np.float32)
        count_pad = [(0, e) for e in extra]
    else:
        ones = np.ones(sizes, np.float32)
        count_pad = padding
    counts = lax.reduce_window(ones, np.float32(0), lax.add, k, strides, count_pad,
                               window_dilation=dilations)
    return total / jnp.asarray(counts[None, ..., None], x.dtype)


def _lp_power(ctx: OpContext, x):
    """The ``p`` attribute and ``|x|^p`` (an exact integer power when ``p`` is whole)."""
    p = float(ctx.attr("p"))
    if not p > 0:
        raise ctx.invalid(f"p must be positive, got {p}")
    return p, jnp.abs(x) ** (int(p) if p.is_integer() else p)


@register("LpPool", layout="channels_last")
def lp_pool(ctx: OpContext, x):
    """``(sum |x|^p)^(1/p)`` over each window (pads add nothing). ``p`` is a float
    attribute in opset 1, an int from opset 2; dilations and ceil_mode from opset 18."""
    p, power = _lp_power(ctx, x)
    k, strides, dilations, pads, extra = _window(ctx, x)
    padding = [(pb, pe + e) for (pb, pe), e in zip(pads, extra)]
    total = _reduce(power, np.array(0, power.dtype), lax.add, k, strides, dilations, padding)
    return total ** (1 / p)


@register("GlobalLpPool", layout="channels_last")
def global_lp_pool(ctx: OpContext, x):
    """``[N, *spatial, C] -> [N, 1, ..., 1, C]``: the Lp norm over all spatial positions."""
    p, power = _lp_power(ctx, x)
    return jnp.sum(power, axis=tuple(range(1, x.ndim - 1)), keepdims=True) ** (1 / p)


@register("GlobalAveragePool", layout="channels_last")
def global_average_pool(ctx: OpContext, x):
    """``[N, *spatial, C] -> [N, 1, ..., 1, C]``."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)), keepdims=True)


@register("GlobalMaxPool", layout="channels_last")
def global_max_pool(ctx: OpContext, x):
    """``[N, *spatial, C] -> [N, 1, ..., 1, C]``."""
    return jnp.max(x, axis=tuple(range(1, x.ndim - 1)), keepdims=True)


@register("MaxUnpool", since=9, static_inputs=(2,))
def max_unpool(ctx: OpContext, x, indices, output_shape=None):
    """X and I ``[N, C, *in]`` (ONNX order; I as MaxPool's Indices) -> ``[N, C, *out]``:
    zeros with each ``X`` value at its flat index ``I`` into the output. The output shape
    is ``output_shape`` (opset 11; pads are then ignored) or ``(in - 1) * stride - pads +
    kernel``. As the spec and onnxruntime, ``I`` indexes the output (MaxPool's input)
    even when ``output_shape`` enlarges it; ONNX's reference indexes the smaller shape."""
    k = tuple(int(v) for v in ctx.attr("kernel_shape"))
    strides, _, pads = spatial_attrs(ctx, k)
    if x.ndim != len(k) + 2 or indices.shape != x.shape:
        raise ctx.invalid(f"X {list(x.shape)} and I {list(indices.shape)} must have one shape "
                          f"of rank {len(k) + 2} for kernel_shape {list(k)}")
    if output_shape is not None:
        shape = [int(v) for v in ctx.static(output_shape, "output_shape").reshape(-1)]
    else:
        shape = [*x.shape[:2], *((n - 1) * s - pb - pe + kk for n, s, kk, (pb, pe)
                                 in zip(x.shape[2:], strides, k, pads))]
    if len(shape) != x.ndim or shape[:2] != list(x.shape[:2]) or min(shape) < 1:
        raise ctx.invalid(f"output shape {shape} must be positive, of rank {x.ndim}, with "
                          f"X's batch and channels {list(x.shape[:2])}")
    y = jnp.zeros(int(np.prod(shape)), x.dtype)
    y = y.at[jnp.asarray(indices).reshape(-1)].set(jnp.reshape(x, -1), mode="drop")
    return y.reshape(shape)
