"""Shape arithmetic on symbolic dims: the ops of shape subgraphs evaluated with NumPy on
shape values that hold symbolic dims (object arrays, see ``_core.dims``).

``Shape -> Gather -> Unsqueeze -> Concat -> Reshape`` of a model traced with a symbolic
batch computes ``[batch, 512]`` here, which Reshape then takes as it takes int64 shapes.
Only integer arithmetic is defined on symbolic dims; a node that needs more (a float
scale of a dim, a comparison that depends on the dim's value) is refused by name.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from .._core.dims import as_dim, is_symbolic, shape_array
from .._core.graph import Node
from ..errors import UnsupportedOpError, node_label


def handles(node: Node, arrays: list) -> bool:
    """Whether ``node`` on ``arrays`` is shape arithmetic this module evaluates: the
    data it moves holds symbolic dims (a Slice of a constant table to a symbolic length
    is the handler's), and a Cast is to an integer type (a float of a dim is computed at
    run time by the op's handler)."""
    if node.domain != "" or node.op_type not in _OPS:
        return False
    if node.op_type in _MOVES and not is_symbolic(arrays[0]):
        return False
    return node.op_type != "Cast" or np.issubdtype(
        onnx.helper.tensor_dtype_to_np_dtype(node.attrs["to"]), np.integer)


def fold_dims(node: Node, arrays: list, opset: int) -> list[np.ndarray]:
    """``node`` on NumPy inputs of which some hold symbolic dims; ONNX order in and out."""
    try:
        out = _OPS[node.op_type](node.attrs, opset, *arrays)
    except UnsupportedOpError:
        raise
    except Exception as exc:  # noqa: BLE001  (a comparison or operation dims do not define)
        raise _refused(node, arrays, f"{type(exc).__name__}: {exc}") from None
    return [_tidy(o) for o in (out if isinstance(out, list) else [out])]


def _refused(node: Node, arrays: list, why: str) -> UnsupportedOpError:
    shown = [a.tolist() if isinstance(a, np.ndarray) else a for a in arrays]
    return UnsupportedOpError(
        f"{node_label(node.name, node.op_type)} computes on sizes known only at run time "
        f"{shown}, which generated source cannot do ({why})")


def _tidy(value: np.ndarray) -> np.ndarray:
    """A result as an array (NumPy gives one symbolic element as itself); an object array
    whose dims all became known is int64 again."""
    if not isinstance(value, np.ndarray):
        array = np.empty((), object)
        array[()] = value
        value = array
    if not is_symbolic(value):
        return value
    flat = [as_dim(v) for v in value.reshape(-1)]
    return shape_array(flat).reshape(value.shape)


def _axes(attrs: dict, opset: int, given, since: int):
    """``axes`` as a list: an input from opset ``since``, an attribute before."""
    value = attrs.get("axes") if opset < since else given
    return None if value is None else [int(a) for a in np.asarray(value).reshape(-1)]


def _gather(attrs, opset, data, indices):
    axis = int(attrs["axis"])
    indices = np.asarray(indices, np.int64)
    indices = np.where(indices < 0, indices + data.shape[axis], indices)
    return np.take(data, indices, axis=axis)


def _concat(attrs, opset, *parts):
    return np.concatenate([np.asarray(p, object) for p in parts], axis=int(attrs["axis"]))


def _unsqueeze(attrs, opset, x, axes=None):
    axes = _axes(attrs, opset, axes, 13)
    rank = x.ndim + len(axes)
    return np.expand_dims(x, tuple(sorted(a % rank for a in axes)))


def _squeeze(attrs, opset, x, axes=None):
    axes = _axes(attrs, opset, axes, 13)
    return np.squeeze(x, axis=None if axes is None else tuple(a % x.ndim for a in axes))


def _slice(attrs, opset, x, starts=None, ends=None, axes=None, steps=None):
    if opset < 10:
        starts, ends, axes = attrs["starts"], attrs["ends"], attrs.get("axes")
    starts, ends = np.asarray(starts).reshape(-1), np.asarray(ends).reshape(-1)
    axes = range(len(starts)) if axes is None else np.asarray(axes).reshape(-1)
    steps = [1] * len(starts) if steps is None else np.asarray(steps).reshape(-1)
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        # NumPy clamps like ONNX; ONNX's INT64 extremes mean "to the end"
        index[int(axis) % x.ndim] = slice(int(start), int(end), int(step))
    return x[tuple(index)]


def _div(attrs, opset, a, b):
    # ONNX integer Div truncates; sizes are non-negative, where that is floor division
    return np.asarray(a, object) // np.asarray(b, object)


def _reduce_prod(attrs, opset, x, axes=None):
    axes = _axes(attrs, opset, axes, 18)
    keep = bool(attrs.get("keepdims", 1))
    if axes is None or not axes:
        return np.asarray(np.prod(x.reshape(-1)), object).reshape((1,) * x.ndim if keep else ())
    return np.prod(x, axis=tuple(a % x.ndim for a in axes), keepdims=keep)


def _reshape(attrs, opset, x, shape=None):
    shape = [int(d) for d in np.asarray(attrs["shape"] if opset < 5 else shape).reshape(-1)]
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


def _binary(op: Callable) -> Callable:
    return lambda attrs, opset, a, b: op(np.asarray(a, object), np.asarray(b, object))


#: Ops moving their first input's data (the others say how).
_MOVES = frozenset({"Identity", "Gather", "Unsqueeze", "Squeeze", "Slice", "Cast", "Reshape",
                    "ReduceProd"})

_OPS: dict[str, Callable] = {
    "Identity": lambda attrs, opset, x: x,
    "Gather": _gather,
    "Concat": _concat,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Slice": _slice,
    "Cast": lambda attrs, opset, x: x,  # to an integer type (see handles)
    "Reshape": _reshape,
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _div,
    "ReduceProd": _reduce_prod,
    "Equal": lambda attrs, opset, a, b: np.equal(np.asarray(a, object),
                                                 np.asarray(b, object)).astype(bool),
    "Where": lambda attrs, opset, c, a, b: np.where(np.asarray(c, bool), a, b),
}
