"""Losses: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (ONNX order).

Both take scores ``[N, C, d1..dk]``, integer targets ``[N, d1..dk]`` (int64 in ONNX, int32 in
JAX) and optional class weights ``[C]``.
"""

from __future__ import annotations

import jax.numpy as jnp

from .._core.registry import register
from .._pipeline.module import OpContext
from .activation import _log_softmax


def _nll(ctx: OpContext, log_prob, target, weight):
    """``-log_prob[n, target[n, d...], d...] * weight[target]``, reduced per ``reduction``.

    Targets equal to ``ignore_index`` weigh 0 (they may lie outside ``[0, C)``); the mean
    divides by the sum of the weights of the other targets, as the ONNX reference does."""
    reduction = ctx.attr("reduction")
    if reduction not in ("none", "sum", "mean"):
        raise ctx.invalid(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
    ignore_index = ctx.attr("ignore_index", None)
    if log_prob.ndim < 2 or target.shape != log_prob.shape[:1] + log_prob.shape[2:]:
        raise ctx.invalid(f"target {list(target.shape)} must be the input "
                          f"{list(log_prob.shape)} without its class axis 1")
    target = target.astype(jnp.int32)
    kept = (jnp.ones(target.shape, bool) if ignore_index is None
            else target != int(ignore_index))
    index = jnp.where(kept, target, 0)
    picked = jnp.take_along_axis(log_prob, index[:, None], axis=1)[:, 0]
    weights = jnp.ones_like(picked) if weight is None else jnp.take(weight, index)
    weights = jnp.where(kept, weights, jnp.zeros_like(weights)).astype(log_prob.dtype)
    loss = -picked * weights
    if reduction == "none":
        return loss
    if reduction == "sum":
        return jnp.sum(loss)
    return jnp.sum(loss) / jnp.sum(weights)


@register("NegativeLogLikelihoodLoss", since=12)
def negative_log_likelihood_loss(ctx: OpContext, log_prob, target, weight=None):
    """``log_prob`` ``[N, C, d1..dk]`` -> loss ``[N, d1..dk]`` (``reduction='none'``) or a
    scalar. Opsets 13 and 22 only widen the types."""
    return _nll(ctx, log_prob, target, weight)


@register("SoftmaxCrossEntropyLoss", since=12)
def softmax_cross_entropy_loss(ctx: OpContext, scores, labels, weight=None):
    """NLL of the log-softmax over the class axis 1; the optional second output is that
    log-softmax ``[N, C, d1..dk]``. Opset 13 only widens the types."""
    log_prob = _log_softmax(scores, (1,))
    loss = _nll(ctx, log_prob, labels, weight)
    return (loss, log_prob) if len(ctx.node.outputs) > 1 else loss
