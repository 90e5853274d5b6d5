"""com.microsoft transformer ops, as onnxruntime's transformer optimizer, a session's saved
optimized graph and onnxruntime-genai's model builder write them (semantics from
onnxruntime's docs/ContribOperators.md, checked against its CPU kernels).

Activations and bias fusions; Skip / Simplified / Embed layer normalization; FusedMatMul,
FusedGemm, FusedConv, GemmFastGelu; MatMulNBits (blocked 2/4/8-bit weights, kept packed);
Attention, MultiHeadAttention, GroupQueryAttention (KV cache) and RotaryEmbedding, all
through the one attention computation of ``attention.attend``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .. import _layers, _layout
from .._registry import register
from . import attention, conv, linear, normalization

_MS = "com.microsoft"


def _erf_gelu(x):
    return jax.nn.gelu(x, approximate=False)


def _tanh_gelu(x):
    return jax.nn.gelu(x, approximate=True)


# -- activations and bias fusions ------------------------------------------------------

@register("Gelu", domain=_MS, layout="elementwise")
def gelu(ctx, x):
    """Exact (erf) GELU."""
    return _erf_gelu(x)


@register("BiasGelu", domain=_MS, layout="elementwise")
def bias_gelu(ctx, a, b):
    """Exact GELU of ``A + B`` (B ``[hidden]``)."""
    return _erf_gelu(a + b)


@register("FastGelu", domain=_MS, layout="elementwise")
def fast_gelu(ctx, x, bias=None):
    """Tanh-approximated GELU of ``X (+ bias)``."""
    return _tanh_gelu(x if bias is None else x + bias)


@register("QuickGelu", domain=_MS, layout="elementwise")
def quick_gelu(ctx, x):
    """``x * sigmoid(alpha * x)`` (alpha 1.702)."""
    return x * jax.nn.sigmoid(float(ctx.attr("alpha", 1.702)) * x)


@register("BiasAdd", domain=_MS, layout="elementwise")
def bias_add(ctx, x, bias, skip):
    """``X + bias + skip`` (X, skip ``[N, S, C]``, bias ``[C]``)."""
    return x + bias + skip


@register("BiasSplitGelu", domain=_MS)
def bias_split_gelu(ctx, x, bias):
    """``X + bias`` split in two halves along the last axis: ``left * gelu(right)``."""
    if x.shape[-1] % 2:
        raise ctx.invalid(f"the last dim of X {list(x.shape)} must be even")
    left, right = jnp.split(x + bias, 2, axis=-1)
    return left * _erf_gelu(right)


@register("BiasSoftmax", domain=_MS)
def bias_softmax(ctx, data, bias):
    """Softmax over the dims ``axis..`` (flattened, default axis 1) of ``data + bias``.
    A bias of lower rank broadcasts over the leading dims, or, with
    ``is_inner_broadcast``, over the dims just before ``axis``."""
    rank = data.ndim
    axis = int(ctx.attr("axis", 1)) % max(rank, 1)
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


def _activate(ctx, y, params):
    """The fused ``activation`` attribute applied to ``y`` with its float parameters."""
    name = ctx.attr("activation", "")
    if name == "":
        return y
    if name not in _ACTIVATIONS or (name == "Clip" and len(params) != 2):
        raise ctx.fail(f"fused activation {name!r} (parameters {list(params)}) is not one of "
                       f"{sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name](y, [float(p) for p in params]).astype(y.dtype)


# -- weighted fusions --------------------------------------------------------------------

@register("FusedMatMul", domain=_MS)
def fused_matmul(ctx, a, b):
    """``alpha * A' @ B'``: ``transA`` / ``transB`` swap the last two axes; ``transBatchA`` /
    ``transBatchB`` first move axis 0 to the second-to-last place."""
    def prepare(x, trans, trans_batch):
        if trans_batch and x.ndim > 2:
            x = jnp.moveaxis(x, 0, -2)
        return jnp.swapaxes(x, -1, -2) if trans and x.ndim >= 2 else x

    a = prepare(a, int(ctx.attr("transA", 0)), int(ctx.attr("transBatchA", 0)))
    b = prepare(b, int(ctx.attr("transB", 0)), int(ctx.attr("transBatchB", 0)))
    if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
        raise ctx.invalid(f"A' {list(a.shape)} and B' {list(b.shape)} do not multiply")
    alpha = float(ctx.attr("alpha", 1.0))
    y = jnp.matmul(a, b)
    return y if alpha == 1 else y * jnp.asarray(alpha, y.dtype)


def _gemm_activation_params(ctx):
    return [ctx.attr(n) for n in ("activation_alpha", "activation_beta", "activation_gamma")
            if n in ctx.node.attrs]


@register("FusedGemm", domain=_MS, params=linear._gemm_params)
def fused_gemm(ctx, a, b, c=None):
    """Gemm followed by the fused ``activation`` (``activation_alpha`` / ``_beta``)."""
    return _activate(ctx, linear.gemm(ctx, a, b, c), _gemm_activation_params(ctx))


@register("FusedConv", domain=_MS, layout="channels_last", params=conv._conv_params)
def fused_conv(ctx, x, w, b=None, z=None):
    """Conv (channels-last), plus the optional sum input Z, then the fused ``activation``
    with ``activation_params``."""
    y = conv.conv(ctx, x, w, b)
    if z is not None:
        y = y + _layout.convert(z, _layout.identity(z.ndim), _layout.channels_last(z.ndim))
    return _activate(ctx, y, ctx.attr("activation_params", []))


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


@register("NhwcConv", domain=_MS, params=_nhwc_conv_params)
def nhwc_conv(ctx, x, w, b=None):
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


def _dense(ctx, x, w, bias):
    """``x @ W (+ bias)``: the node's Dense layer when its weights are constant."""
    if x.shape[-1] != w.shape[0]:
        raise ctx.invalid(f"input {list(x.shape)} and weight {list(w.shape)} do not multiply")
    if ctx.layer_plan is not None:
        return ctx.layer(nn.Dense, x, features=int(w.shape[1]), use_bias=bias is not None)
    y = jnp.matmul(x, w)
    return y if bias is None else y + bias


