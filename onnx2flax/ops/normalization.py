"""BatchNormalization -> a Flax BatchNorm layer over the channel axis (last, channels-last)."""

from __future__ import annotations

import jax.numpy as jnp

from .._layers import BatchNorm
from .._registry import register


def _bn_params(node, weights):
    if len(weights) < 5 or any(w is None or w.dtype.kind != "f" for w in weights[1:5]):
        return None
    scale, bias, mean, var = weights[1:5]
    if not scale.shape == bias.shape == mean.shape == var.shape or scale.ndim != 1:
        return None
    return {"params": {"scale": scale, "bias": bias}, "batch_stats": {"mean": mean, "var": var},
            "sources": {"scale": (1, None), "bias": (2, None), "mean": (3, None), "var": (4, None)}}


@register("BatchNormalization", layout="channels_last", params=_bn_params)
def batch_norm(ctx, x, scale, bias, mean, var):
    """Y = (X - mean) / sqrt(var + epsilon) * scale + bias over channels; X channels-last."""
    epsilon = float(ctx.attr("epsilon", 1e-5))
    momentum = float(ctx.attr("momentum", 0.9))
    if int(ctx.attr("spatial", 1)) != 1:
        raise ctx.fail("spatial=0 (per-activation statistics) is not supported")
    if int(ctx.attr("training_mode", 0)) or len([o for o in ctx.node.outputs if o]) > 1:
        raise ctx.fail("training_mode=1 / running-statistics outputs are not supported; "
                       "export the model in eval mode and use apply(..., train=True)")
    channels = x.shape[-1] if x.ndim > 1 else 1
    for what, value in (("scale", scale), ("B", bias), ("mean", mean), ("var", var)):
        if tuple(value.shape) != (channels,):
            raise ctx.invalid(f"{what} has shape {list(value.shape)}, expected [{channels}]")
    if ctx.layer_plan is not None:
        return ctx.layer(BatchNorm, x, epsilon=epsilon, momentum=momentum,
                         call_kwargs={"train": ctx.train})
    return (x - mean) * (scale * jnp.reciprocal(jnp.sqrt(var + epsilon))) + bias
