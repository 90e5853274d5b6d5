"""com.microsoft transformer ops other than attention, as onnxruntime's transformer
optimizer, a session's saved optimized graph and onnxruntime-genai's model builder write
them (semantics from onnxruntime's docs/ContribOperators.md).

Activations and bias fusions (Gelu family, BiasAdd, BiasSplitGelu, BiasSoftmax); FusedMatMul,
FusedGemm, FusedConv, NhwcConv, GemmFastGelu; MatMulNBits (blocked 2/4/8-bit weights, kept
packed); Skip / Simplified / Embed layer normalization, GroupNorm, SkipGroupNorm. The
attention ops are in ``contrib_attention``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from . import conv, linear, normalization
from .._core import layout as _layout
from .._core.registry import register, schema_defaults
from .._pipeline import layers as _layers
from .._pipeline.module import OpContext

_MS = "com.microsoft"


def _erf_gelu(x):
    return jax.nn.gelu(x, approximate=False)


def _tanh_gelu(x):
    return jax.nn.gelu(x, approximate=True)


# -- activations and bias fusions ------------------------------------------------------

@register("Gelu", domain=_MS, layout="elementwise")
def gelu(ctx: OpContext, x):
    """Exact (erf) GELU."""
    return _erf_gelu(x)


@register("BiasGelu", domain=_MS, layout="elementwise")
def bias_gelu(ctx: OpContext, a, b):
    """Exact GELU of ``A + B`` (B ``[hidden]``)."""
    return _erf_gelu(a + b)


@register("FastGelu", domain=_MS, layout="elementwise")
def fast_gelu(ctx: OpContext, x, bias=None):
    """Tanh-approximated GELU of ``X (+ bias)``."""
    return _tanh_gelu(x if bias is None else x + bias)


@register("QuickGelu", domain=_MS, layout="elementwise", defaults={"alpha": 1.702})
def quick_gelu(ctx: OpContext, x):
    """``x * sigmoid(alpha * x)``."""
    return x * jax.nn.sigmoid(float(ctx.attr("alpha")) * x)


@register("BiasAdd", domain=_MS, layout="elementwise")
def bias_add(ctx: OpContext, x, bias, skip):
    """``X + bias + skip`` (X, skip ``[N, S, C]``, bias ``[C]``)."""
    return x + bias + skip


@register("BiasSplitGelu", domain=_MS)
def bias_split_gelu(ctx: OpContext, x, bias):
    """``X + bias`` split in two halves along the last axis: ``left * gelu(right)``."""
    if x.shape[-1] % 2:
        raise ctx.invalid(f"the last dim of X {list(x.shape)} must be even")
    left, right = jnp.split(x + bias, 2, axis=-1)
    return left * _erf_gelu(right)


@register("BiasSoftmax", domain=_MS, defaults={"axis": 1})
def bias_softmax(ctx: OpContext, data, bias):
    """Softmax over the dims ``axis..`` (flattened, default axis 1) of ``data + bias``.
    A bias of lower rank broadcasts over the leading dims, or, with
    ``is_inner_broadcast``, over the dims just before ``axis``."""
    rank = data.ndim
    axis = int(ctx.attr("axis")) % max(rank, 1)
    if bias.ndim < rank and int(ctx.attr("is_inner_broadcast")):
        outer = bias.ndim - (rank - axis)  # bias: data's dims [0, outer) and [axis, rank)
        if outer < 0:
            raise ctx.invalid(f"bias {list(bias.shape)} has fewer dims than data "
                              f"{list(data.shape)} from axis {axis} on")
        bias = jnp.reshape(bias, bias.shape[:outer] + (1,) * (axis - outer) + bias.shape[outer:])
    x = data + bias
    flat = jnp.reshape(x, x.shape[:axis] + (-1,))
    return jnp.reshape(jax.nn.softmax(flat, axis=-1), x.shape)


_ACTIVATIONS = {
    "Relu": lambda x, p: jax.nn.relu(x),
    "Tanh": lambda x, p: jnp.tanh(x),
    "Sigmoid": lambda x, p: jax.nn.sigmoid(x),
    "LeakyRelu": lambda x, p: jnp.where(x >= 0, x, (p[0] if p else 0.01) * x),
    "HardSigmoid": lambda x, p: jnp.clip((p[0] if p else 0.2) * x + (p[1] if len(p) > 1 else 0.5),
                                         0, 1),
    "Clip": lambda x, p: jnp.clip(x, p[0], p[1]),
}


def _activate(ctx: OpContext, y, params):
    """The fused ``activation`` attribute applied to ``y`` with its float parameters."""
    name = ctx.attr("activation")
    if name == "":
        return y
    if name not in _ACTIVATIONS or (name == "Clip" and len(params) != 2):
        raise ctx.fail(f"fused activation {name!r} (parameters {list(params)}) is not one of "
                       f"{sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name](y, [float(p) for p in params]).astype(y.dtype)


# -- weighted fusions --------------------------------------------------------------------

@register("FusedMatMul", domain=_MS, defaults={"alpha": 1.0, "transA": 0, "transB": 0,
                                                "transBatchA": 0, "transBatchB": 0})
def fused_matmul(ctx: OpContext, a, b):
    """``alpha * A' @ B'``: ``transA`` / ``transB`` swap the last two axes; ``transBatchA`` /
    ``transBatchB`` first move axis 0 to the second-to-last place."""
    def prepare(x, trans, trans_batch):
        if trans_batch and x.ndim > 2:
            x = jnp.moveaxis(x, 0, -2)
        return jnp.swapaxes(x, -1, -2) if trans and x.ndim >= 2 else x

    a = prepare(a, int(ctx.attr("transA")), int(ctx.attr("transBatchA")))
    b = prepare(b, int(ctx.attr("transB")), int(ctx.attr("transBatchB")))
    if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
        raise ctx.invalid(f"A' {list(a.shape)} and B' {list(b.shape)} do not multiply")
    alpha = float(ctx.attr("alpha"))
    y = jnp.matmul(a, b)
    return y if alpha == 1 else y * jnp.asarray(alpha, y.dtype)


def _gemm_activation_params(ctx: OpContext):
    return [ctx.attr(n) for n in ("activation_alpha", "activation_beta", "activation_gamma")
            if n in ctx.node.attrs]


#: FusedGemm and FusedConv take Gemm's and Conv's attributes (and defaults) and an activation.
_FUSED_GEMM = {**schema_defaults("", "Gemm"), "activation": ""}
FUSED_CONV = {**schema_defaults("", "Conv"), "activation": "", "activation_params": []}


@register("FusedGemm", domain=_MS, params=linear._gemm_params, defaults=_FUSED_GEMM)
def fused_gemm(ctx: OpContext, a, b, c=None):
    """Gemm followed by the fused ``activation`` (``activation_alpha`` / ``_beta``)."""
    return _activate(ctx, linear.gemm(ctx, a, b, c), _gemm_activation_params(ctx))


@register("FusedConv", domain=_MS, layout="channels_last", params=conv._conv_params,
          defaults=FUSED_CONV)
def fused_conv(ctx: OpContext, x, w, b=None, z=None):
    """Conv (channels-last), plus the optional sum input Z, then the fused ``activation``
    with ``activation_params``."""
    y = conv.conv(ctx, x, w, b)
    if z is not None:
        y = y + _layout.convert(z, _layout.identity(z.ndim), _layout.channels_last(z.ndim))
    return _activate(ctx, y, ctx.attr("activation_params"))


def _ohwi_to_oihw(w):
    xp = np if isinstance(w, np.ndarray) else jnp
    return xp.transpose(w, (0, 3, 1, 2))


def _nhwc_conv_params(node, weights):
    w = weights[1]
    if w is None or w.dtype.kind != "f" or w.ndim != 4:
        return None
    built = conv._conv_params(node, [weights[0], _ohwi_to_oihw(w), *weights[2:]])
    if built is not None:
        built["sources"]["kernel"] = (1, lambda k: np.transpose(conv._conv_kernel_inverse(k),
                                                                (0, 2, 3, 1)))
    return built


@register("NhwcConv", domain=_MS, params=_nhwc_conv_params, defaults=schema_defaults("", "Conv"))
def nhwc_conv(ctx: OpContext, x, w, b=None):
    """2-D Conv on NHWC X with an OHWI weight (the transformer optimizer's layout), NHWC
    out: a plain channels-last Flax Conv."""
    if x.ndim != 4 or w.ndim != 4:
        raise ctx.invalid(f"X {list(x.shape)} must be NHWC and W {list(w.shape)} OHWI")
    return conv.conv(ctx, x, _ohwi_to_oihw(w), b)


def _dense_params(node, weights):
    """A constant float ``[K, N]`` weight (input 1) and optional ``[N]`` bias (input 2)
    as a Dense kernel / bias."""
    w = weights[1]
    if w is None or w.dtype.kind != "f" or w.ndim != 2:
        return None
    params, sources = {"kernel": w}, {"kernel": (1, None)}
    if len(node.inputs) > 2 and node.inputs[2]:
        bias = weights[2]
        if bias is None or bias.shape != (w.shape[1],):
            return None
        params["bias"], sources["bias"] = bias, (2, None)
    return {"params": params, "sources": sources}


def _dense(ctx: OpContext, x, w, bias):
    """``x @ W (+ bias)``: the node's Dense layer when its weights are constant."""
    if x.shape[-1] != w.shape[0]:
        raise ctx.invalid(f"input {list(x.shape)} and weight {list(w.shape)} do not multiply")
    if ctx.layer_plan is not None:
        return ctx.layer(nn.Dense, x, features=int(w.shape[1]), use_bias=bias is not None)
    y = jnp.matmul(x, w)
    return y if bias is None else y + bias


@register("GemmFastGelu", domain=_MS, params=_dense_params)
def gemm_fast_gelu(ctx: OpContext, x, w, bias=None):
    """FastGelu(X @ W + bias)."""
    return _tanh_gelu(_dense(ctx, x, w, bias))


def _nbits_params(node, weights):
    """The packed weight, scales ``[N, blocks]``, zero points ``[N, -1]``, g_idx and bias
    of a MatMulNBits node with constant weights, as its layer's params."""
    names = ("", "qweight", "scales", "zero_points", "g_idx", "bias")
    given = {k: weights[k] for k in range(1, min(len(node.inputs), 6)) if node.inputs[k]}
    if any(w is None for w in given.values()) or 1 not in given or 2 not in given:
        return None
    n = int(node.attrs.get("N", 0))
    params, sources = {}, {}
    for k, w in given.items():
        if k in (2, 3) and n > 0 and w.size % n == 0:
            w = w.reshape(n, -1)  # the layer's 2-D form; written back in the node's shape
        params[names[k]] = w
        sources[names[k]] = (k, lambda v, shape=given[k].shape: np.reshape(v, shape))
    return {"params": params, "sources": sources}


@register("MatMulNBits", domain=_MS, params=_nbits_params, defaults={"bits": 4})
def matmul_nbits(ctx: OpContext, a, b, scales, zero_points=None, g_idx=None, bias=None):
    """``A @ dequantize(B)^T (+ bias)``, A ``[..., K]``, B uint8 ``[N, blocks, blob]``: a
    ``_layers.MatMulNBits`` layer holding the packed weight (unpacked when traced)."""
    k, n = int(ctx.attr("K")), int(ctx.attr("N"))
    bits, block = int(ctx.attr("bits")), int(ctx.attr("block_size"))
    blocks = -(-k // block) if block > 0 else 0
    if bits not in (2, 4, 8) or block < 16 or block & (block - 1):
        raise ctx.invalid(f"bits must be 2, 4 or 8 and block_size a power of 2 >= 16, got "
                          f"bits={bits}, block_size={block}")
    zp_size = n * (blocks if zero_points is None or zero_points.dtype != np.uint8
                   else -(-blocks * bits // 8))
    if (a.shape[-1] != k or b.shape != (n, blocks, block * bits // 8) or scales.size != n * blocks
            or (zero_points is not None and zero_points.size != zp_size)):
        raise ctx.invalid(f"A {list(a.shape)}, B {list(b.shape)}, scales {list(scales.shape)} "
                          f"and zero points do not fit K={k}, N={n}, bits={bits}, "
                          f"block_size={block} (B must be [{n}, {blocks}, {block * bits // 8}], "
                          f"scales {n * blocks} values, zero points {zp_size})")
    layer = dict(k=k, n=n, bits=bits, block_size=block, g_idx=g_idx is not None,
                 use_bias=bias is not None,
                 zero_points=None if zero_points is None
                 else "packed" if zero_points.dtype == np.uint8 else "float")
    if ctx.layer_plan is not None:
        return ctx.layer(_layers.MatMulNBits, a, **layer)
    variables = {"qweight": b, "scales": jnp.reshape(scales, (n, blocks)), "g_idx": g_idx,
                 "zero_points": None if zero_points is None else jnp.reshape(zero_points, (n, -1)),
                 "bias": bias}
    return _layers.MatMulNBits(**layer).apply(
        {"params": {k_: v for k_, v in variables.items() if v is not None}}, a)


# -- normalization -----------------------------------------------------------------------

@register("SimplifiedLayerNormalization", layout="custom", params=normalization._trailing_params,
          defaults={"axis": -1, "epsilon": 1e-5})
def simplified_layer_norm(ctx: OpContext, x, scale):
    """onnxruntime's RMS normalization in the ONNX domain (any opset): ``X / sqrt(mean(X^2)
    + epsilon) * scale`` over axes ``axis..``; outputs Y and (optional) ``inv_std_var``."""
    y, _, inv_std = normalization._trailing_norm(ctx, x, scale, None, rms=True, n_out=3)
    ctx.out_perms = [ctx.in_perms[0]] * len(ctx.node.outputs)
    return (y, inv_std)[:len(ctx.node.outputs)]


def _skip_params(node, weights):
    """gamma (input 2) and, for SkipLayerNormalization, beta (input 3) as a norm layer."""
    beta_at = 3 if node.op_type == "SkipLayerNormalization" else None
    has_beta = beta_at is not None and len(node.inputs) > beta_at and node.inputs[beta_at]
    built = normalization._scale_bias_params(weights[2], weights[beta_at] if has_beta else None,
                                             min_size=2)
    if built is None or (has_beta and "bias" not in built["params"]):
        return None
    built["sources"] = {"scale": (2, None), **({"bias": (3, None)} if has_beta else {})}
    return built


def _skip_norm(ctx: OpContext, x, skip, gamma, beta, bias, rms: bool):
    """``s = input + skip (+ bias)`` normalized over the last axis, times gamma (plus beta);
    outputs ``(y, mean, inv_std_var, s)``."""
    s = x + skip
    if bias is not None:
        s = s + bias
    identity = _layout.identity(s.ndim)
    y = normalization._trailing_norm(ctx, s, gamma, beta, rms=rms, perm=identity)[0]
    outs = [y, None, None, s]
    if any(ctx.node.outputs[1:3]):
        _, mean, inv_std = normalization._standardize(s, (s.ndim - 1,),
                                                      float(ctx.attr("epsilon")),
                                                      center=not rms)
        outs[1:3] = mean, inv_std
    return outs[:len(ctx.node.outputs)]


#: The Skip*LayerNormalization defaults (they have no axis attribute: the last axis).
_SKIP_NORM = {"axis": -1, "epsilon": 1e-12}


@register("SkipLayerNormalization", domain=_MS, params=_skip_params, defaults=_SKIP_NORM)
def skip_layer_norm(ctx: OpContext, x, skip, gamma, beta=None, bias=None):
    """LayerNorm(input + skip + bias) * gamma + beta; the sum is output 3."""
    return _skip_norm(ctx, x, skip, gamma, beta, bias, rms=False)


@register("SkipSimplifiedLayerNormalization", domain=_MS, params=_skip_params, defaults=_SKIP_NORM)
def skip_simplified_layer_norm(ctx: OpContext, x, skip, gamma, bias=None):
    """RMSNorm(input + skip + bias) * gamma; the sum is output 3."""
    return _skip_norm(ctx, x, skip, gamma, None, bias, rms=True)


def _group_norm_nhwc(ctx: OpContext, x, gamma, beta):
    """com.microsoft GroupNorm's computation on X ``[N, *spatial, C]``: ``groups``
    contiguous channel groups normalized over their channels and the spatial dims
    (``epsilon``), then ``* gamma + beta`` per channel, then SiLU if ``activation`` is 1."""
    groups, channels = int(ctx.attr("groups")), x.shape[-1]
    if x.ndim < 3 or groups < 1 or channels % groups or gamma.shape != (channels,) \
            or beta.shape != (channels,):
        raise ctx.invalid(f"X {list(x.shape)} must have channels (last) divisible by groups="
                          f"{groups}, and gamma {list(gamma.shape)} / beta {list(beta.shape)} "
                          f"be [{channels}]")
    g = jnp.reshape(x, x.shape[:-1] + (groups, channels // groups))
    axes = tuple(range(1, g.ndim - 2)) + (g.ndim - 1,)
    y = normalization._standardize(g, axes, float(ctx.attr("epsilon")))[0]
    y = jnp.reshape(y, x.shape) * gamma + beta
    activation = int(ctx.attr("activation"))
    if activation not in (0, 1):
        raise ctx.invalid(f"activation must be 0 (none) or 1 (SiLU), got {activation}")
    return jax.nn.silu(y) if activation else y


#: The attributes of com.microsoft GroupNorm and SkipGroupNorm (channels_last: GroupNorm's).
_GROUP_NORM = {"epsilon": 1e-5, "activation": 0}


@register("GroupNorm", domain=_MS, defaults={**_GROUP_NORM, "channels_last": 1})
def ms_group_norm(ctx: OpContext, x, gamma, beta):
    """Group normalization of NHWC X (``channels_last`` 1, the default) or NCHW X."""
    if int(ctx.attr("channels_last")):
        return _group_norm_nhwc(ctx, x, gamma, beta)
    return jnp.moveaxis(_group_norm_nhwc(ctx, jnp.moveaxis(x, 1, -1), gamma, beta), -1, 1)


@register("SkipGroupNorm", domain=_MS, defaults=_GROUP_NORM)
def skip_group_norm(ctx: OpContext, x, gamma, beta, skip, bias=None):
    """GroupNorm of ``S = X + skip (+ bias)``, X NHWC, skip ``[N, H, W, C]``, ``[N, 1, 1,
    C]`` or ``[N, C]``; outputs Y and S."""
    if skip.ndim == 2:
        skip = jnp.reshape(skip, (skip.shape[0],) + (1,) * (x.ndim - 2) + (skip.shape[1],))
    total = x + skip if bias is None else x + skip + bias
    return (_group_norm_nhwc(ctx, total, gamma, beta), total)[:len(ctx.node.outputs)]


@register("EmbedLayerNormalization", domain=_MS, defaults={"epsilon": 1e-12})
def embed_layer_norm(ctx: OpContext, input_ids, segment_ids, word_embedding, position_embedding,
                     segment_embedding=None, gamma=None, beta=None, mask=None, position_ids=None):
    """BERT's embeddings: ``word[input_ids] + position[position_ids or 0..S-1] (+
    segment[segment_ids])`` layer-normalized (epsilon default 1e-12) with gamma / beta.
    Outputs the result, ``mask_index`` (int32 ``[B]``: the mask's per-row sum, zeros
    without a mask) and the embedding sum."""
    if input_ids.ndim != 2 or gamma is None or beta is None:
        raise ctx.invalid(f"input_ids must be [batch, sequence] (got {list(input_ids.shape)}) "
                          "and gamma and beta given")
    b, s = input_ids.shape
    if position_ids is None:
        position_ids = jnp.arange(s)[None, :]
    total = jnp.take(word_embedding, input_ids, axis=0) + jnp.take(position_embedding,
                                                                    position_ids, axis=0)
    if segment_embedding is not None and segment_ids is not None:
        total = total + jnp.take(segment_embedding, segment_ids, axis=0)
    epsilon = float(ctx.attr("epsilon"))
    y = normalization._standardize(total, (2,), epsilon)[0] * gamma + beta
    mask_index = (jnp.zeros((b,), jnp.int32) if mask is None
                  else jnp.sum(mask.astype(jnp.int32), axis=1))
    return (y, mask_index, total)[:len(ctx.node.outputs)]
