"""Optimizer steps of the ``ai.onnx.preview.training`` domain: Adagrad, Adam, Momentum
(ONNX order, elementwise math).

Inputs are ``R`` (learning rate, scalar), ``T`` (update count, scalar) and then, for ``n``
optimized tensors, ``X_1..X_n``, ``G_1..G_n`` (gradients) and each optimizer state
(``H``; ``V, H``; ``V``), each group in that order; outputs are the new ``X_1..X_n`` then the
new states, group by group. Tensors are updated independently, each with the same rule.
"""

from __future__ import annotations

import jax.numpy as jnp

from .._core.registry import register
from .._pipeline.module import OpContext

DOMAIN = "ai.onnx.preview.training"


def _groups(ctx: OpContext, tensors, k: int) -> list[list]:
    """``tensors`` (the inputs after R and T) as ``k`` groups of ``n`` each, checked
    against the node's ``(k - 1) * n`` outputs."""
    n, rest = divmod(len(tensors), k)
    if rest or not n:
        raise ctx.invalid(f"after R and T it takes {k} groups of inputs of equal size "
                          f"(X, G and the states), got {len(tensors)} inputs")
    if len(ctx.node.outputs) != (k - 1) * n:
        raise ctx.invalid(f"{n} optimized tensor(s) give {(k - 1) * n} outputs, the node has "
                          f"{len(ctx.node.outputs)}")
    if any(t is None for t in tensors):
        raise ctx.invalid("every X, G and state input is required")
    return [list(tensors[i * n:(i + 1) * n]) for i in range(k)]


def _scalars(ctx: OpContext, r, t):
    if jnp.size(r) != 1 or jnp.size(t) != 1:
        raise ctx.invalid(f"R and T must be scalars, got shapes {list(jnp.shape(r))} and "
                          f"{list(jnp.shape(t))}")
    return jnp.reshape(r, ()), jnp.reshape(t, ())


@register("Adagrad", domain=DOMAIN)
def adagrad(ctx: OpContext, r, t, *tensors):
    """``X - r * G' / (sqrt(H + G'^2) + epsilon)`` with ``G' = G + norm_coefficient * X`` and
    the decayed rate ``r = R / (1 + T * decay_factor)``; returns new Xs, then new Hs."""
    norm = float(ctx.attr("norm_coefficient"))
    decay = float(ctx.attr("decay_factor"))
    epsilon = float(ctx.attr("epsilon"))
    xs, gs, hs = _groups(ctx, tensors, 3)
    r, t = _scalars(ctx, r, t)
    rate = r / (1 + t * decay)
    new_xs, new_hs = [], []
    for x, g, h in zip(xs, gs, hs):
        g = norm * x + g
        h = h + g * g
        new_xs.append((x - rate * g / (jnp.sqrt(h) + epsilon)).astype(x.dtype))
        new_hs.append(h.astype(x.dtype))
    return (*new_xs, *new_hs)


@register("Adam", domain=DOMAIN)
def adam(ctx: OpContext, r, t, *tensors):
    """Adam with bias correction for ``T > 0`` and the optional post-update decay
    ``(1 - norm_coefficient_post)``; returns new Xs, then new Vs, then new Hs."""
    alpha = float(ctx.attr("alpha"))
    beta = float(ctx.attr("beta"))
    epsilon = float(ctx.attr("epsilon"))
    norm = float(ctx.attr("norm_coefficient"))
    norm_post = float(ctx.attr("norm_coefficient_post"))
    xs, gs, vs, hs = _groups(ctx, tensors, 4)
    r, t = _scalars(ctx, r, t)
    steps = t.astype(jnp.float32)
    # At T = 0 the correction's denominator is 0: that branch is computed, never selected.
    corrected = r * jnp.sqrt(1 - beta ** steps) / (1 - alpha ** steps)
    rate = jnp.where(t > 0, corrected, r)
    new_xs, new_vs, new_hs = [], [], []
    for x, g, v, h in zip(xs, gs, vs, hs):
        g = norm * x + g
        v = alpha * v + (1 - alpha) * g
        h = beta * h + (1 - beta) * g * g
        x_new = (1 - norm_post) * (x - rate * v / (jnp.sqrt(h) + epsilon))
        new_xs.append(x_new.astype(x.dtype))
        new_vs.append(v.astype(x.dtype))
        new_hs.append(h.astype(x.dtype))
    return (*new_xs, *new_vs, *new_hs)


@register("Momentum", domain=DOMAIN)
def momentum(ctx: OpContext, r, t, *tensors):
    """``V' = alpha * V + beta' * G'`` (``beta' = 1`` at ``T = 0``) with
    ``G' = G + norm_coefficient * X``; ``mode='standard'``: ``X - R * V'``,
    ``'nesterov'``: ``X - R * (G' + alpha * V')``. Returns new Xs, then new Vs."""
    alpha = float(ctx.attr("alpha"))
    beta = float(ctx.attr("beta"))
    norm = float(ctx.attr("norm_coefficient"))
    mode = ctx.attr("mode")
    if mode not in ("standard", "nesterov"):
        raise ctx.invalid(f"mode must be 'standard' or 'nesterov', got {mode!r}")
    xs, gs, vs = _groups(ctx, tensors, 3)
    r, t = _scalars(ctx, r, t)
    beta_t = jnp.where(t > 0, beta, 1.0)
    new_xs, new_vs = [], []
    for x, g, v in zip(xs, gs, vs):
        g = norm * x + g
        v = alpha * v + beta_t * g
        step = g + alpha * v if mode == "nesterov" else v
        new_xs.append((x - r * step).astype(x.dtype))
        new_vs.append(v.astype(x.dtype))
    return (*new_xs, *new_vs)
