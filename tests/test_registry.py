"""The op registry's handlers: typed for mypy (scripts/test.sh)."""

from __future__ import annotations

import inspect

from onnx2flax import ops
from onnx2flax._core.registry import _REGISTRY


def test_every_handler_annotates_ctx():
    """mypy checks a handler's body against ``OpContext`` and its signature against
    ``register`` only when ``ctx`` is annotated: every handler in ``onnx2flax/ops`` is
    (a lambda's ``ctx`` takes its type from ``register``'s)."""
    unannotated = sorted(
        f"{spec.fn.__module__}.{spec.fn.__qualname__}"
        for specs in _REGISTRY.values() for spec in specs
        if spec.fn.__module__.startswith(ops.__name__) and spec.fn.__name__ != "<lambda>"
        and next(iter(inspect.signature(spec.fn).parameters.values())).annotation != "OpContext")
    assert unannotated == []
    assert sum(len(specs) for specs in _REGISTRY.values()) > 200
