"""Normalization layers: BatchNormalization -> a Flax BatchNorm over the channel axis
(last, channels-last); Layer/Instance/GroupNormalization -> ``nn.LayerNorm`` /
``nn.InstanceNorm`` / ``nn.GroupNorm`` when scale and bias are constants (params ``scale``,
``bias``), else computed directly; RMSNormalization; MeanVarianceNormalization,
LpNormalization and LRN."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from .._core import layout as _layout
from .._core.registry import register
from .._pipeline.layers import BatchNorm
from .._pipeline.module import OpContext
from ._common import normalize_axis


def _bn_params(node, weights):
    if node.attrs.get("training_mode", 0):  # computed from the batch: no Flax layer
        return None
    if len(weights) < 5 or any(w is None or w.dtype.kind != "f" for w in weights[1:5]):
        return None
    scale, bias, mean, var = weights[1:5]
    if not scale.shape == bias.shape == mean.shape == var.shape or scale.ndim != 1:
        return None
    return {"params": {"scale": scale, "bias": bias}, "batch_stats": {"mean": mean, "var": var},
            "sources": {"scale": (1, None), "bias": (2, None), "mean": (3, None), "var": (4, None)}}


def _check_channels(ctx: OpContext, channels, **vectors):
    """Each of ``vectors`` must be ``[channels]``."""
    for what, value in vectors.items():
        if tuple(value.shape) != (channels,):
            raise ctx.invalid(f"{what} has shape {list(value.shape)}, expected [{channels}]")


@register("BatchNormalization", layout="channels_last", params=_bn_params)
def batch_norm(ctx: OpContext, x, scale, bias, mean, var):
    """Y = (X - mean) / sqrt(var + epsilon) * scale + bias over channels; X channels-last.

    ``training_mode=1`` (opset 14+) normalizes with the batch's mean and (population)
    variance over all axes but the channels, and also returns the running statistics
    ``input * momentum + batch * (1 - momentum)``."""
    epsilon = float(ctx.attr("epsilon"))
    momentum = float(ctx.attr("momentum"))
    if int(ctx.attr("spatial", 1)) != 1:
        raise ctx.fail("spatial=0 (per-activation statistics) is not supported")
    training = bool(int(ctx.attr("training_mode", 0)))
    if not training and len([o for o in ctx.node.outputs if o]) > 1:
        raise ctx.fail("running-statistics outputs without training_mode=1 (before opset 14) "
                       "are not supported; export the model in eval mode and use "
                       "apply(..., train=True)")
    _check_channels(ctx, x.shape[-1] if x.ndim > 1 else 1, scale=scale, B=bias, mean=mean,
                    var=var)
    if training:
        axes = tuple(range(x.ndim - 1))
        batch_mean, batch_var = jnp.mean(x, axes), jnp.var(x, axes)
        y = (x - batch_mean) * (scale * lax.rsqrt(batch_var + epsilon)) + bias
        return (y, mean * momentum + batch_mean * (1 - momentum),
                var * momentum + batch_var * (1 - momentum))
    if ctx.layer_plan is not None:
        return ctx.layer(BatchNorm, x, epsilon=epsilon, momentum=momentum,
                         call_kwargs={"train": ctx.train})
    return (x - mean) * (scale * jnp.reciprocal(jnp.sqrt(var + epsilon))) + bias


# -- Layer / Instance / Group normalization ---------------------------------------------

def _float_vector(w) -> bool:
    return w is not None and w.dtype.kind == "f" and w.ndim == 1


def _scale_bias_params(scale, bias, min_size=1):
    """``{'params': {'scale', 'bias'?}}`` when both are constant 1-D float vectors of one
    shape (``bias`` may be absent), else ``None``. They are inputs 1 and 2, unchanged."""
    if not _float_vector(scale) or scale.size < min_size:
        return None
    if bias is None:
        return {"params": {"scale": scale}, "sources": {"scale": (1, None)}}
    if not _float_vector(bias) or bias.shape != scale.shape:
        return None
    return {"params": {"scale": scale, "bias": bias},
            "sources": {"scale": (1, None), "bias": (2, None)}}


def _standardize(x, axes, epsilon, center=True):
    """``(x - mean) * inv_std`` over ``axes`` with the kept-dims mean and inverse std;
    ``center=False``: ``x * inv_rms`` (RMS normalization; the mean is then ``None``)."""
    mean = jnp.mean(x, axes, keepdims=True) if center else None
    centered = x - mean if center else x
    inv_std = lax.rsqrt(jnp.mean(jnp.square(centered), axes, keepdims=True) + epsilon)
    return centered * inv_std, mean, inv_std


def _trailing_params(node, weights):
    # A [D] scale applies along the last ONNX axis whatever ``axis`` is; size 1 could be a
    # broadcast scalar, which a Flax layer's [D] scale cannot hold.
    bias = weights[2] if len(weights) > 2 and node.inputs[2] else None
    if len(weights) > 2 and node.inputs[2] and bias is None:
        return None
    return _scale_bias_params(weights[1], bias, min_size=2)


def _trailing_norm(ctx: OpContext, x, scale, bias, rms: bool, n_out=1, perm=None):
    """Normalize over ONNX axes ``axis..rank-1``, in the held layout (``perm``, default
    input 0's); ``scale`` / ``bias`` broadcast to ``X.shape[axis:]``. With constant [D]
    weights: ``nn.LayerNorm`` / ``nn.RMSNorm``. Returns ``(y, mean, inv_std)[:n_out]``
    (statistics with X's rank)."""
    perm = ctx.in_perms[0] if perm is None else perm
    axis = normalize_axis(ctx, int(ctx.attr("axis")), x.ndim)
    epsilon = float(ctx.attr("epsilon"))
    axes = tuple(perm.index(a) for a in range(axis, x.ndim))
    if ctx.layer_plan is not None:
        features = perm.index(x.ndim - 1)
        if scale.shape != (x.shape[features],):
            raise ctx.invalid(f"scale {list(scale.shape)} does not match X's last dim")
        kwargs = {} if rms else {"use_bias": bias is not None}
        y = ctx.layer(nn.RMSNorm if rms else nn.LayerNorm, x, epsilon=epsilon,
                      use_fast_variance=False, reduction_axes=axes, feature_axes=features,
                      **kwargs)
        return (y, *_standardize(x, axes, epsilon)[1:])[:n_out] if n_out > 1 else (y,)
    y, mean, inv_std = _standardize(x, axes, epsilon, center=not rms)
    y = y * _layout.broadcast_to_perm(scale, _layout.identity(scale.ndim), perm)
    if bias is not None:
        y = y + _layout.broadcast_to_perm(bias, _layout.identity(bias.ndim), perm)
    return (y, mean, inv_std)[:n_out]


# ONNX Runtime also accepts LayerNormalization below opset 17 (older exporters emit it), where
# onnx has no schema to give its defaults.
@register("LayerNormalization", layout="custom", params=_trailing_params,
          defaults={"axis": -1, "epsilon": 1e-5})
def layer_norm(ctx: OpContext, x, scale, bias=None):
    """Optional outputs Mean / InvStdDev have X's rank with size-1 normalized dims.
    ``stash_type`` is not read: float32 models compute in float32, as its default asks."""
    outputs = _trailing_norm(ctx, x, scale, bias, rms=False, n_out=len(ctx.node.outputs))
    ctx.out_perms = [ctx.in_perms[0]] * len(outputs)
    return outputs


@register("RMSNormalization", since=23, layout="custom", params=_trailing_params)
def rms_norm(ctx: OpContext, x, scale):
    """``X / sqrt(mean(X^2) + epsilon) * scale`` over ONNX axes ``axis..rank-1``."""
    ctx.out_perms = [ctx.in_perms[0]]
    return _trailing_norm(ctx, x, scale, None, rms=True)[0]


@register("MeanVarianceNormalization", since=9, layout="custom")
def mean_variance_norm(ctx: OpContext, x):
    """``(X - E[X]) / (sqrt(Var[X]) + 1e-9)`` over ONNX ``axes`` (default [0, 2, 3])."""
    perm = ctx.in_perms[0]
    axes = {normalize_axis(ctx, int(a), x.ndim) for a in ctx.attr("axes")}
    held = tuple(perm.index(a) for a in sorted(axes))
    ctx.out_perms = [perm]
    centered = x - jnp.mean(x, held, keepdims=True)
    return centered / (jnp.sqrt(jnp.mean(jnp.square(centered), held, keepdims=True)) + 1e-9)


@register("LpNormalization", layout="custom")
def lp_norm(ctx: OpContext, x):
    """``X / ||X||_p`` along ``axis`` (default -1), ``p`` 1 or 2; zero vectors stay zero."""
    perm = ctx.in_perms[0]
    held = perm.index(normalize_axis(ctx, int(ctx.attr("axis")), x.ndim))
    p = int(ctx.attr("p"))
    if p not in (1, 2):
        raise ctx.invalid(f"p must be 1 or 2, got {p}")
    ctx.out_perms = [perm]
    norm = jnp.linalg.norm(x, ord=p, axis=held, keepdims=True)
    return x / jnp.where(norm == 0, 1, norm)


def _instance_norm_params(node, weights):
    return _scale_bias_params(weights[1], weights[2])


@register("InstanceNormalization", layout="custom", params=_instance_norm_params)
def instance_norm(ctx: OpContext, x, scale, bias):
    """Per sample and channel over the spatial dims; scale / B ``[C]``. Works in the held
    layout (channels-last after a Conv, ONNX order after a Reshape, as in exported
    GroupNorms), so no transpose is needed, as long as the batch axis leads."""
    epsilon = float(ctx.attr("epsilon"))
    perm = ctx.in_perms[0]
    if perm.index(0) != 0:  # nn.InstanceNorm takes axis 0 as the batch axis
        target = _layout.channels_last(x.ndim)
        x, perm = _layout.convert(x, perm, target), target
    channel = perm.index(1) if x.ndim > 1 else 0
    ctx.out_perms = [perm]
    _check_channels(ctx, x.shape[channel], scale=scale, B=bias)
    if ctx.layer_plan is not None:
        return ctx.layer(nn.InstanceNorm, x, epsilon=epsilon, use_fast_variance=False,
                         feature_axes=channel)
    spatial = tuple(a for a in range(1, x.ndim) if a != channel)
    shape = [1] * x.ndim
    shape[channel] = -1
    return _standardize(x, spatial, epsilon)[0] * scale.reshape(shape) + bias.reshape(shape)


def _group_norm(ctx: OpContext, x, scale, bias, per_group: bool):
    """X ``[N, *spatial, C]``: channels split into ``num_groups`` contiguous groups, each
    normalized over its channels and the spatial dims; then per-channel (or, opset 18,
    per-group) scale and bias."""
    groups = int(ctx.attr("num_groups"))
    epsilon = float(ctx.attr("epsilon"))
    channels = x.shape[-1]
    if groups < 1 or channels % groups:
        raise ctx.invalid(f"{channels} channels cannot be split into {groups} groups")
    if per_group:
        if tuple(scale.shape) != (groups,) or tuple(bias.shape) != (groups,):
            raise ctx.invalid(f"scale {list(scale.shape)} and bias {list(bias.shape)} must be "
                              f"[num_groups] = [{groups}] (opset 18)")
    else:
        _check_channels(ctx, channels, scale=scale, bias=bias)
        if ctx.layer_plan is not None:
            return ctx.layer(nn.GroupNorm, x, num_groups=groups, epsilon=epsilon,
                             use_fast_variance=False)
    g = x.reshape(x.shape[:-1] + (groups, channels // groups))
    y = _standardize(g, tuple(range(1, g.ndim - 2)) + (g.ndim - 1,), epsilon)[0]
    if per_group:
        return (y * scale[:, None] + bias[:, None]).reshape(x.shape)
    return y.reshape(x.shape) * scale + bias


@register("GroupNormalization", since=18, layout="channels_last")
def group_norm_v18(ctx: OpContext, x, scale, bias):
    """Opset 18: scale / bias are ``[num_groups]`` (no Flax layer: nn.GroupNorm's are [C])."""
    return _group_norm(ctx, x, scale, bias, per_group=True)


def _group_norm_params(node, weights):
    return _scale_bias_params(weights[1], weights[2])


@register("GroupNormalization", since=21, layout="channels_last", params=_group_norm_params)
def group_norm(ctx: OpContext, x, scale, bias):
    """Opset 21: scale / bias are ``[C]``; statistics in float32 (``stash_type``)."""
    return _group_norm(ctx, x, scale, bias, per_group=False)


@register("LRN", layout="channels_last")
def lrn(ctx: OpContext, x):
    """Local response normalization across channels (X ``[N, *spatial, C]``):
    ``x / (bias + alpha / size * sum of x^2 over a window of size channels) ** beta``,
    the window ``[c - (size-1)//2, c + ceil((size-1)/2)]``."""
    alpha = float(ctx.attr("alpha"))
    beta = float(ctx.attr("beta"))
    bias = float(ctx.attr("bias"))
    size = int(ctx.attr("size"))
    if size < 1:
        raise ctx.invalid(f"size must be >= 1, got {size}")
    before = (size - 1) // 2
    pads = [(0, 0)] * (x.ndim - 1) + [(before, size - 1 - before)]
    window = (1,) * (x.ndim - 1) + (size,)
    square_sum = lax.reduce_window(x * x, jnp.zeros((), x.dtype), lax.add, window,
                                   (1,) * x.ndim, pads)
    return x / (bias + alpha / size * square_sum) ** beta
