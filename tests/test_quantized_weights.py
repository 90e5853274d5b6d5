"""A QDQ model's weights stay quantized in ``variables`` (integer tensor, scale, zero point)
and are dequantized inside the jitted function; ``convert(dequantize_weights=True)`` makes
them float Flax kernels at conversion instead. Both against onnxruntime (rewrites off)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import check_graph, make_model
from onnx import helper

RNG = np.random.default_rng(0)


def _qdq_conv_model():
    """QuantizeLinear -> DequantizeLinear on the activation, a per-channel int8 weight and
    an int32 bias through DequantizeLinear, Conv, then a QDQ Gemm (what onnxruntime's
    quantize_static writes, weights named as it names them), opset 17."""
    w = RNG.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    w_scale = RNG.uniform(0.005, 0.02, 4).astype(np.float32)
    fc = RNG.integers(-127, 128, (5, 16)).astype(np.int8)
    consts = {"conv.weight_quantized": w, "conv.weight_scale": w_scale,
              "conv.weight_zero_point": np.zeros(4, np.int8),
              "conv.bias_quantized": RNG.integers(-500, 500, 4).astype(np.int32),
              "conv.bias_scale": (w_scale * 0.02).astype(np.float32),
              "conv.bias_zero_point": np.zeros(4, np.int32),
              "fc.weight_quantized": fc, "fc.weight_scale": np.float32(0.01),
              "fc.weight_zero_point": np.int8(0),
              "x_scale": np.float32(0.02), "x_zero_point": np.uint8(128)}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero_point"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero_point"], ["xd"]),
        helper.make_node("DequantizeLinear", ["conv.weight_quantized", "conv.weight_scale",
                                              "conv.weight_zero_point"], ["wd"], axis=0),
        helper.make_node("DequantizeLinear", ["conv.bias_quantized", "conv.bias_scale",
                                              "conv.bias_zero_point"], ["bd"], axis=0),
        helper.make_node("Conv", ["xd", "wd", "bd"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("DequantizeLinear", ["fc.weight_quantized", "fc.weight_scale",
                                              "fc.weight_zero_point"], ["fd"]),
        helper.make_node("Gemm", ["f", "fd"], ["y"], transB=1),
    ]
    return make_model(nodes, [("x", np.float32, (None, 3, 4, 4))], [("y", np.float32, None)],
                      consts, opset=17)


def _module_input(converted, x):
    return np.transpose(x, (0, 2, 3, 1)) if converted.inputs[0].channels_last else x


def _leaves(tree):
    return {"/".join(str(k.key) for k in path): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def test_weights_stay_quantized():
    model = _qdq_conv_model()
    feeds = {"x": RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)}
    converted, got, _ = check_graph(model, feeds, fused=False)
    assert converted.inputs[0].channels_last  # seen through QuantizeLinear -> DequantizeLinear
    leaves = _leaves(converted.variables["params"])
    assert leaves["conv/weight_quantized"].dtype == jnp.int8
    assert leaves["conv/weight_quantized"].shape == (4, 3, 3, 3)  # as in the file
    assert leaves["conv/bias_quantized"].dtype == jnp.int32
    assert leaves["fc/weight_quantized"].dtype == jnp.int8
    assert leaves["conv/weight_scale"].shape == (4,)
    assert not any(v.dtype == jnp.float32 and v.ndim == 4 for v in leaves.values())
    # the quantized tensors are read at run time: changing one changes the output
    params = jax.tree_util.tree_map(lambda v: v, converted.variables)
    params["params"]["fc"]["weight_quantized"] = -params["params"]["fc"]["weight_quantized"]
    x = _module_input(converted, feeds["x"])
    flipped = converted.module.apply(params, x)
    np.testing.assert_allclose(np.asarray(flipped), -got[0], rtol=1e-5, atol=1e-5)


def test_dequantize_weights_at_conversion_for_fine_tuning():
    model = _qdq_conv_model()
    feeds = {"x": RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)}
    quantized, expected, _ = check_graph(model, feeds, fused=False)
    import onnx2flax

    converted = onnx2flax.convert(model, dequantize_weights=True)
    np.testing.assert_array_equal(converted.run(feeds)[0], expected[0])
    leaves = _leaves(converted.variables["params"])
    assert leaves["conv/kernel"].shape == (3, 3, 3, 4)
    assert leaves["conv/kernel"].dtype == jnp.float32
    assert leaves["fc/kernel"].shape == (16, 5)
    assert not any(jnp.issubdtype(v.dtype, jnp.integer) for v in leaves.values())
    x = _module_input(converted, feeds["x"])
    grads = jax.grad(lambda v: jnp.sum(converted.module.apply(v, x) ** 2))(converted.variables)
    assert float(jnp.abs(grads["params"]["conv"]["kernel"]).max()) > 0


@pytest.mark.parametrize("dtype", ["int4", "uint16"])
def test_narrow_and_wide_quantized_weights(dtype):
    """int4 (packed in the file) and uint16 weights stay in their type."""
    import ml_dtypes

    np_type = {"int4": ml_dtypes.int4, "uint16": np.uint16}[dtype]
    zero = {"int4": 0, "uint16": 30000}[dtype]
    w = (RNG.integers(-7, 8, (6, 4)) + zero).astype(np_type)
    nodes = [helper.make_node("DequantizeLinear", ["w_quantized", "s", "z"], ["wd"]),
             helper.make_node("MatMul", ["x", "wd"], ["y"])]
    model = make_model(nodes, [("x", np.float32, (3, 6))], [("y", np.float32, None)],
                       {"w_quantized": w, "s": np.float32(0.1), "z": np.asarray(zero, np_type)},
                       opset=21)
    feeds = {"x": RNG.standard_normal((3, 6)).astype(np.float32)}
    converted, _, _ = check_graph(model, feeds, fused=False)
    assert _leaves(converted.variables["params"])["w_quantized"].dtype == np.dtype(np_type)