@register("GemmFastGelu", domain=_MS, params=_dense_params)
def gemm_fast_gelu(ctx, x, w, bias=None):
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


@register("MatMulNBits", domain=_MS, params=_nbits_params)
def matmul_nbits(ctx, a, b, scales, zero_points=None, g_idx=None, bias=None):
    """``A @ dequantize(B)^T (+ bias)``, A ``[..., K]``, B uint8 ``[N, blocks, blob]``: a
    ``_layers.MatMulNBits`` layer holding the packed weight (unpacked when traced)."""
    k, n = int(ctx.attr("K")), int(ctx.attr("N"))
    bits, block = int(ctx.attr("bits", 4)), int(ctx.attr("block_size"))
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

@register("SimplifiedLayerNormalization", layout="custom", params=normalization._trailing_params)
def simplified_layer_norm(ctx, x, scale):
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


def _skip_norm(ctx, x, skip, gamma, beta, bias, rms: bool):
    """``s = input + skip (+ bias)`` normalized over the last axis (epsilon default 1e-12),
    times gamma (plus beta); outputs ``(y, mean, inv_std_var, s)``."""
    s = x + skip
    if bias is not None:
        s = s + bias
    identity = _layout.identity(s.ndim)
    y = normalization._trailing_norm(ctx, s, gamma, beta, rms=rms, perm=identity,
                                     epsilon=1e-12)[0]
    outs = [y, None, None, s]
    if any(ctx.node.outputs[1:3]):
        _, mean, inv_std = normalization._standardize(s, (s.ndim - 1,),
                                                      float(ctx.attr("epsilon", 1e-12)),
                                                      center=not rms)
        outs[1:3] = mean, inv_std
    return outs[:len(ctx.node.outputs)]


