"""com.microsoft transformer ops (onnxruntime's optimizer and genai builder) against
onnxruntime's CPU kernels; the ops onnxruntime runs only on GPUs against the same
computation written with standard ONNX ops, run by onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_codegen_matches, check_graph, make_model, run_ort
from onnx import helper

import onnx2flax
from onnx2flax.errors import InvalidModelError, UnsupportedOpError

RNG = np.random.default_rng(0)
MS = "com.microsoft"


def _rand(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def _model(nodes, feeds, consts=None, outs=None, out_dtypes=None, opset=17):
    """A model of ``nodes`` on graph inputs ``feeds`` and initializers ``consts``; every
    name in ``outs`` (default: the last node's outputs) is a graph output."""
    outs = outs or [o for o in nodes[-1].output if o]
    dtypes = out_dtypes or {}
    model = make_model(nodes, [(n, v.dtype, list(v.shape)) for n, v in feeds.items()],
                       [(o, dtypes.get(o, np.float32), None) for o in outs], consts or {},
                       opset=opset)
    model.opset_import.append(helper.make_opsetid(MS, 1))
    return model


def _node(op, inputs, n_out=1, outs=None, **attrs):
    return helper.make_node(op, inputs, outs or [f"y{i}" for i in range(n_out)], domain=MS,
                            **attrs)


def _check(op, feeds, consts=None, *, inputs=None, n_out=1, outs=None, out_dtypes=None,
           rtol=1e-5, atol=1e-5, **attrs):
    """One com.microsoft ``op`` node on ``inputs`` (default: feeds then consts) against
    onnxruntime."""
    node = _node(op, inputs or [*feeds, *(consts or {})], n_out, outs, **attrs)
    return check_graph(_model([node], feeds, consts, out_dtypes=out_dtypes), feeds,
                              rtol=rtol, atol=atol)


def _check_composition(nodes, reference_nodes, feeds, consts, outs, rtol=1e-5, atol=1e-5):
    """``nodes`` (com.microsoft ops onnxruntime runs on GPUs only) against
    ``reference_nodes``, the same computation in standard ops, run by onnxruntime."""
    expected = run_ort(_model(reference_nodes, feeds, consts, outs), feeds)
    converted = onnx2flax.convert(_model(nodes, feeds, consts, outs))
    got = converted.run(feeds)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)
    assert_codegen_matches(converted, feeds, got)


def _erf_gelu_nodes(x, y):
    """Standard-op exact GELU (opset 17 has no Gelu): 0.5 x (1 + erf(x / sqrt 2))."""
    return [helper.make_node("Div", [x, "sqrt2"], [f"{y}_d"]),
            helper.make_node("Erf", [f"{y}_d"], [f"{y}_e"]),
            helper.make_node("Add", [f"{y}_e", "one"], [f"{y}_p"]),
            helper.make_node("Mul", [x, f"{y}_p"], [f"{y}_m"]),
            helper.make_node("Mul", [f"{y}_m", "half"], [y])]


_GELU_CONSTS = {"sqrt2": np.float32(np.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)}


# -- activations -----------------------------------------------------------------------

def test_gelu_family():
    feeds = {"x": _rand(2, 3, 8), "b": _rand(8)}
    nodes = [_node("Gelu", ["x"], outs=["g"]), _node("BiasGelu", ["x", "b"], outs=["bg"]),
             _node("FastGelu", ["x"], outs=["fg"]), _node("FastGelu", ["x", "b"], outs=["fgb"]),
             _node("QuickGelu", ["x"], outs=["q"]),
             _node("QuickGelu", ["x"], outs=["qa"], alpha=1.3)]
    check_graph(_model(nodes, feeds, outs=["g", "bg", "fg", "fgb", "q", "qa"]), feeds)


def test_bias_add_and_bias_split_gelu():
    feeds = {"x": _rand(2, 3, 8), "s": _rand(2, 3, 8)}
    consts = {"b": _rand(8), **_GELU_CONSTS}
    nodes = [_node("BiasAdd", ["x", "b", "s"], outs=["y"]),
             _node("BiasSplitGelu", ["x", "b"], outs=["z"])]
    reference = [helper.make_node("Add", ["x", "b"], ["xb"]),
                 helper.make_node("Add", ["xb", "s"], ["y"]),
                 helper.make_node("Split", ["xb", "halves"], ["l", "r"], axis=-1),
                 *_erf_gelu_nodes("r", "gr"),
                 helper.make_node("Mul", ["l", "gr"], ["z"])]
    _check_composition(nodes, reference, feeds, {**consts, "halves": np.array([4, 4])},
                       ["y", "z"])


# -- normalization -----------------------------------------------------------------------

