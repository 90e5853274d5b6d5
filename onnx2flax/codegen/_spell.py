"""The public spelling of a traced JAX operation, checked by tracing it again.

:func:`candidates` lists source expressions for one jaxpr equation, the way a Flax user
writes them first (``a + b``, ``jax.nn.relu(x)``, ``jnp.sum(x, axis=(1,))``, ``x.reshape(...)``),
then the public ``jax.lax`` function of the same name with its documented keyword
arguments. :func:`same_operation` traces an expression and accepts it only when it records
exactly the equation (primitive, parameters, operands, results) the handler traced: the
generated source then computes what the interpreter computes, bit for bit, on any JAX whose
public functions keep their meaning. Nothing is written as a primitive ``bind``.
"""

from __future__ import annotations

import ast
import inspect
import operator
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from ._literals import dtype_text, literal, literal_names

#: Call-like primitives whose body is read (traced source) or written (generated) inline.
INLINE = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr",
          "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr"}

#: What the generated source's expressions are evaluated with: its imports.
NAMESPACE = {"jax": jax, "jnp": jnp, "lax": lax, "nn": nn, "nnx": nnx, "np": np, "float": float,
             "complex": complex}

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow, ast.MatMult: operator.matmul,
           ast.BitAnd: operator.and_, ast.BitOr: operator.or_, ast.BitXor: operator.xor}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Invert: operator.invert}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
            ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge}

_OPERATORS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**", "eq": "==",
              "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "and": "&", "or": "|",
              "xor": "^"}
_UNARY_OPERATORS = {"neg": "-", "not": "~"}
_JNP_NAMES = {"max": "maximum", "min": "minimum", "atan2": "arctan2", "asin": "arcsin",
              "acos": "arccos", "atan": "arctan", "asinh": "arcsinh", "acosh": "arccosh",
              "atanh": "arctanh"}
_REDUCTIONS = {"reduce_sum": "sum", "reduce_max": "max", "reduce_min": "min",
               "reduce_prod": "prod", "reduce_and": "all", "reduce_or": "any"}
_WINDOW_REDUCERS = {"reduce_window_max": "lax.max", "reduce_window_min": "lax.min",
                    "reduce_window_sum": "lax.add"}
#: Namespaces holding public functions named like their primitive.
_PUBLIC = (("lax", lax), ("lax.linalg", lax.linalg))


def candidates(eqn, ins: list[str], flax: str = "nn") -> list[str]:
    """Source expressions for ``eqn`` on operands ``ins`` (source text), most idiomatic first.
    ``flax``: the name the source imports Flax's layers and pools as (``nn``, ``nnx``)."""
    prim, params = eqn.primitive.name, eqn.params
    found: list[str] = []
    if prim in _WINDOW_REDUCERS:
        found += _reduce_window(params, ins, eqn, flax)
    special = _SPECIAL.get(prim)
    if special is not None:
        found += special(params, ins, eqn)
    if prim in _OPERATORS and len(ins) == 2:
        found.append(f"{ins[0]} {_OPERATORS[prim]} {ins[1]}")
    elif prim in _UNARY_OPERATORS:
        found.append(f"{_UNARY_OPERATORS[prim]}{ins[0]}")
    name = _JNP_NAMES.get(prim, prim)
    if not eqn.primitive.multiple_results and callable(getattr(jnp, name, None)) and set(
            params) <= {"accuracy"} and prim not in _REDUCTIONS:
        found.append(f"jnp.{name}({', '.join(ins)})")
    public = _public_call(prim.replace("-", "_"), params, ins)
    if public is not None:
        found.append(public)
    if prim in INLINE and "name" in params:  # a jitted public function: jax.nn.hard_sigmoid
        fn = params["name"].lstrip("_")
        for space, module in (("jax.nn", jax.nn), ("jnp", jnp)):
            if callable(getattr(module, fn, None)):
                found.append(f"{space}.{fn}({', '.join(ins)})")
        if callable(getattr(jax.random, fn, None)) and len(eqn.outvars) == 1:
            shape = tuple(eqn.outvars[0].aval.shape)
            found.append(f"jax.random.{fn}({', '.join(ins)}, shape={literal(shape)})")
    return found


