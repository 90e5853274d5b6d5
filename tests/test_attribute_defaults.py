"""Attribute defaults: normalize fills in the ONNX schema's, per the node's opset."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx2flax import ops  # noqa: F401  (registers the handlers)
from onnx2flax._pipeline.fold import node_proto
from onnx2flax._pipeline.normalize import normalize
from onnx2flax._core.registry import _REGISTRY, schema_defaults


def _graph(node, opset, domain=""):
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [2, 3])],
                              [helper.make_tensor_value_info("y", 1, None)])
    return normalize(helper.make_model(graph, opset_imports=[helper.make_opsetid(domain, opset)]),
                     None)


def test_schema_defaults_are_filled_for_the_nodes_opset():
    old = _graph(helper.make_node("Softmax", ["x"], ["y"]), 11).nodes[0]
    new = _graph(helper.make_node("Softmax", ["x"], ["y"]), 13).nodes[0]
    assert old.attrs == {"axis": 1} and new.attrs == {"axis": -1}


def test_given_attributes_win_and_the_reference_sees_the_schema_default():
    node = _graph(helper.make_node("LeakyRelu", ["x"], ["y"], alpha=0.5), 16).nodes[0]
    assert node.attrs == {"alpha": 0.5}
    node = _graph(helper.make_node("LeakyRelu", ["x"], ["y"]), 16).nodes[0]
    assert node.attrs == {"alpha": 0.01}  # the spec's decimal, not float32's 0.0099...
    # The NodeProto made for the reference evaluator states the default explicitly, as the
    # float32 the schema itself stores.
    (alpha,) = node_proto(node, {"": 16}).attribute
    schema = onnx.defs.get_schema("LeakyRelu", 16).attributes["alpha"].default_value
    assert (alpha.name, alpha.f) == ("alpha", schema.f)


def test_ops_onnx_does_not_define_get_their_handlers_defaults():
    node = _graph(helper.make_node("QuickGelu", ["x"], ["y"], domain="com.microsoft"), 1,
                  "com.microsoft").nodes[0]
    assert node.attrs == {"alpha": 1.702}
    node = _graph(helper.make_node("LayerNormalization", ["x", "x"], ["y"]), 13).nodes[0]
    assert node.attrs == {"axis": -1, "epsilon": 1e-5}  # onnx defines it from opset 17


def test_handler_defaults_never_restate_the_schema():
    """A handler's ``defaults`` are for what the op's schema at its first version lacks."""
    for (domain, op), specs in _REGISTRY.items():
        for spec in specs:
            given = set(schema_defaults(domain, op, spec.since))
            assert not set(spec.defaults) & given, (domain, op, spec.since)


def test_schema_slips_are_not_filled():
    """GRU-1's default direction is misspelt, RNN's activations list two functions."""
    weights = [numpy_helper.from_array(np.zeros(s, np.float32), n)
               for n, s in (("w", (1, 6, 3)), ("r", (1, 6, 2)))]
    for op, opset, slip in (("GRU", 1, "direction"), ("RNN", 14, "activations")):
        node = helper.make_node(op, ["x", "w", "r"], ["", "y"], hidden_size=2)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [2, 1, 3])],
                                  [helper.make_tensor_value_info("y", 1, None)], weights)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        assert slip not in normalize(model, None).nodes[0].attrs
