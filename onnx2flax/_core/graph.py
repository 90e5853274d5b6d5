"""The converter's own view of an ONNX graph: decoded once, never protobuf again.

Later stages (planning, the interpreter, codegen) read only these dataclasses.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from onnx import helper

from ..errors import InvalidModelError

Dim = int | str | None


def onnx_domain(domain: str) -> str:
    """``domain`` as the converter keys it: the default domain is ``""`` (never ``"ai.onnx"``)."""
    return "" if domain == "ai.onnx" else domain


def decode_text(value: Any) -> Any:
    """A decoded attribute value with bytes (ONNX's strings) made ``str``."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8", errors="replace") for v in value]
    return value


def opset_map(opset_import: Iterable[Any]) -> dict[str, int]:
    """``{domain: version}`` of a model's ``opset_import`` (OperatorSetIdProtos), domains as
    :func:`onnx_domain` gives them; the default domain is always present (1 if not imported)."""
    opsets = {onnx_domain(o.domain): int(o.version) for o in opset_import}
    opsets.setdefault("", 1)
    return opsets


def opset_for(opsets: Mapping[str, int], domain: str) -> int:
    """The version of ``domain`` in ``opsets`` (as :func:`opset_map` gives them; 1 if absent)."""
    return opsets.get(onnx_domain(domain), 1)


def numpy_dtype(elem_type: Any, what: str | None = None) -> np.dtype | None:
    """The NumPy dtype of ONNX element type ``elem_type`` (a ``TensorProto.DataType``).
    An unknown type is ``None``, or with ``what`` (the tensor it types, e.g. ``"initializer
    'w'"``) an :class:`~onnx2flax.errors.InvalidModelError` naming it."""
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(int(elem_type)))
    except (KeyError, ValueError, TypeError):
        if what is None:
            return None
        raise InvalidModelError(f"{what} has unknown element type {elem_type}") from None


def is_float_weight(value: np.ndarray | None) -> bool:
    """A float tensor known at conversion time, other than a scalar: what becomes a param
    (``_pipeline.plan`` keeps those needed only at conversion time, shape-like inputs and the
    arithmetic computing them, constants)."""
    return value is not None and value.dtype.kind == "f" and value.size > 1


def node_name(name: str, op_type: str, index: int) -> str:
    """A node's name: the file's, or ``{op_type}_{index}`` (its position in its graph)."""
    return name or f"{op_type}_{index}"


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: a tensor, a sequence of tensors, or an optional of either.

    ``shape`` is in ONNX (channels-first) order; a dynamic dim is its ``dim_param``
    name, or ``None`` when the file gives no name. ``dtype`` is a NumPy dtype (``None``
    when the file leaves the value untyped: any dtype is accepted and kept).
    ``channels_last`` says whether ``module.apply`` takes / returns this tensor with
    the channel axis moved last (image tensors when converted with ``channels_last=True``).

    ``sequence``: the value is a list of tensors (``shape`` and ``dtype`` describe each
    element). ``optional``: the value may be ``None`` (an empty optional).
    """

    name: str
    shape: tuple[Dim, ...] | None
    dtype: np.dtype | None
    channels_last: bool = False
    sequence: bool = False
    optional: bool = False

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def kind(self) -> str:
        """``'tensor'``, ``'sequence'``, ``'optional tensor'`` or ``'optional sequence'``."""
        return ("optional " if self.optional else "") + ("sequence" if self.sequence else "tensor")


@dataclass(eq=False)
class Node:
    """One ONNX node with decoded attributes (Python values, NumPy arrays, Graphs); ``attrs``
    also holds the defaults of the op's ONNX schema at the model's opset, or of its handler.
    It keeps no protobuf (``_fold.node_proto`` makes one where ONNX's tools need it)."""

    name: str
    op_type: str
    domain: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    #: The PyTorch modules the node was exported from, outermost first, as ``(attribute
    #: path, class)``: ``(('layer1', 'torch.nn.modules.container.Sequential'), ('layer1.0',
    #: 'torchvision.models.resnet.Bottleneck'))`` (torch dynamo's node metadata; empty for
    #: other exporters). Code generation writes one class per repeated module class.
    scope: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.domain, self.op_type)

    def subgraphs(self) -> list[Graph]:
        """The graphs held by attributes (If branches, Loop and Scan bodies)."""
        return [sub for value in self.attrs.values()
                for sub in (value if isinstance(value, list) else [value])
                if isinstance(sub, Graph)]

    def reads(self) -> list[str]:
        """Every name the node reads: its inputs, and what its subgraphs read from outside."""
        return [i for i in self.inputs if i] + [n for sub in self.subgraphs() for n in sub.outer]


@dataclass(eq=False)
class Graph:
    """A topologically sorted graph.

    ``constants`` holds every tensor known at conversion time (initializers, Constant
    nodes and folded constant subgraphs); ``initializers`` names those that were
    initializers in the file. ``origins`` maps a folded tensor to the
    initializer it was computed from, so parameters keep their PyTorch names, and
    ``folded`` each folded tensor to the node that computed it, a node no longer in
    ``nodes`` (to map values back onto the initializer, and to know every node the file
    had).
    ``outer`` lists names a subgraph reads from its enclosing graph.
    """

    name: str
    nodes: list[Node]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    constants: dict[str, np.ndarray]
    opsets: dict[str, int]
    origins: dict[str, str] = field(default_factory=dict)
    folded: dict[str, Node] = field(default_factory=dict)
    initializers: frozenset[str] = frozenset()
    outer: list[str] = field(default_factory=list)

    @property
    def opset(self) -> int:
        """The default-domain opset."""
        return opset_for(self.opsets, "")

    def opset_of(self, node: Node) -> int:
        """The opset of ``node``'s domain."""
        return opset_for(self.opsets, node.domain)

    def read_counts(self) -> dict[str, int]:
        """How many times each value is read: by this graph's nodes (their subgraphs' reads
        of this graph included) and as a graph output."""
        counts: dict[str, int] = {}
        for node in self.nodes:
            for name in node.reads():
                counts[name] = counts.get(name, 0) + 1
        for spec in self.outputs:
            counts[spec.name] = counts.get(spec.name, 0) + 1
        return counts

    def walk(self) -> Iterator[tuple[Node, Graph]]:
        """``(node, graph holding it)`` for every node, subgraphs included: each node
        followed by the nodes of its subgraphs (depth first, in graph order)."""
        for node in self.nodes:
            yield node, self
            for sub in node.subgraphs():
                yield from sub.walk()

    def graphs(self) -> list[Graph]:
        """This graph and its subgraphs, at any depth."""
        return [self, *(sub for node, _ in self.walk() for sub in node.subgraphs())]


def is_weight_dequantization(node: Node, constants: dict[str, np.ndarray]) -> bool:
    """A DequantizeLinear of a constant integer tensor (a QDQ model's quantized weight):
    kept in the graph, its inputs made params, unless ``dequantize_weights`` folds it."""
    value = constants.get(node.inputs[0]) if node.inputs else None
    return (node.op_type == "DequantizeLinear" and node.domain in ("", "com.microsoft")
            and value is not None and value.size > 1
            and (value.dtype.kind in "iu" or value.dtype.name in _NARROW_INTEGERS))


_NARROW_INTEGERS = {"int4", "uint4", "int2", "uint2"}
