"""convert(..., fold_batchnorm=True): BatchNormalization folded into Conv / ConvTranspose /
Gemm weights, checked against onnxruntime on the unfused model."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import onnx2flax
from helpers import make_model, run_ort


def _bn(rng, prefix, c):
    return {f"{prefix}.weight": rng.uniform(0.5, 2, c).astype(np.float32),
            f"{prefix}.bias": rng.standard_normal(c).astype(np.float32),
            f"{prefix}.running_mean": rng.standard_normal(c).astype(np.float32),
            f"{prefix}.running_var": rng.uniform(0.2, 3, c).astype(np.float32)}


def _bn_node(prefix, x, y, **attrs):
    return helper.make_node("BatchNormalization", [x] + [f"{prefix}.{k}" for k in
                            ("weight", "bias", "running_mean", "running_var")], [y], **attrs)


def _check(model, feeds, n_bn_left):
    expected = run_ort(model, feeds)
    assert max(np.abs(e).max() for e in expected) > 0.5
    converted = onnx2flax.convert(model, fold_batchnorm=True)
    got = converted.run(feeds)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
    nodes = converted._program.graph.nodes
    assert sum(n.op_type == "BatchNormalization" for n in nodes) == n_bn_left
    return converted


def test_conv_and_conv_transpose(rng):
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = {"conv.weight": f32(8, 3, 3, 3) * 0.4, "conv.bias": f32(8),
             "up.weight": f32(8, 3, 2, 2) * 0.4,  # group 2: C_in 8, C_out 6
             **_bn(rng, "bn1", 8), **_bn(rng, "bn2", 6)}
    nodes = [helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["c"], pads=[1, 1, 1, 1]),
             _bn_node("bn1", "c", "b", epsilon=1e-3),
             helper.make_node("Relu", ["b"], ["r"]),
             helper.make_node("ConvTranspose", ["r", "up.weight"], ["u"], strides=[2, 2], group=2),
             _bn_node("bn2", "u", "y")]
    model = make_model(nodes, [("x", np.float32, ["N", 3, 6, 6])], [("y", np.float32, None)], inits)
    converted = _check(model, {"x": f32(2, 3, 6, 6)}, 0)
    assert "batch_stats" not in converted.variables
    assert set(converted.variables["params"]) == {"conv", "up"}
    assert set(converted.variables["params"]["up"]) == {"kernel", "bias"}
    # unfused by default
    assert set(onnx2flax.convert(model).variables["batch_stats"]) == {"bn1", "bn2"}


@pytest.mark.parametrize("trans_b, bias, alpha, beta",
                         [(1, "vector", 1.0, 1.0), (0, None, 0.5, 1.0), (1, "scalar", 2.0, 0.3)])
def test_gemm(rng, trans_b, bias, alpha, beta):
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = {"fc.weight": f32(*((5, 4) if trans_b else (4, 5))), **_bn(rng, "bn", 5)}
    inputs = ["x", "fc.weight"]
    if bias:
        inits["fc.bias"] = f32(5) if bias == "vector" else f32(1)
        inputs.append("fc.bias")
    nodes = [helper.make_node("Gemm", inputs, ["g"], transB=trans_b, alpha=alpha, beta=beta),
             _bn_node("bn", "g", "y")]
    model = make_model(nodes, [("x", np.float32, [3, 4])], [("y", np.float32, [3, 5])], inits)
    converted = _check(model, {"x": f32(3, 4)}, 0)
    assert set(converted.variables["params"]["fc"]) == ({"kernel", "bias"})


def test_not_folded_when_the_conv_output_has_another_reader(rng):
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = {"conv.weight": f32(4, 3, 1, 1), **_bn(rng, "bn", 4)}
    nodes = [helper.make_node("Conv", ["x", "conv.weight"], ["c"]),
             _bn_node("bn", "c", "b"),
             helper.make_node("Add", ["b", "c"], ["y"])]
    model = make_model(nodes, [("x", np.float32, [1, 3, 4, 4])], [("y", np.float32, None)], inits)
    converted = _check(model, {"x": f32(1, 3, 4, 4)}, 1)
    assert set(converted.variables["batch_stats"]) == {"bn"}


def test_exporter_zero_bias_is_dropped(rng):
    """dynamo exports give a bias-free Conv the bias Expand(CastLike(0, activation), [C]);
    it folds at conversion (the activation's type comes from value_info) and is dropped."""
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = {"conv.weight": f32(4, 3, 3, 3), "zero": np.zeros((), np.float32),
             "channels": np.array([4], np.int64)}
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("CastLike", ["zero", "r"], ["z"]),
             helper.make_node("Expand", ["z", "channels"], ["b"]),
             helper.make_node("Conv", ["r", "conv.weight", "b"], ["y"])]
    model = make_model(nodes, [("x", np.float32, [1, 3, 5, 5])], [("y", np.float32, None)], inits)
    model.graph.value_info.append(helper.make_tensor_value_info("r", 1, [1, 3, 5, 5]))
    feeds = {"x": f32(1, 3, 5, 5)}
    converted = onnx2flax.convert(model)
    assert set(converted.variables["params"]["conv"]) == {"kernel"}
    assert [n.op_type for n in converted._program.graph.nodes] == ["Relu", "Conv"]
    np.testing.assert_allclose(converted.run(feeds)[0], run_ort(model, feeds)[0],
                               rtol=1e-5, atol=1e-5)


def test_free_bias_next_to_its_dense_layer_gets_a_name(rng):
    """torch.nn.Linear on a rank-3 input exports as MatMul + Add: the layer takes 'fc' and
    the free bias 'fc.bias' becomes 'fc_bias' (naming it used to loop forever)."""
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    nodes = [helper.make_node("MatMul", ["x", "fc.weight"], ["m"]),
             helper.make_node("Add", ["m", "fc.bias"], ["y"])]
    model = make_model(nodes, [("x", np.float32, [2, 3, 4])], [("y", np.float32, [2, 3, 5])],
                       {"fc.weight": f32(4, 5), "fc.bias": f32(5)})
    converted = onnx2flax.convert(model)
    assert set(converted.variables["params"]) == {"fc", "fc_bias"}
    feeds = {"x": f32(2, 3, 4)}
    np.testing.assert_allclose(converted.run(feeds)[0], run_ort(model, feeds)[0],
                               rtol=1e-5, atol=1e-5)
