"""Attention-family ops: Attention and RotaryEmbedding against onnxruntime, the newer ops
(Attention-25 windows, LinearAttention, CausalConvWithState, SwiGLU, FlexAttention) against
ONNX's reference evaluator, which onnxruntime lacks."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import check_node, make_model
from onnx import TensorProto, helper

import onnx2flax
from onnx2flax.errors import InvalidModelError

RNG = np.random.default_rng(0)


def _rand(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def _attention(feeds, *, opset=23, n_out=1, reference="onnxruntime", names=None, **attrs):
    """One Attention node on ``feeds`` (Q, K, V, then optional inputs by name; ``names``
    lists the node's inputs with '' for absent ones)."""
    out_dtypes = [feeds["q"].dtype] * n_out
    return check_node("Attention", feeds, opset=opset, attrs=attrs, outputs=n_out,
                      out_dtypes=out_dtypes, inputs=names, reference=reference)


def _assert_refused(op, feeds, attrs, opset, match, n_out=1):
    """Converting and running one ``op`` node named 'bad' raises an error naming it."""
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, list(feeds), outs, name="bad", **attrs)
    model = make_model([node], [(n, v.dtype, v.shape) for n, v in feeds.items()],
                       [(o, np.float32, None) for o in outs], opset=opset)
    with pytest.raises(InvalidModelError, match=rf"'bad'.*{match}"):
        onnx2flax.convert(model).run(feeds)


def _qkv(b=2, hq=4, hkv=4, sq=3, skv=5, d=8, dv=8, rank=4):
    q, k, v = _rand(b, hq, sq, d), _rand(b, hkv, skv, d), _rand(b, hkv, skv, dv)
    if rank == 3:  # [B, S, H*D]
        q, k, v = (np.ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(x.shape[0],
                                                                         x.shape[2], -1)
                   for x in (q, k, v))
    return {"q": q, "k": k, "v": v}


@pytest.mark.parametrize("hq, hkv", [(4, 4), (4, 2), (4, 1)])  # MHA, GQA, MQA
@pytest.mark.parametrize("rank", [3, 4])
def test_attention_heads(rank, hq, hkv):
    attrs = {"q_num_heads": hq, "kv_num_heads": hkv} if rank == 3 else {}
    _attention(_qkv(hq=hq, hkv=hkv, dv=6, rank=rank), **attrs)


@pytest.mark.parametrize("mask_shape, is_causal", [
    ((5,), 0), ((3, 5), 0), ((3, 5), 1), ((4, 3, 5), 0), ((4, 3, 5), 1), ((2, 1, 3, 5), 0),
    ((2, 1, 3, 5), 1)])  # the reference evaluator fails on a 1-D mask with is_causal
@pytest.mark.parametrize("mask_dtype", [bool, np.float32])
def test_attention_masks(mask_shape, mask_dtype, is_causal):
    """Masks of every rank broadcast to [B, H, Sq, Skv]; bool masks keep a True per row."""
    feeds = _qkv()
    if mask_dtype is bool:
        mask = RNG.random(mask_shape) < 0.6
        mask[..., 0] = True
    else:
        mask = _rand(*mask_shape)
    feeds["m"] = mask
    # onnxruntime refuses 1-D masks, which the spec's broadcasting allows.
    _attention(feeds, is_causal=is_causal, reference="onnx" if len(mask_shape) == 1 else "onnxruntime")


def test_attention_causal_cross_and_scaled_softcap():
    _attention(_qkv(sq=4, skv=6), is_causal=1, scale=0.3, softcap=2.0)


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_attention_past_present_and_qk_output(mode):
    """past_key/value are prepended (causal frontier shifted by their length); every
    qk_matmul_output_mode, with a float mask and softcap so the modes differ."""
    feeds = _qkv(hq=4, hkv=2, sq=2, skv=2)
    feeds["m"] = _rand(2, 4, 2, 5)
    feeds["pk"], feeds["pv"] = _rand(2, 2, 3, 8), _rand(2, 2, 3, 8)
    # onnxruntime writes -FLT_MAX, not the spec's -inf, for causally masked scores (mode 2).
    _attention(feeds, n_out=4, is_causal=1, softcap=3.0, qk_matmul_output_mode=mode,
               reference="onnx" if mode == 2 else "onnxruntime")


