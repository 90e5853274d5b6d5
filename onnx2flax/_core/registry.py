"""The op registry: one table keyed by ``(domain, op_type)``.

A handler declares the first opset version it implements (``since``); a model gets the
newest handler at or below its opset. Handlers also declare how they treat layouts:

``"onnx"``
    every input is given in ONNX order; outputs are in ONNX order.
``"elementwise"``
    inputs are brought to one common layout (numpy broadcasting respected); outputs
    share it. Unary and broadcasting binary ops.
``"channels_last"``
    input 0 is given channels-last (``N, *spatial, C``); outputs of the same rank are
    channels-last. Convolutions, pooling, normalization over channels.
``"custom"``
    inputs are given as held; the handler reads ``ctx.in_perms`` and sets ``ctx.out_perms``.

Ops whose output size depends on input values (NonZero, NonMaxSuppression, Unique) register
``bounded=True``: on run-time inputs their handler needs the user's static bound
(``convert(bounds=...)``, read as ``ctx.bound``) and pads its results to it.

Ops with weights also register a ``params`` builder: a function of ``(node, weights)``
(weights: the node's constant inputs, ``None`` where not constant) returning
``{"params": {...}, "batch_stats": {...}}`` in Flax layout, or ``None`` when the node has no
constant weight to turn into a layer. It may add ``"sources": {leaf: (input_index, inverse)}``
saying which input each leaf was made from and how to undo the layout change (``inverse``
maps the Flax-layout leaf back to the input's ONNX layout; ``None`` for unchanged); leaves
without a source cannot be written back (``onnx2flax.torch_state``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import onnx

from ..errors import UnsupportedOpError
from .graph import Graph, Node, decode_text, onnx_domain, opset_for

if TYPE_CHECKING:
    from typing import Concatenate

    from .._pipeline.module import OpContext

    #: ``fn(ctx, *inputs) -> output | tuple of outputs``: what ``register`` takes (checked by
    #: mypy, scripts/test.sh).
    Handler = Callable[Concatenate[OpContext, ...], Any]

Layout = Literal["onnx", "elementwise", "channels_last", "custom"]
ParamsBuilder = Callable[[Node, list[Any]], dict[str, dict[str, Any]] | None]
H = TypeVar("H", bound="Handler")


@dataclass(frozen=True)
class OpSpec:
    domain: str
    op_type: str
    since: int
    fn: Callable[..., Any]
    layout: Layout
    params: ParamsBuilder | None
    static_inputs: tuple[int, ...]
    bounded: bool = False
    defaults: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def constant_inputs(self, count: int) -> tuple[int, ...]:
        """Input positions (of ``count``) kept as conversion-time constants rather than made
        params: the static ones, and every input of a bounded op (constants give it its
        exact result)."""
        return tuple(range(count)) if self.bounded else self.static_inputs


_REGISTRY: dict[tuple[str, str], list[OpSpec]] = {}


def register(*op_types: str, since: int = 1, domain: str = "", layout: Layout = "onnx",
             params: ParamsBuilder | None = None, static_inputs: tuple[int, ...] = (),
             bounded: bool = False, defaults: Mapping[str, Any] | None = None
             ) -> Callable[[H], H]:
    """Decorator registering ``fn(ctx, *inputs)`` for ``op_types`` from opset ``since`` on.

    ``static_inputs`` are input positions that must be known at conversion time (shapes,
    axes, scales): a float initializer there stays a constant instead of becoming a param.
    ``bounded``: the op's output size depends on its input values (see the module's doc).
    ``defaults``: attribute defaults for ops onnx has no schema for (contrib ops, a
    default-domain op used before the opset that defines it); normalize fills them, after
    the schema's, into ``node.attrs``.
    """
    domain = onnx_domain(domain)

    def wrap(fn: H) -> H:
        for op in op_types:
            specs = _REGISTRY.setdefault((domain, op), [])
            if any(s.since == since for s in specs):
                raise RuntimeError(f"{domain or 'ai.onnx'}::{op} since {since} registered twice")
            specs.append(OpSpec(domain, op, since, fn, layout, params, tuple(static_inputs),
                                bounded, dict(defaults or {})))
            specs.sort(key=lambda s: s.since)
        return fn

    return wrap


def lookup(node: Node | Any, opsets: Mapping[str, int]) -> OpSpec | None:
    """The handler of ``node`` (a :class:`Node`, or a NodeProto for the stages that read the
    file before normalize): the newest at or below the opset of its domain in ``opsets``
    (as :func:`~onnx2flax._core.graph.opset_map` gives them); ``None`` if the op is unknown."""
    opset = opset_for(opsets, node.domain)
    best = None
    for spec in _REGISTRY.get((onnx_domain(node.domain), node.op_type), []):
        if spec.since <= opset:
            best = spec
    return best


#: Schema defaults that contradict the spec's text; left out, so the handler's default holds.
_SLIPS = {("GRU", "direction"): "foward",  # GRU-1's misspelt "forward"
          ("RNN", "activations"): ["Tanh", "Tanh"]}  # two, though one direction needs one


@functools.cache
def schema_defaults(domain: str, op_type: str,
                    opset: int = onnx.defs.onnx_opset_version()) -> dict[str, Any]:
    """``{attribute: default}`` of the op's ONNX schema at ``opset`` (decoded as normalize
    decodes a file's attributes, floats as the spec's decimal); empty for ops onnx does not
    define. Do not mutate."""
    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
    except onnx.defs.SchemaError:
        return {}
    out = {}
    for key, spec in schema.attributes.items():
        if spec.default_value.type:
            value = decode_text(onnx.helper.get_attribute_value(spec.default_value))
            if isinstance(value, float):  # 1e-5, not the float32 onnx stores (9.99999974e-06)
                value = float(str(np.float32(value)))
            if _SLIPS.get((op_type, key)) != value:
                out[key] = value
    return out


def supported_ops() -> dict[tuple[str, str], list[int]]:
    """Every registered ``(domain, op_type)`` with the opset versions its handlers start at."""
    return {key: [s.since for s in specs] for key, specs in sorted(_REGISTRY.items())}


def check_supported(graph: Graph) -> None:
    """Raise one :class:`UnsupportedOpError` naming every op (with count and first node)
    that has no handler for the model's opset, subgraphs included."""
    missing: dict[tuple[str, str], tuple[int, str]] = {}
    for node, holder in graph.walk():
        if lookup(node, holder.opsets) is None:
            count, first = missing.get(node.key, (0, node.name))
            missing[node.key] = (count + 1, first)
    if missing:
        lines = [f"  {(d + '::') if d else ''}{op}: {count} node(s), first {first!r}"
                 for (d, op), (count, first) in sorted(missing.items())]
        raise UnsupportedOpError(
            f"the model uses {len(missing)} op type(s) onnx2flax cannot convert "
            f"(opset {graph.opset}):\n" + "\n".join(lines), missing)
