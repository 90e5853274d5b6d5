"""Elementwise ops: any layout passes through (operands are broadcast into it).

Math, logical, comparison and variadic ops. Before opset 7 binary ops did not broadcast
numpy-style: ``B`` was broadcast to ``A`` only with ``broadcast=1``, aligned at ``axis``
(those legacy versions get their own handlers, below).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
from jax.scipy.special import erf

from .._core import layout as _layout
from .._core.registry import register
from .._pipeline.module import OpContext


def _unary(name, fn, since=1):
    register(name, layout="elementwise", since=since)(lambda ctx, x, _fn=fn: _fn(x))


@register("Identity", layout="custom")
def identity(ctx: OpContext, x):
    """Passes any value through as held: a tensor in its layout, a sequence, an optional."""
    ctx.out_perms = [ctx.in_perms[0]]
    return (x,)


def _relu(x):
    """``max(x, 0)`` (NaN stays NaN) as one primitive. Neither ``jax.nn.relu`` (its custom
    JVP costs about 1 ms of tracing per call: a 100,000-node chain traced for minutes) nor
    ``jnp.maximum`` (a nested jit per call); the gradient differs from ``jax.nn.relu`` only
    at exactly 0 (0.5 here, 0 there)."""
    return lax.max(x, np.zeros((), x.dtype))


for _name, _fn, _since in [
    ("Relu", _relu, 1), ("Sigmoid", jax.nn.sigmoid, 1), ("Tanh", jnp.tanh, 1),
    ("Abs", jnp.abs, 1), ("Neg", jnp.negative, 1), ("Sign", jnp.sign, 9),
    ("Ceil", jnp.ceil, 1), ("Floor", jnp.floor, 1), ("Round", jnp.round, 11),  # half to even
    ("Exp", jnp.exp, 1), ("Log", jnp.log, 1), ("Sqrt", jnp.sqrt, 1),
    ("Reciprocal", jnp.reciprocal, 1), ("Erf", erf, 9),
    ("Sin", jnp.sin, 7), ("Cos", jnp.cos, 7), ("Tan", jnp.tan, 7),
    ("Asin", jnp.arcsin, 7), ("Acos", jnp.arccos, 7), ("Atan", jnp.arctan, 7),
    ("Sinh", jnp.sinh, 9), ("Cosh", jnp.cosh, 9), ("Asinh", jnp.arcsinh, 9),
    ("Acosh", jnp.arccosh, 9), ("Atanh", jnp.arctanh, 9),
    ("Not", jnp.logical_not, 1), ("IsNaN", jnp.isnan, 9), ("BitwiseNot", jnp.bitwise_not, 18),
]:
    _unary(_name, _fn, _since)


@register("IsInf", since=10, layout="elementwise")
def is_inf(ctx: OpContext, x):
    negative = bool(ctx.attr("detect_negative"))
    positive = bool(ctx.attr("detect_positive"))
    return ((x == jnp.inf) & positive) | ((x == -jnp.inf) & negative)


# -- binary ops ------------------------------------------------------------------------

def _is_int(*xs) -> bool:
    return jnp.issubdtype(jnp.result_type(*xs), jnp.integer)


def _div(a, b):
    """Integer division truncates toward zero (C semantics), unlike floor division."""
    if _is_int(a, b):
        q = jnp.abs(a) // jnp.abs(b)
        return jnp.where((a < 0) != (b < 0), -q, q).astype(jnp.result_type(a, b))
    return jnp.divide(a, b)


def _pow(a, b):
    """The result has the base's type (the exponent may be of another numeric type)."""
    if _is_int(a, b):
        return jnp.power(a, b)
    return jnp.power(a, b).astype(jnp.result_type(a))


_BINARY = {
    "Add": jnp.add, "Sub": jnp.subtract, "Mul": jnp.multiply, "Div": _div, "Pow": _pow,
    "And": jnp.logical_and, "Or": jnp.logical_or, "Xor": jnp.logical_xor,
    "Equal": jnp.equal, "Greater": jnp.greater, "Less": jnp.less,
}


def _legacy_binary(fn):
    def handler(ctx: OpContext, a, b):
        """Opset < 7: ``B`` (rank <= A's) broadcasts to ``A`` only when ``broadcast=1``,
        its dims aligned with A's from ``axis`` on (default: trailing). Output in A's layout."""
        perm = ctx.in_perms[0]
        b = _layout.to_onnx(b, ctx.in_perms[1])
        a_shape = tuple(np.shape(a)[perm.index(i)] for i in range(len(perm)))
        if int(ctx.attr("broadcast")):
            axis = int(ctx.attr("axis", len(a_shape) - np.ndim(b)))
            axis = axis % len(a_shape) if a_shape else 0
            if axis + np.ndim(b) > len(a_shape):
                raise ctx.invalid(f"B {list(np.shape(b))} does not fit A {list(a_shape)} "
                                  f"at axis {axis}")
            tail = len(a_shape) - axis - np.ndim(b)
            b = jnp.reshape(b, (1,) * axis + np.shape(b) + (1,) * tail)
        elif np.shape(b) != a_shape:
            raise ctx.invalid(f"A {list(a_shape)} and B {list(np.shape(b))} differ and broadcast=0")
        ctx.out_perms = [perm]
        return fn(a, _layout.convert(b, _layout.identity(len(perm)), perm))
    return handler


