"""com.microsoft attention ops: Attention (with its QKV projection), MultiHeadAttention,
DecoderMaskedMultiHeadAttention, GroupQueryAttention (KV cache, rotary), SparseAttention
(block-sparse, shared KV cache) and RotaryEmbedding,
all computing through ``attention.attend``, the one attention computation that ONNX's
Attention uses too (semantics from onnxruntime's docs/ContribOperators.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import attention
from .._core.registry import register, schema_defaults
from .._pipeline.module import OpContext
from .contrib_transformer import _MS, _dense, _dense_params


def _merge_heads(y):
    """``[B, N, S, H]`` -> ``[B, S, N*H]``."""
    b, n, s, h = y.shape
    return jnp.reshape(jnp.transpose(y, (0, 2, 1, 3)), (b, s, n * h))


def _key_mask(ctx: OpContext, mask, batch: int, sq: int, skv: int, past: int, causal: bool, dtype):
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
    filter_value = float(ctx.attr("mask_filter_value"))
    return jnp.where(hidden, jnp.asarray(filter_value, dtype), jnp.zeros((), dtype))


#: Attribute defaults shared by the ops whose common helpers read them.
_SCALED = {"scale": 0.0}  # 0: 1/sqrt(head size)
_MASKED = {**_SCALED, "mask_filter_value": -10000.0}
_ROTARY = {"do_rotary": 0, "rotary_interleaved": 0}


def _plus(bias, extra):
    return extra if bias is None else (bias if extra is None else bias + extra)


def _head_scale(ctx: OpContext, head_size: int) -> float:
    """``scale``; 0 (the default) means ``1/sqrt(head_size)``."""
    return float(ctx.attr("scale")) or 1 / np.sqrt(head_size)


def _refuse(ctx: OpContext, **unsupported):
    for name, value in unsupported.items():
        if value:
            raise ctx.fail(f"{name} is not supported")


@register("Attention", domain=_MS, params=_dense_params,
          defaults={**_MASKED, "unidirectional": 0, "do_rotary": 0,
                    "past_present_share_buffer": 0})
def ms_attention(ctx: OpContext, x, weights, bias=None, mask_index=None, past=None,
                 attention_bias=None,
                 past_sequence_length=None):
    """BERT / GPT-2 self-attention with the QKV projection: X ``[B, S, D_in]`` @ weights
    ``[D_in, Dq+Dk+Dv]`` (+ bias; ``qkv_hidden_sizes``, default equal thirds) split into
    ``num_heads``; ``past`` ``[2, B, N, P, H]`` prepended; ``mask_index`` and
    ``unidirectional`` as in :func:`_key_mask`; ``attention_bias`` ``[B|1, N|1, S, P+S]``
    added. Outputs ``[B, S, Dv]`` and ``present`` ``[2, B, N, P+S, H]``."""
    _refuse(ctx, do_rotary=int(ctx.attr("do_rotary")),
            past_present_share_buffer=int(ctx.attr("past_present_share_buffer")))
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
    mask = _key_mask(ctx, mask_index, b, s, p + s, p, bool(int(ctx.attr("unidirectional"))),
                     q.dtype)
    y = attention.attend(q, k, v, _plus(mask, attention_bias), scale=_head_scale(ctx, h))
    if len(ctx.node.outputs) < 2:
        return _merge_heads(y)
    if k.shape != v.shape:
        raise ctx.invalid(f"present needs equal K and V sizes, got {sizes}")
    return _merge_heads(y), jnp.stack([k, v])


def _unpack_heads(ctx: OpContext, query, key, value, bias, heads: int):
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


@register("MultiHeadAttention", domain=_MS, defaults={**_MASKED, "unidirectional": 0})
def multi_head_attention(ctx: OpContext, query, key=None, value=None, bias=None,
                         key_padding_mask=None,
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
                     bool(int(ctx.attr("unidirectional"))), q.dtype)
    y = attention.attend(q, k, v, _plus(mask, attention_bias), scale=_head_scale(ctx, h))
    return (_merge_heads(y), k, v)[:len(ctx.node.outputs)]


@register("RotaryEmbedding", domain=_MS,
          defaults={**schema_defaults("", "RotaryEmbedding"), "is_packed_batching": 0})
def ms_rotary_embedding(ctx: OpContext, x, position_ids, cos_cache, sin_cache):
    """RoPE (ONNX RotaryEmbedding's computation) with com.microsoft's input order;
    ``position_ids`` ``[B, S]``, or ``[1]``: the position of token 0 (then 0.., +1 each)."""
    _refuse(ctx, is_packed_batching=int(ctx.attr("is_packed_batching")))
    seq = x.shape[-2] if x.ndim == 4 else x.shape[1]
    if position_ids.ndim == 1:
        position_ids = (jnp.reshape(position_ids, (1, 1)) + jnp.arange(seq)[None, :])
    return attention.rotary_embedding(ctx, x, cos_cache, sin_cache, position_ids)


def _rotary_qk(ctx: OpContext, q, k, positions, cos_cache, sin_cache):
    """Q ``[B, S, N, H]`` and K ``[B, S, Nkv, H]`` rotated at ``positions`` ``[B, S]`` when
    ``do_rotary`` (caches ``[max, H_rot/2]``, ``rotary_interleaved``), else unchanged."""
    if not int(ctx.attr("do_rotary")):
        return q, k
    if cos_cache is None or sin_cache is None:
        raise ctx.invalid("do_rotary needs cos_cache and sin_cache")
    cos, sin = jnp.take(cos_cache, positions, axis=0), jnp.take(sin_cache, positions, axis=0)
    interleaved = bool(int(ctx.attr("rotary_interleaved")))
    dim = 2 * cos.shape[-1]
    return (attention.rotate(q, cos, sin, dim, interleaved),
            attention.rotate(k, cos, sin, dim, interleaved))


def _write_at(cache, new, start):
    """``cache`` ``[B, Nkv, L, H]`` with ``new`` ``[B, S, Nkv, H]`` written at sequence
    position ``start[b]`` of each row."""
    new = jnp.transpose(new, (0, 2, 1, 3)).astype(cache.dtype)
    return jax.vmap(lambda c, n, at: jax.lax.dynamic_update_slice(c, n, (0, at, 0)))(
        cache, new, start)


def _gqa_inputs(ctx: OpContext, query, key, value):
    """Q ``[B, S, N, H]``, K and V ``[B, S, Nkv, H]`` from separate or packed inputs, and
    the head counts (``num_heads``, ``kv_num_heads``)."""
    heads, kv_heads = int(ctx.attr("num_heads")), int(ctx.attr("kv_num_heads"))
    if heads < 1 or kv_heads < 1 or heads % kv_heads or query.ndim != 3:
        raise ctx.invalid(f"num_heads ({heads}) must be a multiple of kv_num_heads "
                          f"({kv_heads}) and query [batch, sequence, hidden], got "
                          f"{list(query.shape)}")
    b, s, width = query.shape
    if key is None:
        h = width // (heads + 2 * kv_heads)
        query, key, value = jnp.split(query, [heads * h, (heads + kv_heads) * h], axis=-1)
    h = query.shape[-1] // heads
    return (jnp.reshape(query, (b, s, heads, h)), jnp.reshape(key, (b, s, kv_heads, h)),
            jnp.reshape(value, (b, s, kv_heads, h)))


@register("GroupQueryAttention", domain=_MS,
          defaults={**_SCALED, **_ROTARY, "smooth_softmax": 0, "qk_output": 0,
                    "local_window_size": -1, "softcap": 0.0})
def group_query_attention(ctx: OpContext, query, key=None, value=None, past_key=None,
                          past_value=None,
                          seqlens_k=None, total_sequence_length=None, cos_cache=None,
                          sin_cache=None, position_ids=None, attention_bias=None,
                          head_sink=None):
    """Causal grouped-query attention with a KV cache, as onnxruntime-genai's models use it.
    Q ``[B, S, N*H]``, K / V ``[B, S, Nkv*H]`` (or packed in query when key is absent);
    ``past_key`` / ``past_value`` ``[B, Nkv, P, H]``; ``seqlens_k`` ``[B]``: the index of
    each row's last valid token; ``total_sequence_length`` T. Row b's new tokens sit at
    positions ``seqlens_k[b] + 1 - S ..``: rotated there or at ``position_ids`` (``do_rotary``,
    caches ``[max, H_rot/2]``, ``rotary_interleaved``), written into the present cache ``[B, Nkv, max(T, P),
    H]`` after the past, and each query attends the valid keys up to its own position
    (within ``local_window_size``), with ``softcap`` and ``attention_bias``."""
    _refuse(ctx, smooth_softmax=int(ctx.attr("smooth_softmax")),
            head_sink=head_sink is not None, qk_output=int(ctx.attr("qk_output")))
    if seqlens_k is None or total_sequence_length is None:
        raise ctx.invalid("seqlens_k and total_sequence_length are required")
    q, k, v = _gqa_inputs(ctx, query, key, value)
    b, s, kv_heads, h = k.shape
    total = int(np.reshape(ctx.static(total_sequence_length, "total_sequence_length"), ()))
    start = jnp.maximum(jnp.reshape(seqlens_k, (b,)).astype(jnp.int32) + 1 - s, 0)  # [B]
    positions = start[:, None] + jnp.arange(s)[None, :]  # [B, S]: in the cache
    rotary_at = positions if position_ids is None else jnp.broadcast_to(position_ids, (b, s))
    q, k = _rotary_qk(ctx, q, k, rotary_at, cos_cache, sin_cache)
    past = 0 if past_key is None else past_key.shape[2]
    length = max(total, past)
    present = []
    for new, old in ((k, past_key), (v, past_value)):
        cache = jnp.zeros((b, kv_heads, length, h), new.dtype)
        if old is not None and past:  # each row's valid past only, as onnxruntime copies it
            valid = (jnp.arange(past) < start[:, None])[:, None, :, None]
            cache = cache.at[:, :, :past].set(jnp.where(valid, old.astype(new.dtype), 0))
        present.append(_write_at(cache, new, start))
    pos_k = jnp.arange(length)
    pos_q = positions[:, None, :, None]  # [B, 1, S, 1]
    allowed = (pos_k <= pos_q) & (pos_k <= jnp.reshape(seqlens_k, (b, 1, 1, 1)))
    window = int(ctx.attr("local_window_size"))
    if window > 0:
        allowed = allowed & (pos_q - pos_k < window)
    mask = jnp.where(allowed, jnp.zeros((), q.dtype), jnp.asarray(-jnp.inf, q.dtype))
    y = attention.attend(jnp.transpose(q, (0, 2, 1, 3)), *present,
                         _plus(mask, attention_bias), scale=_head_scale(ctx, h),
                         softcap=float(ctx.attr("softcap")))
    return (_merge_heads(y), *present)[:len(ctx.node.outputs)]


@register("DecoderMaskedMultiHeadAttention", domain=_MS,
          defaults={**_MASKED, "output_qk": 0, "do_rotary": 0, "past_present_share_buffer": 0})
def decoder_masked_mha(ctx: OpContext, query, key=None, value=None, mask_index=None,
                       attention_bias=None,
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
            output_qk=int(ctx.attr("output_qk")), do_rotary=int(ctx.attr("do_rotary")))
    heads = int(ctx.attr("num_heads"))
    if key is None:  # packed QKV [B, 1, D + D + Dv]
        d = query.shape[-1] // 3
        query, key, value = jnp.split(query, [d, 2 * d], axis=-1)
    q, k, v = _unpack_heads(ctx, query, key, value, bias, heads)
    b, _, s, h = q.shape
    shared = int(ctx.attr("past_present_share_buffer"))
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


def _block_layouts(ctx: OpContext, rows, cols, blocks: int) -> np.ndarray:
    """The CSR block layouts (``block_row_indices`` ``[L, blocks+1]``,
    ``block_col_indices`` ``[L, nnz]``) as dense ``[L, blocks, blocks]`` booleans."""
    rows = np.asarray(ctx.static(rows, "block_row_indices"), np.int64)
    cols = np.asarray(ctx.static(cols, "block_col_indices"), np.int64)
    if rows.ndim != 2 or cols.ndim != 2 or rows.shape[0] != cols.shape[0] \
            or rows.shape[1] < blocks + 1:
        raise ctx.invalid(f"block_row_indices {list(rows.shape)} and block_col_indices "
                          f"{list(cols.shape)} must be [layouts, >= {blocks + 1}] and "
                          "[layouts, nnz]")
    dense = np.zeros((rows.shape[0], blocks, blocks), bool)
    for layout, (row, col) in enumerate(zip(rows, cols)):
        for i in range(blocks):
            picked = col[row[i]:row[i + 1]]
            if picked.size and (picked.min() < 0 or picked.max() >= blocks):
                raise ctx.invalid(f"block_col_indices of layout {layout} row {i} point "
                                  f"outside 0..{blocks - 1}")
            dense[layout, i, picked] = True
    return dense


@register("SparseAttention", domain=_MS, defaults={**_SCALED, **_ROTARY})
def sparse_attention(ctx: OpContext, query, key, value, past_key, past_value, block_row_indices,
                     block_col_indices, total_sequence_length, key_total_sequence_lengths,
                     cos_cache=None, sin_cache=None):
    """Block-sparse causal grouped-query attention (Phi-3-small): Q ``[B, S, N*H]``, K / V
    ``[B, S, Nkv*H]`` (or packed in query); the new keys / values are written into the
    shared cache buffers ``[B, Nkv, max, H]`` at ``key_total_sequence_lengths[b] - S``;
    query i (at that position + i) attends the causal keys whose ``sparse_block_size``
    block is in head h's layout (``h % layouts``, CSR ``block_row_indices`` /
    ``block_col_indices``). Rotary as in GroupQueryAttention."""
    q, k, v = _gqa_inputs(ctx, query, key, value)
    b, s, _, h = q.shape
    block = int(ctx.attr("sparse_block_size"))
    max_len = past_key.shape[2]
    if block < 1 or past_value.shape != past_key.shape or past_key.shape[0] != b:
        raise ctx.invalid(f"sparse_block_size {block} must be positive and the caches "
                          f"{list(past_key.shape)}, {list(past_value.shape)} alike")
    layouts = _block_layouts(ctx, block_row_indices, block_col_indices, -(-max_len // block))
    start = jnp.reshape(key_total_sequence_lengths, (b,)).astype(jnp.int32) - s
    positions = start[:, None] + jnp.arange(s)[None, :]  # [B, S]
    q, k = _rotary_qk(ctx, q, k, positions, cos_cache, sin_cache)
    present = [_write_at(past_key, k, start), _write_at(past_value, v, start)]
    heads = q.shape[2]
    per_head = layouts[np.arange(heads) % layouts.shape[0]]  # [N, blocks, blocks]
    key_blocks = per_head[:, :, np.arange(max_len) // block]  # [N, blocks, max]
    in_layout = jnp.take(jnp.asarray(key_blocks), positions // block, axis=1)  # [N, B, S, max]
    pos_k = jnp.arange(max_len)
    allowed = jnp.transpose(in_layout, (1, 0, 2, 3)) & (pos_k <= positions[:, None, :, None])
    mask = jnp.where(allowed, jnp.zeros((), q.dtype), jnp.asarray(-jnp.inf, q.dtype))
    y = attention.attend(jnp.transpose(q, (0, 2, 1, 3)), *present, mask,
                         scale=_head_scale(ctx, h))
    return (_merge_heads(y), *present)[:len(ctx.node.outputs)]
