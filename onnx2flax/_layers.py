"""Flax layers that ``flax.linen`` lacks in the form ONNX and PyTorch need."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

Init = Callable[..., Any]


class BatchNorm(nn.Module):
    """Batch normalization over the last axis, PyTorch-compatible in training.

    Inputs ``[..., C]``; params ``scale`` / ``bias`` ``[C]``; ``batch_stats`` ``mean`` /
    ``var`` ``[C]``. Inference uses the running statistics. With ``train=True`` it
    normalizes with the batch's biased variance and updates the running statistics as
    ``running = momentum * running + (1 - momentum) * batch`` with the *unbiased* batch
    variance, exactly as ``torch.nn.BatchNorm*d`` does (ONNX momentum = 1 - torch momentum).
    """

    epsilon: float = 1e-5
    momentum: float = 0.9
    scale_init: Init = nn.initializers.ones
    bias_init: Init = nn.initializers.zeros
    mean_init: Init = nn.initializers.zeros
    var_init: Init = nn.initializers.ones

    @nn.compact
    def __call__(self, x, train: bool = False):
        features = x.shape[-1]
        scale = self.param("scale", self.scale_init, (features,))
        bias = self.param("bias", self.bias_init, (features,))
        mean = self.variable("batch_stats", "mean", self.mean_init, None, (features,))
        var = self.variable("batch_stats", "var", self.var_init, None, (features,))
        if train:
            axes = tuple(range(x.ndim - 1))
            batch_mean = jnp.mean(x, axis=axes)
            batch_var = jnp.mean(jnp.square(x - batch_mean), axis=axes)
            if not self.is_initializing():
                n = x.size // features
                unbiased = batch_var * (n / max(n - 1, 1))
                mean.value = self.momentum * mean.value + (1 - self.momentum) * batch_mean
                var.value = self.momentum * var.value + (1 - self.momentum) * unbiased
            use_mean, use_var = batch_mean, batch_var
        else:
            use_mean, use_var = mean.value, var.value
        # rsqrt(var + eps) * scale, in flax.linen.BatchNorm's order: the same compiled program
        return (x - use_mean) * (lax.rsqrt(use_var + self.epsilon) * scale) + bias