def test_attention_softmax_precision_fp16():
    feeds = {k: v.astype(np.float16) for k, v in _qkv().items()}
    converted, got, expected = _attention(feeds, softmax_precision=TensorProto.FLOAT,
                                          reference="onnx")
    assert got[0].dtype == np.float16


def test_attention_fully_masked_rows_are_zero():
    """A query row with no allowed key gives zeros (Y and the mode-3 probabilities), not NaN."""
    feeds = _qkv()
    mask = RNG.random((2, 1, 3, 5)) < 0.5
    mask[0, 0, 1] = False
    mask[1, 0, 2] = False
    feeds["m"] = mask
    _, got, _ = _attention(feeds, n_out=4, qk_matmul_output_mode=3,
                           names=["q", "k", "v", "m", "", ""], reference="onnx")
    assert not np.isnan(got[0]).any()
    np.testing.assert_array_equal(got[0][0, :, 1], 0)
    np.testing.assert_array_equal(got[3][1, :, 2], 0)


def test_attention_nonpad_kv_seqlen_and_short_mask():
    """Opset 24: keys past nonpad_kv_seqlen are ignored and the causal frontier is aligned
    to it (a negative offset masks the first rows fully); a short mask is padded."""
    feeds = _qkv(sq=3, skv=6)
    feeds["m"] = RNG.random((3, 4)) < 0.8
    feeds["n"] = np.array([5, 2], np.int64)
    _attention(feeds, opset=24, is_causal=1, names=["q", "k", "v", "m", "", "", "n"],
               reference="onnx")


@pytest.mark.parametrize("left, right, causal", [(2, 0, 1), (1, 2, 0), (-1, 1, 0)])
def test_attention_sliding_window(left, right, causal):
    feeds = _qkv(sq=4, skv=6)
    feeds["pk"], feeds["pv"] = _rand(2, 4, 2, 8), _rand(2, 4, 2, 8)
    _attention(feeds, opset=25, is_causal=causal, left_window_size=left,
               right_window_size=right, names=["q", "k", "v", "", "pk", "pv"], n_out=3,
               reference="onnx")


@pytest.mark.parametrize("attrs, match", [
    ({"q_num_heads": 3, "kv_num_heads": 1}, "not a multiple of 3 heads"),
    ({"q_num_heads": 4, "kv_num_heads": 3}, "not a multiple of 3 heads"),
    ({"q_num_heads": 4}, "need the q_num_heads and kv_num_heads"),
    ({"q_num_heads": 4, "kv_num_heads": 4, "qk_matmul_output_mode": 5}, "qk_matmul_output_mode"),
])
def test_attention_bad_attributes(attrs, match):
    _assert_refused("Attention", _qkv(rank=3), attrs, 23, match)


def test_attention_head_attributes_on_4d_refused_at_opset_25():
    _assert_refused("Attention", _qkv(), {"q_num_heads": 4, "kv_num_heads": 4}, 25,
                    "do not apply to 4-D inputs")


def test_attention_gqa_head_mismatch_refused():
    _assert_refused("Attention", _qkv(hq=3, hkv=2), {}, 23, "multiple of the key/value heads")


@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("rotary_dim", [0, 4])
@pytest.mark.parametrize("rank", [3, 4])
def test_rotary_embedding(rank, rotary_dim, interleaved):
    x = _rand(2, 3, 5, 8)  # [B, H, S, D]
    if rank == 3:
        x = np.ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(2, 5, 24)
    half = (rotary_dim or 8) // 2
    angles = RNG.random((10, half)).astype(np.float32) * 3
    feeds = {"x": x, "cos": np.cos(angles), "sin": np.sin(angles),
             "pos": RNG.integers(0, 10, (2, 5)).astype(np.int64)}
    attrs = {"interleaved": interleaved, "rotary_embedding_dim": rotary_dim}
    if rank == 3:
        attrs["num_heads"] = 3
    check_node("RotaryEmbedding", feeds, opset=23, attrs=attrs)


def test_rotary_embedding_without_position_ids():
    angles = RNG.random((2, 5, 4)).astype(np.float32)
    check_node("RotaryEmbedding", {"x": _rand(2, 3, 5, 8), "cos": np.cos(angles),
                                   "sin": np.sin(angles)}, opset=23)