@register("SkipLayerNormalization", domain=_MS, params=_skip_params)
def skip_layer_norm(ctx, x, skip, gamma, beta=None, bias=None):
    """LayerNorm(input + skip + bias) * gamma + beta; the sum is output 3."""
    return _skip_norm(ctx, x, skip, gamma, beta, bias, rms=False)


@register("SkipSimplifiedLayerNormalization", domain=_MS, params=_skip_params)
def skip_simplified_layer_norm(ctx, x, skip, gamma, bias=None):
    """RMSNorm(input + skip + bias) * gamma; the sum is output 3."""
    return _skip_norm(ctx, x, skip, gamma, None, bias, rms=True)


def _group_norm_nhwc(ctx, x, gamma, beta):
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
    y = normalization._standardize(g, axes, float(ctx.attr("epsilon", 1e-5)))[0]
    y = jnp.reshape(y, x.shape) * gamma + beta
    activation = int(ctx.attr("activation", 0))
    if activation not in (0, 1):
        raise ctx.invalid(f"activation must be 0 (none) or 1 (SiLU), got {activation}")
    return jax.nn.silu(y) if activation else y


@register("GroupNorm", domain=_MS)
def ms_group_norm(ctx, x, gamma, beta):
    """Group normalization of NHWC X (``channels_last`` 1, the default) or NCHW X."""
    if int(ctx.attr("channels_last", 1)):
        return _group_norm_nhwc(ctx, x, gamma, beta)
    return jnp.moveaxis(_group_norm_nhwc(ctx, jnp.moveaxis(x, 1, -1), gamma, beta), -1, 1)


@register("SkipGroupNorm", domain=_MS)
def skip_group_norm(ctx, x, gamma, beta, skip, bias=None):
    """GroupNorm of ``S = X + skip (+ bias)``, X NHWC, skip ``[N, H, W, C]``, ``[N, 1, 1,
    C]`` or ``[N, C]``; outputs Y and S."""
    if skip.ndim == 2:
        skip = jnp.reshape(skip, (skip.shape[0],) + (1,) * (x.ndim - 2) + (skip.shape[1],))
    total = x + skip if bias is None else x + skip + bias
    return (_group_norm_nhwc(ctx, total, gamma, beta), total)[:len(ctx.node.outputs)]


