"""Activations (elementwise, any layout) and Softmax / LogSoftmax / Hardmax (axis ops that
work in the layout the value is held in, so a channels-last input is never transposed)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._core import layout as _layout
from .._core.registry import register
from .._pipeline.module import OpContext
from ._common import normalize_axis


def _activation(name, since=1):
    return register(name, since=since, layout="elementwise")


@_activation("Elu")
def elu(ctx: OpContext, x):
    alpha = float(ctx.attr("alpha"))
    return jnp.where(x > 0, x, alpha * jnp.expm1(x))


@_activation("Celu", since=12)
def celu(ctx: OpContext, x):
    alpha = float(ctx.attr("alpha"))
    return jnp.maximum(x, 0) + jnp.minimum(0, alpha * jnp.expm1(x / alpha))


@_activation("Selu")
def selu(ctx: OpContext, x):
    alpha = float(ctx.attr("alpha"))
    gamma = float(ctx.attr("gamma"))
    return gamma * jnp.where(x > 0, x, alpha * jnp.expm1(x))


@_activation("LeakyRelu")
def leaky_relu(ctx: OpContext, x):
    alpha = float(ctx.attr("alpha"))
    return jnp.where(x >= 0, x, alpha * x)


@_activation("ThresholdedRelu", since=10)
def thresholded_relu(ctx: OpContext, x):
    alpha = float(ctx.attr("alpha"))
    return jnp.where(x > alpha, x, jnp.zeros_like(x))


def _hard_sigmoid(x, alpha, beta):
    if np.float32(alpha) == np.float32(1 / 6) and beta == 0.5:
        # The same function computed as torch and jax.nn do, relu6(x + 3) / 6: what the source
        # model computed and what a hand-written Flax model compiles to.
        return jax.nn.hard_sigmoid(x)
    return jnp.clip(alpha * x + beta, 0, 1)


@_activation("HardSigmoid")
def hard_sigmoid(ctx: OpContext, x):
    """alpha defaults to 0.2 (torch exports 1/6 explicitly)."""
    return _hard_sigmoid(x, float(ctx.attr("alpha")), float(ctx.attr("beta")))


@_activation("HardSwish", since=14)
def hard_swish(ctx: OpContext, x):
    return x * _hard_sigmoid(x, 1 / 6, 0.5)


@_activation("Softplus")
def softplus(ctx: OpContext, x):
    return jax.nn.softplus(x)


@_activation("Softsign")
def softsign(ctx: OpContext, x):
    return x / (1 + jnp.abs(x))


@_activation("Swish", since=24)
def swish(ctx: OpContext, x):
    return x * jax.nn.sigmoid(float(ctx.attr("alpha")) * x)


@_activation("Mish", since=18)
def mish(ctx: OpContext, x):
    return x * jnp.tanh(jax.nn.softplus(x))


@_activation("Gelu", since=20)
def gelu(ctx: OpContext, x):
    """``approximate='none'`` (default) is the exact erf form; jax defaults to tanh."""
    approximate = ctx.attr("approximate")
    if approximate not in ("none", "tanh"):
        raise ctx.invalid(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return jax.nn.gelu(x, approximate=approximate == "tanh")


@_activation("Shrink", since=9)
def shrink(ctx: OpContext, x):
    bias = float(ctx.attr("bias"))
    lambd = float(ctx.attr("lambd"))
    zero = jnp.zeros_like(x)
    return jnp.where(x < -lambd, x + bias, jnp.where(x > lambd, x - bias, zero)).astype(x.dtype)


@_activation("PRelu")
def prelu(ctx: OpContext, x, slope):
    """``slope`` broadcasts to ``x`` (unidirectionally); a float initializer slope is a
    free parameter named after it."""
    if jnp.broadcast_shapes(x.shape, slope.shape) != x.shape:
        raise ctx.invalid(f"slope {list(slope.shape)} does not broadcast to X {list(x.shape)}")
    return jnp.where(x < 0, slope * x, x)


# -- Softmax family ------------------------------------------------------------------------

def _hardmax(x, axes):
    """One-hot of the first maximum over ``axes`` taken together, row-major in the order
    given (ties resolve as in ONNX order even when the value is held in another layout)."""
    n = len(axes)
    trailing = tuple(range(x.ndim - n, x.ndim))
    moved = jnp.moveaxis(x, axes, trailing)
    flat = moved.reshape(moved.shape[:x.ndim - n] + (-1,))
    hot = jax.nn.one_hot(jnp.argmax(flat, axis=-1), flat.shape[-1], dtype=x.dtype)
    return jnp.moveaxis(hot.reshape(moved.shape), trailing, axes)


def _shifted(x, axes):
    """``x - max(x)`` clamped at 0: XLA may recompute ``x`` inside the fused exponent with a
    rounding different from the one the max saw, and for logits of order 1e9 one ulp above
    the max overflows ``exp`` (inf / inf = NaN). ``where``, not ``minimum``: at the max
    ``minimum``'s gradient would be split between its two equal arguments."""
    shifted = x - lax.stop_gradient(jnp.max(x, axes, keepdims=True))
    return jnp.where(shifted > 0, jnp.zeros_like(shifted), shifted)


def _softmax(x, axes):
    unnormalized = jnp.exp(_shifted(x, axes))
    return unnormalized / jnp.sum(unnormalized, axes, keepdims=True)


def _log_softmax(x, axes):
    shifted = _shifted(x, axes)
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axes, keepdims=True))


_SOFTMAX = {
    "Softmax": _softmax,
    "LogSoftmax": _log_softmax,
    "Hardmax": _hardmax,
}


def _softmax_v1(fn):
    def handler(ctx: OpContext, x):
        """Opset < 13: the input is seen as 2-D ``[prod(d[:axis]), prod(d[axis:])]`` (axis
        default 1), i.e. normalized over ONNX axes ``axis..rank-1`` together."""
        perm = ctx.in_perms[0]
        axis = normalize_axis(ctx, int(ctx.attr("axis")), x.ndim)
        ctx.out_perms = [perm]
        return fn(x, tuple(_layout.axis_in(perm, a) for a in range(axis, x.ndim)))
    return handler


def _softmax_v13(fn):
    def handler(ctx: OpContext, x):
        """Opset >= 13: normalized along the single axis ``axis`` (default -1)."""
        perm = ctx.in_perms[0]
        axis = normalize_axis(ctx, int(ctx.attr("axis")), x.ndim)
        ctx.out_perms = [perm]
        return fn(x, (_layout.axis_in(perm, axis),))
    return handler


for _name, _fn in _SOFTMAX.items():
    register(_name, layout="custom")(_softmax_v1(_fn))
    register(_name, since=13, layout="custom")(_softmax_v13(_fn))
