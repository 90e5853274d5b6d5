"""NNX: the converted weights as nnx.Param / nnx.BatchStat, same outputs as linen."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from onnx import helper

import onnx2flax
from onnx2flax.nnx import to_nnx

from helpers import make_model
from test_training import _cnn, _export


@pytest.fixture(scope="module")
def converted():
    model = _cnn()
    return onnx2flax.convert(_export(model, torch.randn(4, 3, 6, 6)))


def _x():
    return np.random.default_rng(0).standard_normal((4, 6, 6, 3)).astype(np.float32)


def test_variables_are_the_converted_weights(converted):
    model = to_nnx(converted)
    params = nnx.state(model, nnx.Param)
    stats = nnx.state(model, nnx.BatchStat)
    flat = dict(nnx.to_flat_state(params))
    assert flat.keys() == {("bn", "scale"), ("bn", "bias"), ("conv", "kernel"), ("conv", "bias"),
                           ("fc", "kernel"), ("fc", "bias")}
    for path, var in flat.items():
        expected = converted.variables["params"]
        for key in path:
            expected = expected[key]
        np.testing.assert_array_equal(var.get_value(), expected)
    np.testing.assert_array_equal(stats["bn"]["mean"].get_value(),
                                  converted.variables["batch_stats"]["bn"]["mean"])


def test_outputs_equal_linen_in_inference_and_training(converted):
    x = _x()
    model = to_nnx(converted)
    np.testing.assert_array_equal(model(x), converted.module.apply(converted.variables, x))
    jitted = nnx.jit(lambda m, x: m(x))
    np.testing.assert_array_equal(jitted(model, x),
                                  jax.jit(converted.module.apply)(converted.variables, x))

    y, updates = converted.module.apply(converted.variables, x, train=True,
                                        mutable=["batch_stats"])
    np.testing.assert_array_equal(model(x, train=True, mutable=["batch_stats"]), y)
    np.testing.assert_array_equal(model.bn["mean"].get_value(), updates["batch_stats"]["bn"]["mean"])
    np.testing.assert_array_equal(model.bn["var"].get_value(), updates["batch_stats"]["bn"]["var"])


def test_gradients_equal_linen(converted):
    x = _x()
    model = to_nnx(converted)
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
    expected = jax.grad(lambda p: jnp.sum(converted.module.apply(
        {**converted.variables, "params": p}, x) ** 2))(converted.variables["params"])
    got = nnx.to_pure_dict(grads)
    jax.tree.map(np.testing.assert_array_equal, got, expected)


def test_dropout_uses_the_rngs():
    model = make_model([helper.make_node("Dropout", ["x", "r"], ["y"])],
                       [("x", np.float32, [100])], [("y", np.float32, [100])],
                       {"r": np.asarray(0.5, np.float32)})
    converted = onnx2flax.convert(model)
    nnx_model = to_nnx(converted, rngs=nnx.Rngs(dropout=0))
    x = np.ones(100, np.float32)
    np.testing.assert_array_equal(nnx_model(x), x)
    a, b = nnx_model(x, train=True), nnx_model(x, train=True)
    assert set(np.unique(a)) <= {0.0, 2.0} and not np.array_equal(a, b)


def test_convert_api_nnx():
    """``convert(..., api="nnx")``: the NNX module holds the converted weights; ``run`` uses
    its current weights."""
    model_proto = _export(_cnn(), torch.randn(4, 3, 6, 6))
    linen = onnx2flax.convert(model_proto)
    result = onnx2flax.convert(model_proto, api="nnx")
    assert isinstance(result, onnx2flax.NnxConvertedModel)
    assert isinstance(result.module, nnx.Module)
    assert [s.name for s in result.inputs] == [s.name for s in linen.inputs]
    assert result.outputs == linen.outputs and result.opset == linen.opset
    x = _x()
    np.testing.assert_array_equal(nnx.jit(lambda m, x: m(x))(result.module, x),
                                  jax.jit(linen.module.apply)(linen.variables, x))
    jax.tree.map(np.testing.assert_array_equal, result.variables, linen.variables)
    feeds = {"x": np.moveaxis(x, -1, 1)}
    np.testing.assert_array_equal(result.run(feeds)[0], linen.run(feeds)[0])
    result.module.fc["bias"].set_value(result.module.fc["bias"].get_value() + 1)
    np.testing.assert_allclose(result.run(feeds)[0], linen.run(feeds)[0] + 1, rtol=1e-6)


def test_convert_api_is_checked():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", np.float32, [2])],
                       [("y", np.float32, [2])])
    with pytest.raises(ValueError, match="api"):
        onnx2flax.convert(model, api="haiku")