def _public_call(name: str, params: dict, ins: list[str]) -> str | None:
    """``lax.<name>(*ins, key=value...)`` with the parameters its signature names (at other
    than their defaults), or ``None`` when no public function has that name."""
    for space, module in _PUBLIC:
        fn = getattr(module, name, None)
        if callable(fn) and not isinstance(fn, type):
            break
    else:
        return None
    try:
        signature = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    args = list(ins)
    for key, value in params.items():
        p = signature.get(key)
        if p is None or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or (
                p.default is not p.empty and _same(value, p.default)):
            continue
        try:
            args.append(f"{key}={literal(value)}")
        except TypeError:
            return None
    return f"{space}.{name}({', '.join(args)})"


def _params_text(params: dict, keys) -> str | None:
    try:
        return ", ".join(f"{k}={literal(params[k])}" for k in keys)
    except TypeError:
        return None


def _max(params, ins, eqn):
    """``max(x, 0)``: ``jax.nn.relu(x)``."""
    zero = [k for k, v in enumerate(eqn.invars)
            if is_literal(v) and np.asarray(v.val).ndim == 0 and np.asarray(v.val) == 0]
    return [f"jax.nn.relu({ins[1 - zero[0]]})"] if zero else []


def _select_n(params, ins, eqn):
    return [f"jnp.where({ins[0]}, {ins[2]}, {ins[1]})"] if len(ins) == 3 else []


def _reduction(params, ins, eqn):
    fn = _REDUCTIONS[eqn.primitive.name]
    return [f"jnp.{fn}({ins[0]}, axis={literal(tuple(params['axes']))})",
            f"lax.{eqn.primitive.name}({ins[0]}, axes={literal(tuple(params['axes']))})"]


def _arg(params, ins, eqn):
    axis = params["axes"][0]
    fn = eqn.primitive.name
    return [f"jnp.{fn}({ins[0]}, axis={axis})",
            f"lax.{fn}({ins[0]}, axis={axis}, index_dtype={dtype_text(params['index_dtype'])})"]


def _reshape(params, ins, eqn):
    if params.get("dimensions") is not None:
        return []
    sizes = ", ".join(literal(d) for d in params["new_sizes"])
    return [f"{ins[0]}.reshape({sizes})"]


def _transpose(params, ins, eqn):
    return [f"jnp.transpose({ins[0]}, {literal(tuple(params['permutation']))})"]


def _broadcast(params, ins, eqn):
    return [f"jnp.broadcast_to({ins[0]}, {literal(tuple(params['shape']))})"]


def _convert(params, ins, eqn):
    dtype = dtype_text(params["new_dtype"])
    return [f"{ins[0]}.astype({dtype})", f"lax.convert_element_type({ins[0]}, {dtype})"]


def _squeeze(params, ins, eqn):
    return [f"jnp.squeeze({ins[0]}, axis={literal(tuple(params['dimensions']))})"]


def _dot(params, ins, eqn):
    return [f"{ins[0]} @ {ins[1]}"]


def _concatenate(params, ins, eqn):
    operands = "[" + ", ".join(ins) + "]"
    return [f"jnp.concatenate({operands}, axis={params['dimension']})",
            f"lax.concatenate({operands}, dimension={params['dimension']})"]


def _stack(params, ins, eqn):
    return [f"jnp.stack([{', '.join(ins)}], axis={params['axis']})"]


def _dynamic_slice(params, ins, eqn):
    """Start indices as given, or (when the traced ones were already in range) taken as
    they are, not wrapped when negative."""
    call = (f"lax.dynamic_slice({ins[0]}, {literal_names(ins[1:])}, "
            f"{literal(tuple(params['slice_sizes']))}")
    return [call + ")", call + ", allow_negative_indices=False)"]


def _dynamic_update_slice(params, ins, eqn):
    call = f"lax.dynamic_update_slice({ins[0]}, {ins[1]}, {literal_names(ins[2:])}"
    return [call + ")", call + ", allow_negative_indices=False)"]


def _iota(params, ins, eqn):
    dtype, shape = dtype_text(params["dtype"]), tuple(params["shape"])
    found = [f"jnp.arange({literal(shape[0])}, dtype={dtype})"] if len(shape) == 1 else []
    return found + [f"lax.broadcasted_iota({dtype}, {literal(shape)}, {params['dimension']})"]


def _integer_pow(params, ins, eqn):
    return [f"{ins[0]} ** {params['y']}" if params["y"] >= 0 else f"{ins[0]} ** ({params['y']})"]


