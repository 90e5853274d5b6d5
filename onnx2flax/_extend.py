"""The public extension API: handlers for custom or contrib ops (``register_op``) and the
context they receive (``OpContext``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from ._core.graph import Node
from ._core.registry import Layout, register
from .errors import InvalidModelError, UnsupportedOpError

__all__ = ["OpContext", "register_op"]

Handler = TypeVar("Handler", bound=Callable[..., Any])


@runtime_checkable
class OpContext(Protocol):
    """What a handler receives as its first argument, besides its inputs.

    ``node`` is the ONNX node (``.name``, ``.op_type``, ``.domain``, ``.inputs``,
    ``.outputs``, ``.attrs``), ``opset`` the model's opset of the node's domain, ``train``
    whether the module is applied with ``train=True``, ``label`` how messages name the node
    (``Conv node 'conv1'``)."""

    node: Node

    @property
    def opset(self) -> int: ...

    @property
    def train(self) -> bool: ...

    @property
    def label(self) -> str: ...

    def attr(self, name: str, default: Any = ...) -> Any:
        """Attribute ``name`` (decoded: int, float, str, list, NumPy array), or ``default``
        when absent; without a default a missing attribute is an ``InvalidModelError``.
        Ops ONNX defines have their schema's defaults filled in."""

    def fail(self, message: str) -> UnsupportedOpError:
        """An error naming the node, to ``raise`` for a case the handler does not support."""

    def invalid(self, message: str) -> InvalidModelError:
        """An error naming the node, to ``raise`` for a malformed node."""

    def static(self, value: Any, what: str) -> np.ndarray:
        """``value`` as NumPy when known at conversion time, else an error saying ``what``
        must be constant."""

    def make_rng(self, name: str = "dropout") -> Any:
        """A JAX PRNG key from the module's ``rngs`` (``apply(..., rngs={name: key})``)."""


def register_op(op_type: str, *, domain: str = "", since: int = 1,
                layout: Layout = "onnx") -> Callable[[Handler], Handler]:
    """Decorator adding ``fn(ctx: OpContext, *inputs) -> output | tuple of outputs`` as the
    handler of ``domain::op_type`` for models whose opset of ``domain`` is ``since`` or more.

    Inputs are JAX arrays (NumPy arrays when known at conversion time), ``None`` for an
    absent optional input; write the handler with ``jax.numpy`` / ``jax.lax``. With
    ``layout="onnx"`` (default) inputs and outputs are in ONNX order; with
    ``layout="elementwise"`` (unary or broadcasting ops) the inputs keep their common layout
    and no transpose is inserted. Registering the same ``(domain, op_type, since)`` twice is
    an error; a different ``since`` adds a version.
    """
    if layout not in ("onnx", "elementwise"):
        raise ValueError(f"layout must be 'onnx' or 'elementwise', got {layout!r}")
    return register(op_type, since=since, domain=domain,
                    layout=layout)
