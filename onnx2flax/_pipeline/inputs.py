"""Graph inputs given values or shapes: ``convert(input_shapes=, constants=)``, and the
inputs ``run`` specializes on (those whose values decide shapes, axes or branches).

JAX needs shapes at trace time, so a graph input that reaches a shape-like position
(Reshape's ``shape``, Unsqueeze's ``axes``, TopK's ``k``, a Loop's trip count...) cannot be
traced: :meth:`ConvertedModel.run <onnx2flax.ConvertedModel.run>` converts the model again
with such inputs frozen to the values given (as ``constants=`` does), once per distinct
value, and keeps the last :data:`MAX_SPECIALIZATIONS` of these conversions.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .._core.boundary import check_feed
from .._core.graph import Graph, Node, TensorSpec
from .._core.registry import lookup
from ..errors import InvalidInputError

#: Specializations (one conversion and compilation each) a converted model keeps; the least
#: recently used one is dropped beyond this.
MAX_SPECIALIZATIONS = 32

#: Ops that read only their input's shape, never its values.
_SHAPE_ONLY = {"Shape", "Size"}
#: Inputs worth binding beyond the handlers' ``static_inputs``: a known trip count and
#: initial condition give a Loop's scan outputs a static length (a run-time one cannot be
#: traced), and let a Loop that carries sequences be unrolled.
_BIND_ALSO = {"Loop": (0, 1)}


def apply_given(inputs: list[TensorSpec], constants: dict[str, np.ndarray],
                input_shapes: Mapping[str, Sequence[int]] | None,
                frozen: Mapping[str, Any] | None) -> list[TensorSpec]:
    """The graph's input specs after ``input_shapes`` fixed their dims and ``frozen`` inputs
    became constants (added to ``constants``, in the declared dtype)."""
    names = [s.name for s in inputs]
    for what, given in (("input_shapes", input_shapes), ("constants", frozen)):
        if given is not None and not isinstance(given, Mapping):
            raise InvalidInputError(f"{what} must be a dict of graph input name -> "
                                    f"{'shape' if what == 'input_shapes' else 'value'}, got "
                                    f"{type(given).__name__}; the model's inputs are {names}")
        unknown = sorted(set(given or ()) - set(names))
        if unknown:
            raise InvalidInputError(f"{what} names unknown graph input(s) {unknown}; the "
                                    f"model's inputs are {names}")
    out = []
    for spec in inputs:
        if input_shapes and spec.name in input_shapes:
            spec = replace(spec, shape=_given_shape(spec, input_shapes[spec.name]))
        if frozen and spec.name in frozen:
            constants[spec.name] = _frozen_value(spec, frozen[spec.name])
            continue
        out.append(spec)
    return out


def _given_shape(spec: TensorSpec, shape: Any) -> tuple[int, ...]:
    what = f"input_shapes[{spec.name!r}]"
    if spec.sequence or spec.optional:
        raise InvalidInputError(f"{what}: input {spec.name!r} is a {spec.kind}; input_shapes "
                                "fixes the shapes of tensor inputs only")
    try:
        if isinstance(shape, (str, bytes)):
            raise TypeError
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{what} must be a sequence of ints, got {shape!r}") from None
    if any(d < 0 or d != s for d, s in zip(dims, shape)):
        raise InvalidInputError(f"{what} must be non-negative ints, got {list(shape)}")
    if spec.shape is not None:
        if len(dims) != len(spec.shape):
            raise InvalidInputError(f"{what} = {list(dims)} has rank {len(dims)}; input "
                                    f"{spec.name!r} is declared {list(spec.shape)} (rank "
                                    f"{len(spec.shape)})")
        for axis, (want, got) in enumerate(zip(spec.shape, dims)):
            if isinstance(want, int) and want != got:
                raise InvalidInputError(f"{what} = {list(dims)}: dim {axis} of input "
                                        f"{spec.name!r} is declared {want} "
                                        f"(shape {list(spec.shape)})")
    return dims


def _frozen_value(spec: TensorSpec, value: Any) -> np.ndarray:
    if spec.sequence or spec.optional:
        raise InvalidInputError(f"constants[{spec.name!r}]: input {spec.name!r} is a "
                                f"{spec.kind}; constants freezes tensor inputs only")
    what = f"constants[{spec.name!r}]"
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what} is not an array: {exc}") from None
    # Python numbers and lists take the declared dtype when of its kind (ints for a float
    # input too); arrays must be of its family.
    if not hasattr(value, "dtype") and spec.dtype is not None \
            and np.can_cast(array.dtype, spec.dtype, "same_kind"):
        array = array.astype(spec.dtype)
    try:
        check_feed(spec, array, False)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{what}: {exc}") from None
    return array if spec.dtype is None else array.astype(spec.dtype, copy=False)


def static_graph_inputs(graph: Graph, bounds: Mapping[str, int],
                        exact_sizes: bool = False) -> list[str]:
    """The inputs of ``graph`` (as normalize decoded it: frozen inputs are constants; tensors
    only) whose values a top-level node needs at conversion time: read at a position its
    handler declares static, by a bounded op without a bound in ``bounds`` (with
    ``exact_sizes``; else that op asks for a bound), by a Loop's trip count or condition, or
    by an If's condition when the input is not a float tensor (a mode flag such as a sample
    rate: each value traces only its own branch) or the If gives sequences or optionals
    (whose lengths ``lax.cond`` cannot select). Directly or through other nodes, except
    through Shape and Size, which read no values."""
    static, conditions = [], []
    for node in graph.nodes:
        spec = lookup(node, graph.opsets)
        positions = (spec.static_inputs if spec else ()) + _BIND_ALSO.get(node.op_type, ())
        if exact_sizes and spec is not None and spec.bounded \
                and not any(n in bounds for n in (node.name, *node.outputs[:1])):
            positions = spec.constant_inputs(len(node.inputs))
        if node.op_type == "If" and node.inputs and node.inputs[0]:
            (static if _gives_sequences_or_optionals(node) else conditions).append(node.inputs[0])
        static.extend(node.inputs[k] for k in positions if k < len(node.inputs) and node.inputs[k])
    candidates = {s.name: s for s in graph.inputs if not (s.sequence or s.optional)}
    needed = _reaching(graph, static)
    flags = _reaching(graph, conditions)
    needed |= {n for n in flags if n in candidates and not _is_float(candidates[n])}
    return [name for name in candidates if name in needed]


def _is_float(spec: TensorSpec) -> bool:
    return spec.dtype is not None and spec.dtype.kind in "fc"


def _reaching(graph: Graph, names: list[str]) -> set[str]:
    """``names`` and every value they are computed from (subgraphs' outer reads included),
    not looking through Shape and Size."""
    producer = {out: node for node in graph.nodes for out in node.outputs if out}
    pending, seen = list(names), set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        node = producer.get(name)
        if node is not None and node.op_type not in _SHAPE_ONLY:
            pending.extend(node.reads())
    return seen


def _gives_sequences_or_optionals(node: Node) -> bool:
    """Whether the branches of an If declare sequence or optional outputs."""
    return any(out.sequence or out.optional for sub in node.subgraphs() for out in sub.outputs)


class Specializations:
    """Converted models for values of the inputs in ``names``, made by ``make(values)`` on
    first use of each distinct value (dtype, shape and bytes) and kept least-recently-used
    first, at most :data:`MAX_SPECIALIZATIONS`."""

    def __init__(self, names: list[str], make: Callable[[dict[str, np.ndarray]], Any]):
        self.names = names
        self._make = make
        self._cache: OrderedDict[tuple, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    def values(self) -> list:
        """The converted models kept, least recently used first."""
        return list(self._cache.values())

    def get(self, values: Mapping[str, np.ndarray]):
        bound = {n: np.asarray(values[n]) for n in self.names}
        key = tuple((n, v.dtype.str, v.shape, v.tobytes()) for n, v in bound.items())
        model = self._cache.get(key)
        if model is None:
            model = self._make(bound)
            self._cache[key] = model
            while len(self._cache) > MAX_SPECIALIZATIONS:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return model