def _reduce_window(params, ins, eqn, flax: str):
    """``nn.max_pool`` (``nnx.max_pool``) where it is that max window reduction; else
    ``lax.reduce_window`` with ``lax.max`` / ``min`` / ``add`` from the reducer's identity
    (which makes it the same max / min / sum window reduction)."""
    dtype = np.dtype(eqn.invars[0].aval.dtype)
    prim = eqn.primitive.name
    if prim == "reduce_window_sum":
        init = 0
    elif dtype.kind == "f":
        init = -np.inf if prim == "reduce_window_max" else np.inf
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        init = info.min if prim == "reduce_window_max" else info.max
    else:
        return []
    keys = ("window_dimensions", "window_strides", "padding", "base_dilation",
            "window_dilation")
    args = _params_text(params, keys)
    init_text = literal(np.asarray(init, dtype)[()])
    if args is None:
        return []
    found = []
    dims, strides, pads = (params[k] for k in ("window_dimensions", "window_strides",
                                               "padding"))
    if (prim == "reduce_window_max" and len(dims) >= 3 and dims[0] == dims[-1] == 1
            and strides[0] == strides[-1] == 1 and tuple(pads[0]) == tuple(pads[-1]) == (0, 0)
            and set(params["base_dilation"]) == set(params["window_dilation"]) == {1}):
        found.append(f"{flax}.max_pool({ins[0]}, {literal(tuple(dims[1:-1]))}, "
                     f"strides={literal(tuple(strides[1:-1]))}, "
                     f"padding={literal(tuple(tuple(p) for p in pads[1:-1]))})")
    return found + [f"lax.reduce_window({ins[0]}, {init_text}, {_WINDOW_REDUCERS[prim]}, {args})"]


def _sort(params, ins, eqn):
    args = _params_text(params, ("dimension", "is_stable", "num_keys"))
    return [] if args is None else [f"lax.sort({literal_names(ins)}, {args})"]


def _barrier(params, ins, eqn):
    return [f"lax.optimization_barrier({literal_names(ins)})"]


_SPECIAL: dict[str, Callable[..., list[str]]] = {
    "max": _max, "select_n": _select_n, **dict.fromkeys(_REDUCTIONS, _reduction),
    "argmax": _arg, "argmin": _arg, "reshape": _reshape, "transpose": _transpose,
    "broadcast_in_dim": _broadcast, "convert_element_type": _convert, "squeeze": _squeeze,
    "dot_general": _dot, "concatenate": _concatenate, "stack": _stack,
    "dynamic_slice": _dynamic_slice,
    "dynamic_update_slice": _dynamic_update_slice, "iota": _iota,
    "integer_pow": _integer_pow,
    "sort": _sort, "optimization_barrier": _barrier,
}


# --- the check ------------------------------------------------------------------------

def live(jaxpr) -> list:
    """Equations whose results are used (dead ones come from traces of layer nodes)."""
    used = {v for v in jaxpr.outvars if not is_literal(v)}
    found = []
    for eqn in reversed(jaxpr.eqns):
        if eqn.effects or any(v in used for v in eqn.outvars):
            found.append(eqn)
            used.update(v for v in eqn.invars if not is_literal(v))
    return found[::-1]


def same_operation(expr: str, eqn, ins: list[str], constants: dict[str, np.ndarray],
                   dims: dict) -> bool:
    """Whether ``expr`` (source on ``ins``; names in ``constants`` are module constants,
    names in ``dims`` the symbolic input dims)
    traces to exactly ``eqn``: one equation of the same primitive and parameters, on the
    same operands, giving its results with their shapes and dtypes."""
    names = list(dict.fromkeys(t for t in ins if t.isidentifier() and t not in constants))
    avals = {}
    for text, var in zip(ins, eqn.invars):
        if text in names:
            avals[text] = var.aval
    scope = {**NAMESPACE, **constants, **dims}
    try:
        expected = [("arg", names.index(t)) if t in names else
                    ("const", np.asarray(evaluate(t, scope), dtype=v.aval.dtype))
                    for t, v in zip(ins, eqn.invars)]

        def run(*args):
            return evaluate(expr, {**scope, **dict(zip(names, args))})

        closed = jax.make_jaxpr(run)(*[
            jax.ShapeDtypeStruct(avals[n].shape, avals[n].dtype, weak_type=avals[n].weak_type)
            for n in names])
    except Exception:  # noqa: BLE001  (a candidate that does not apply)
        return False
    found, outs = _flatten(closed, inline=eqn.primitive.name not in INLINE)
    if len(found) != 1:
        return False
    got, env = found[0]
    return (got.primitive is eqn.primitive and _same_params(got.params, eqn.params)
            and len(got.invars) == len(expected)
            and all(_same_atom(_describe(v, env), e) for v, e in zip(got.invars, expected))
            and outs == [("out", k) for k in range(len(eqn.outvars))]
            and all(a.aval.shape == b.aval.shape and a.aval.dtype == b.aval.dtype
                    for a, b in zip(got.outvars, eqn.outvars)))


