"""NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import after_conv, check_graph, node_model

import onnx2flax
from onnx2flax.errors import OnnxConversionError

RNG = np.random.default_rng(0)
C = 4

# (weights, ignore_index): ignore_index 2 is a class, -7 is outside [0, C).
_WEIGHTING = [(False, None), (True, None), (False, 2), (True, 2), (True, -7)]


def _case(op, shape, reduction, weighted, ignore_index, opset, log_prob=False):
    """One loss node on scores ``shape`` (class axis 1); ignored targets are planted."""
    x = RNG.standard_normal(shape).astype(np.float32)
    if op == "NegativeLogLikelihoodLoss":
        x = x - np.log(np.exp(x).sum(1, keepdims=True))  # log-probabilities
    target = RNG.integers(0, C, (shape[0],) + shape[2:]).astype(np.int64)
    if ignore_index is not None:
        target.reshape(-1)[::3] = ignore_index
    attrs = {"reduction": reduction}
    if ignore_index is not None:
        attrs["ignore_index"] = ignore_index
    consts = {"w": RNG.uniform(0.5, 2, C).astype(np.float32)} if weighted else None
    model = node_model(op, {"x": x, "t": target}, attrs=attrs, consts=consts, opset=opset,
                       outputs=2 if log_prob else 1, out_dtypes=[np.float32] * 2)
    return model, {"x": x, "t": target}


@pytest.mark.parametrize("weighted, ignore_index", _WEIGHTING)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("op, shape, opset", [
    ("NegativeLogLikelihoodLoss", (3, C), 12),
    ("NegativeLogLikelihoodLoss", (2, C, 3, 2), 22),
    ("SoftmaxCrossEntropyLoss", (2, C, 3), 13),
])
def test_losses(op, shape, opset, reduction, weighted, ignore_index):
    check_graph(*_case(op, shape, reduction, weighted, ignore_index, opset))


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_sce_log_prob_output(reduction):
    check_graph(*_case("SoftmaxCrossEntropyLoss", (2, C, 2, 3), reduction, True, 1, 13, log_prob=True))


def test_sce_on_channels_last_scores():
    """Scores held channels-last (after a Conv) are taken in ONNX order."""
    target = RNG.integers(0, 3, (2, 4, 5)).astype(np.int64)
    model, feeds = after_conv([("SoftmaxCrossEntropyLoss", ["t"], {"reduction": "none"},
                                np.float32)], consts={"t": target}, opset=13)
    check_graph(model, feeds)


def test_unknown_reduction_is_refused():
    model, feeds = _case("SoftmaxCrossEntropyLoss", (2, C), "max", False, None, 13)
    with pytest.raises(OnnxConversionError, match="reduction"):
        onnx2flax.convert(model).run(feeds)
