"""Per-node comparison: every intermediate tensor against onnxruntime, first divergence.

A handler made deliberately wrong (monkeypatched in the registry) must be the node the report
names; a correct conversion must match at every node, channels-last intermediates included.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnx2flax
from onnx2flax._core import registry as _registry
from onnx2flax import cli
from tests.helpers import make_model


def _skewed(monkeypatch, op_type: str, delta: float = 1e-2) -> None:
    """Make onnx2flax's handler for ``op_type`` add ``delta`` to its output."""
    key = ("", op_type)
    specs = [dataclasses.replace(s, fn=lambda ctx, *xs, _fn=s.fn: _fn(ctx, *xs) + delta)
             for s in _registry._REGISTRY[key]]
    monkeypatch.setitem(_registry._REGISTRY, key, specs)


def _conv_net(rng) -> tuple:
    """x -> Conv -> Relu -> MaxPool -> Conv -> (+ skip) -> Sigmoid -> GlobalAveragePool ->
    Flatten -> Gemm: channels-last intermediates, a residual add and a classifier head."""
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2
    fc = rng.standard_normal((5, 8)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "p1"], ["s"], name="skip"),
        helper.make_node("Sigmoid", ["s"], ["g"], name="gate"),
        helper.make_node("GlobalAveragePool", ["g"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc"], ["y"], name="fc", transB=1),
    ]
    model = make_model(nodes, [("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                       [("y", TensorProto.FLOAT, [2, 5])], {"w1": w1, "w2": w2, "fc": fc})
    feeds = {"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)}
    return model, feeds


def test_clean_model_matches_at_every_node(rng):
    model, feeds = _conv_net(rng)
    report = onnx2flax.compare(model, feeds, per_node=True)
    assert report.ok
    assert report.first_divergence is None
    assert {c.name for c in report.nodes} == {"c1", "r1", "p1", "c2", "s", "g", "gap", "flat", "y"}
    assert all(c.ok for c in report.nodes)
    # Intermediates come back in ONNX order (NCHW), though held channels-last.
    assert next(c for c in report.nodes if c.name == "c2").shape == (2, 8, 4, 4)
    assert "all 9 intermediate tensors match" in report.table()


@pytest.mark.parametrize("op_type, node, tensor", [("Relu", "relu1", "r1"),
                                                   ("Add", "skip", "s")])
def test_first_divergence_names_the_wrong_node(rng, monkeypatch, op_type, node, tensor):
    model, feeds = _conv_net(rng)
    _skewed(monkeypatch, op_type)
    report = onnx2flax.compare(model, feeds, per_node=True)
    assert not report.ok
    first = report.first_divergence
    assert first is not None
    assert (first.name, first.node) == (tensor, f"{op_type} node {node!r}")
    assert first.max_abs == pytest.approx(1e-2, rel=1e-3)
    # Everything before it matched.
    before = report.nodes[:report.nodes.index(first)]
    assert before and all(c.ok for c in before)
    assert f"first divergence at {op_type} node {node!r}" in report.table()


def test_cli_per_node(tmp_path, rng, monkeypatch, capsys):
    model, _ = _conv_net(rng)
    path = tmp_path / "net.onnx"
    path.write_bytes(model.SerializeToString())
    assert cli.main(["compare", str(path), "--per-node"]) == 0
    assert "all 9 intermediate tensors match" in capsys.readouterr().out
    _skewed(monkeypatch, "Sigmoid")
    assert cli.main(["compare", str(path), "--per-node"]) == 1
    assert "first divergence at Sigmoid node 'gate', tensor 'g'" in capsys.readouterr().out


FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "per_node" / "resnet_dynamo"


def _compare_fixture(**kwargs):
    """Per-node comparison of the dynamo ResNet-style fixture (``fixtures/per_node/make.py``)."""
    feeds = dict(np.load(FIXTURE.with_suffix(".npz")))
    try:
        return onnx2flax.compare(FIXTURE.with_suffix(".onnx"), feeds, per_node=True, **kwargs)
    except onnx2flax.UnsupportedOpError as exc:  # ops other branches add (CastLike, ReduceMean)
        pytest.xfail(str(exc))


def test_dynamo_resnet_style_per_node():
    report = _compare_fixture()
    assert report.ok, report.table()
    assert report.first_divergence is None, report.table()
    four_d = [c for c in report.nodes if len(c.shape) == 4]
    assert len(four_d) >= 8  # channels-last inside, compared in ONNX order
    assert any(c.shape == (2, 8, 4, 4) for c in four_d)
    assert all(c.ok for c in report.nodes)


def test_dynamo_resnet_style_first_divergence(monkeypatch):
    # The first Relu in graph order is the stem's: a skewed Relu must be caught there.
    _skewed(monkeypatch, "Relu")
    report = _compare_fixture()
    first = report.first_divergence
    assert first is not None and first.node.startswith("Relu node")
    assert first is next(c for c in report.nodes if c.node.startswith("Relu node"))
    assert first.shape == (2, 8, 8, 8)
    assert first.max_abs == pytest.approx(1e-2, rel=1e-3)