@register("EmbedLayerNormalization", domain=_MS)
def embed_layer_norm(ctx, input_ids, segment_ids, word_embedding, position_embedding,
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
    epsilon = float(ctx.attr("epsilon", 1e-12))
    y = normalization._standardize(total, (2,), epsilon)[0] * gamma + beta
    mask_index = (jnp.zeros((b,), jnp.int32) if mask is None
                  else jnp.sum(mask.astype(jnp.int32), axis=1))
    return (y, mask_index, total)[:len(ctx.node.outputs)]


# -- attention ---------------------------------------------------------------------------

def _merge_heads(y):
    """``[B, N, S, H]`` -> ``[B, S, N*H]``."""
    b, n, s, h = y.shape
    return jnp.reshape(jnp.transpose(y, (0, 2, 1, 3)), (b, s, n * h))


def _key_mask(ctx, mask, batch: int, sq: int, skv: int, past: int, causal: bool, dtype):
    """The additive mask ``[B, 1, Sq, Skv]`` (or ``None``) of Attention / MultiHeadAttention:
    ``mask_filter_value`` (default -10000) where the mask index or key padding mask hides a
    key, or (``unidirectional``) a key lies after the query (query 0 at position ``past``).
    Masks: ``[B]`` valid lengths, ``[2B]`` ends then starts, ``[B, Skv]`` or ``[B, Sq, Skv]``
    of 1 (keep) / 0 (hide)."""
    pos_k = jnp.arange(skv)
    hidden = jnp.zeros((1, 1, 1, skv), bool)
    if mask is None:
        pass
    elif mask.ndim == 1 and mask.shape[0] in (batch, 2 * batch):
        end = jnp.reshape(mask[:batch], (batch, 1, 1, 1))
        hidden = pos_k >= end
        if mask.shape[0] == 2 * batch:
            hidden = hidden | (pos_k < jnp.reshape(mask[batch:], (batch, 1, 1, 1)))
    elif mask.ndim == 2 and mask.shape == (batch, skv):
        hidden = (mask == 0)[:, None, None, :]
    elif mask.ndim == 3 and mask.shape == (batch, sq, skv):
        hidden = (mask == 0)[:, None, :, :]
    else:
        raise ctx.fail(f"mask of shape {list(mask.shape)} is not one of [batch], [2 * batch], "
                       f"[batch, {skv}], [batch, {sq}, {skv}] (batch {batch})")
    if causal:
        hidden = hidden | (pos_k > jnp.arange(sq)[:, None] + past)
    if mask is None and not causal:
        return None
    filter_value = float(ctx.attr("mask_filter_value", -10000.0))
    return jnp.where(hidden, jnp.asarray(filter_value, dtype), jnp.zeros((), dtype))


def _plus(bias, extra):
    return extra if bias is None else (bias if extra is None else bias + extra)


def _head_scale(ctx, head_size: int) -> float:
    """``scale``; absent or 0 means ``1/sqrt(head_size)``."""
    return float(ctx.attr("scale", 0.0)) or 1 / np.sqrt(head_size)


def _refuse(ctx, **unsupported):
    for name, value in unsupported.items():
        if value:
            raise ctx.fail(f"{name} is not supported")


@register("Attention", domain=_MS, params=_dense_params)
def ms_attention(ctx, x, weights, bias=None, mask_index=None, past=None, attention_bias=None,
                 past_sequence_length=None):
    """BERT / GPT-2 self-attention with the QKV projection: X ``[B, S, D_in]`` @ weights
    ``[D_in, Dq+Dk+Dv]`` (+ bias; ``qkv_hidden_sizes``, default equal thirds) split into
    ``num_heads``; ``past`` ``[2, B, N, P, H]`` prepended; ``mask_index`` and
    ``unidirectional`` as in :func:`_key_mask`; ``attention_bias`` ``[B|1, N|1, S, P+S]``
    added. Outputs ``[B, S, Dv]`` and ``present`` ``[2, B, N, P+S, H]``."""
    _refuse(ctx, do_rotary=int(ctx.attr("do_rotary", 0)),
            past_present_share_buffer=int(ctx.attr("past_present_share_buffer", 0)))
    heads = int(ctx.attr("num_heads"))
    sizes = [int(v) for v in ctx.attr("qkv_hidden_sizes", [weights.shape[1] // 3] * 3)]
    if x.ndim != 3 or sum(sizes) != weights.shape[1] or sizes[0] != sizes[1]:
        raise ctx.invalid(f"input {list(x.shape)} must be [batch, sequence, hidden] and "
                          f"qkv_hidden_sizes {sizes} add up to the weight's {weights.shape[1]} "
                          "columns with equal Q and K sizes")
    qkv = _dense(ctx, x, weights, bias)
    q, k, v = (attention._split_heads(ctx, t, heads, what) for t, what in zip(
        jnp.split(qkv, [sizes[0], sizes[0] + sizes[1]], axis=-1), "QKV"))
    p = 0
    if past is not None:
        p = past.shape[3]
        k, v = jnp.concatenate([past[0], k], axis=2), jnp.concatenate([past[1], v], axis=2)
    b, _, s, h = q.shape
    mask = _key_mask(ctx, mask_index, b, s, p + s, p, bool(int(ctx.attr("unidirectional", 0))),
                     q.dtype)
    y = attention.attend(q, k, v, _plus(mask, attention_bias), scale=_head_scale(ctx, h))
    if len(ctx.node.outputs) < 2:
        return _merge_heads(y)
    if k.shape != v.shape:
        raise ctx.invalid(f"present needs equal K and V sizes, got {sizes}")
    return _merge_heads(y), jnp.stack([k, v])


def _unpack_heads(ctx, query, key, value, bias, heads: int):
    """Q, K, V as ``[B, N, S, H]`` from MultiHeadAttention's input forms: separate ``[B, S,
    D]`` (bias ``[Dq+Dk+Dv]`` added), key/value already ``[B, N, L, H]`` (bias on Q only),
    packed KV ``key [B, L, N, 2, H]`` or packed QKV ``query [B, S, N, 3, H]``."""
    def heads_first(t):
        return jnp.transpose(t, (0, 2, 1, 3))

    if key is None:
        if query.ndim != 5 or query.shape[3] != 3:
            raise ctx.invalid(f"without key, query must be packed [B, S, N, 3, H], got "
                              f"{list(query.shape)}")
        return tuple(heads_first(query[:, :, :, i]) for i in range(3))
    d = query.shape[-1]
    if bias is not None:
        query = query + bias[:d]
    q = attention._split_heads(ctx, query, heads, "query")
    if key.ndim == 5:
        return q, heads_first(key[:, :, :, 0]), heads_first(key[:, :, :, 1])
    if key.ndim == 4:
        return q, key, value
    dk = key.shape[-1]
    if bias is not None:
        key, value = key + bias[d:d + dk], value + bias[d + dk:]
    return (q, attention._split_heads(ctx, key, heads, "key"),
            attention._split_heads(ctx, value, heads, "value"))


@register("MultiHeadAttention", domain=_MS)
def multi_head_attention(ctx, query, key=None, value=None, bias=None, key_padding_mask=None,
                         attention_bias=None, past_key=None, past_value=None,
                         past_sequence_length=None, cache_indirection=None):
    """Attention on projected Q, K, V (see :func:`_unpack_heads`) with ``num_heads``;
    ``past_key`` / ``past_value`` ``[B, N, P, H]`` prepended; ``key_padding_mask`` and
    ``unidirectional`` as in :func:`_key_mask`; ``attention_bias`` added. Outputs
    ``[B, S, N*Hv]`` and ``present_key`` / ``present_value`` ``[B, N, P+L, H]``."""
    _refuse(ctx, cache_indirection=cache_indirection is not None)
    heads = int(ctx.attr("num_heads"))
    q, k, v = _unpack_heads(ctx, query, key, value, bias, heads)
    p = 0
    if past_key is not None and past_value is not None and (key is None or key.ndim != 4):
        p = past_key.shape[2]
        k = jnp.concatenate([past_key, k], axis=2)
        v = jnp.concatenate([past_value, v], axis=2)
    b, _, s, h = q.shape
    mask = _key_mask(ctx, key_padding_mask, b, s, k.shape[2], p,
                     bool(int(ctx.attr("unidirectional", 0))), q.dtype)
    y = attention.attend(q, k, v, _plus(mask, attention_bias), scale=_head_scale(ctx, h))
    return (_merge_heads(y), k, v)[:len(ctx.node.outputs)]


@register("RotaryEmbedding", domain=_MS)
def ms_rotary_embedding(ctx, x, position_ids, cos_cache, sin_cache):
    """RoPE (ONNX RotaryEmbedding's computation) with com.microsoft's input order;
    ``position_ids`` ``[B, S]``, or ``[1]``: the position of token 0 (then 0.., +1 each)."""
    _refuse(ctx, is_packed_batching=int(ctx.attr("is_packed_batching", 0)))
    seq = x.shape[-2] if x.ndim == 4 else x.shape[1]
    if position_ids.ndim == 1:
        position_ids = (jnp.reshape(position_ids, (1, 1)) + jnp.arange(seq)[None, :])
    return attention.rotary_embedding(ctx, x, cos_cache, sin_cache, position_ids)


@register("GroupQueryAttention", domain=_MS)
def group_query_attention(ctx, query, key=None, value=None, past_key=None, past_value=None,
                          seqlens_k=None, total_sequence_length=None, cos_cache=None,
                          sin_cache=None, position_ids=None, attention_bias=None,
                          head_sink=None):
    """Causal grouped-query attention with a KV cache, as onnxruntime-genai's models use it.
    Q ``[B, S, N*H]``, K / V ``[B, S, Nkv*H]`` (or packed in query when key is absent);
    ``past_key`` / ``past_value`` ``[B, Nkv, P, H]``; ``seqlens_k`` ``[B]``: the index of
    each row's last valid token; ``total_sequence_length`` T. Row b's new tokens sit at
    positions ``seqlens_k[b] + 1 - S ..``: rotated there (``do_rotary``, caches ``[max,
    H_rot/2]``, ``rotary_interleaved``), written into the present cache ``[B, Nkv, max(T, P),
    H]`` after the past, and each query attends the valid keys up to its own position
    (within ``local_window_size``), with ``softcap`` and ``attention_bias``."""
    _refuse(ctx, smooth_softmax=int(ctx.attr("smooth_softmax", 0)),
            head_sink=head_sink is not None, qk_output=int(ctx.attr("qk_output", 0)))
    heads, kv_heads = int(ctx.attr("num_heads")), int(ctx.attr("kv_num_heads"))
    if heads < 1 or kv_heads < 1 or heads % kv_heads or query.ndim != 3:
        raise ctx.invalid(f"num_heads ({heads}) must be a multiple of kv_num_heads "
                          f"({kv_heads}) and query [batch, sequence, hidden], got "
                          f"{list(query.shape)}")
    if seqlens_k is None or total_sequence_length is None:
        raise ctx.invalid("seqlens_k and total_sequence_length are required")
    b, s, width = query.shape
    if key is None:
        h = width // (heads + 2 * kv_heads)
        query, key, value = jnp.split(query, [heads * h, (heads + kv_heads) * h], axis=-1)
    h = query.shape[-1] // heads
    q = jnp.reshape(query, (b, s, heads, h))
    k = jnp.reshape(key, (b, s, kv_heads, h))
    v = jnp.reshape(value, (b, s, kv_heads, h))
    total = int(np.reshape(ctx.static(total_sequence_length, "total_sequence_length"), ()))
    start = jnp.maximum(jnp.reshape(seqlens_k, (b,)).astype(jnp.int32) + 1 - s, 0)  # [B]
    positions = start[:, None] + jnp.arange(s)[None, :]  # [B, S]
    if int(ctx.attr("do_rotary", 0)):
        if cos_cache is None or sin_cache is None:
            raise ctx.invalid("do_rotary needs cos_cache and sin_cache")
        if position_ids is not None:
            positions = jnp.broadcast_to(position_ids, (b, s))
        cos, sin = jnp.take(cos_cache, positions, axis=0), jnp.take(sin_cache, positions, axis=0)
        interleaved = bool(int(ctx.attr("rotary_interleaved", 0)))
        q = attention.rotate(q, cos, sin, 2 * cos.shape[-1], interleaved)
        k = attention.rotate(k, cos, sin, 2 * cos.shape[-1], interleaved)
    past = 0 if past_key is None else past_key.shape[2]
    length = max(total, past)
    present = []
    for new, old in ((k, past_key), (v, past_value)):
        cache = jnp.zeros((b, kv_heads, length, h), new.dtype)
        if old is not None and past:
            cache = cache.at[:, :, :past].set(old.astype(new.dtype))
        new = jnp.transpose(new, (0, 2, 1, 3))  # [B, Nkv, S, H]
        present.append(jax.vmap(lambda c, n, at: jax.lax.dynamic_update_slice(
            c, n, (0, at, 0)))(cache, new, start))
    pos_k = jnp.arange(length)
    pos_q = positions[:, None, :, None]  # [B, 1, S, 1]
    allowed = (pos_k <= pos_q) & (pos_k <= jnp.reshape(seqlens_k, (b, 1, 1, 1)))
    window = int(ctx.attr("local_window_size", -1))
    if window > 0:
        allowed = allowed & (pos_q - pos_k < window)
    mask = jnp.where(allowed, jnp.zeros((), q.dtype), jnp.asarray(-jnp.inf, q.dtype))
    y = attention.attend(jnp.transpose(q, (0, 2, 1, 3)), *present,
                         _plus(mask, attention_bias), scale=_head_scale(ctx, h),
                         softcap=float(ctx.attr("softcap", 0.0)))
    return (_merge_heads(y), *present)[:len(ctx.node.outputs)]


@register("DecoderMaskedMultiHeadAttention", domain=_MS)
def decoder_masked_mha(ctx, query, key=None, value=None, mask_index=None, attention_bias=None,
                       past_key=None, past_value=None, past_sequence_length=None,
                       beam_width=None, cache_indirection=None, bias=None):
    """One decoding step of MultiHeadAttention (query ``[B, 1, D]``). Self-attention: the
    new key/value (plus bias) are written at ``past_sequence_length`` into the shared
    ``past_key`` / ``past_value`` buffers ``[B, N, max, H]`` (``past_present_share_buffer``)
    or appended to them, and the query attends the keys up to it; cross-attention: key /
    value ``[B, N, L, H]`` as given. ``mask_index`` ``[B, T]`` (1 keep, 0 hide with
    ``mask_filter_value``) and ``attention_bias`` as in MultiHeadAttention. Outputs
    ``[B, 1, N*Hv]`` and the present key / value."""
    _refuse(ctx, cache_indirection=cache_indirection is not None and beam_width is not None
            and int(np.reshape(ctx.static(beam_width, "beam_width"), ())) > 1,
            output_qk=int(ctx.attr("output_qk", 0)), do_rotary=int(ctx.attr("do_rotary", 0)))
    heads = int(ctx.attr("num_heads"))
    if key is None:  # packed QKV [B, 1, D + D + Dv]
        d = query.shape[-1] // 3
        query, key, value = jnp.split(query, [d, 2 * d], axis=-1)
    q, k, v = _unpack_heads(ctx, query, key, value, bias, heads)
    b, _, s, h = q.shape
    shared = int(ctx.attr("past_present_share_buffer", 0))
    valid = None
    if key.ndim != 4 and past_key is not None and past_value is not None:
        if shared:
            if past_sequence_length is None:
                raise ctx.invalid("past_present_share_buffer needs past_sequence_length")
            at = jnp.reshape(past_sequence_length, ()).astype(jnp.int32)
            offset = jnp.arange(past_key.shape[2]) - at  # buffer position - at
            written = ((offset >= 0) & (offset < s))[:, None]
            k, v = (jnp.where(written, jnp.take(new, jnp.clip(offset, 0, s - 1), axis=2),
                              old.astype(new.dtype))
                    for new, old in ((k, past_key), (v, past_value)))
            valid = offset < s  # [max]: the past and the new keys
        else:
            k = jnp.concatenate([past_key, k], axis=2)
            v = jnp.concatenate([past_value, v], axis=2)
    total = k.shape[2]
    if mask_index is not None and mask_index.ndim == 2 and mask_index.shape[1] < total:
        mask_index = jnp.pad(mask_index, ((0, 0), (0, total - mask_index.shape[1])))
    mask = _key_mask(ctx, mask_index, b, s, total, 0, False, q.dtype)
    if valid is not None:
        hidden = jnp.where(valid, jnp.zeros((), q.dtype), jnp.asarray(-jnp.inf, q.dtype))
        mask = _plus(mask, hidden)
    if attention_bias is not None and attention_bias.shape[-1] < total:
        pad = [(0, 0)] * (attention_bias.ndim - 1) + [(0, total - attention_bias.shape[-1])]
        attention_bias = jnp.pad(attention_bias, pad)
    y = attention.attend(q, k, v, _plus(mask, attention_bias), scale=_head_scale(ctx, h))
    return (_merge_heads(y), k, v)[:len(ctx.node.outputs)]