@pytest.mark.parametrize("weights", ["const", "input"])
def test_skip_layer_norms(weights):
    """Both skip norms with and without beta / bias, the sum output, default epsilon; as
    Flax layers (constant gamma / beta) and as plain computations."""
    x, skip = _rand(2, 3, 8), _rand(2, 3, 8)
    ws = {"gamma": _rand(8), "beta": _rand(8), "bias": _rand(8)}
    feeds = {"x": x, "skip": skip, **({} if weights == "const" else ws)}
    consts = ws if weights == "const" else {}
    nodes = [_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"],
                   outs=["a", "", "", "a_sum"], epsilon=1e-3),
             _node("SkipLayerNormalization", ["x", "skip", "gamma"], outs=["b"]),
             _node("SkipSimplifiedLayerNormalization", ["x", "skip", "gamma", "bias"],
                   outs=["c", "", "", "c_sum"], epsilon=1e-2),
             _node("SkipSimplifiedLayerNormalization", ["x", "skip", "gamma"], outs=["d"])]
    converted, _, _ = check_graph(
        _model(nodes, feeds, consts, outs=["a", "a_sum", "b", "c", "c_sum", "d"]), feeds,
        rtol=1e-4, atol=1e-5)
    if weights == "const":
        assert sorted(converted.variables["params"]["gamma"]) == ["bias", "scale"]


def test_simplified_layer_norm_in_the_onnx_domain():
    feeds = {"x": _rand(2, 3, 8)}
    node = helper.make_node("SimplifiedLayerNormalization", ["x", "scale"], ["y"],
                            epsilon=1e-3)
    flat = helper.make_node("SimplifiedLayerNormalization", ["x", "scale2"], ["z", "inv"],
                            axis=1)
    check_graph(_model([node, flat], feeds, {"scale": _rand(8), "scale2": _rand(3, 8)},
                              outs=["y", "z", "inv"]), feeds, rtol=1e-4)


@pytest.mark.parametrize("with_optional", [True, False])
def test_embed_layer_norm(with_optional):
    b, s, hidden = 2, 5, 8
    ids = RNG.integers(0, 20, (b, s)).astype(np.int32)
    feeds = {"ids": ids, "seg": RNG.integers(0, 2, (b, s)).astype(np.int32)}
    consts = {"word": _rand(20, hidden), "pos": _rand(16, hidden), "segemb": _rand(2, hidden),
              "gamma": _rand(hidden), "beta": _rand(hidden)}
    names = ["ids", "seg", "word", "pos", "segemb", "gamma", "beta"]
    if with_optional:
        mask = np.ones((b, s), np.int32)
        mask[1, 3:] = 0
        feeds["mask"] = mask
        feeds["pos_ids"] = RNG.integers(0, 16, (b, s)).astype(np.int32)
        names += ["mask", "pos_ids"]
    node = _node("EmbedLayerNormalization", names, outs=["y", "mask_index", "sum"],
                 epsilon=1e-5)
    check_graph(_model([node], feeds, consts, out_dtypes={"mask_index": np.int32}),
                       feeds, rtol=1e-4)


# -- fused linear ops --------------------------------------------------------------------

def test_fused_matmul():
    """alpha, transA / transB, transBatchA / transBatchB (one model, a node per case)."""
    cases = [({}, (2, 3, 4), (4, 5)), ({"alpha": 0.5, "transA": 1}, (2, 4, 3), (4, 5)),
             ({"transB": 1}, (2, 3, 4), (2, 5, 4)), ({"transBatchA": 1}, (3, 2, 4), (2, 4, 5)),
             ({"transBatchB": 1, "transB": 1}, (2, 3, 4), (5, 2, 4))]
    feeds, nodes = {}, []
    for i, (attrs, a_shape, b_shape) in enumerate(cases):
        feeds[f"a{i}"], feeds[f"b{i}"] = _rand(*a_shape), _rand(*b_shape)
        nodes.append(_node("FusedMatMul", [f"a{i}", f"b{i}"], outs=[f"y{i}"], **attrs))
    check_graph(_model(nodes, feeds, outs=[n.output[0] for n in nodes]), feeds)


def test_fused_gemm():
    """Every fused activation with its parameters (one model, a node per activation)."""
    cases = [("Relu", {}), ("Tanh", {}), ("Sigmoid", {}),
             ("LeakyRelu", {"activation_alpha": 0.2}),
             ("HardSigmoid", {"activation_alpha": 0.3, "activation_beta": 0.4})]
    feeds = {"a": _rand(3, 4)}
    nodes = [_node("FusedGemm", ["a", "w", "c"], outs=[f"y{i}"], transB=1, alpha=0.7,
                   activation=name, **extra) for i, (name, extra) in enumerate(cases)]
    check_graph(_model(nodes, feeds, {"w": _rand(5, 4), "c": _rand(5)},
                              outs=[n.output[0] for n in nodes]), feeds)


@pytest.mark.parametrize("activation, params, with_sum", [
    ("Relu", None, True), ("Sigmoid", None, False), ("LeakyRelu", [0.3], True),
    ("Clip", [-0.5, 0.5], False), ("HardSigmoid", [0.3, 0.4], True)])
