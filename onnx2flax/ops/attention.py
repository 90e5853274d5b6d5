"""Attention-family ops (ONNX order): Attention, RotaryEmbedding, SwiGLU, LinearAttention,
CausalConvWithState and ai.onnx.preview::FlexAttention.

Attention works on heads ``[B, H, S, D]``; 3-D inputs ``[B, S, H*D]`` are split into heads
(``q_num_heads`` / ``kv_num_heads``) on the way in and merged on the way out.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .._core.graph import Graph
from .._core.registry import register
from .._pipeline.module import OpContext
from ._common import onnx_dtype


def _split_heads(ctx: OpContext, x, heads: int, what: str):
    """``[B, S, H*D]`` -> ``[B, H, S, D]``."""
    b, s, hidden = x.shape
    if heads < 1 or hidden % heads:
        raise ctx.invalid(f"{what} hidden size {hidden} is not a multiple of {heads} heads")
    return jnp.transpose(jnp.reshape(x, (b, s, heads, hidden // heads)), (0, 2, 1, 3))


def _heads(ctx: OpContext, q, k, v, lenient: bool):
    """Q, K, V as ``[B, H, S, D]``, checking the head counts (GQA: ``Hq % Hkv == 0``);
    ``lenient``: 4-D inputs may have ``q_num_heads`` / ``kv_num_heads`` that agree."""
    if not q.ndim == k.ndim == v.ndim or q.ndim not in (3, 4):
        raise ctx.invalid(f"Q, K and V must all be 3-D or all 4-D, got shapes "
                          f"{list(q.shape)}, {list(k.shape)}, {list(v.shape)}")
    q_heads, kv_heads = ctx.attr("q_num_heads", None), ctx.attr("kv_num_heads", None)
    if q.ndim == 3:
        if q_heads is None or kv_heads is None:
            raise ctx.invalid("3-D Q, K, V need the q_num_heads and kv_num_heads attributes")
        q = _split_heads(ctx, q, int(q_heads), "Q")
        k = _split_heads(ctx, k, int(kv_heads), "K")
        v = _split_heads(ctx, v, int(kv_heads), "V")
    elif q_heads is not None or kv_heads is not None:
        given = (q_heads or q.shape[1], kv_heads or k.shape[1])
        if not lenient or given != (q.shape[1], k.shape[1]):
            raise ctx.invalid(f"q_num_heads={q_heads} / kv_num_heads={kv_heads} do not apply "
                              f"to 4-D inputs of shapes {list(q.shape)}, {list(k.shape)}")
    if (k.shape[:2] != v.shape[:2] or q.shape[0] != k.shape[0] or k.shape[2] != v.shape[2]
            or q.shape[3] != k.shape[3] or q.shape[1] % k.shape[1]):
        raise ctx.invalid(f"incompatible Q, K, V heads {list(q.shape)}, {list(k.shape)}, "
                          f"{list(v.shape)} (as [batch, heads, sequence, head size]; the query "
                          "heads must be a multiple of the key/value heads)")
    return q, k, v


def _bias(ctx: OpContext, mask, dtype, sq: int, skv: int, offset, nonpad):
    """The additive attention bias, broadcastable to ``[B, H, Sq, Skv]`` (``None`` if none):
    the mask (bool: 0 / -inf; float: added as is; a short key axis padded with -inf) plus
    -inf outside the causal frontier, the sliding window and the non-padded keys.
    ``offset`` (a scalar or ``[B, 1, 1, 1]``) is the absolute position of query 0."""
    neg_inf = jnp.array(-jnp.inf, dtype)
    terms = []
    if mask is not None:
        if not 1 <= mask.ndim <= 4 or mask.shape[-1] > skv:
            raise ctx.invalid(f"attn_mask of shape {list(mask.shape)} does not broadcast to "
                              f"[batch, heads, {sq}, {skv}]")
        mask = (jnp.where(mask, jnp.zeros((), dtype), neg_inf) if mask.dtype == jnp.bool_
                else mask.astype(dtype))
        if mask.shape[-1] < skv:
            mask = jnp.pad(mask, [(0, 0)] * (mask.ndim - 1) + [(0, skv - mask.shape[-1])],
                           constant_values=-jnp.inf)
        terms.append(mask)
    pos_q = jnp.arange(sq)[:, None] + offset
    pos_k = jnp.arange(skv)
    allowed = []
    if int(ctx.attr("is_causal")):
        allowed.append(pos_k <= pos_q)
    left, right = int(ctx.attr("left_window_size", -1)), int(ctx.attr("right_window_size", -1))
    if left < -1 or right < -1:
        raise ctx.invalid(f"left_window_size ({left}) and right_window_size ({right}) must be "
                          ">= -1")
    if left >= 0:
        allowed.append(pos_q - pos_k <= left)
    if right >= 0:
        allowed.append(pos_k - pos_q <= right)
    if nonpad is not None:
        allowed.append(pos_k < jnp.reshape(nonpad, (-1, 1, 1, 1)))
    if allowed:
        terms.append(jnp.where(functools.reduce(jnp.logical_and, allowed), jnp.zeros((), dtype),
                               neg_inf))
    return sum(terms[1:], terms[0]) if terms else None


def _scale(ctx: OpContext, head_size: int) -> float:
    """The ``scale`` attribute, ``1/sqrt(D)`` when absent."""
    scale = ctx.attr("scale", None)
    return 1 / np.sqrt(head_size) if scale is None else float(scale)


def _scores(q, k, v, scale: float):
    """``Q K^T * scale`` ``[B, Hq, Sq, Skv]`` and V with each key/value head repeated for
    its group of ``Hq / Hkv`` query heads (GQA)."""
    # Q and K are each scaled by sqrt(scale) (in their own dtype) to keep QK^T in range.
    root = jnp.asarray(np.sqrt(scale), q.dtype)
    groups = q.shape[1] // k.shape[1]
    k, v = jnp.repeat(k, groups, axis=1), jnp.repeat(v, groups, axis=1)
    return jnp.matmul(q * root, jnp.swapaxes(k * root, -1, -2)), v


def _masked_softmax(x):
    """Softmax over the last axis where a row of only -inf gives zeros instead of NaN."""
    top = jnp.max(x, axis=-1, keepdims=True)
    e = jnp.exp(x - jnp.where(jnp.isneginf(top), jnp.zeros((), x.dtype), top))
    total = jnp.sum(e, axis=-1, keepdims=True)
    return e / jnp.where(total == 0, jnp.ones((), x.dtype), total)


def attend(q, k, v, bias=None, *, scale: float, softcap: float = 0.0):
    """The one attention computation of every attention op (ONNX and com.microsoft):
    ``softmax(cap(Q K^T * scale) + bias) V`` on Q ``[B, Hq, Sq, D]``, K ``[B, Hkv, Skv, D]``,
    V ``[B, Hkv, Skv, Dv]`` (GQA: key/value heads shared by groups of query heads), ``cap``
    the ``softcap * tanh(x / softcap)`` when ``softcap > 0``, ``bias`` broadcastable to the
    scores. A row whose bias is -inf everywhere gives zeros. Returns ``[B, Hq, Sq, Dv]``."""
    raw, v = _scores(q, k, v, scale)
    scores = softcap * jnp.tanh(raw / softcap) if softcap > 0 else raw
    if bias is not None:
        scores = scores + bias
    probs = _masked_softmax(scores)
    if bias is not None:
        probs = jnp.where(jnp.isneginf(jnp.max(bias, axis=-1, keepdims=True)),
                          jnp.zeros((), probs.dtype), probs)
    return jnp.matmul(probs.astype(q.dtype), v).astype(q.dtype)


@register("Attention", since=23)
def attention(ctx: OpContext, q, k, v, attn_mask=None, past_key=None, past_value=None,
              nonpad_kv_seqlen=None, *, lenient_heads=True):
    """Scaled dot-product attention. Q ``[B, Hq, Sq, D]``, K ``[B, Hkv, Skv, D]``, V
    ``[B, Hkv, Skv, Dv]`` (or 3-D ``[B, S, H*D]``); query heads share the key/value heads in
    groups of ``Hq / Hkv`` (GQA). Outputs Y (Q's rank), present key/value ``[B, Hkv, P+Skv,
    D|Dv]`` and the QK output ``[B, Hq, Sq, P+Skv]`` chosen by ``qk_matmul_output_mode``.

    Opset 24 adds ``nonpad_kv_seqlen`` (an external cache: keys past it are padding, the
    causal frontier is bottom-right aligned to it); opset 25 adds the sliding window."""
    rank3 = q.ndim == 3
    q, k, v = _heads(ctx, q, k, v, lenient_heads)
    dtype = q.dtype
    if (past_key is None) != (past_value is None):
        raise ctx.invalid("past_key and past_value must be given together")
    if nonpad_kv_seqlen is not None and past_key is not None:
        raise ctx.invalid("nonpad_kv_seqlen cannot be combined with past_key / past_value")
    offset = 0
    if past_key is not None:
        offset = past_key.shape[2]
        k = jnp.concatenate([past_key, k], axis=2)
        v = jnp.concatenate([past_value, v], axis=2)
    elif nonpad_kv_seqlen is not None:
        offset = jnp.reshape(nonpad_kv_seqlen, (-1, 1, 1, 1)) - q.shape[2]
    present_k, present_v = k, v
    mode = int(ctx.attr("qk_matmul_output_mode"))
    if mode not in (0, 1, 2, 3):
        raise ctx.invalid(f"qk_matmul_output_mode must be 0, 1, 2 or 3, got {mode}")

    raw, v = _scores(q, k, v, _scale(ctx, q.shape[3]))
    softcap = float(ctx.attr("softcap"))
    capped = softcap * jnp.tanh(raw / softcap) if softcap > 0 else raw
    bias = _bias(ctx, attn_mask, dtype, q.shape[2], k.shape[2], offset, nonpad_kv_seqlen)
    scores = capped if bias is None else capped + bias

    precision = ctx.attr("softmax_precision", None)  # DOUBLE is float32 unless JAX has x64
    probs = _masked_softmax(scores if precision is None
                            else scores.astype(onnx_dtype(ctx, precision)))
    if bias is not None:
        # A row whose bias is -inf everywhere attends nothing: zeros, even if its logits
        # are not finite (inf + -inf is NaN).
        dead = jnp.isneginf(jnp.max(bias, axis=-1, keepdims=True))
        probs = jnp.where(dead, jnp.zeros((), probs.dtype), probs)
    probs = probs.astype(dtype)
    y = jnp.matmul(probs, v).astype(dtype)
    if rank3:
        b, h, s, d = y.shape
        y = jnp.reshape(jnp.transpose(y, (0, 2, 1, 3)), (b, s, h * d))
    qk = (raw, capped, scores, probs)[mode].astype(dtype)
    return (y, present_k, present_v, qk)[:len(ctx.node.outputs)]


def rotate(heads, cos, sin, dim: int, interleaved: bool):
    """RoPE on heads ``[B, S, H, D]``: the first ``dim`` features of each head rotated as
    pairs (first half with second half, or even with odd features when ``interleaved``) by
    the angles of ``cos`` / ``sin`` ``[B, S, dim/2]``; the rest unchanged."""
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # [B, S, 1, R/2]
    rot, rest = heads[..., :dim], heads[..., dim:]
    x1, x2 = (rot[..., 0::2], rot[..., 1::2]) if interleaved else jnp.split(rot, 2, axis=-1)
    pair = (cos * x1 - sin * x2, sin * x1 + cos * x2)
    rot = (jnp.stack(pair, axis=-1).reshape(rot.shape) if interleaved
           else jnp.concatenate(pair, axis=-1))
    return jnp.concatenate([rot, rest], axis=-1).astype(heads.dtype)


@register("Attention", since=25)
def attention_v25(ctx: OpContext, q, k, v, *inputs):
    """Opset 25 forbids ``q_num_heads`` / ``kv_num_heads`` with 4-D inputs."""
    return attention(ctx, q, k, v, *inputs, lenient_heads=False)


@register("RotaryEmbedding", since=23)
def rotary_embedding(ctx: OpContext, x, cos_cache, sin_cache, position_ids=None):
    """RoPE on x ``[B, H, S, D]`` or ``[B, S, H*D]`` (``num_heads``): the first
    ``rotary_embedding_dim`` (default D) features of each head are rotated as pairs
    (first half with second half, or even with odd features when ``interleaved``) by the
    angles whose cos/sin are ``cache[position_ids]`` ``[B, S, R/2]`` (or the caches as given,
    ``[B, S, R/2]``, without ``position_ids``)."""
    if x.ndim == 4:
        heads = jnp.swapaxes(x, 1, 2)  # [B, S, H, D]
    elif x.ndim == 3:
        num_heads = int(ctx.attr("num_heads", 0))
        if num_heads < 1 or x.shape[2] % num_heads:
            raise ctx.invalid(f"a 3-D input needs num_heads dividing its hidden size "
                              f"{x.shape[2]}, got num_heads={num_heads}")
        heads = jnp.reshape(x, x.shape[:2] + (num_heads, x.shape[2] // num_heads))
    else:
        raise ctx.invalid(f"the input must be 3-D or 4-D, got shape {list(x.shape)}")
    head_size = heads.shape[3]
    dim = int(ctx.attr("rotary_embedding_dim")) or head_size
    if dim % 2 or dim > head_size:
        raise ctx.invalid(f"rotary_embedding_dim {dim} must be even and at most the head size "
                          f"{head_size}")
    if position_ids is not None:
        cos_cache = jnp.take(cos_cache, position_ids, axis=0)
        sin_cache = jnp.take(sin_cache, position_ids, axis=0)
    if cos_cache.shape != sin_cache.shape or cos_cache.shape[-1] != dim // 2:
        raise ctx.invalid(f"cos/sin caches {list(cos_cache.shape)}, {list(sin_cache.shape)} "
                          f"must end in rotary_embedding_dim / 2 = {dim // 2}")
    out = rotate(heads, cos_cache, sin_cache, dim, int(ctx.attr("interleaved")))
    return jnp.swapaxes(out, 1, 2) if x.ndim == 4 else jnp.reshape(out, x.shape)


@register("SwiGLU", since=28)
def swiglu(ctx: OpContext, a, b):
    """``a * sigmoid(alpha * a) * b`` for gate ``a`` and value ``b`` of one shape."""
    if a.shape != b.shape:
        raise ctx.invalid(f"A {list(a.shape)} and B {list(b.shape)} must have the same shape "
                          "(SwiGLU does not broadcast)")
    alpha = float(ctx.attr("alpha"))
    return (a * jax.nn.sigmoid(alpha * a) * b).astype(a.dtype)


_UPDATE_RULES = ("linear", "gated", "delta", "gated_delta")


@register("LinearAttention", since=27)
def linear_attention(ctx: OpContext, query, key, value, past_state=None, decay=None, beta=None):
    """Recurrent linear attention over packed ``[B, T, H*D]`` inputs, one token at a time
    (``lax.scan``) in float32. The state ``S`` ``[B, Hkv, Dk, Dv]`` starts at ``past_state``
    (or zeros); per token: ``S *= exp(g)`` (gated rules, ``decay`` ``[B, T, Hkv]`` or
    ``[B, T, Hkv*Dk]``), ``v <- beta * (v - S^T k)`` (delta rules, ``beta`` ``[B, T, Hkv|1]``),
    ``S += k v^T``, output ``scale * q^T S`` (each KV state shared by ``Hq / Hkv`` query
    heads). Returns the output ``[B, T, Hq*Dv]`` and the final state."""
    rule = ctx.attr("update_rule")
    if rule not in _UPDATE_RULES:
        raise ctx.invalid(f"update_rule must be one of {_UPDATE_RULES}, got {rule!r}")
    gated, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    if gated != (decay is not None) or delta != (beta is not None):
        raise ctx.invalid(f"update_rule {rule!r} needs decay {'given' if gated else 'absent'} "
                          f"and beta {'given' if delta else 'absent'}")
    q_heads, kv_heads = int(ctx.attr("q_num_heads")), int(ctx.attr("kv_num_heads"))
    if kv_heads < 1 or q_heads % kv_heads or q_heads < 1:
        raise ctx.invalid(f"q_num_heads ({q_heads}) must be a positive multiple of "
                          f"kv_num_heads ({kv_heads})")
    if not query.ndim == key.ndim == value.ndim == 3:
        raise ctx.invalid("query, key and value must be 3-D [batch, time, heads * head size]")
    f32 = jnp.float32
    q = _split_heads(ctx, query, q_heads, "query").astype(f32)  # [B, Hq, T, Dk]
    k = _split_heads(ctx, key, kv_heads, "key").astype(f32)
    v = _split_heads(ctx, value, kv_heads, "value").astype(f32)
    b, _, t, dk = k.shape
    dv = v.shape[3]
    if q.shape[3] != dk or q.shape[:1] + q.shape[2:3] != (b, t) or v.shape[2] != t:
        raise ctx.invalid(f"query {list(query.shape)}, key {list(key.shape)} and value "
                          f"{list(value.shape)} disagree on batch, time or key head size")
    state_dtype = query.dtype if past_state is None else past_state.dtype
    if past_state is None:
        past_state = jnp.zeros((b, kv_heads, dk, dv), f32)
    elif past_state.shape != (b, kv_heads, dk, dv):
        raise ctx.invalid(f"past_state {list(past_state.shape)} must be "
                          f"{[b, kv_heads, dk, dv]}")

    def per_token(x, name, widths):
        """``[B, T, H*W]`` -> ``[T, B, H, W]`` for the scan, H*W in ``widths``."""
        if x.ndim != 3 or x.shape[:2] != (b, t) or x.shape[2] not in widths:
            raise ctx.invalid(f"{name} {list(x.shape)} must be [{b}, {t}, one of {widths}]")
        heads = 1 if x.shape[2] == 1 else kv_heads
        return jnp.transpose(jnp.reshape(x.astype(f32), (b, t, heads, -1)), (1, 0, 2, 3))

    g = per_token(decay, "decay", (kv_heads, kv_heads * dk)) if gated else None
    beta = per_token(beta, "beta", (kv_heads, 1)) if delta else None

    def step(state, xs):
        k_t, v_t, g_t, beta_t = xs  # [B, Hkv, Dk], [B, Hkv, Dv], [B, Hkv, Dk|1], [B, Hkv|1, 1]
        if gated:
            state = state * jnp.exp(g_t)[..., None]
        if delta:
            v_t = beta_t * (v_t - jnp.einsum("bhkv,bhk->bhv", state, k_t))
        state = state + k_t[..., :, None] * v_t[..., None, :]
        return state, state

    time_major = (jnp.moveaxis(k, 2, 0), jnp.moveaxis(v, 2, 0), g, beta)
    final, states = jax.lax.scan(step, past_state.astype(f32), time_major)  # states [T, B, ...]
    scale = float(ctx.attr("scale")) or 1 / np.sqrt(dk)
    groups = q_heads // kv_heads
    out = scale * jnp.einsum("bhtk,tbhkv->bthv", q, jnp.repeat(states, groups, axis=2))
    return (jnp.reshape(out, (b, t, q_heads * dv)).astype(query.dtype),
            final.astype(state_dtype))


@register("CausalConvWithState", since=27)
def causal_conv_with_state(ctx: OpContext, x, weight, bias=None, past_state=None):
    """Depthwise causal 1-D convolution of x ``[B, C, L]`` with weight ``[C, 1, K]`` after
    the carried ``past_state`` ``[B, C, K-1]`` (zeros if absent), with an optional bias and
    fused SiLU (``activation`` 'silu' / 'swish'). Returns the output ``[B, C, L]`` and the
    last ``K-1`` steps of the padded sequence as the next state."""
    activation = ctx.attr("activation")
    if activation not in ("none", "silu", "swish"):
        raise ctx.invalid(f"activation must be 'none', 'silu' or 'swish', got {activation!r}")
    if (x.ndim != 3 or weight.ndim != 3 or weight.shape[:2] != (x.shape[1], 1)
            or weight.shape[2] < 1):
        raise ctx.invalid(f"input {list(x.shape)} must be [batch, channels, length] and weight "
                          f"{list(weight.shape)} [channels, 1, kernel]")
    b, c, _ = x.shape
    k = weight.shape[2]
    if past_state is None:
        past_state = jnp.zeros((b, c, k - 1), x.dtype)
    elif past_state.shape != (b, c, k - 1):
        raise ctx.invalid(f"past_state {list(past_state.shape)} must be {[b, c, k - 1]}")
    padded = jnp.concatenate([past_state.astype(x.dtype), x], axis=2)
    y = jax.lax.conv_general_dilated(padded, weight.astype(x.dtype), (1,), "VALID",
                                     dimension_numbers=("NCH", "OIH", "NCH"),
                                     feature_group_count=c)
    if bias is not None:
        y = y + jnp.reshape(bias, (c, 1)).astype(x.dtype)
    if activation != "none":
        y = jax.nn.silu(y.astype(jnp.float32)).astype(x.dtype)
    return y, padded[:, :, padded.shape[2] - (k - 1):]


def _modifier(ctx: OpContext, name: str, x):
    """Run the optional one-in, one-out subgraph attribute ``name`` on ``x``."""
    graph = ctx.attr(name, None)
    if graph is None:
        return x
    if not isinstance(graph, Graph) or len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ctx.invalid(f"{name} must be a graph with one input and one output")
    (out,) = ctx.run_graph(graph, [x])
    if np.shape(out) != x.shape:
        raise ctx.invalid(f"{name} must keep the shape {list(x.shape)}, got "
                          f"{list(np.shape(out))}")
    return jnp.asarray(out).astype(x.dtype)


@register("FlexAttention", since=1, domain="ai.onnx.preview")
def flex_attention(ctx: OpContext, q, k, v):
    """Attention on Q ``[B, Hq, L, D]``, K ``[B, Hkv, S, D]``, V ``[B, Hkv, S, Dv]`` (GQA as
    in Attention) with the optional subgraphs ``score_mod`` (on the scaled scores) and
    ``prob_mod`` (on the softmax), both ``[B, Hq, L, S]`` in ``softmax_precision`` (default
    float32). A row that score_mod masks entirely (all -inf) gives zeros, as torch's
    flex_attention does."""
    if not q.ndim == k.ndim == v.ndim == 4:
        raise ctx.invalid(f"Q, K and V must be 4-D, got shapes {list(q.shape)}, "
                          f"{list(k.shape)}, {list(v.shape)}")
    q, k, v = _heads(ctx, q, k, v, lenient=True)
    scores, v = _scores(q, k, v, _scale(ctx, q.shape[3]))
    precision = ctx.attr("softmax_precision", None)
    compute = (jnp.dtype(jnp.float32) if precision is None
               else onnx_dtype(ctx, precision))
    scores = _modifier(ctx, "score_mod", scores.astype(compute))
    probs = _modifier(ctx, "prob_mod", _masked_softmax(scores))
    return jnp.matmul(probs, v.astype(compute)).astype(v.dtype)
