"""``inspect``: what a model holds, and what onnx2flax makes of it, without converting."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


from . import ops  # noqa: F401  (registers handlers)
from ._core.graph import Node, TensorSpec, is_float_weight
from ._core.limits import charging
from ._core.registry import lookup
from ._pipeline.inputs import static_graph_inputs
from ._pipeline.load import ModelLike, load_model
from ._pipeline.normalize import normalize

__all__ = ["ModelSummary", "summarize"]


@dataclass
class ModelSummary:
    """Op counts (with support), inputs/outputs and the float weight count of a model."""

    producer: str
    opsets: dict[str, int]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    ops: dict[tuple[str, str], tuple[int, bool]]
    parameters: int
    #: Inputs whose values decide shapes, axes or branches (``run`` specializes on them).
    deciding: list[str] = field(default_factory=list)

    @property
    def unsupported(self) -> list[str]:
        return [f"{d + '::' if d else ''}{op}" for (d, op), (_, ok) in self.ops.items() if not ok]

    def text(self) -> str:
        spec = lambda s: f"  {s.name}: {s.dtype.name}{list(s.shape) if s.shape is not None else ' (unknown shape)'}"  # noqa: E731
        lines = [f"producer: {self.producer or 'unknown'}",
                 "opsets: " + ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in sorted(self.opsets.items())),
                 "inputs:", *map(spec, self.inputs), "outputs:", *map(spec, self.outputs),
                 *([f"inputs deciding shapes, axes or branches: {self.deciding} (run "
                    "specializes on their values; constants= / --const freezes them)"]
                   if self.deciding else []),
                 f"parameters: {self.parameters:,} (float weights)",
                 "ops (after constant folding), by domain:"]
        for domain in sorted({d for d, _ in self.ops}):  # ai.onnx ('') first
            opset = self.opsets.get(domain)
            lines.append(f"  {domain or 'ai.onnx'}"
                         f"{f' (opset {opset})' if opset is not None else ''}:")
            for (_, op), (count, ok) in sorted(
                    ((k, v) for k, v in self.ops.items() if k[0] == domain),
                    key=lambda kv: (-kv[1][0], kv[0][1])):
                lines.append(f"    {op:<32} {count:>5}  {'supported' if ok else 'NOT SUPPORTED'}")
        lines.append("all ops supported" if not self.unsupported
                     else f"unsupported: {', '.join(self.unsupported)}")
        return "\n".join(lines)

    __str__ = text


def summarize(model: ModelLike) -> ModelSummary:
    """Summarize ``model`` (a path, bytes or ModelProto)."""
    proto, base_dir = load_model(model)
    with charging(None):  # one budget for the whole model, as convert's
        graph = normalize(proto, base_dir)
    counts: Counter = Counter()
    first: dict[tuple[str, str], Node] = {}
    for node, _ in graph.walk():
        counts[node.key] += 1
        first.setdefault(node.key, node)
    ops_ = {key: (n, lookup(first[key], graph.opsets) is not None) for key, n in counts.items()}
    params = sum(int(v.size) for v in graph.constants.values() if is_float_weight(v))
    producer = " ".join(p for p in (proto.producer_name, proto.producer_version) if p)
    return ModelSummary(producer, dict(graph.opsets), graph.inputs, graph.outputs, ops_,
                        params, static_graph_inputs(graph, {}))
