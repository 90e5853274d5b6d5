"""Static bounds for ops whose output size depends on the data: ``convert(bounds=...)``.

JAX traces a program for fixed shapes, so NonZero, NonMaxSuppression and Unique on run-time
inputs can only return a fixed number of results. The user gives that number per node,
``{name: N}`` with ``name`` the node's name or its first output's name; the handler then
returns results padded to ``N`` (see each handler for its padding).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from .._core.graph import Graph, Node
from .._core.registry import lookup
from ..errors import InvalidInputError

Bounds = Mapping[str, int]


def check_bounds(graph: Graph, bounds: Bounds | None) -> dict[str, int]:
    """``bounds`` as a plain dict, checked against ``graph`` (as normalize decoded it): every
    name must be the name or the first output of a node (in the graph or a subgraph, folded
    or not) whose op is bounded, each node named once, every ``N`` a non-negative int."""
    if not bounds:
        return {}
    if not isinstance(bounds, Mapping):
        raise InvalidInputError(f"bounds must be a dict of node or output name -> count, got "
                                f"{type(bounds).__name__}")
    nodes: dict[str, tuple[int, str, bool]] = {}  # name -> (node number, label, bounded)
    for key, node in enumerate(_decoded(graph)):
        spec = lookup(node, graph.opsets)
        label = f"{node.op_type} node {node.name!r}"
        for name in [node.name, *node.outputs[:1]]:
            if name:
                nodes.setdefault(name, (key, label, spec is not None and spec.bounded))
    out: dict[str, int] = {}
    seen: dict[int, str] = {}
    for name, n in bounds.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InvalidInputError(f"bounds[{name!r}] must be a non-negative int, got {n!r}")
        if name not in nodes:
            raise InvalidInputError(f"bounds names {name!r}, but the model has no node or node "
                                    "output of that name")
        key, label, bounded = nodes[name]
        if not bounded:
            raise InvalidInputError(
                f"bounds names {name!r}, a {label}; bounds apply only to ops whose output size "
                "depends on the data (NonZero, NonMaxSuppression, Unique)")
        if key in seen:
            raise InvalidInputError(f"bounds gives {label} twice ({seen[key]!r} and {name!r})")
        seen[key] = name
        out[name] = int(n)
    return out


def _decoded(graph: Graph) -> Iterator[Node]:
    """Every node of the model: those in ``graph`` and its subgraphs, then those normalize
    folded (a bound on a node computed at conversion is accepted, and not needed)."""
    yield from (node for node, _ in graph.walk())
    for g in graph.graphs():
        yield from dict.fromkeys(g.folded.values())
