"""Handler failures as package errors: a handler or params builder that raises anything but
an ``OnnxConversionError`` is classified by what it raised (bad values: the model's fault;
a value needed at conversion time: unsupported; anything else: a bug of ours)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ..errors import (InternalError, InvalidModelError, OnnxConversionError, ResourceLimitError,
                      UnsupportedOpError, node_label)
from .dims import Inconclusive
from .graph import Node

_NEEDS_STATIC = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                 jax.errors.TracerBoolConversionError, jax.errors.TracerIntegerConversionError,
                 jax.errors.NonConcreteBooleanIndexError)


def guarded(node: Node, arrays: list, fn: Callable[..., Any], *args):
    """``fn(*args)`` for ``node`` (a handler or params builder on ``arrays``), with any
    exception that is not already a package error turned into one by :func:`handler_error`."""
    try:
        return fn(*args)
    except OnnxConversionError:
        raise
    except Exception as exc:  # noqa: BLE001  (classified, never swallowed)
        error = handler_error(exc, node, arrays)
        raise error from (exc if isinstance(error, InternalError) else None)


def handler_error(exc: Exception, node: Node, arrays: list) -> OnnxConversionError:
    """The package error for a (non-package) exception raised by a handler: bad values
    (shapes, attributes) are the model's fault, anything else is a bug of ours."""
    label = node_label(node.name, node.op_type)
    shapes = [_shape_of(a) for a in arrays]
    found = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, _NEEDS_STATIC):
        return UnsupportedOpError(f"{label} needs a value known at conversion time (a constant "
                                  f"or computed from shapes), but it depends on the model's "
                                  f"inputs ({type(exc).__name__})")
    if isinstance(exc, Inconclusive):
        return UnsupportedOpError(f"{label} needs to compare sizes known only at run time "
                                  f"(inputs of shapes {shapes}): "
                                  f"{str(exc).splitlines()[0]}")
    if isinstance(exc, MemoryError):
        return ResourceLimitError(f"{label} ran out of memory on inputs of shapes {shapes}")
    if isinstance(exc, NotImplementedError):
        return UnsupportedOpError(f"{label} on inputs of shapes {shapes}: {found}")
    if isinstance(exc, (TypeError, ValueError, IndexError, ZeroDivisionError, OverflowError)):
        return InvalidModelError(f"{label} failed on inputs of shapes {shapes}: {found}")
    return InternalError(f"{label}: internal error in onnx2flax on inputs of shapes {shapes} "
                         f"({found}); please report it with the model")


def _shape_of(value) -> list | None:
    """A tensor's shape; a sequence's (a list of tensors, maybe tracers) as ``seq[shapes]``."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return ["seq", *[_shape_of(v) for v in value[:8]]] + (["..."] if len(value) > 8 else [])
    return list(np.shape(value))
