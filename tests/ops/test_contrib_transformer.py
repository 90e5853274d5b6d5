"""com.microsoft transformer ops (onnxruntime's optimizer and genai builder) against
onnxruntime's CPU kernels; the ops onnxruntime runs only on GPUs against the same
computation written with standard ONNX ops, run by onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_codegen_matches, assert_matches_ort, make_model, run_ort
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
    return assert_matches_ort(_model([node], feeds, consts, out_dtypes=out_dtypes), feeds,
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
    assert_matches_ort(_model(nodes, feeds, outs=["g", "bg", "fg", "fgb", "q", "qa"]), feeds)


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
    converted, _, _ = assert_matches_ort(
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
    assert_matches_ort(_model([node, flat], feeds, {"scale": _rand(8), "scale2": _rand(3, 8)},
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
    assert_matches_ort(_model([node], feeds, consts, out_dtypes={"mask_index": np.int32}),
                       feeds, rtol=1e-4)


# -- fused linear ops --------------------------------------------------------------------

@pytest.mark.parametrize("attrs, a_shape, b_shape", [
    ({}, (2, 3, 4), (4, 5)),
    ({"alpha": 0.5, "transA": 1}, (2, 4, 3), (4, 5)),
    ({"transB": 1}, (2, 3, 4), (2, 5, 4)),
    ({"transBatchA": 1}, (3, 2, 4), (2, 4, 5)),
    ({"transBatchB": 1, "transB": 1}, (2, 3, 4), (5, 2, 4)),
])
def test_fused_matmul(attrs, a_shape, b_shape):
    _check("FusedMatMul", {"a": _rand(*a_shape), "b": _rand(*b_shape)}, **attrs)


@pytest.mark.parametrize("activation, extra", [
    ("Relu", {}), ("Tanh", {}), ("Sigmoid", {}), ("LeakyRelu", {"activation_alpha": 0.2}),
    ("HardSigmoid", {"activation_alpha": 0.3, "activation_beta": 0.4})])
def test_fused_gemm(activation, extra):
    feeds = {"a": _rand(3, 4)}
    _check("FusedGemm", feeds, {"w": _rand(5, 4), "c": _rand(5)}, transB=1, alpha=0.7,
           activation=activation, **extra)


@pytest.mark.parametrize("activation, params", [
    ("Relu", None), ("Sigmoid", None), ("LeakyRelu", [0.3]), ("Clip", [-0.5, 0.5]),
    ("HardSigmoid", [0.3, 0.4])])
@pytest.mark.parametrize("with_sum", [False, True])
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
    (4, 32, 64, False, False), (4, 16, 40, True, True), (8, 32, 48, True, False),
    (8, 64, 64, False, True), (4, 128, 96, True, False)])
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
