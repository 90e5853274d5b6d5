"""Stage 3: decide what becomes a Flax layer or parameter, and where it lives in the tree.

Weighted nodes (a registered ``params`` builder and constant weights) become layers named
after their weights (``layer1.0.conv1.weight`` -> ``('layer1', '0', 'conv1')``); other float
initializers read by the computation become free parameters (positional embeddings, class
tokens). Integer and scalar constants stay NumPy constants of the trace, and so do float
constants only needed at conversion time (a tf2onnx ``Max(Cast(shape), [1e9, -1e9])`` clamping
a Slice end): see ``_conversion_time``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .._core.boundary import spatial_inputs
from .._core.graph import Graph, Node, is_float_weight, is_weight_dequantization
from .._core.limits import Limits
from .._core.guard import guarded
from .._core.registry import lookup
from .load import to_device

Path = tuple[str, ...]

#: Trailing name parts that name a tensor of a layer rather than the layer itself.
_LEAF_SUFFIXES = {"weight", "bias", "kernel", "w", "b", "gamma", "beta", "running_mean",
                  "running_var", "scale", "mean", "var", "moving_mean", "moving_variance"}
_ANONYMOUS = re.compile(r"^(onnx::|val_|_v_|const|\d+$|_)", re.IGNORECASE)


@dataclass
class LayerPlan:
    """A weighted node: its Flax path and its variables in Flax layout.

    ``sources`` maps a leaf to the ONNX tensor it was made from and the function turning the
    Flax-layout leaf back into that tensor's layout (see ``onnx2flax.torch_state``).
    """

    path: Path
    params: dict[str, np.ndarray]
    batch_stats: dict[str, np.ndarray] = field(default_factory=dict)
    sources: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = field(default_factory=dict)


@dataclass(eq=False)
class Program:
    """Everything the Flax module needs: the graph, the layer and parameter plan.

    ``spatial_inputs`` are inputs taken channels-last when the module is channels-last
    (``_core.boundary.spatial_inputs``).
    ``bounds`` are the user's static bounds by node or first-output name (``bounds``).
    """

    graph: Graph
    layers: dict[Node, LayerPlan]
    free_params: dict[str, Path]
    spatial_inputs: frozenset[str]
    bounds: dict[str, int] = field(default_factory=dict)
    #: The budget of each trace, and the bytes the model stores (see ``Limits``).
    limits: Limits = field(default_factory=Limits)
    stored_bytes: int = 0

    def bound_of(self, node: Node) -> int | None:
        """The static bound given for ``node`` (by its name or first output), if any."""
        for name in (node.name, *node.outputs[:1]):
            if name in self.bounds:
                return self.bounds[name]
        return None

    def variables(self, progress: Callable[[int, int], None] | None = None) -> dict[str, dict]:
        """``{'params': ..., 'batch_stats': ...}`` as nested dicts of ``jax.Array``.

        Each array is copied once into its device buffer (see ``load.to_device``).
        ``progress(done, total)`` is called after each array.
        """
        leaves = [("params", layer.path + (leaf,), value)
                  for layer in self.layers.values() for leaf, value in layer.params.items()]
        leaves += [("batch_stats", layer.path + (leaf,), value)
                   for layer in self.layers.values() for leaf, value in layer.batch_stats.items()]
        leaves += [("params", path, self.graph.constants[name])
                   for name, path in self.free_params.items()]
        out: dict[str, dict] = {"params": {}}
        for done, (collection, path, value) in enumerate(leaves, 1):
            _insert(out.setdefault(collection, {}), path, value)
            if progress is not None:
                progress(done, len(leaves))
        return out


def _insert(tree: dict, path: Path, value: np.ndarray) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = to_device(value)


#: Deepest parameter tree: the leading parts of a name with more parts are joined by ``_``
#: (JAX flattens trees recursively).
_MAX_DEPTH = 32
#: Top-level names Flax reads as collections (``params['params']`` is refused by ``apply``).
_RESERVED = frozenset(("params", "batch_stats", "intermediates", "cache"))


def _parts(name: str) -> list[str]:
    parts = [re.sub(r"[^A-Za-z0-9_\-]", "_", p) for p in re.split(r"[./:]", name)]
    parts = [p for p in parts if p]
    cut = len(parts) - _MAX_DEPTH + 1
    return ["_".join(parts[:cut]), *parts[cut:]] if cut > 1 else parts


class _Names:
    """Hands out unique paths: no path is both a leaf and a prefix of another."""

    def __init__(self) -> None:
        self._leaves: set[Path] = set()
        self._prefixes: set[Path] = set()
        self._suffixes: dict[Path, int] = {}  # the last _N tried per path: N alike names stay linear

    def take(self, path: Path) -> Path:
        if path[0] in _RESERVED:
            path = (f"{path[0]}_",) + path[1:]
        # under a leaf (a free 'fc.bias' next to layer 'fc'): join the parts below it
        # ('fc_bias'), as renaming only the last part could never succeed
        cut = next((i for i in range(1, len(path)) if path[:i] in self._leaves), None)
        if cut is not None:
            path = path[:cut - 1] + ("_".join(path[cut - 1:]),)
        candidate, n = path, self._suffixes.get(path, 0)
        if n:
            candidate = path[:-1] + (f"{path[-1]}_{n}",)
        while candidate in self._leaves or candidate in self._prefixes:
            n += 1
            candidate = path[:-1] + (f"{path[-1]}_{n}",)
        self._suffixes[path] = n
        self._leaves.add(candidate)
        self._prefixes.update(candidate[:i] for i in range(1, len(candidate)))
        return candidate


def _layer_path(node: Node, weight_name: str) -> Path:
    parts = _parts(weight_name)
    if parts and not _ANONYMOUS.match(weight_name):
        if len(parts) > 1 and parts[-1].lower() in _LEAF_SUFFIXES:
            parts = parts[:-1]
        return tuple(parts)
    return ("_".join(_parts(node.name)) or node.op_type,)


def plan(graph: Graph, bounds: dict[str, int] | None = None) -> Program:
    """Plan layers, free parameters and spatial inputs for ``graph``; ``bounds`` are kept
    for the handlers (checked by ``bounds.check_bounds``)."""
    names = _Names()
    layers: dict[Node, LayerPlan] = {}
    consumed: set[tuple[int, int]] = set()
    for node in graph.nodes:
        spec = lookup(node, graph.opsets)
        if spec is None or spec.params is None:
            continue
        weights = [graph.constants.get(i) if i else None for i in node.inputs]
        built = guarded(node, weights, spec.params, node, weights)
        if built is None:
            continue
        first = next(i for i, w in zip(node.inputs[1:], weights[1:]) if w is not None)
        path = names.take(_layer_path(node, graph.origins.get(first, first)))
        sources = {leaf: (node.inputs[k], inverse or _unchanged)
                   for leaf, (k, inverse) in built.get("sources", {}).items()}
        layers[node] = LayerPlan(path, built.get("params", {}), built.get("batch_stats", {}),
                                 sources)
        consumed.update((id(node), k) for k in range(1, len(node.inputs)))

    free: dict[str, Path] = {}
    conversion_time = _conversion_time(graph)
    for node in graph.nodes:
        spec = lookup(node, graph.opsets)
        static = spec.constant_inputs(len(node.inputs)) if spec else ()
        # Weights read inside If/Loop/Scan bodies (position None) are params too.
        reads = [*enumerate(node.inputs), *((None, n) for n in (n for sub in node.subgraphs() for n in sub.outer))]
        quantized = is_weight_dequantization(node, graph.constants)  # its inputs all params
        for k, name in reads:
            if (id(node), k) in consumed or k in static or name in free or (
                    name in conversion_time) or not (
                    is_float_weight(graph.constants.get(name))
                    or (quantized and name in graph.constants)):
                continue
            free[name] = names.take(tuple(_parts(graph.origins.get(name, name))) or ("param",))
    return Program(graph, layers, free, spatial_inputs(graph), dict(bounds or {}))


def _conversion_time(graph: Graph) -> set[str]:
    """Values every use of which is needed at conversion time: read at a handler's constant
    position, or by a node all of whose used outputs are such values (transitively, so a
    shape computed through Cast / Max / Where stays foldable). One reverse walk; graph
    outputs and subgraph (If/Loop/Scan) reads are uses that are not."""
    uses = graph.read_counts()
    static_uses: dict[str, int] = {}
    for node in reversed(graph.nodes):
        used = [o for o in node.outputs if o and uses.get(o)]
        if used and all(static_uses.get(o, 0) == uses[o] for o in used):
            positions = range(len(node.inputs))
        else:
            spec = lookup(node, graph.opsets)
            positions = spec.constant_inputs(len(node.inputs)) if spec else ()
        for k in positions:
            name = node.inputs[k] if k < len(node.inputs) else ""
            if name:
                static_uses[name] = static_uses.get(name, 0) + 1
    return {name for name, count in static_uses.items() if count == uses[name]}


def _unchanged(value: np.ndarray) -> np.ndarray:
    return value
