"""Flax variables back to the ONNX initializers they came from: a PyTorch ``state_dict``.

When the exporter kept the parameter names (both torch exporters do for ``nn.Module``
parameters and buffers), the initializer names are the ``state_dict`` keys, so a model
fine-tuned in Flax loads back into PyTorch::

    state = to_torch_state_dict(converted, variables)
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})

Every layout change made at conversion is undone: conv kernels HWIO -> OIHW, ConvTranspose
kernels (flip, groups), Dense kernels ``[in, out]`` -> ``[out, in]`` where the ONNX weight
was transposed (Gemm ``transB=1``, or a ``Transpose`` of the weight folded at conversion),
Gemm ``alpha`` / ``beta`` scaling. Weights computed from an initializer by pure data
movement (Transpose, Reshape, Slice, Squeeze... folded at conversion) are written back into
that initializer, element by element.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._core.graph import Graph, is_float_weight
from ._pipeline.fold import fold
from .converter import ConvertedModel

__all__ = ["to_torch_state_dict"]


def to_torch_state_dict(converted: ConvertedModel,
                        variables: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """``{initializer name: array}`` in ONNX (= PyTorch) layout and dtype, from ``variables``
    (``{'params': ..., 'batch_stats': ...}`` shaped like ``converted.variables``; default:
    ``converted.variables``). A collection missing from ``variables`` is skipped, so
    ``{'params': grads}`` maps gradients.

    Initializers only partly covered by Flax leaves keep their original values elsewhere.
    Leaves that cannot be mapped back (e.g. a Gemm bias broadcast from a scalar) are left
    out with a warning.
    """
    variables = converted.variables if variables is None else variables
    program = converted._program
    graph = program.graph
    state: dict[str, np.ndarray] = {}
    lost: list[str] = []

    def put(path, tensor: str, value: np.ndarray) -> None:
        if not _write_back(graph, state, tensor, value):
            lost.append("/".join(path))

    for layer in program.layers.values():
        for collection, leaves in (("params", layer.params), ("batch_stats", layer.batch_stats)):
            if collection not in variables:
                continue
            for leaf in leaves:
                path = layer.path + (leaf,)
                if leaf not in layer.sources:
                    lost.append("/".join(path))
                    continue
                tensor, inverse = layer.sources[leaf]
                put(path, tensor, inverse(np.asarray(_get(variables[collection], path))))
    if "params" in variables:
        for tensor, path in program.free_params.items():
            put(path, tensor, np.asarray(_get(variables["params"], path)))
    if lost:
        warnings.warn(f"{len(lost)} Flax variable(s) cannot be mapped back to an ONNX "
                      f"initializer and are left out: {lost}", stacklevel=2)
    return state


def _get(tree: Mapping, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def _write_back(graph: Graph, state: dict[str, np.ndarray], tensor: str, value: np.ndarray) -> bool:
    """Store ``value`` (ONNX layout of ``tensor``) into ``state`` under the initializer
    ``tensor`` is, or was folded from. False when that is not possible."""
    if tensor in graph.initializers:
        state[tensor] = np.array(value, dtype=graph.constants[tensor].dtype).reshape(
            graph.constants[tensor].shape)
        return True
    origin = graph.origins.get(tensor)
    if origin is None or origin not in graph.initializers:
        return False
    where = _element_map(graph, tensor, origin)
    if where is None:
        return False
    base = graph.constants[origin]
    target = state.setdefault(origin, base.copy())
    target.reshape(-1)[where.reshape(-1)] = value.reshape(-1).astype(base.dtype)
    return True


def _element_map(graph: Graph, tensor: str, origin: str) -> np.ndarray | None:
    """For ``tensor`` folded from initializer ``origin`` by data movement only: the flat index
    into ``origin`` of each of its elements, found by folding the same nodes on indices.
    ``None`` when the fold was not pure data movement (arithmetic, several weights)."""
    index = _fold_indices(graph, tensor, origin, {})
    if index is None or index.shape != graph.constants[tensor].shape:
        return None
    flat = graph.constants[origin].reshape(-1)
    index = index.astype(np.int64)
    if (index.size and (index.min() < 0 or index.max() >= flat.size)) or \
            len(np.unique(index)) != index.size:
        return None
    # The index trace must reproduce the folded tensor exactly.
    if not np.array_equal(flat[index], graph.constants[tensor], equal_nan=True):
        return None
    return index


def _fold_indices(graph: Graph, tensor: str, origin: str, memo: dict) -> np.ndarray | None:
    if tensor == origin:
        return np.arange(graph.constants[origin].size, dtype=np.int64).reshape(
            graph.constants[origin].shape)
    if tensor in memo:
        return memo[tensor]
    node = graph.folded.get(tensor)
    if node is None:
        return None
    inputs = []
    for name in node.inputs:
        if name and graph.origins.get(name, name) == origin and is_float_weight(graph.constants.get(name)):
            value = _fold_indices(graph, name, origin, memo)
            if value is None:
                return None
        else:
            value = graph.constants.get(name) if name else None
        inputs.append(value)
    try:
        outs = fold(node, inputs, graph.opsets)
    except Exception:  # the op does not accept integer data: not pure data movement
        return None
    for name, value in zip(node.outputs, outs):
        memo[name] = value
    return memo.get(tensor)


