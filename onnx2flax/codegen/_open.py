"""The inputs' open dims as symbolic dims: what generated source reads from its inputs."""

from __future__ import annotations

import re
from typing import Any

import jax
from jax import export

from .._core import boundary as _boundary
from ._literals import Names

#: A ``dim_param`` that is a linear expression ``a*s + b`` of one symbol.
_LINEAR = re.compile(r"\s*(?:(\d+)\s*\*\s*)?([A-Za-z_]\w*)\s*(?:([+-])\s*(\d+))?\s*")


def open_inputs(specs, ids: Names):
    """Stand-ins for the inputs ``specs`` in the module's layout, their unknown dims
    symbolic (``jax.export``): one symbol per ``dim_param`` (shared by the inputs naming it),
    one per unnamed or ``?`` dim, each named (by ``ids``) as the source's variable holding
    it. A ``dim_param`` of the form ``a*s + b`` (torch's ``2*h``) is that expression of
    symbol ``s``. Returns the stand-ins, the symbols by name, and for each input name and
    ONNX axis ``(symbol's name, a, b)``: the source reads ``s = (x.shape[i] - b) // a``."""
    keys: dict[Any, tuple[str, int, int]] = {}  # dim -> (symbol's name in the file, a, b)
    for spec in specs:
        for axis, d in enumerate(spec.shape or ()):
            key = _dim_key(spec, axis)
            if isinstance(d, int) or key in keys:
                continue
            linear = _LINEAR.fullmatch(d) if key is d else None
            if linear:
                a, name, sign, b = linear.groups()
                keys[key] = (name, int(a or 1), int(b or 0) * (-1 if sign == "-" else 1))
            else:
                keys[key] = (d if key is d else f"{spec.name}_dim{axis}", 1, 0)
    names: dict[str, str] = {}  # as in the file -> as in the source
    for name, _, _ in keys.values():
        if name not in names:
            safe = "d_" + name if re.fullmatch(r"(t|C|fnt)[0-9]+", name) else name
            names[name] = ids.take(safe, "")  # not a temporary's name
    symbols = dict(zip(names, export.symbolic_shape(", ".join(names.values())))) \
        if names else {}
    stand_ins = []
    reads: dict[str, dict[int, tuple[str, int, int]]] = {}
    for spec in specs:
        shape = []
        for axis, d in enumerate(spec.shape or ()):
            if isinstance(d, int):
                shape.append(d)
                continue
            name, a, b = keys[_dim_key(spec, axis)]
            shape.append(a * symbols[name] + b)
            reads.setdefault(spec.name, {})[axis] = (names[name], a, b)
        perm = _boundary.held_perm(spec, len(shape))
        stand_ins.append(jax.ShapeDtypeStruct(tuple(shape[i] for i in perm), spec.dtype))
    return stand_ins, {str(d): d for d in symbols.values()}, reads


def _dim_key(spec, axis: int):
    """What identifies an open dim: its ``dim_param``, shared by the dims naming it, or
    (unnamed, or ``?``: exporters' "unknown") the dim itself."""
    d = spec.shape[axis]
    return d if isinstance(d, str) and d not in ("", "?") else (spec.name, axis)
