"""onnx2flax as an ONNX backend (:class:`onnx.backend.base.Backend`).

This is what the official conformance suite (``onnx.backend.test``) drives::

    import onnx2flax.backend as backend
    rep = backend.prepare(model)          # convert once
    outputs = rep.run([x, y])             # ONNX layout in, ONNX layout out
    outputs = backend.run_model(model, {"x": x, "y": y})
    outputs = backend.run_node(node, [x, y])

``prepare`` converts as :func:`onnx2flax.convert` does (keyword arguments such as
``channels_last`` are passed on) and ``run`` uses :meth:`ConvertedModel.run`, so results
follow onnxruntime's contract whatever layout the module uses inside. Devices: ``'CPU'``
always; ``'CUDA'`` (or ``'GPU'``, with an optional ``':id'``) when JAX sees GPUs.

Graph inputs that decide shapes, axes or branches (Reshape's ``shape``, Unsqueeze's
``axes``...) are specialized on the values given to ``run`` as :meth:`ConvertedModel.run`
does (the model is converted once per distinct value). So are the inputs that reach an op
whose output size depends on the data (NonZero, NonMaxSuppression, Unique), unless
``prepare(..., bounds=...)`` bounds that node: its exact result is computed at conversion
time, as the backend contract (exact output shapes) asks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import onnx
from onnx import helper
from onnx.backend.base import Backend, BackendRep, namedtupledict

from ._core.graph import onnx_domain
from ._pipeline.load import load_model
from .converter import _convert, _options
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
    """A prepared (converted) model; ``run`` takes inputs in ONNX layout (and specializes on
    the inputs in ``converted.specialized_inputs``, see :meth:`ConvertedModel.run`)."""

    def __init__(self, model: onnx.ModelProto, device, convert_kwargs: dict[str, Any]):
        self._device = device
        proto, base_dir = load_model(model)
        self.converted = _convert(proto, base_dir, _options(**convert_kwargs, exact_sizes=True))
        self.input_names = [s.name for s in self.converted.inputs]

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
        with jax.default_device(self._device):
            outputs = self.converted.run(feeds)
        fields = [s.name for s in self.converted.outputs]
        return namedtupledict("Outputs", fields)(*outputs)


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
        if onnx_domain(node.domain):
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