def test_fused_conv(activation, params, with_sum):
    feeds = {"x": _rand(1, 3, 6, 6), **({"z": _rand(1, 4, 6, 6)} if with_sum else {})}
    attrs = {"activation": activation, "kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    if params:
        attrs["activation_params"] = params
    names = ["x", "w", "b", *(["z"] if with_sum else [])]
    _check("FusedConv", feeds, {"w": _rand(4, 3, 3, 3), "b": _rand(4)}, inputs=names, **attrs)


def test_gemm_fast_gelu_matches_matmul_add_fastgelu():
    feeds = {"x": _rand(2, 3, 4)}
    consts = {"w": _rand(4, 6), "b": _rand(6)}
    _check_composition(
        [_node("GemmFastGelu", ["x", "w", "b"], outs=["y"])],
        [helper.make_node("MatMul", ["x", "w"], ["m"]),
         _node("FastGelu", ["m", "b"], outs=["y"])], feeds, consts, ["y"])


# -- MatMulNBits -------------------------------------------------------------------------

def _quantize_blocks(w, bits, block, zero_points):
    """``w`` ``[K, N]`` -> MatMulNBits inputs (uint8 B, scales, packed zero points)."""
    k, n = w.shape
    blocks = -(-k // block)
    padded = np.zeros((blocks * block, n), np.float32)
    padded[:k] = w
    wb = padded.T.reshape(n, blocks, block)
    top = (1 << bits) - 1
    if zero_points:
        lo, hi = wb.min(-1), wb.max(-1)
        scales = ((hi - lo) / top).astype(np.float32)
        zp = np.clip(np.round(-lo / scales), 0, top).astype(np.uint8)
    else:
        scales = (np.abs(wb).max(-1) / (1 << (bits - 1))).astype(np.float32)
        zp = np.full((n, blocks), 1 << (bits - 1), np.uint8)
    q = np.clip(np.round(wb / scales[..., None]) + zp[..., None], 0, top).astype(np.uint8)
    per = 8 // bits

    def pack(values):  # [N, M] -> [N, ceil(M / per)] uint8, low bits first
        m = values.shape[1]
        values = np.pad(values, ((0, 0), (0, -m % per))).reshape(n, -1, per)
        return np.bitwise_or.reduce(values << (np.arange(per) * bits).astype(np.uint8),
                                    axis=-1).astype(np.uint8)

    packed = pack(q.reshape(n, -1)).reshape(n, blocks, block * bits // 8)
    return packed, scales.reshape(-1), pack(zp).reshape(-1) if zero_points else None


@pytest.mark.parametrize("bits, block, k, zero_points, bias", [
    (4, 32, 64, False, False), (4, 16, 40, True, True), (8, 64, 48, True, False),
    (4, 128, 96, False, True)])
def test_matmul_nbits(bits, block, k, zero_points, bias):
    """Blocked 4- and 8-bit weights (K not a multiple of the block too), with and without
    zero points and bias; the packed weight is what ``variables`` holds."""
    n = 12
    q, scales, zp = _quantize_blocks(_rand(k, n), bits, block, zero_points)
    consts = {"q": q, "scales": scales}
    names = ["a", "q", "scales", "zp" if zero_points else "", "", "bias" if bias else ""]
    if zero_points:
        consts["zp"] = zp
    if bias:
        consts["bias"] = _rand(n)
    feeds = {"a": _rand(2, 3, k)}
    converted, _, _ = _check("MatMulNBits", feeds, consts, inputs=names, K=k, N=n, bits=bits,
                             block_size=block, rtol=1e-4, atol=1e-4)
    (layer,) = converted.variables["params"].values()
    assert layer["qweight"].dtype == np.uint8 and layer["qweight"].shape == q.shape


def test_matmul_nbits_refuses_a_weight_that_does_not_fit():
    q, scales, _ = _quantize_blocks(_rand(32, 4), 4, 32, False)
    node = _node("MatMulNBits", ["a", "q", "scales"], outs=["y"], name="bad", K=64, N=4,
                 bits=4, block_size=32)
    feeds = {"a": _rand(1, 64)}
    with pytest.raises(InvalidModelError, match=r"'bad'.*do not fit K=64"):
        onnx2flax.convert(_model([node], feeds, {"q": q, "scales": scales})).run(feeds)


# -- attention ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["mask1d", "mask2d", "mask3d", "unidirectional_past",
                                  "qkv_sizes", "bias_scale"])
def test_attention(case):
    """BERT / GPT-2 attention with its QKV projection (a Dense layer), every mask form,
    the past/present cache, unequal V size and an attention bias."""
    b, s, d_in, heads = 2, 4, 8, 2
    feeds = {"x": _rand(b, s, d_in)}
    sizes = [8, 8, 12] if case == "qkv_sizes" else [8, 8, 8]
    consts = {"w": _rand(d_in, sum(sizes)), "bias": _rand(sum(sizes))}
    names, attrs, n_out = ["x", "w", "bias"], {"num_heads": heads}, 1
    if case == "mask1d":
        feeds["m"] = np.array([4, 2], np.int32)
        names.append("m")
    elif case == "mask2d":
        feeds["m"] = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], np.int32)
        names.append("m")
    elif case == "mask3d":
        feeds["m"] = (RNG.random((b, s, s)) < 0.7).astype(np.int32)
        feeds["m"][..., 0] = 1
        names.append("m")
    elif case == "unidirectional_past":
        feeds["past"] = _rand(2, b, heads, 3, 4)
        names += ["", "past"]
        attrs["unidirectional"] = 1
        n_out = 2
    elif case == "qkv_sizes":
        attrs["qkv_hidden_sizes"] = sizes
    elif case == "bias_scale":
        feeds["ab"] = _rand(1, heads, s, s)
        names += ["", "", "ab"]
        attrs["scale"] = 0.3
    _check("Attention", feeds, consts, inputs=names, n_out=n_out, rtol=1e-4, atol=1e-5, **attrs)