def evaluate(expr: str, scope: dict):
    """The value of ``expr``, an expression this package wrote, over ``scope``. Not Python's
    ``eval``: it reads only the forms the generated source uses (names of ``scope``, public
    attributes, calls, operators, literals, tuples and lists) and refuses anything else."""

    def value(node):
        kind = type(node)
        if kind is ast.Constant:
            return node.value
        if kind is ast.Name:
            return scope[node.id]
        if kind is ast.Attribute and not node.attr.startswith("_"):
            return getattr(value(node.value), node.attr)
        if kind in (ast.Tuple, ast.List):
            items = [value(e) for e in node.elts]
            return tuple(items) if kind is ast.Tuple else items
        if kind is ast.Call and not any(isinstance(a, ast.Starred) for a in node.args):
            return value(node.func)(*[value(a) for a in node.args],
                                    **{k.arg: value(k.value) for k in node.keywords})
        if kind is ast.BinOp and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](value(node.left), value(node.right))
        if kind is ast.UnaryOp and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](value(node.operand))
        if kind is ast.Compare and len(node.ops) == 1 and type(node.ops[0]) in _COMPARE:
            return _COMPARE[type(node.ops[0])](value(node.left), value(node.comparators[0]))
        raise ValueError(f"not a form of the generated source: {ast.dump(node)}")

    return value(ast.parse(expr, mode="eval").body)


def _flatten(closed, inline: bool):
    """The equations ``closed`` records (calls inlined when ``inline``), each with what its
    operands are (``('arg', i)``, ``('const', array)`` or another equation's result), and
    what the jaxpr returns."""
    found: list = []

    def walk(jaxpr, env):
        for eqn in live(jaxpr):
            sub = INLINE.get(eqn.primitive.name)
            if inline and sub in eqn.params:
                inner = eqn.params[sub]
                inner_env = {iv: _describe(ov, env)
                             for iv, ov in zip(inner.jaxpr.invars, eqn.invars)}
                inner_env.update((v, ("const", np.asarray(c)))
                                 for v, c in zip(inner.jaxpr.constvars, inner.consts))
                results = walk(inner.jaxpr, inner_env)
                env.update(zip(eqn.outvars, results))
                continue
            index = len(found)
            found.append((eqn, dict(env)))
            env.update((v, ("result", index, k)) for k, v in enumerate(eqn.outvars))
        return [_describe(v, env) for v in jaxpr.outvars]

    jaxpr = closed.jaxpr
    env = {v: ("arg", i) for i, v in enumerate(jaxpr.invars)}
    env.update((v, ("const", np.asarray(c))) for v, c in zip(jaxpr.constvars, closed.consts))
    outs = walk(jaxpr, env)
    return found, [("out", d[2]) if d[0] == "result" and d[1] == 0 else d for d in outs]


def is_literal(v) -> bool:
    """Whether jaxpr atom ``v`` is a Literal (a constant written into the equation)."""
    return hasattr(v, "val") and not hasattr(v, "count")


def _describe(atom, env):
    if is_literal(atom):
        return "const", np.asarray(atom.val, dtype=atom.aval.dtype)
    return env[atom]


def _same_atom(got, expected) -> bool:
    if got[0] != expected[0]:
        return False
    if got[0] != "const":
        return got == expected
    a, b = got[1], expected[1]
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _same_params(a: dict, b: dict) -> bool:
    """Equal parameters; ``weak_type`` (a typing detail of Python scalars) aside."""
    keys = set(a) | set(b)
    keys.discard("weak_type")
    return all(k in a and k in b and _same(a[k], b[k]) for k in keys)


def _same(x, y) -> bool:
    if hasattr(x, "eqns") or hasattr(x, "jaxpr") or hasattr(y, "jaxpr"):
        return str(x) == str(y)
    if isinstance(x, float) and isinstance(y, float) and np.isnan(x) and np.isnan(y):
        return True
    try:
        same = x == y
        return bool(same) if not isinstance(same, np.ndarray) else bool(same.all())
    except Exception:  # noqa: BLE001  (uncomparable values differ)
        return False
