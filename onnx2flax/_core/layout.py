"""Layout bookkeeping: every value carries its permutation relative to ONNX order.

A value ``x`` with permutation ``perm`` holds ``onnx_value.transpose(perm)``. ONNX's NCHW
tensor held channels-last has ``perm == (0, 2, 3, 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

Perm = tuple[int, ...]


def identity(rank: int) -> Perm:
    return tuple(range(rank))


def channels_last(rank: int) -> Perm:
    """``(0, 2, ..., rank-1, 1)``: batch first, channels last."""
    return (0, *range(2, rank), 1) if rank >= 3 else identity(rank)


def is_identity(perm: Perm) -> bool:
    return all(i == p for i, p in enumerate(perm))


def convert(x, src: Perm, dst: Perm):
    """Re-lay ``x`` (held as ``src``) so that it is held as ``dst``.

    Uses a reshape instead of a transpose when only size-1 axes move (e.g. the
    ``[N, 1, 1, C]`` output of a global pooling), so XLA sees no transpose at all.
    """
    if src == dst:
        return x
    order = tuple(src.index(d) for d in dst)
    if is_identity(order):
        return x
    shape = np.shape(x)
    moved = [a for a in order if shape[a] != 1]
    if moved == sorted(moved):
        return (np if isinstance(x, np.ndarray) else jnp).reshape(x, tuple(shape[a] for a in order))
    return (np if isinstance(x, np.ndarray) else jnp).transpose(x, order)


def to_onnx(x, perm: Perm):
    return convert(x, perm, identity(len(perm)))


def axis_in(perm: Perm, onnx_axis: int) -> int:
    """Where ONNX axis ``onnx_axis`` (may be negative) lives in a value held as ``perm``."""
    rank = len(perm)
    return perm.index(onnx_axis % rank if rank else 0)


def broadcast_to_perm(x, perm: Perm, target: Perm):
    """Bring ``x`` (held as ``perm``) into the layout ``target`` of a higher or equal rank
    value, following ONNX's numpy-style broadcasting (leading axes added as size 1)."""
    if perm == target:
        return x
    x = to_onnx(x, perm)
    rank = len(target)
    missing = rank - np.ndim(x)
    if missing:
        x = (np if isinstance(x, np.ndarray) else jnp).reshape(x, (1,) * missing + np.shape(x))
    return convert(x, identity(rank), target)


def remove_axes(perm: Perm, onnx_axes: Sequence[int]) -> Perm:
    """The permutation left after dropping ONNX axes ``onnx_axes`` (e.g. a reduction
    without keepdims): remaining axes keep their relative placement."""
    drop = {a % len(perm) for a in onnx_axes}
    kept = [p for p in perm if p not in drop]
    rank_map = {old: new for new, old in enumerate(sorted(kept))}
    return tuple(rank_map[p] for p in kept)
