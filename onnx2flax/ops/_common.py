"""Helpers shared by op families: subgraphs, spatial attributes, padding, axis handling,
casts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax import lax

from .._core.dims import provably
from .._core.graph import Graph, numpy_dtype
from .._pipeline.module import OpContext


def subgraph(ctx: OpContext, name: str) -> Graph:
    """The graph attribute ``name`` (If branches, Loop / Scan / SequenceMap bodies)."""
    graph = ctx.attr(name)
    if not isinstance(graph, Graph):
        raise ctx.invalid(f"attribute {name!r} must be a graph, got {type(graph).__name__}")
    return graph


def spatial_attrs(ctx: OpContext, kernel_shape: tuple[int, ...]):
    """``strides, dilations, pads`` for an op over ``len(kernel_shape)`` spatial dims,
    with ONNX's defaults (1s and zero pads). ``pads`` is ``[(begin, end), ...]``."""
    n = len(kernel_shape)
    strides = tuple(int(s) for s in ctx.attr("strides", [1] * n))
    dilations = tuple(int(d) for d in ctx.attr("dilations", [1] * n))
    pads = [int(p) for p in ctx.attr("pads", [0] * (2 * n))]
    if len(strides) != n or len(dilations) != n or len(pads) != 2 * n:
        raise ctx.invalid(f"strides {list(strides)}, dilations {list(dilations)} and pads "
                          f"{pads} must have {n}, {n} and {2 * n} entries for a {n}-D kernel")
    if any(s < 1 for s in strides) or any(d < 1 for d in dilations) or any(p < 0 for p in pads):
        raise ctx.invalid(f"strides and dilations must be >= 1 and pads >= 0, got strides "
                          f"{list(strides)}, dilations {list(dilations)}, pads {pads}")
    return strides, dilations, list(zip(pads[:n], pads[n:]))


def auto_pads(ctx: OpContext, in_shape, kernel_shape, strides, dilations, pads):
    """Resolve ``auto_pad`` (NOTSET, VALID, SAME_UPPER, SAME_LOWER) into explicit pads
    for the spatial sizes ``in_shape``."""
    mode = ctx.attr("auto_pad")
    if mode in ("NOTSET", ""):
        return pads
    if mode == "VALID":
        return [(0, 0)] * len(kernel_shape)
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        raise ctx.invalid(f"auto_pad must be NOTSET, VALID, SAME_UPPER or SAME_LOWER, got {mode!r}")
    out = []
    for size, k, s, d in zip(in_shape, kernel_shape, strides, dilations):
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small = total // 2
        out.append((small, total - small) if mode == "SAME_UPPER" else (total - small, small))
    return out


def check_window_fits(ctx: OpContext, sizes, kernel_shape, dilations, pads) -> None:
    """Refuse windows (dilated kernels) larger than the padded input: no output at all."""
    for size, k, d, (pb, pe) in zip(sizes, kernel_shape, dilations, pads):
        if provably(lambda: size + pb + pe < (k - 1) * d + 1):  # symbolic: at run time
            raise ctx.invalid(f"the window {list(kernel_shape)} (dilations {list(dilations)}) is "
                              f"larger than the padded input {list(sizes)} with pads {pads}")


def normalize_axis(ctx: OpContext, axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ctx.invalid(f"axis {axis} is out of range for a rank-{rank} input")
    return axis % rank if rank else 0


def const_array(value) -> np.ndarray:
    return np.asarray(value)


NARROW_INTS = {np.dtype(t) for t in (ml_dtypes.int2, ml_dtypes.uint2, ml_dtypes.int4,
                                     ml_dtypes.uint4)}


def onnx_dtype(ctx: OpContext, to: int) -> np.dtype:
    """The NumPy dtype of ONNX element type ``to`` as JAX holds it (int64 is int32
    without x64); string types and types XLA lacks (float6) are refused."""
    dtype = numpy_dtype(to)
    if dtype is None:
        raise ctx.invalid(f"{to} is not a known ONNX element type")
    if dtype.kind in "OSU" or dtype.name in ("float6_e2m3fn", "float6_e3m2fn"):
        raise ctx.fail(f"{dtype.name} is not supported (JAX has no such dtype)")
    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


def cast_to(ctx: OpContext, x, dtype: np.dtype):
    """``x.astype(dtype)``; with ``saturate`` (default 1) floats out of a float8 type's range
    become its largest finite value instead of inf/NaN; 2- and 4-bit integers wrap around;
    float8e8m0 follows ``round_mode``."""
    x = jnp.asarray(x)
    saturate = bool(int(ctx.attr("saturate", 1)))
    if dtype == np.dtype(ml_dtypes.float8_e8m0fnu):
        return _to_e8m0(ctx, x, saturate, ctx.attr("round_mode", "up"))
    if dtype.name.startswith("float8") and saturate and jnp.issubdtype(x.dtype, jnp.floating):
        top = float(ml_dtypes.finfo(dtype).max)
        x = jnp.clip(x, -top, top)
    if dtype in NARROW_INTS:
        info = ml_dtypes.iinfo(dtype)
        x = (x.astype(jnp.int32) - info.min) % (info.max - info.min + 1) + info.min
    return x.astype(dtype)


def _to_e8m0(ctx: OpContext, x, saturate: bool, round_mode: str):
    """float8e8m0 holds only powers of two ``2**(e - 127)``, with float32's exponent bias: the
    result is x's float32 exponent, plus one when rounding up ('up': any fraction, 'nearest':
    a fraction of at least 1/2, 'down': never). NaN stays NaN; with ``saturate``, Inf and
    overflow give the largest value 2**127, without it NaN. The sign is ignored (negative
    inputs are undefined in ONNX)."""
    bits = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    exponent = (bits >> 23) & 0xFF
    fraction = bits & 0x7FFFFF
    if round_mode == "up":
        bump = fraction != 0
    elif round_mode == "nearest":  # ties (1.5 * 2**e) round up; 2**-127 itself is exact
        bump = (fraction >= 0x400000) & ((fraction > 0x400000) | (exponent > 0))
    elif round_mode == "down":
        bump = jnp.zeros_like(fraction, bool)
    else:
        raise ctx.invalid(f"round_mode must be 'up', 'down' or 'nearest', got {round_mode!r}")
    code = jnp.minimum(exponent + bump, 254 if saturate else 255)  # 255 is NaN
    code = jnp.where((exponent == 255) & (fraction != 0), 255, code)
    return lax.bitcast_convert_type(code.astype(jnp.uint8), jnp.float8_e8m0fnu)
