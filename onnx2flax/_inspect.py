"""``inspect``: what a model holds, and what onnx2flax makes of it, without converting."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


from . import ops  # noqa: F401  (registers handlers)
from ._graph import Graph, TensorSpec
from ._limits import charging
from ._load import ModelLike, load_model
from ._normalize import normalize
from ._registry import lookup

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

    @property
    def unsupported(self) -> list[str]:
        return [f"{d + '::' if d else ''}{op}" for (d, op), (_, ok) in self.ops.items() if not ok]

    def text(self) -> str:
        spec = lambda s: f"  {s.name}: {s.dtype.name}{list(s.shape) if s.shape is not None else ' (unknown shape)'}"  # noqa: E731
        lines = [f"producer: {self.producer or 'unknown'}",
                 "opsets: " + ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in sorted(self.opsets.items())),
                 "inputs:", *map(spec, self.inputs), "outputs:", *map(spec, self.outputs),
                 f"parameters: {self.parameters:,} (float weights)",
                 "ops (after constant folding):"]
        for (d, op), (count, ok) in sorted(self.ops.items(), key=lambda kv: -kv[1][0]):
            lines.append(f"  {(d + '::') if d else ''}{op:<24} {count:>5}  "
                         f"{'supported' if ok else 'NOT SUPPORTED'}")
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
    _count(graph, counts)
    ops_ = {key: (n, lookup(key[0], key[1], graph.opsets.get(key[0], 1)) is not None)
            for key, n in counts.items()}
    params = sum(int(v.size) for v in graph.constants.values() if v.dtype.kind == "f" and v.size > 1)
    producer = " ".join(p for p in (proto.producer_name, proto.producer_version) if p)
    return ModelSummary(producer, dict(graph.opsets), graph.inputs, graph.outputs, ops_, params)


def _count(graph: Graph, counts: Counter) -> None:
    for node in graph.nodes:
        counts[node.key] += 1
        for sub in node.subgraphs():
            _count(sub, counts)


