"""Symbolic dims: sizes known only at run time, as generated source traces them.

``codegen`` traces a model whose inputs have unknown dims (a ``dim_param``, ``-1``) with
``jax.export`` symbolic dims, so that the source it writes reads them from its inputs
(``batch = x.shape[0]``) instead of fixing them. Shape arithmetic then holds such dims:
``Shape`` gives a NumPy object array of ints and symbolic dims, which shape subgraphs
(Gather, Concat, Mul...) compute on like on int64 arrays (``_pipeline.dims_fold``), and the
handlers that take shapes (Reshape, Expand...) pass on to ``jax.numpy``. The interpreter
itself always runs on concrete shapes and never sees them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as _export

#: The type of a symbolic dim (``jax.export.symbolic_shape``'s elements).
DimExpr = type(_export.symbolic_shape("d")[0])


def is_dim(value: Any) -> bool:
    """Whether ``value`` is a symbolic dim (not a plain or NumPy integer)."""
    return isinstance(value, DimExpr)


def is_symbolic(value: Any) -> bool:
    """Whether ``value`` is a shape array holding symbolic dims (an object array)."""
    return isinstance(value, np.ndarray) and value.dtype == object


def as_dim(value: Any):
    """One dim of a shape value: an ``int``, or a symbolic dim kept as it is."""
    return value if is_dim(value) else int(value)


def shape_array(dims) -> np.ndarray:
    """``dims`` (ints and symbolic dims) as a shape value: int64 when all are known, else
    an object array."""
    dims = [as_dim(d) for d in dims]
    if any(is_dim(d) for d in dims):
        out = np.empty(len(dims), object)
        out[:] = dims
        return out
    return np.asarray(dims, np.int64)


def _inconclusive() -> type[Exception]:
    """What JAX raises for a comparison of symbolic dims it cannot decide (public as
    ``jax.errors.InconclusiveDimensionOperation`` only from jax 0.9)."""
    found = getattr(jax.errors, "InconclusiveDimensionOperation", None)
    if found is not None:
        return found
    d = _export.symbolic_shape("d")[0]
    try:
        bool(d >= 2)
    except Exception as exc:  # noqa: BLE001  (its type is the answer)
        # the most general class of that name (jax 0.8 raises a subclass of core's)
        return [c for c in type(exc).__mro__ if c.__name__ == type(exc).__name__][-1]
    raise AssertionError("JAX decided d >= 2 for a symbolic d")


#: The exception of an undecidable comparison of symbolic dims.
Inconclusive = _inconclusive()


def provably(check: Callable[[], bool]) -> bool:
    """``check()``, a comparison of sizes, where it is decided; ``False`` where it depends
    on the value of a symbolic dim (a validity check then passes to run time)."""
    try:
        return bool(check())
    except Inconclusive:
        return False


def concrete_size(shape) -> float:
    """Elements of ``shape`` where its dims are known; symbolic dims count as 1 (a traced
    source allocates nothing: limits apply when it runs)."""
    return float(np.prod([1 if is_dim(d) else int(d) for d in shape]))


def index_dtype() -> np.dtype:
    """int64, or int32 where JAX runs without x64 (as ``jnp.asarray`` makes int64 data)."""
    return jax.dtypes.canonicalize_dtype(np.int64)


def as_values(value: np.ndarray) -> jax.Array:
    """A shape value holding symbolic dims as a traced integer array of those sizes."""
    return jnp.asarray(value.tolist(), index_dtype())