@pytest.mark.parametrize("case", ["cross_4d", "past_causal", "padding_mask", "attention_bias"])
def test_multi_head_attention(case):
    b, s, heads, h = 2, 3, 2, 4
    d = heads * h
    feeds, names, attrs, n_out = {}, [], {"num_heads": heads}, 1
    if case == "cross_4d":
        feeds = {"q": _rand(b, s, d), "k": _rand(b, heads, 5, h), "v": _rand(b, heads, 5, h),
                 "bias": _rand(3 * d)}
        names = ["q", "k", "v", "bias"]
    else:
        feeds = {"q": _rand(b, s, d), "k": _rand(b, s, d), "v": _rand(b, s, d),
                 "bias": _rand(3 * d)}
        names = ["q", "k", "v", "bias"]
    if case == "past_causal":
        feeds["pk"], feeds["pv"] = _rand(b, heads, 2, h), _rand(b, heads, 2, h)
        names += ["", "", "pk", "pv"]
        attrs["unidirectional"] = 1
        n_out = 3
    elif case == "padding_mask":
        feeds["m"] = np.array([[1, 1, 1], [1, 0, 0]], np.int32)
        names.append("m")
    elif case == "attention_bias":
        feeds["ab"] = _rand(b, 1, s, s)
        names += ["", "ab"]
        attrs["scale"] = 0.5
    _check("MultiHeadAttention", feeds, inputs=names, n_out=n_out, rtol=1e-4, **attrs)


@pytest.mark.parametrize("interleaved, layout", [(0, "3d"), (1, "4d"), (1, "offset"),
                                                 (0, "partial"), (1, "partial")])
