"""Optimizer steps of ``ai.onnx.preview.training`` (Adagrad, Adam, Momentum) against the
ONNX reference evaluator (onnxruntime does not implement them)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_model
from onnx import helper
from onnx.reference import ReferenceEvaluator

import onnx2flax
from onnx2flax.errors import InvalidModelError

F = np.float32
DOMAIN = "ai.onnx.preview.training"
RNG = np.random.default_rng(0)
#: The optimizer states of each op, after X and G.
STATES = {"Adagrad": ["H"], "Adam": ["V", "H"], "Momentum": ["V"]}


def _model(op, shapes, attrs, name="step"):
    """One ``op`` node optimizing tensors of ``shapes``; returns ``(model, feeds)``."""
    groups = ["X", "G", *STATES[op]]
    inputs = ["R", "T"] + [f"{g}{i}" for g in groups for i in range(len(shapes))]
    outputs = [f"{g}{i}_new" for g in ["X", *STATES[op]] for i in range(len(shapes))]
    node = helper.make_node(op, inputs, outputs, domain=DOMAIN, name=name, **attrs)
    shape_of = {f"{g}{i}": s for g in groups for i, s in enumerate(shapes)}
    model = make_model([node], [("R", F, []), ("T", np.int64, [])]
                       + [(n, F, shape_of[n]) for n in inputs[2:]],
                       [(n, F, shape_of[n.removesuffix("_new")]) for n in outputs])
    model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    feeds = {"R": np.array(0.1, F)}
    for n in inputs[2:]:
        value = RNG.standard_normal(shape_of[n]).astype(F)
        feeds[n] = np.abs(value) if n.startswith("H") else value  # squared-gradient sums
    return model, feeds


def _check(model, feeds):
    expected = ReferenceEvaluator(model).run(None, feeds)
    got = onnx2flax.convert(model).run(feeds)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        # The outputs have X's dtype (the reference's single-tensor Adam returns float64).
        assert g.shape == e.shape and g.dtype == F, (g.shape, g.dtype, e.shape)
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op,attrs", [
    ("Adagrad", {}),
    ("Adagrad", {"norm_coefficient": 0.01, "decay_factor": 0.1, "epsilon": 1e-4}),
    ("Adam", {}),
    ("Adam", {"alpha": 0.8, "beta": 0.9, "epsilon": 1e-4, "norm_coefficient": 0.01,
              "norm_coefficient_post": 0.02}),
    ("Momentum", {"alpha": 0.9, "beta": 0.5, "mode": "standard", "norm_coefficient": 0.01}),
    ("Momentum", {"alpha": 0.9, "beta": 0.5, "mode": "nesterov", "norm_coefficient": 0.0}),
])
@pytest.mark.parametrize("shapes", [[(3,)], [(2, 3), (4,)]])
@pytest.mark.parametrize("t", [0, 3])
def test_optimizer_step(op, attrs, shapes, t):
    model, feeds = _model(op, shapes, attrs)
    _check(model, {**feeds, "T": np.array(t, np.int64)})


def test_momentum_bad_mode_is_refused():
    model, feeds = _model("Momentum", [(2,)], {"alpha": 0.9, "beta": 0.5, "mode": "heavy",
                                               "norm_coefficient": 0.0})
    with pytest.raises(InvalidModelError, match="Momentum node 'step'.*mode must be"):
        onnx2flax.convert(model).run({**feeds, "T": np.array(1, np.int64)})


def test_momentum_without_required_attribute_is_refused():
    model, feeds = _model("Momentum", [(2,)], {"beta": 0.5, "mode": "standard",
                                               "norm_coefficient": 0.0})
    with pytest.raises(InvalidModelError, match="Momentum node 'step'.*'alpha'"):
        onnx2flax.convert(model).run({**feeds, "T": np.array(1, np.int64)})


def test_unequal_input_groups_are_refused():
    model, feeds = _model("Adam", [(2,)], {})
    node = model.graph.node[0]
    del node.input[-1]  # no H
    with pytest.raises(InvalidModelError, match="Adam node 'step'.*4 groups"):
        onnx2flax.convert(model).run({**feeds, "T": np.array(1, np.int64)})
