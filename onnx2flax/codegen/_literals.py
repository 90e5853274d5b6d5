"""Python source for values: identifiers from untrusted names, scalars, dtypes, parameters."""

from __future__ import annotations

import ast
import keyword
import re
from collections.abc import Sequence
from enum import Enum

import numpy as np
from jax import lax

from .._core.dims import is_dim


class Names:
    """Python identifiers from untrusted names: ``[A-Za-z0-9_]`` only, a fixed prefix (so no
    keyword, builtin or module name can be hit), unique, none of ``reserved``. With an empty
    prefix a name that does not start with a letter gets ``w`` (no dunder, no digit)."""

    def __init__(self, reserved=()) -> None:
        self._taken: set[str] = set(reserved)

    def take(self, name: str, prefix: str) -> str:
        base = prefix + (re.sub(r"[^A-Za-z0-9_]", "_", name)[:48] or "_")
        if not base[0].isalpha():
            base = "w" + base
        candidate, n = base, 0
        while candidate in self._taken or keyword.iskeyword(candidate):
            n += 1
            candidate = f"{base}_{n}"
        self._taken.add(candidate)
        return candidate


def node_text(node) -> str:
    """``Conv node 'name'`` for comments and messages: ASCII only, quotes escaped."""
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', node.op_type)} node {ascii(node.name)}"


def doc(name: str) -> str:
    """``name`` for a docstring: an ASCII literal with every double quote escaped."""
    return ascii(name).replace('"', '\\"')


def shape_text(value) -> str:
    return f"{np.dtype(value.dtype).name}{list(value.shape)}"


def dtype_text(dtype) -> str:
    """Source for a NumPy scalar type: ``np.float32``, or for the types ``ml_dtypes`` adds
    (registered by importing jax) ``np.dtype('bfloat16').type``."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return "np.bool_"  # np.bool is NumPy 2's
    if getattr(np, dtype.name, None) is dtype.type:
        return f"np.{dtype.name}"
    return f"np.dtype({dtype.name!r}).type"


def scalar(value: np.ndarray) -> str:
    v = value.item()
    if isinstance(v, float) and not np.isfinite(v):
        v = f"float({repr(v)!r})"
    else:
        v = repr(v)
    return f"{dtype_text(value.dtype)}({v})"


def python_number(value: np.ndarray) -> str | None:
    """A weakly typed scalar as a plain Python number (``0.5``, ``(-1)``), or ``None``."""
    v = value.item()
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (
            isinstance(v, float) and not np.isfinite(v)):
        return None
    text = repr(v)
    return f"({text})" if text.startswith("-") else text


def literal_names(names: Sequence[str]) -> str:
    """A tuple display of variable names: ``(a, b,)``."""
    return "(" + "".join(f"{n}, " for n in names) + ")"


def literal(value) -> str:
    """Python source for a parameter value; ``TypeError`` for anything else."""
    if isinstance(value, Enum):  # before int: lax.FftType, lax.RoundingMethod are IntEnums
        owner = type(value).__name__
        if getattr(lax, owner, None) is type(value):
            return f"lax.{owner}.{value.name}"
        raise TypeError(f"enum {type(value).__qualname__} is not in jax.lax")
    if value is None or isinstance(value, (bool, int, str)):
        return repr(value)
    if is_dim(value):
        return dim_text(value)
    if isinstance(value, float):
        return repr(value) if np.isfinite(value) else f"float({repr(value)!r})"
    if isinstance(value, complex):
        return f"complex({literal(value.real)}, {literal(value.imag)})"
    if isinstance(value, np.generic):
        return scalar(np.asarray(value))
    if isinstance(value, np.dtype):
        return dtype_text(value)
    if isinstance(value, type) and issubclass(value, np.generic):
        return dtype_text(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        owner = type(value).__name__
        if getattr(lax, owner, None) is not type(value):
            raise TypeError(f"{type(value).__qualname__} is not in jax.lax")
        fields = ", ".join(f"{f}={literal(getattr(value, f))}" for f in value._fields)
        return f"lax.{owner}({fields})"
    if isinstance(value, tuple):
        items = [literal(v) for v in value]
        return f"({items[0]},)" if len(items) == 1 else "(" + ", ".join(items) + ")"
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    raise TypeError(f"cannot write a {type(value).__qualname__} as source")


class _DimSyntax(ast.NodeTransformer):
    """``floordiv(a, b)`` / ``mod(a, b)`` (how JAX prints symbolic dims) as ``a // b`` /
    ``a % b``; any other function of dims has no plain-Python form here."""

    _OPS = {"floordiv": ast.FloorDiv, "mod": ast.Mod}

    def visit_Call(self, node: ast.Call):
        self.generic_visit(node)
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name in self._OPS and len(node.args) == 2 and not node.keywords:
            return ast.BinOp(node.args[0], self._OPS[name](), node.args[1])
        raise TypeError(f"the size {ast.unparse(node)} (a {name} of sizes known only at run "
                        "time) cannot be written as source")


def dim_text(dim) -> str:
    """Python source for a symbolic dim, on the variables holding the input dims:
    ``batch // 2 + 1``."""
    return ast.unparse(_DimSyntax().visit(ast.parse(str(dim), mode="eval")))
