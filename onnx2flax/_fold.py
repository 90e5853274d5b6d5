"""Evaluate nodes whose inputs are all known, in NumPy, with ONNX's reference evaluator.

Used at conversion time (constant subgraphs, weights computed by ConstantOfShape...) and at
trace time (shape subgraphs: Shape -> Gather -> Concat -> Reshape), so integer shape
arithmetic keeps ONNX's int64 semantics instead of JAX's default int32.
"""

from __future__ import annotations

import weakref

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator

from ._graph import Node
from ._load import MAX_ELEMENTS
from .errors import InvalidModelError, ResourceLimitError, node_label

# Ops that must never be folded: random, or with subgraphs / side channels.
_NEVER_FOLD = {
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
    "Bernoulli", "If", "Loop", "Scan", "Dropout", "SequenceConstruct", "SequenceAt",
    "SequenceInsert", "SequenceEmpty", "SplitToSequence", "ConcatFromSequence",
    "SequenceLength", "SequenceErase", "Optional", "OptionalGetElement", "OptionalHasElement",
}

# Per node (weakly: a node's id can be reused once its model is gone) and opsets.
_evaluators: weakref.WeakKeyDictionary[Node, dict[tuple, ReferenceEvaluator]] = \
    weakref.WeakKeyDictionary()


def foldable(node: Node) -> bool:
    return node.domain in ("", "ai.onnx") and node.op_type not in _NEVER_FOLD \
        and node.proto is not None


def fold(node: Node, inputs: list[np.ndarray | None], opsets: dict[str, int]) -> list[np.ndarray]:
    """Run one node on NumPy inputs (``None`` for omitted optional inputs)."""
    _check_output_size(node, inputs)
    cache = _evaluators.setdefault(node, {})
    key = tuple(sorted(opsets.items()))
    evaluator = cache.get(key)
    if evaluator is None:
        try:
            evaluator = ReferenceEvaluator(_as_graph(node), opsets=dict(opsets))
        except Exception as exc:
            raise InvalidModelError(
                f"{node_label(node.name, node.op_type)} cannot be evaluated: {exc}") from None
        cache[key] = evaluator
    feeds = {name: value for name, value in zip(node.inputs, inputs) if name and value is not None}
    try:
        outputs = evaluator.run(None, feeds)
    except (ResourceLimitError, MemoryError) as exc:
        raise ResourceLimitError(f"{node_label(node.name, node.op_type)}: {exc}") from None
    except Exception as exc:
        raise InvalidModelError(
            f"{node_label(node.name, node.op_type)} failed on constant inputs "
            f"{[None if v is None else v.shape for v in inputs]}: {type(exc).__name__}: {exc}"
        ) from None
    return [np.asarray(out) for out in outputs]


def _as_graph(node: Node) -> onnx.GraphProto:
    """``node`` alone in a graph: given a bare NodeProto the reference evaluator ignores
    ``opsets`` and runs the newest op version (Unsqueeze-13 for an opset-9 Unsqueeze)."""
    inputs = [onnx.ValueInfoProto(name=n) for n in dict.fromkeys(node.inputs) if n]
    outputs = [onnx.ValueInfoProto(name=n) for n in node.outputs if n]
    return onnx.helper.make_graph([node.proto], "fold", inputs, outputs)


def _check_output_size(node: Node, inputs: list[np.ndarray | None]) -> None:
    """Refuse, before allocating, ops whose output size comes from a value."""
    op = node.op_type
    shape = None
    if op == "ConstantOfShape" and inputs and inputs[0] is not None:
        shape = [int(d) for d in np.asarray(inputs[0]).reshape(-1)]
    elif op == "Expand" and len(inputs) == 2 and inputs[1] is not None:
        target = [int(d) for d in np.asarray(inputs[1]).reshape(-1)]
        data = list(np.shape(inputs[0]))
        n = max(len(target), len(data))
        target = [1] * (n - len(target)) + target
        data = [1] * (n - len(data)) + data
        shape = [max(a, b) if min(a, b) >= 0 else min(a, b) for a, b in zip(data, target)]
    elif op == "Tile" and len(inputs) == 2 and inputs[1] is not None:
        reps = [int(r) for r in np.asarray(inputs[1]).reshape(-1)]
        shape = [d * r for d, r in zip(np.shape(inputs[0]), reps)]
    elif op == "Range" and len(inputs) == 3 and all(v is not None for v in inputs):
        start, limit, delta = (np.asarray(v).item() for v in inputs)
        if delta == 0:
            raise InvalidModelError(f"{node_label(node.name, op)}: delta is zero")
        shape = [max(int(np.ceil((limit - start) / delta)), 0)]
    if shape is None:
        return
    if any(d < 0 for d in shape):
        raise InvalidModelError(f"{node_label(node.name, op)}: negative output dims {shape}")
    count = float(np.prod(shape, dtype=np.float64)) if shape else 1.0
    if count > MAX_ELEMENTS:
        raise ResourceLimitError(
            f"{node_label(node.name, op)} would create a tensor of shape {shape} "
            f"({count:.3g} elements, limit {MAX_ELEMENTS})")
