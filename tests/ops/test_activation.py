"""Activations and the Softmax family against onnxruntime."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from helpers import (after_conv, assert_codegen_matches, check_graph, multi_node_model,
                     node_model, sandwich)

import onnx2flax

RNG = np.random.default_rng(0)
X = (RNG.standard_normal((2, 3, 4)) * 3).astype(np.float32)


def _specs(opset):
    """(op, attrs, first opset) with non-default attribute values where the op has any."""
    table = [
        ("Elu", None, 6), ("Elu", {"alpha": 0.5}, 6),
        ("Selu", None, 6), ("Selu", {"alpha": 1.5, "gamma": 2.0}, 6),
        ("LeakyRelu", None, 6), ("LeakyRelu", {"alpha": 0.2}, 6),
        ("HardSigmoid", None, 6), ("HardSigmoid", {"alpha": 1 / 6, "beta": 0.4}, 6),
        ("Softplus", None, 1), ("Softsign", None, 1),
        ("ThresholdedRelu", None, 10), ("ThresholdedRelu", {"alpha": 0.5}, 10),
        ("Shrink", None, 9), ("Shrink", {"bias": 0.3, "lambd": 1.0}, 9),
        ("Celu", None, 12), ("Celu", {"alpha": 2.0}, 12),
        ("HardSwish", None, 14), ("Mish", None, 18),
        ("Gelu", None, 20), ("Gelu", {"approximate": "tanh"}, 20),
        ("Swish", None, 24), ("Swish", {"alpha": 1.702}, 24),
    ]
    return [(op, ["x"], attrs, np.float32) for op, attrs, since in table if since <= opset]


@pytest.mark.parametrize("opset", [6, 24])
def test_activations(opset):
    check_graph(multi_node_model(_specs(opset), {"x": X}, opset=opset), {"x": X}, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("slope_shape", [(1,), (4,), (3, 1)])
def test_prelu_broadcasting(slope_shape):
    slope = RNG.uniform(0.05, 0.5, slope_shape).astype(np.float32)
    feeds = {"x": X, "s": slope}
    check_graph(node_model("PRelu", feeds, opset=16), feeds)


def test_prelu_rejects_bidirectional_broadcast():
    feeds = {"x": X[0, 0], "s": RNG.standard_normal((3, 4)).astype(np.float32)}
    with pytest.raises(onnx2flax.errors.InvalidModelError, match="slope"):
        onnx2flax.convert(node_model("PRelu", feeds, opset=16)).run(feeds)


def test_prelu_channels_last_param():
    """A Conv -> PRelu(slope [C, 1, 1] initializer) -> Conv: the slope becomes a param and
    meets the channels-last value without a transpose."""
    slope = RNG.uniform(0.05, 0.5, (3, 1, 1)).astype(np.float32)
    model, feeds = sandwich("PRelu", extra={"act.weight": slope})
    converted, _, _ = check_graph(model, feeds)
    np.testing.assert_array_equal(converted.variables["params"]["act"]["weight"], slope)


@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_family_channels_last(opset):
    """Opset < 13 flattens to 2-D around ``axis`` (default 1), >= 13 is per-axis (default
    -1); both on a channels-last value (after a Conv, then Round: ties for Hardmax
    where the first maximum in ONNX order wins)."""
    specs = [(op, [], None if axis is None else {"axis": axis}, np.float32)
             for op in ("Softmax", "LogSoftmax", "Hardmax") for axis in (None, 0, 2, -1)]
    model, feeds = after_conv(specs, opset=opset, shape=(2, 3, 3, 4), pre="Round")
    check_graph(model, feeds, rtol=1e-5, atol=1e-5)


def test_softmax_no_transpose():
    """On a channels-last value, Softmax over channels works in place: no transpose."""
    model, feeds = sandwich("Softmax", attrs={"axis": 1}, opset=13)
    converted = onnx2flax.convert(model)
    x = np.moveaxis(feeds["x"], 1, -1)
    jaxpr = str(jax.make_jaxpr(converted.module.apply)(converted.variables, x))
    assert "transpose" not in jaxpr
    assert_codegen_matches(converted, feeds)


def test_gelu_rejects_unknown_approximation():
    model = node_model("Gelu", {"x": X}, attrs={"approximate": "sigmoid"}, opset=20)
    with pytest.raises(onnx2flax.errors.InvalidModelError, match="approximate"):
        onnx2flax.convert(model).run({"x": X})
