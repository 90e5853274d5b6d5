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


class MatMulNBits(nn.Module):
    """``x @ dequantize(qweight).T (+ bias)`` with the weight kept packed (com.microsoft
    MatMulNBits): ``qweight`` uint8 ``[N, blocks, block_size * bits / 8]`` (low bits first),
    ``scales`` ``[N, blocks]``, optional ``zero_points`` (``zero_points`` 'packed': uint8
    ``[N, ceil(blocks * bits / 8)]``, 'float': ``[N, blocks]``; default ``2**(bits - 1)``),
    ``g_idx`` ``[K]`` (the block of each input feature; default ``k // block_size``) and
    ``bias`` ``[N]``. Unpacked inside the traced function; x ``[..., K]`` -> ``[..., N]``."""

    k: int
    n: int
    bits: int
    block_size: int
    zero_points: str | None = None
    g_idx: bool = False
    use_bias: bool = False
    qweight_init: Init = nn.initializers.zeros
    scales_init: Init = nn.initializers.ones
    zero_points_init: Init = nn.initializers.zeros
    g_idx_init: Init = nn.initializers.zeros
    bias_init: Init = nn.initializers.zeros

    def _unpack(self, packed, count: int):
        """uint8 ``[N, ...]`` -> ``[N, count]`` unsigned ``bits``-wide values."""
        per_byte = 8 // self.bits
        shifts = jnp.arange(per_byte, dtype=jnp.uint8) * self.bits
        values = (jnp.reshape(packed, (self.n, -1))[..., None] >> shifts) & ((1 << self.bits) - 1)
        return values.reshape(self.n, -1)[:, :count]

    @nn.compact
    def __call__(self, x):
        blocks = -(-self.k // self.block_size)
        packed = self.param("qweight", self.qweight_init,
                            (self.n, blocks, self.block_size * self.bits // 8), jnp.uint8)
        q = self._unpack(packed, blocks * self.block_size)[:, :self.k].astype(x.dtype)
        scales = jnp.asarray(self.param("scales", self.scales_init, (self.n, blocks), x.dtype))
        if self.zero_points == "packed":
            zp = self.param("zero_points", self.zero_points_init,
                            (self.n, -(-blocks * self.bits // 8)), jnp.uint8)
            zero = self._unpack(zp, blocks).astype(x.dtype)
        elif self.zero_points == "float":
            zero = jnp.asarray(self.param("zero_points", self.zero_points_init, (self.n, blocks),
                                          x.dtype))
        else:
            zero = jnp.full((self.n, blocks), 1 << (self.bits - 1), x.dtype)
        group = (jnp.asarray(self.param("g_idx", self.g_idx_init, (self.k,), jnp.int32))
                 if self.g_idx else jnp.arange(self.k) // self.block_size)
        w = (q - zero[:, group]) * scales[:, group]
        y = jnp.matmul(x, w.T)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.n,), x.dtype)
        return y
