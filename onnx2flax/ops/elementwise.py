"""Elementwise ops: any layout passes through (operands are broadcast into it)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._registry import register


def _unary(*names, fn, since=1):
    for name in names:
        register(name, layout="elementwise", since=since)(lambda ctx, x, _fn=fn: _fn(x))


_unary("Relu", fn=jax.nn.relu)
_unary("Sigmoid", fn=jax.nn.sigmoid)
_unary("Tanh", fn=jnp.tanh)
_unary("Exp", fn=jnp.exp)
_unary("Log", fn=jnp.log)
_unary("Sqrt", fn=jnp.sqrt)
_unary("Neg", fn=jnp.negative)
_unary("Abs", fn=jnp.abs)
_unary("Identity", fn=lambda x: x)


def _binary(name, fn):
    register(name, layout="elementwise")(lambda ctx, a, b, _fn=fn: _fn(a, b))


_binary("Add", jnp.add)
_binary("Sub", jnp.subtract)
_binary("Mul", jnp.multiply)


@register("Div", layout="elementwise")
def div(ctx, a, b):
    """Integer division truncates toward zero (C semantics), unlike floor division."""
    if jnp.issubdtype(jnp.result_type(a, b), jnp.integer):
        q = jnp.abs(a) // jnp.abs(b)
        return jnp.where((a < 0) != (b < 0), -q, q).astype(jnp.result_type(a, b))
    return jnp.divide(a, b)


@register("Clip", layout="elementwise")
def clip_v1(ctx, x):
    """Opset < 11: min/max are attributes (defaults: unbounded)."""
    return jnp.clip(x, ctx.attr("min", None), ctx.attr("max", None))


@register("Clip", since=11, layout="elementwise")
def clip(ctx, x, lo=None, hi=None):
    """Opset >= 11: min/max are optional scalar inputs."""
    if lo is not None:
        x = jnp.maximum(x, jnp.asarray(lo, x.dtype))
    if hi is not None:
        x = jnp.minimum(x, jnp.asarray(hi, x.dtype))
    return x


@register("Dropout", layout="elementwise")
def dropout(ctx, x, ratio=None, training_mode=None):
    """Identity at inference; with ``train=True`` drops with probability ``ratio``."""
    rate = float(ctx.attr("ratio", 0.5)) if ratio is None else float(ctx.static(ratio, "ratio").item())
    outputs = [o for o in ctx.node.outputs if o]
    if not ctx.train or rate == 0.0:
        return (x, jnp.ones(x.shape, bool)) if len(outputs) > 1 else x
    keep = jax.random.bernoulli(ctx.make_rng("dropout"), 1.0 - rate, x.shape)
    y = jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))
    return (y, keep) if len(outputs) > 1 else y
