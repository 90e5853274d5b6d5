"""onnx2flax as an ONNX backend (:class:`onnx.backend.base.Backend`).

This is what the official conformance suite (``onnx.backend.test``) drives::

    import onnx2flax.backend as backend
    rep = backend.prepare(model)          # convert once
    outputs = rep.run([x, y])             # ONNX layout in, ONNX layout out
    outputs = backend.run_model(model, {"x": x, "y": y})
    outputs = backend.run_node(node, [x, y])

``prepare`` uses :func:`onnx2flax.convert` (keyword arguments such as ``channels_last`` are
passed on) and ``run`` uses :meth:`ConvertedModel.run`, so results follow onnxruntime's
contract whatever layout the module uses inside. Devices: ``'CPU'`` always; ``'CUDA'``
(or ``'GPU'``, with an optional ``':id'``) when JAX sees GPUs.

JAX needs shapes at trace time, so a graph input that feeds a shape-like position (Reshape's
``shape``, Unsqueeze's ``axes``...) is bound to the value given to ``run`` and the model is
converted for that value (once per distinct value), as if it were an initializer. So are the
inputs that reach an op whose output size depends on the data (NonZero, NonMaxSuppression,
Unique), unless ``prepare(..., bounds=...)`` bounds that node: its exact result is computed
at conversion time, as the backend contract (exact output shapes) asks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.backend.base import Backend, BackendRep, namedtupledict

from ._graph import node_name
from ._registry import lookup
from .converter import ConvertedModel, convert
from .errors import InvalidInputError

__all__ = ["OnnxFlaxBackend", "OnnxFlaxBackendRep", "prepare", "run_model", "run_node",
           "supports_device"]


def _jax_device(device: str):
    """The JAX device for an ONNX device string (``'CPU'``, ``'CUDA:1'``), or ``None``."""
    kind, _, index = device.upper().partition(":")
    platform = {"CPU": "cpu", "CUDA": "gpu", "GPU": "gpu"}.get(kind)
    if platform is None:
        return None
    try:
        devices = jax.devices(platform)
    except RuntimeError:  # no backend for that platform
        return None
    i = int(index) if index.isdigit() else 0
    return devices[i] if i < len(devices) else None


class OnnxFlaxBackendRep(BackendRep):
    """A prepared (converted) model; ``run`` takes inputs in ONNX layout.

    Graph inputs whose values onnx2flax needs at conversion time (those that reach Reshape's
    shape, Unsqueeze's axes..., the registry's ``static_inputs``, or any input of an unbounded
    op of data-dependent output size) are bound to the values given to ``run``: the model is
    converted once per distinct value of those inputs. Other models are converted once, by
    ``prepare``.
    """

    def __init__(self, model: onnx.ModelProto, device, convert_kwargs: dict[str, Any]):
        self._model = model
        self._device = device
        self._kwargs = convert_kwargs
        initializers = {t.name for t in model.graph.initializer}
        graph_inputs = [i for i in model.graph.input if i.name not in initializers]
        self.input_names = [i.name for i in graph_inputs]
        tensors = [i.name for i in graph_inputs  # sequences and optionals cannot be bound
                   if i.type.WhichOneof("value") in ("tensor_type", None)]
        self._static = _static_graph_inputs(model, tensors, convert_kwargs.get("bounds") or {})
        self._converted: dict[tuple, ConvertedModel] = {}
        if not self._static:
            self._converted[()] = convert(model, **convert_kwargs)

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        """``inputs``: a list (graph-input order), a dict by name, or a single array.
        Returns a tuple of NumPy outputs, also indexable by output name."""
        names = self.input_names
        if isinstance(inputs, Mapping):
            feeds = dict(inputs)
        else:
            if isinstance(inputs, np.ndarray) or np.isscalar(inputs):
                inputs = [inputs]
            inputs = list(inputs)
            if len(inputs) != len(names):
                raise InvalidInputError(f"the model takes {len(names)} input(s) {names}, "
                                        f"got {len(inputs)}")
            feeds = dict(zip(names, inputs))
        converted = self._converted_for(feeds)
        feeds = {n: v for n, v in feeds.items() if n not in self._static}
        with jax.default_device(self._device):
            outputs = converted.run(feeds)
        fields = [s.name for s in converted.outputs]
        return namedtupledict("Outputs", fields)(*outputs)

    def _converted_for(self, feeds: dict[str, Any]) -> ConvertedModel:
        missing = [n for n in self._static if n not in feeds]
        if missing:
            raise InvalidInputError(f"missing input(s) {missing}; the model's inputs are "
                                    f"{self.input_names}")
        bound = {n: np.asarray(feeds[n]) for n in self._static}
        key = tuple((n, v.dtype.str, v.shape, v.tobytes()) for n, v in bound.items())
        if key not in self._converted:
            model = onnx.ModelProto()
            model.CopyFrom(self._model)
            model.graph.initializer.extend(
                numpy_helper.from_array(v, n) for n, v in bound.items())
            self._converted[key] = convert(model, **self._kwargs)
        return self._converted[key]


#: Ops that read only their input's shape, never its values.
_SHAPE_ONLY = {"Shape", "Size"}
#: Inputs worth binding beyond the handlers' ``static_inputs``: a known trip count and
#: initial condition give a Loop's scan outputs a static length (a run-time one cannot be
#: traced), and let a Loop that carries sequences be unrolled. (An If whose branches give
#: sequences or optionals has its condition bound too.)
_BIND_ALSO = {"Loop": (0, 1)}


def _static_graph_inputs(model: onnx.ModelProto, inputs: list[str],
                         bounds: Mapping[str, int]) -> list[str]:
    """Graph inputs whose values some top-level node needs at conversion time: read at a
    position its handler declares static, or by a bounded op without a bound in ``bounds``,
    directly or through other nodes."""
    opsets = {(o.domain or ""): o.version for o in model.opset_import}
    opsets.setdefault("", opsets.get("ai.onnx", 1))
    producer = {out: node for node in model.graph.node for out in node.output if out}
    pending = []
    for index, node in enumerate(model.graph.node):
        domain = "" if node.domain == "ai.onnx" else node.domain
        spec = lookup(domain, node.op_type, opsets.get(domain, 1))
        static = (spec.static_inputs if spec else ()) + _BIND_ALSO.get(node.op_type, ())
        if node.op_type == "If" and _gives_sequences_or_optionals(node):
            static += (0,)
        names = (node_name(node.name, node.op_type, index), *node.output[:1])
        if spec is not None and spec.bounded and not any(n in bounds for n in names):
            static = spec.constant_inputs(len(node.input))
        pending.extend(node.input[k] for k in static if k < len(node.input) and node.input[k])
    needed: set[str] = set()
    while pending:
        name = pending.pop()
        if name in needed:
            continue
        needed.add(name)
        node = producer.get(name)
        if node is not None and node.op_type not in _SHAPE_ONLY:
            pending.extend(i for i in node.input if i)
            for attr in node.attribute:
                for sub in [attr.g] if attr.HasField("g") else attr.graphs:
                    pending.extend(_outer_reads(sub))
    return [name for name in inputs if name in needed]


def _gives_sequences_or_optionals(node: onnx.NodeProto) -> bool:
    """Whether the branches of an If declare sequence or optional outputs: those differ in
    length or emptiness between branches, which ``lax.cond`` cannot select at run time, so
    the condition is bound."""
    return any(out.type.WhichOneof("value") in ("sequence_type", "optional_type")
               for attr in node.attribute if attr.HasField("g") for out in attr.g.output)


def _outer_reads(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph (If/Loop/Scan body) reads from its enclosing graphs."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    reads: set[str] = set()
    for node in graph.node:
        reads.update(i for i in node.input if i)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else attr.graphs:
                reads |= _outer_reads(sub)
        defined.update(node.output)
    return reads - defined


class OnnxFlaxBackend(Backend):
    """The :class:`onnx.backend.base.Backend` of onnx2flax."""

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU",
                **kwargs: Any) -> OnnxFlaxBackendRep:
        """Convert ``model``; ``kwargs`` go to :func:`onnx2flax.convert`."""
        target = _jax_device(device)
        if target is None:
            raise ValueError(f"onnx2flax cannot run on device {device!r} here")
        return OnnxFlaxBackendRep(model, target, kwargs)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU",
                  **kwargs: Any) -> tuple[np.ndarray, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU",
                 outputs_info: Sequence[tuple[np.dtype, tuple[int, ...]]] | None = None,
                 **kwargs: Any) -> tuple[np.ndarray, ...]:
        """Run one node on ``inputs`` (arrays for its non-empty inputs, in order).

        Builds a one-node model at ``kwargs['opset_version']`` (default: the newest opset
        onnx knows); output types come from ``outputs_info`` or ONNX shape inference.
        """
        opset = int(kwargs.pop("opset_version", onnx.defs.onnx_opset_version()))
        names = [n for n in node.input if n]
        if isinstance(inputs, Mapping):
            inputs = [inputs[n] for n in names]
        arrays = [np.asarray(x) for x in inputs]
        if len(arrays) != len(names):
            raise InvalidInputError(f"{node.op_type} node {node.name!r} has {len(names)} "
                                    f"input(s) {names}, got {len(arrays)} array(s)")
        graph_inputs = [helper.make_tensor_value_info(
            n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) for n, a in zip(names, arrays)]
        outputs = [n for n in node.output if n]
        graph = helper.make_graph([node], f"{node.op_type}_node", graph_inputs,
                                  [helper.make_empty_tensor_value_info(n) for n in outputs])
        opsets = [helper.make_opsetid("", opset)]
        if node.domain not in ("", "ai.onnx"):
            opsets.append(helper.make_opsetid(node.domain, 1))
        model = helper.make_model(graph, opset_imports=opsets)
        _type_outputs(model, outputs, outputs_info)
        return cls.prepare(model, device).run(arrays)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return _jax_device(device) is not None


def _type_outputs(model: onnx.ModelProto, outputs: list[str], outputs_info) -> None:
    """Give the graph outputs of a one-node model their types (in place)."""
    if outputs_info is not None:
        types = {n: helper.make_tensor_type_proto(helper.np_dtype_to_tensor_dtype(np.dtype(d)),
                                                  tuple(s))
                 for n, (d, s) in zip(outputs, outputs_info)}
    else:
        inferred = onnx.shape_inference.infer_shapes(model)
        types = {v.name: v.type for v in inferred.graph.value_info}
        types.update({v.name: v.type for v in inferred.graph.output if v.type.WhichOneof("value")})
    for out in model.graph.output:
        if out.name in types:
            out.type.CopyFrom(types[out.name])


prepare = OnnxFlaxBackend.prepare
run_model = OnnxFlaxBackend.run_model
run_node = OnnxFlaxBackend.run_node
supports_device = OnnxFlaxBackend.supports_device