def test_rotary_embedding_odd_dim_refused():
    angles = RNG.random((10, 2)).astype(np.float32)
    feeds = {"x": _rand(1, 2, 3, 8), "cos": np.cos(angles), "sin": np.sin(angles)}
    _assert_refused("RotaryEmbedding", feeds, {"rotary_embedding_dim": 5}, 23,
                    "rotary_embedding_dim 5")


@pytest.mark.parametrize("alpha", [1.0, 1.7])
def test_swiglu(alpha):
    check_node("SwiGLU", {"a": _rand(2, 3, 4), "b": _rand(2, 3, 4)}, opset=28,
               attrs={"alpha": alpha}, reference="onnx")


@pytest.mark.parametrize("rule, decay_width, beta_width", [
    ("linear", None, None), ("gated", 2 * 4, None), ("delta", None, 2),
    ("gated_delta", 2, 1)])
@pytest.mark.parametrize("past", [False, True])
def test_linear_attention(rule, decay_width, beta_width, past):
    """Hq=4 query heads over Hkv=2 key/value heads, Dk=4, Dv=3, T=5 steps."""
    feeds = {"q": _rand(2, 5, 16), "k": _rand(2, 5, 8) * 0.5, "v": _rand(2, 5, 6)}
    names = ["q", "k", "v", "", "", ""]
    if past:
        feeds["s"], names[3] = _rand(2, 2, 4, 3), "s"
    if decay_width:
        feeds["g"], names[4] = -RNG.random((2, 5, decay_width)).astype(np.float32), "g"
    if beta_width:
        feeds["b"], names[5] = RNG.random((2, 5, beta_width)).astype(np.float32), "b"
    check_node("LinearAttention", feeds, opset=27, outputs=2, inputs=names, reference="onnx",
               attrs={"update_rule": rule, "q_num_heads": 4, "kv_num_heads": 2}, rtol=1e-4,
               atol=1e-5)


def test_linear_attention_missing_decay_refused():
    feeds = {"q": _rand(1, 2, 4), "k": _rand(1, 2, 4), "v": _rand(1, 2, 4)}
    _assert_refused("LinearAttention", feeds,
                    {"update_rule": "gated", "q_num_heads": 1, "kv_num_heads": 1}, 27,
                    "needs decay given", n_out=2)


@pytest.mark.parametrize("activation", ["none", "silu"])
@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("extras", [(), ("bias",), ("bias", "past")])
def test_causal_conv_with_state(kernel, activation, extras):
    feeds = {"x": _rand(2, 3, 5), "w": _rand(3, 1, kernel)}
    names = ["x", "w", "", ""]
    if "bias" in extras:
        feeds["b"], names[2] = _rand(3), "b"
    if "past" in extras:
        feeds["p"], names[3] = _rand(2, 3, kernel - 1), "p"
    check_node("CausalConvWithState", feeds, opset=27, outputs=2, inputs=names,
               attrs={"activation": activation}, reference="onnx")


def _flex_model(feeds, score_mod=None, **attrs):
    if score_mod is not None:
        attrs["score_mod"] = score_mod
    node = helper.make_node("FlexAttention", ["q", "k", "v"], ["y"],
                            domain="ai.onnx.preview", **attrs)
    graph = helper.make_graph(
        [node], "flex", [helper.make_tensor_value_info(n, TensorProto.FLOAT, v.shape)
                         for n, v in feeds.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 26),
                                                   helper.make_opsetid("ai.onnx.preview", 1)])


def test_flex_attention_gqa_with_score_mod():
    """A score_mod subgraph (halving the scores) run on the scaled scores; GQA heads."""
    from onnx.reference import ReferenceEvaluator
    scores = helper.make_tensor_value_info("s", TensorProto.FLOAT, None)
    body = helper.make_graph(
        [helper.make_node("Mul", ["s", "half"], ["out"])], "score_mod", [scores],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])])
    feeds = _qkv(hq=4, hkv=2)
    model = _flex_model(feeds, score_mod=body, scale=0.7)
    expected = ReferenceEvaluator(model).run(None, feeds)[0]
    got = onnx2flax.convert(model).run(feeds)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