def test_ms_rotary_embedding(interleaved, layout):
    b, s, heads, h = 2, 3, 2, 8
    rot = 4 if layout == "partial" else h
    theta = np.arange(16)[:, None] * (1e-1 ** np.arange(rot // 2))[None, :]
    consts = {"cos": np.cos(theta).astype(np.float32), "sin": np.sin(theta).astype(np.float32)}
    x = _rand(b, heads, s, h) if layout == "4d" else _rand(b, s, heads * h)
    pos = (np.array([5], np.int64) if layout == "offset"
           else RNG.integers(0, 16, (b, s)).astype(np.int64))
    attrs = {"interleaved": interleaved}
    if layout != "4d":
        attrs["num_heads"] = heads
    if layout == "partial":
        attrs["rotary_embedding_dim"] = rot
    _check("RotaryEmbedding", {"x": x, "pos": pos}, consts, inputs=["x", "pos", "cos", "sin"],
           **attrs)


@pytest.mark.parametrize("packing", ["qkv", "kv"])
def test_multi_head_attention_packed(packing):
    """Packed QKV ``[B, S, N, 3, H]`` / KV ``[B, L, N, 2, H]`` (GPU-only in onnxruntime)
    against onnxruntime on the same tensors unpacked."""
    b, s, heads, h = 2, 3, 2, 4
    packed = _rand(b, s, heads, 3, h) if packing == "qkv" else _rand(b, 5, heads, 2, h)
    split = [np.ascontiguousarray(packed[:, :, :, i]).reshape(b, -1, heads * h)
             for i in range(packed.shape[3])]
    q = split[0] if packing == "qkv" else _rand(b, s, heads * h)
    k, v = split[-2:]
    expected = run_ort(_model([_node("MultiHeadAttention", ["q", "k", "v"], num_heads=heads)],
                              {"q": q, "k": k, "v": v}), {"q": q, "k": k, "v": v})
    feeds = {"p": packed} if packing == "qkv" else {"q": q, "p": packed}
    node = _node("MultiHeadAttention", list(feeds), num_heads=heads)
    converted = onnx2flax.convert(_model([node], feeds))
    got = converted.run(feeds)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-5)
    assert_codegen_matches(converted, feeds, got)


def _gqa_feeds(b, s, past, heads, kv_heads, h, packed):
    total = past + s
    feeds = {"q": _rand(b, s, (heads + 2 * kv_heads) * h)} if packed else {
        "q": _rand(b, s, heads * h), "k": _rand(b, s, kv_heads * h), "v": _rand(b, s, kv_heads * h)}
    feeds["pk"], feeds["pv"] = _rand(b, kv_heads, past, h), _rand(b, kv_heads, past, h)
    feeds["seqlens"] = np.full((b,), total - 1, np.int32)
    feeds["total"] = np.array(total, np.int32)
    names = ["q", "", ""] if packed else ["q", "k", "v"]
    return feeds, names + ["pk", "pv", "seqlens", "total"]


@pytest.mark.parametrize("packed, past, s, attrs", [
    (True, 0, 5, {}), (False, 4, 1, {}), (False, 3, 2, {"local_window_size": 3}),
    (True, 2, 3, {"do_rotary": 1}), (True, 4, 1, {"do_rotary": 1, "rotary_interleaved": 1}),
    (False, 0, 4, {"softcap": 2.0, "scale": 0.4})])
def test_group_query_attention(packed, past, s, attrs):
    """Prompt and decoding steps with the KV cache, GQA head sharing, sliding window,
    rotary (both layouts), softcap; the present cache is returned."""
    # onnxruntime's CPU kernel wants batch 1 for a multi-token step after a past and a head
    # size multiple of 16 for rotary.
    b, heads, kv_heads = (1 if past and s > 1 else 2), 4, 2
    h = 16 if attrs.get("do_rotary") else 8
    feeds, names = _gqa_feeds(b, s, past, heads, kv_heads, h, packed)
    consts = {}
    if attrs.get("do_rotary"):
        theta = np.arange(32)[:, None] * (1e-1 ** np.arange(h // 2))[None, :]
        consts = {"cos": np.cos(theta).astype(np.float32), "sin": np.sin(theta).astype(np.float32)}
        names += ["cos", "sin"]
    node = _node("GroupQueryAttention", names, 3, num_heads=heads, kv_num_heads=kv_heads,
                 **attrs)
    total = feeds.pop("total")
    consts["total"] = total  # a constant, as genai's models compute it from shapes
    check_graph(_model([node], feeds, consts), feeds, rtol=1e-4, atol=1e-5)


def test_group_query_attention_position_ids():
    """position_ids move the rotary angles (not the cache positions)."""
    heads, kv_heads, h = 4, 2, 16
    feeds, names = _gqa_feeds(2, 1, 3, heads, kv_heads, h, True)
    theta = np.arange(32)[:, None] * (1e-1 ** np.arange(h // 2))[None, :]
    consts = {"cos": np.cos(theta).astype(np.float32), "sin": np.sin(theta).astype(np.float32),
              "total": feeds.pop("total")}
    feeds["pos"] = np.array([[7], [9]], np.int64)
    node = _node("GroupQueryAttention", [*names, "cos", "sin", "pos"], 3, num_heads=heads,
                 kv_num_heads=kv_heads, do_rotary=1)
    check_graph(_model([node], feeds, consts), feeds, rtol=1e-4, atol=1e-5)


def test_group_query_attention_rows_of_different_lengths():
    """A right-padded batched prompt (seqlens_k [4, 2]) then a decoding step from its present
    cache: rows keep their own positions; the present caches equal onnxruntime's, padding
    included."""
    b, s, heads, kv_heads, h = 2, 5, 4, 2, 8
    node = _node("GroupQueryAttention", ["q", "k", "v", "pk", "pv", "seqlens", "total"], 3,
                 num_heads=heads, kv_num_heads=kv_heads)
    past_k = past_v = np.zeros((b, kv_heads, 0, h), np.float32)
    seqlens = np.array([4, 2], np.int32)
    for step, length in enumerate((s, 1)):
        feeds = {"q": _rand(b, length, heads * h), "k": _rand(b, length, kv_heads * h),
                 "v": _rand(b, length, kv_heads * h), "pk": past_k, "pv": past_v,
                 "seqlens": seqlens + step}
        total = {"total": np.array(s + step, np.int32)}
        _, (_, past_k, past_v), _ = check_graph(_model([node], feeds, total), feeds,
                                                       rtol=1e-4)


def test_unsupported_attention_features_are_named():
    feeds, names = _gqa_feeds(1, 1, 2, 2, 1, 4, False)
    consts = {"total": feeds.pop("total")}
    node = _node("GroupQueryAttention", names, 3, name="gqa", num_heads=2, kv_num_heads=1,
                 smooth_softmax=1)
    with pytest.raises(UnsupportedOpError, match="'gqa'.*smooth_softmax is not supported"):
        onnx2flax.convert(_model([node], feeds, consts)).run(feeds)


def test_inspect_lists_ops_by_domain():
    """``inspect`` groups ops by domain, with each domain's opset, supported or not."""
    from onnx2flax._inspect import summarize
    feeds = {"x": _rand(2, 8)}
    nodes = [helper.make_node("Relu", ["x"], ["r"]), _node("FastGelu", ["r"], outs=["g"]),
             _node("NoSuchContribOp", ["g"], outs=["y"])]
    text = summarize(_model(nodes, feeds)).text()
    ai_onnx, contrib = text.split("  com.microsoft (opset 1):\n")
    assert "  ai.onnx (opset 17):\n    Relu " in ai_onnx
    assert "FastGelu" in contrib and "supported" in contrib
    assert "NoSuchContribOp" in contrib and "NOT SUPPORTED" in contrib
    assert text.endswith("unsupported: com.microsoft::NoSuchContribOp")


def test_matmul_nbits_two_bits_float_zero_points_and_g_idx():
    """2-bit codes with packed zero points, float zero points, and g_idx (the block of each
    input feature, here interleaved) against onnxruntime in one model."""
    k, n = 64, 8
    feeds = {"a": _rand(2, k)}
    q2, s2, zp2 = _quantize_blocks(_rand(k, n), 2, 32, True)
    q4, s4, _ = _quantize_blocks(_rand(k, n), 4, 32, False)
    consts = {"q2": q2, "s2": s2, "zp2": zp2, "q4": q4, "s4": s4, "zpf": _rand(2 * n),
              "g": (np.arange(k) % 2).astype(np.int32)}
    attrs = {"K": k, "N": n, "block_size": 32}
    nodes = [_node("MatMulNBits", ["a", "q2", "s2", "zp2"], outs=["y2"], bits=2, **attrs),
             _node("MatMulNBits", ["a", "q4", "s4", "zpf"], outs=["yf"], bits=4, **attrs),
             _node("MatMulNBits", ["a", "q4", "s4", "", "g"], outs=["yg"], bits=4, **attrs)]
    check_graph(_model(nodes, feeds, consts, outs=["y2", "yf", "yg"]), feeds,
                       rtol=1e-4, atol=1e-4)


def test_matmul_nbits_g_idx_with_packed_zero_points_departs_from_onnxruntime():
    """onnxruntime's CPU kernel ignores packed zero points when g_idx is given (it uses the
    default 8); onnx2flax applies them, as the op's definition ``(q - zero_point) * scale``
    says. Shown: onnxruntime's output is onnx2flax's on the same node without zero points."""
    k, n = 64, 8
    feeds = {"a": _rand(2, k)}
    q, scales, zp = _quantize_blocks(_rand(k, n), 4, 32, True)
    consts = {"q": q, "s": scales, "zp": zp, "g": (np.arange(k) // 32).astype(np.int32)}
    attrs = {"K": k, "N": n, "bits": 4, "block_size": 32}
    with_zp = _model([_node("MatMulNBits", ["a", "q", "s", "zp", "g"], outs=["y"], **attrs)],
                     feeds, consts)
    without = _model([_node("MatMulNBits", ["a", "q", "s", "", "g"], outs=["y"], **attrs)],
                     feeds, consts)
    ort_out = run_ort(with_zp, feeds)[0]
    np.testing.assert_allclose(onnx2flax.convert(without).run(feeds)[0], ort_out, rtol=1e-4,
                               atol=1e-4)
    plain = _model([_node("MatMulNBits", ["a", "q", "s", "zp"], outs=["y"], **attrs)], feeds,
                   consts)  # g_idx = k // block is the default grouping: zero points count
    np.testing.assert_allclose(onnx2flax.convert(with_zp).run(feeds)[0], run_ort(plain, feeds)[0],
                               rtol=1e-4, atol=1e-4)
    assert np.abs(ort_out - run_ort(plain, feeds)[0]).max() > 0.1


def _reference_group_norm(x, gamma, beta, out, groups, silu, nhwc=True):
    """Standard ops: (NHWC ->) NCHW, GroupNormalization-21 (per-channel scale / bias),
    (SiLU,) (-> NHWC)."""
    y = f"{out}_gn"
    nodes = [helper.make_node("Transpose", [x], [f"{out}_t"], perm=[0, 3, 1, 2])] if nhwc else []
    nodes.append(helper.make_node("GroupNormalization", [f"{out}_t" if nhwc else x, gamma, beta],
                                  [y], num_groups=groups, epsilon=1e-3))
    if silu:
        nodes += [helper.make_node("Sigmoid", [y], [f"{y}_s"]),
                  helper.make_node("Mul", [y, f"{y}_s"], [f"{y}_a"])]
        y = f"{y}_a"
    nodes.append(helper.make_node("Transpose", [y], [out], perm=[0, 2, 3, 1]) if nhwc
                 else helper.make_node("Identity", [y], [out]))
    return nodes


def test_group_norm_and_skip_group_norm():
    """GPU-only in onnxruntime: against GroupNormalization-21 (and Add, Sigmoid, Mul)."""
    feeds = {"x": _rand(2, 4, 5, 8), "skip": _rand(2, 8), "xc": _rand(2, 8, 4, 5)}
    consts = {"g": _rand(8), "b": _rand(8), "bias": _rand(8), "four": np.array([2, 1, 1, 8])}
    nodes = [_node("GroupNorm", ["x", "g", "b"], outs=["y"], groups=4, epsilon=1e-3,
                   activation=1),
             _node("GroupNorm", ["xc", "g", "b"], outs=["yc"], groups=2, epsilon=1e-3,
                   activation=0, channels_last=0),
             _node("SkipGroupNorm", ["x", "g", "b", "skip", "bias"], outs=["z", "sum"],
                   groups=2, epsilon=1e-3, activation=0)]
    reference = [*_reference_group_norm("x", "g", "b", "y", 4, True),
                 *_reference_group_norm("xc", "g", "b", "yc", 2, False, nhwc=False),
                 helper.make_node("Reshape", ["skip", "four"], ["skip4"]),
                 helper.make_node("Add", ["x", "skip4"], ["xs"]),
                 helper.make_node("Add", ["xs", "bias"], ["sum"]),
                 *_reference_group_norm("sum", "g", "b", "z", 2, False)]
    expected = run_ort(_model(reference, feeds, consts, ["y", "yc", "z", "sum"], opset=21),
                       feeds)
    converted = onnx2flax.convert(_model(nodes, feeds, consts, ["y", "yc", "z", "sum"]))
    got = converted.run(feeds)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
    assert_codegen_matches(converted, feeds, got)


def test_bias_softmax():
    """GPU-only in onnxruntime: against Add + Softmax-1 (which also flattens from axis):
    a bias broadcast over the leading dims, and one broadcast over the inner dims."""
    feeds = {"x": _rand(2, 3, 4, 5)}
    consts = {"outer": _rand(4, 5), "inner": _rand(2, 4, 5)}
    nodes = [_node("BiasSoftmax", ["x", "outer"], outs=["a"], axis=2, is_inner_broadcast=0),
             _node("BiasSoftmax", ["x", "inner"], outs=["b"], axis=2, is_inner_broadcast=1),
             _node("BiasSoftmax", ["x", "outer"], outs=["c"], axis=3, is_inner_broadcast=0)]
    reference = [helper.make_node("Add", ["x", "outer"], ["xo"]),
                 helper.make_node("Softmax", ["xo"], ["a"], axis=2),
                 helper.make_node("Unsqueeze", ["inner"], ["inner4"], axes=[1]),
                 helper.make_node("Add", ["x", "inner4"], ["xi"]),
                 helper.make_node("Softmax", ["xi"], ["b"], axis=2),
                 helper.make_node("Softmax", ["xo"], ["c"], axis=3)]
    expected = run_ort(_model(reference, feeds, consts, ["a", "b", "c"], opset=11), feeds)
    converted = onnx2flax.convert(_model(nodes, feeds, consts, ["a", "b", "c"]))
    got = converted.run(feeds)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    assert_codegen_matches(converted, feeds, got)


def test_nhwc_conv():
    """GPU-only in onnxruntime: against Transpose -> Conv (OIHW weight) -> Transpose."""
    feeds = {"x": _rand(2, 7, 6, 4)}
    w = _rand(6, 2, 3, 3)  # OIHW, group 2
    consts = {"w_ohwi": np.ascontiguousarray(w.transpose(0, 2, 3, 1)), "w": w, "b": _rand(6),
              "w1": _rand(5, 4, 1, 1)}
    consts["w1_ohwi"] = np.ascontiguousarray(consts["w1"].transpose(0, 2, 3, 1))
    attrs = {"group": 2, "strides": [2, 1], "pads": [1, 0, 1, 2], "dilations": [1, 2]}
    nodes = [_node("NhwcConv", ["x", "w_ohwi", "b"], outs=["y"], **attrs),
             _node("NhwcConv", ["x", "w1_ohwi"], outs=["z"])]
    reference = [helper.make_node("Transpose", ["x"], ["xc"], perm=[0, 3, 1, 2]),
                 helper.make_node("Conv", ["xc", "w", "b"], ["yc"], **attrs),
                 helper.make_node("Transpose", ["yc"], ["y"], perm=[0, 2, 3, 1]),
                 helper.make_node("Conv", ["xc", "w1"], ["zc"]),
                 helper.make_node("Transpose", ["zc"], ["z"], perm=[0, 2, 3, 1])]
    expected = run_ort(_model(reference, feeds, consts, ["y", "z"]), feeds)
    converted = onnx2flax.convert(_model(nodes, feeds, consts, ["y", "z"]))
    got = converted.run(feeds)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
    assert_codegen_matches(converted, feeds, got)


@pytest.mark.parametrize("shared, packed", [(1, False), (0, False), (1, True)])
def test_decoder_masked_multi_head_attention(shared, packed):
    """GPU-only in onnxruntime: one decoding step against onnxruntime's MultiHeadAttention
    on the valid part of the cache (shared buffer: the new key/value written at
    past_sequence_length; the rest of the buffer ignored)."""
    b, heads, h, past, max_len = 2, 2, 4, 3, 6
    d = heads * h
    q, k, v, bias = _rand(b, 1, d), _rand(b, 1, d), _rand(b, 1, d), _rand(3 * d)
    cache_len = max_len if shared else past
    pk, pv = _rand(b, heads, cache_len, h), _rand(b, heads, cache_len, h)
    mask = np.ones((b, past + 1), np.int32)
    mask[1, 0] = 0
    qkv = {"qkv": np.concatenate([q, k, v], axis=-1)} if packed else {"q": q, "k": k, "v": v}
    feeds = {**qkv, "m": mask, "pk": pk, "pv": pv, "plen": np.array(past, np.int32)}
    names = ["qkv", "", ""] if packed else ["q", "k", "v"]
    node = _node("DecoderMaskedMultiHeadAttention",
                 [*names, "m", "", "pk", "pv", "plen", "", "", "bias"], 3,
                 num_heads=heads, past_present_share_buffer=shared)
    converted = onnx2flax.convert(_model([node], feeds, {"bias": bias}))
    got = converted.run(feeds)
    ref_feeds = {"q": q, "k": k, "v": v, "m": mask, "pk": pk[:, :, :past], "pv": pv[:, :, :past]}
    reference = _node("MultiHeadAttention", ["q", "k", "v", "bias", "m", "", "pk", "pv"], 3,
                      num_heads=heads)
    expected = run_ort(_model([reference], ref_feeds, {"bias": bias}), ref_feeds)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-5)
    for g, e in zip(got[1:], expected[1:]):
        np.testing.assert_allclose(g[:, :, :past + 1], e, rtol=1e-6)
    assert_codegen_matches(converted, feeds, got)


def _run_ort_in_place(model, feeds, shared):
    """onnxruntime's SparseAttention CPU kernel insists on present == past buffers: run
    it with IO binding, ``shared`` mapping each past input to its present output."""
    import onnxruntime as ort
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    binding = session.io_binding()
    buffers = {name: ort.OrtValue.ortvalue_from_numpy(feeds[name].copy()) for name in shared}
    for name, value in feeds.items():
        if name in shared:
            binding.bind_ortvalue_input(name, buffers[name])
        else:
            binding.bind_cpu_input(name, value)
    for out in (o.name for o in session.get_outputs()):
        past = next((p for p, o in shared.items() if o == out), None)
        if past is None:
            binding.bind_output(out, "cpu")
        else:
            binding.bind_ortvalue_output(out, buffers[past])
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()


@pytest.mark.parametrize("past, s, rotary", [(0, 8, False), (5, 1, True), (4, 3, False)])
def test_sparse_attention(past, s, rotary):
    """Prompt and decoding steps over two block layouts (heads alternate), GQA, rotary."""
    b, heads, kv_heads, h, block, max_len = 1, 4, 2, 16, 4, 16
    rows = np.array([[0, 1, 3, 4, 6], [0, 1, 2, 4, 5]], np.int32)
    cols = np.array([[0, 0, 1, 2, 0, 3], [0, 1, 0, 2, 3, 0]], np.int32)
    cache_k, cache_v = _rand(b, kv_heads, max_len, h), _rand(b, kv_heads, max_len, h)
    feeds = {"q": _rand(b, s, heads * h), "k": _rand(b, s, kv_heads * h),
             "v": _rand(b, s, kv_heads * h), "pk": cache_k, "pv": cache_v}
    consts = {"rows": rows, "cols": cols, "total": np.array(past + s, np.int32),
              "klen": np.array([past + s], np.int32)}
    names = ["q", "k", "v", "pk", "pv", "rows", "cols", "total", "klen"]
    attrs = {"num_heads": heads, "kv_num_heads": kv_heads, "sparse_block_size": block}
    if rotary:
        theta = np.arange(32)[:, None] * (1e-1 ** np.arange(h // 2))[None, :]
        consts.update(cos=np.cos(theta).astype(np.float32), sin=np.sin(theta).astype(np.float32))
        names += ["cos", "sin"]
        attrs["do_rotary"] = 1
    model = _model([_node("SparseAttention", names, 3, **attrs)], feeds, consts)
    expected = _run_ort_in_place(model, feeds, {"pk": "y1", "pv": "y2"})
    converted = onnx2flax.convert(model)
    got = converted.run(feeds)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=1e-5)
    for g, e in zip(got[1:], expected[1:]):  # the written part of the caches
        np.testing.assert_allclose(g[:, :, :past + s], e[:, :, :past + s], rtol=1e-6)
    assert_codegen_matches(converted, feeds, got)
