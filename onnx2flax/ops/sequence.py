"""Sequence and optional ops. A sequence is a Python list of tensors (ONNX layout) while
tracing, so positions and split sizes must be known at conversion time and a sequence
cannot cross a ``lax`` loop (a Loop that carries one is unrolled, ops/control.py). An
optional is its value, or ``None`` when empty."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .._core.limits import budget
from .._core.registry import register
from .._pipeline.module import OpContext
from ._common import normalize_axis, subgraph


def _seq(ctx: OpContext, value) -> list:
    if not isinstance(value, list):
        raise ctx.invalid(f"input 0 must be a sequence, got a tensor of shape {list(np.shape(value))}")
    return value


def _position(ctx: OpContext, position, length: int, default: int, insert: bool = False) -> int:
    """A static position in ``[-length, length)`` (``length`` itself allowed for inserts)."""
    if position is None:
        return default
    pos = int(ctx.static(position, "position").reshape(()))
    if not -length <= pos < length + insert:
        raise ctx.invalid(f"position {pos} is out of range for a sequence of {length} tensors")
    return pos % (length + insert) if length + insert else 0


@register("SequenceEmpty", since=11)
def sequence_empty(ctx: OpContext):
    return ([],)


@register("SequenceConstruct", since=11)
def sequence_construct(ctx: OpContext, *tensors):
    return (list(tensors),)


@register("SequenceLength", since=11)
def sequence_length(ctx: OpContext, seq):
    return np.asarray(len(_seq(ctx, seq)), np.int64)


@register("SequenceAt", since=11, static_inputs=(1,))
def sequence_at(ctx: OpContext, seq, position):
    seq = _seq(ctx, seq)
    return seq[_position(ctx, position, len(seq), 0)]


@register("SequenceInsert", since=11, static_inputs=(2,))
def sequence_insert(ctx: OpContext, seq, tensor, position=None):
    seq = list(_seq(ctx, seq))
    seq.insert(_position(ctx, position, len(seq), len(seq), insert=True), tensor)
    return (seq,)


@register("SequenceErase", since=11, static_inputs=(1,))
def sequence_erase(ctx: OpContext, seq, position=None):
    seq = list(_seq(ctx, seq))
    if not seq:
        raise ctx.invalid("cannot erase from an empty sequence")
    del seq[_position(ctx, position, len(seq), len(seq) - 1)]
    return (seq,)


@register("ConcatFromSequence", since=11)
def concat_from_sequence(ctx: OpContext, seq):
    """Concatenate along ``axis``, or stack along a new ``axis`` with ``new_axis=1``."""
    seq = _seq(ctx, seq)
    if not seq:
        raise ctx.invalid("cannot concatenate an empty sequence")
    new_axis = int(ctx.attr("new_axis"))
    axis = normalize_axis(ctx, int(ctx.attr("axis")), np.ndim(seq[0]) + new_axis)
    return jnp.stack(seq, axis) if new_axis else jnp.concatenate(seq, axis)


@register("SplitToSequence", since=11, static_inputs=(1,))
def split_to_sequence(ctx: OpContext, x, split=None):
    """``split`` scalar: chunks of that size (the last may be shorter); 1-D: the sizes.
    Without ``split``: size-1 pieces, squeezed unless ``keepdims``."""
    axis = normalize_axis(ctx, int(ctx.attr("axis")), np.ndim(x))
    length = np.shape(x)[axis]
    if split is None:
        budget().check_sequence(length, ctx.label)
        pieces = jnp.split(x, length, axis) if length else []
        return ([jnp.squeeze(p, axis) for p in pieces] if not int(ctx.attr("keepdims"))
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
    budget().check_sequence(len(sizes), ctx.label)
    return (jnp.split(x, np.cumsum(sizes)[:-1].tolist(), axis),)


@register("SequenceMap", since=17)
def sequence_map(ctx: OpContext, seq, *others):
    """The ``body`` graph applied to each element of ``seq`` (and of the other sequence
    inputs, all of its length; tensor inputs are passed whole). One output sequence per body
    output. Unrolled while tracing, so elements may differ in shape."""
    body = subgraph(ctx, "body")
    inputs = [_seq(ctx, seq), *others]
    if len(body.inputs) != len(inputs) or len(body.outputs) != len(ctx.node.outputs):
        raise ctx.invalid(f"the body takes {len(body.inputs)} inputs and gives "
                          f"{len(body.outputs)} outputs; the node has {len(inputs)} and "
                          f"{len(ctx.node.outputs)}")
    lengths = {len(x) for x in inputs if isinstance(x, list)}
    if len(lengths) > 1:
        raise ctx.invalid(f"the input sequences have different lengths {sorted(lengths)}")
    outs = [[] for _ in body.outputs]
    for i in range(len(inputs[0])):
        feeds = [x[i] if isinstance(x, list) else x for x in inputs]
        for out, value in zip(outs, ctx.run_graph(body, feeds)):
            out.append(value)
    return tuple(outs)


@register("Optional", since=15)
def optional(ctx: OpContext, value=None):
    """An optional holding ``value``, or an empty one (``None``) when the input is absent."""
    if value is None and "type" not in ctx.node.attrs:
        raise ctx.invalid("an empty Optional (no input) needs the 'type' attribute")
    return (value,)


@register("OptionalHasElement", since=15)
def optional_has_element(ctx: OpContext, value=None):
    """False for an empty optional or an absent input; true for any tensor or sequence."""
    return np.asarray(value is not None)


@register("OptionalGetElement", since=15)
def optional_get_element(ctx: OpContext, value):
    """The optional's value (a tensor or sequence given directly is returned as is)."""
    if value is None:
        raise ctx.invalid("the optional is empty; OptionalGetElement needs a value")
    return (value,)