for _name, _fn in _BINARY.items():
    register(_name, layout="custom")(_legacy_binary(_fn))
    register(_name, since=7, layout="elementwise")(lambda ctx, a, b, _fn=_fn: _fn(a, b))

for _name, _fn, _since in [
    ("GreaterOrEqual", jnp.greater_equal, 12), ("LessOrEqual", jnp.less_equal, 12),
    ("BitwiseAnd", jnp.bitwise_and, 18), ("BitwiseOr", jnp.bitwise_or, 18),
    ("BitwiseXor", jnp.bitwise_xor, 18),
]:
    register(_name, since=_since, layout="elementwise")(lambda ctx, a, b, _fn=_fn: _fn(a, b))


def _mod(ctx: OpContext, a, b, floor_floats: bool):
    """``fmod=0``: ``a - floor(a / b) * b`` (the divisor's sign, Python's ``%``), for floats
    only from opset 28; ``fmod=1``: C's ``fmod`` (the dividend's sign)."""
    if int(ctx.attr("fmod")):
        return jnp.fmod(a, b)
    if not (floor_floats or _is_int(a, b)):
        raise ctx.invalid("fmod=0 needs integer inputs before opset 28 (floats need fmod=1)")
    return jnp.mod(a, b)


register("Mod", since=10, layout="elementwise")(lambda ctx, a, b: _mod(ctx, a, b, False))
register("Mod", since=28, layout="elementwise")(lambda ctx, a, b: _mod(ctx, a, b, True))


@register("BitShift", since=11, layout="elementwise")
def bit_shift(ctx: OpContext, x, y):
    direction = ctx.attr("direction")
    if direction == "LEFT":
        return jnp.left_shift(x, y)
    if direction == "RIGHT":
        return jnp.right_shift(x, y)
    raise ctx.invalid(f"direction must be LEFT or RIGHT, got {direction!r}")


@register("Where", since=9, layout="elementwise")
def where(ctx: OpContext, condition, x, y):
    return jnp.where(condition, x, y)


# -- variadic ops (numpy broadcasting from opset 8; equal shapes before) ----------------

def _variadic(name, fn):
    register(name, layout="elementwise")(lambda ctx, *xs: fn(xs))


_variadic("Sum", lambda xs: functools.reduce(jnp.add, xs))
_variadic("Mean", lambda xs: functools.reduce(jnp.add, xs) / len(xs))
_variadic("Max", lambda xs: functools.reduce(jnp.maximum, xs))
_variadic("Min", lambda xs: functools.reduce(jnp.minimum, xs))


# -- clipping, dropout -------------------------------------------------------------------

@register("Clip", layout="elementwise")
def clip_v1(ctx: OpContext, x):
    """Opset < 11: min/max are attributes (defaults: unbounded)."""
    return jnp.clip(x, ctx.attr("min", None), ctx.attr("max", None))


@register("Clip", since=11, layout="elementwise")
def clip(ctx: OpContext, x, lo=None, hi=None):
    """Opset >= 11: min/max are optional scalar inputs."""
    if lo is not None:
        x = jnp.maximum(x, jnp.asarray(lo, x.dtype))
    if hi is not None:
        x = jnp.minimum(x, jnp.asarray(hi, x.dtype))
    return x


@register("Dropout", layout="elementwise")
def dropout_v1(ctx: OpContext, x):
    """Before opset 10 the optional mask has X's dtype."""
    return _dropout(ctx, x, float(ctx.attr("ratio")), x.dtype)


@register("Dropout", since=10, layout="elementwise")
def dropout_v10(ctx: OpContext, x):
    return _dropout(ctx, x, float(ctx.attr("ratio")), bool)


@register("Dropout", since=12, layout="elementwise", static_inputs=(1, 2))
def dropout(ctx: OpContext, x, ratio=None, training_mode=None):
    """Opset 12: ``ratio`` (default 0.5) is an input known at conversion time."""
    return _dropout(ctx, x, 0.5 if ratio is None else float(ctx.static(ratio, "ratio").item()),
                    bool)


def _dropout(ctx: OpContext, x, rate: float, mask_dtype):
    """Identity at inference; with ``train=True`` drops with probability ``rate``; the
    optional mask of ``mask_dtype``."""
    outputs = [o for o in ctx.node.outputs if o]
    if not ctx.train or rate == 0.0:
        return (x, jnp.ones(x.shape, mask_dtype)) if len(outputs) > 1 else x
    keep = jax.random.bernoulli(ctx.make_rng("dropout"), 1.0 - rate, x.shape)
    y = jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))
    return (y, keep.astype(mask_dtype)) if len(outputs) > 1 else y
