"""Helpers shared by op families: subgraphs, spatial attributes, padding, axis handling."""

from __future__ import annotations

import numpy as np

from .._graph import Graph
from .._module import OpContext


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
    mode = ctx.attr("auto_pad", "NOTSET")
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
        if size + pb + pe < (k - 1) * d + 1:
            raise ctx.invalid(f"the window {list(kernel_shape)} (dilations {list(dilations)}) is "
                              f"larger than the padded input {list(sizes)} with pads {pads}")


def normalize_axis(ctx: OpContext, axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ctx.invalid(f"axis {axis} is out of range for a rank-{rank} input")
    return axis % rank if rank else 0


def const_array(value) -> np.ndarray:
    return np.asarray(value)
