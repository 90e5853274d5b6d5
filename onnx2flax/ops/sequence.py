"""Sequence ops. A sequence is a Python list of tensors (ONNX layout) while tracing, so
positions and split sizes must be known at conversion time; sequences cannot be graph
inputs or outputs, nor cross a ``lax`` loop."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .._registry import register
from ._common import normalize_axis


def _seq(ctx, value) -> list:
    if not isinstance(value, list):
        raise ctx.invalid(f"input 0 must be a sequence, got a tensor of shape {list(np.shape(value))}")
    return value


def _position(ctx, position, length: int, default: int, insert: bool = False) -> int:
    """A static position in ``[-length, length)`` (``length`` itself allowed for inserts)."""
    if position is None:
        return default
    pos = int(ctx.static(position, "position").reshape(()))
    if not -length <= pos < length + insert:
        raise ctx.invalid(f"position {pos} is out of range for a sequence of {length} tensors")
    return pos % (length + insert) if length + insert else 0


@register("SequenceEmpty", since=11)
def sequence_empty(ctx):
    return ([],)


@register("SequenceConstruct", since=11)
def sequence_construct(ctx, *tensors):
    return (list(tensors),)


@register("SequenceLength", since=11)
def sequence_length(ctx, seq):
    return np.asarray(len(_seq(ctx, seq)), np.int64)


@register("SequenceAt", since=11, static_inputs=(1,))
def sequence_at(ctx, seq, position):
    seq = _seq(ctx, seq)
    return seq[_position(ctx, position, len(seq), 0)]


@register("SequenceInsert", since=11, static_inputs=(2,))
def sequence_insert(ctx, seq, tensor, position=None):
    seq = list(_seq(ctx, seq))
    seq.insert(_position(ctx, position, len(seq), len(seq), insert=True), tensor)
    return (seq,)


@register("SequenceErase", since=11, static_inputs=(1,))
def sequence_erase(ctx, seq, position=None):
    seq = list(_seq(ctx, seq))
    if not seq:
        raise ctx.invalid("cannot erase from an empty sequence")
    del seq[_position(ctx, position, len(seq), len(seq) - 1)]
    return (seq,)


@register("ConcatFromSequence", since=11)
def concat_from_sequence(ctx, seq):
    """Concatenate along ``axis``, or stack along a new ``axis`` with ``new_axis=1``."""
    seq = _seq(ctx, seq)
    if not seq:
        raise ctx.invalid("cannot concatenate an empty sequence")
    new_axis = int(ctx.attr("new_axis", 0))
    axis = normalize_axis(ctx, int(ctx.attr("axis")), np.ndim(seq[0]) + new_axis)
    return jnp.stack(seq, axis) if new_axis else jnp.concatenate(seq, axis)


@register("SplitToSequence", since=11, static_inputs=(1,))
def split_to_sequence(ctx, x, split=None):
    """``split`` scalar: chunks of that size (the last may be shorter); 1-D: the sizes.
    Without ``split``: size-1 pieces, squeezed unless ``keepdims``."""
    axis = normalize_axis(ctx, int(ctx.attr("axis", 0)), np.ndim(x))
    length = np.shape(x)[axis]
    if split is None:
        pieces = jnp.split(x, length, axis) if length else []
        return ([jnp.squeeze(p, axis) for p in pieces] if not int(ctx.attr("keepdims", 1))
                else pieces,)
    split = ctx.static(split, "split")
    if split.ndim == 0:
        size = int(split)
        if size <= 0:
            raise ctx.invalid(f"split must be positive, got {size}")
        sizes = [size] * (length // size) + ([length % size] if length % size else [])
    else:
        sizes = [int(s) for s in split]
    if any(s < 0 for s in sizes) or sum(sizes) != length:
        raise ctx.invalid(f"split sizes {sizes} do not add up to the axis length {length}")
    return (jnp.split(x, np.cumsum(sizes)[:-1].tolist(), axis),)
