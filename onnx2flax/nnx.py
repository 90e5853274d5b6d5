"""A converted model as a Flax NNX module (``flax.nnx``), holding the converted weights.

::

    converted = onnx2flax.convert("model.onnx", api="nnx")   # an NnxConvertedModel
    model = converted.module                       # nnx.Module: nnx.Param / nnx.BatchStat
    y = model(x)                                   # inference (running statistics)
    y = model(x, train=True, mutable=["batch_stats"])  # train mode; updates the BatchStats
    grads = nnx.grad(loss_fn)(model)               # Params: same tree as the linen params
    converted.run({"x": x_nchw})                   # like ConvertedModel.run, current weights

The module is Flax's own linen-to-NNX bridge (``flax.nnx.bridge.ToNNX``) around the converted
linen module, with every variable set directly from ``converted.variables`` (``params`` as
``nnx.Param``, ``batch_stats`` as ``nnx.BatchStat``, at the same paths): there is no random
initialization pass, and outputs are those of ``converted.module.apply``. (Standalone NNX
*source* with the same outputs: ``onnx2flax.codegen.save(converted, dir, api="nnx")``.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx
from flax.nnx import bridge
from flax.nnx.bridge.variables import linen_vars_to_nnx_attrs

from .converter import ConvertedModel
from .errors import InvalidModelError

__all__ = ["NnxConvertedModel", "to_nnx"]


def to_nnx(converted: ConvertedModel, *, rngs: nnx.Rngs | None = None,
           variables=None) -> bridge.ToNNX:
    """``converted`` as an ``nnx.Module`` holding ``variables`` (default:
    ``converted.variables``). ``rngs`` (e.g. ``nnx.Rngs(dropout=0)``) feeds Dropout in train
    mode; a call can also pass ``rngs=`` itself."""
    model = bridge.ToNNX(converted.module, rngs=rngs)
    attrs = linen_vars_to_nnx_attrs(converted.variables if variables is None else variables)
    for name, value in attrs.items():
        if hasattr(model, name) or name.startswith(("to_nnx__", "_pytree__")):
            raise InvalidModelError(f"the model's top-level variable {name!r} clashes with an "
                                    "attribute of the NNX module; rename it in the ONNX file "
                                    "or convert with api='linen'")
        setattr(model, name, nnx.data(value))
    return model


class NnxConvertedModel:
    """A converted model as Flax NNX: what ``onnx2flax.convert(model, api="nnx")`` returns.

    Attributes:
      module: an ``nnx.Module`` (:func:`to_nnx`) holding the weights as ``nnx.Param`` /
        ``nnx.BatchStat``; ``module(*inputs, train=False)``, with ``train=True`` also
        ``mutable=["batch_stats"]`` to update the statistics in place.
      linen: the :class:`~onnx2flax.ConvertedModel` it was made from (the linen module and
        the weights as converted).
      inputs / outputs / opset / channels_last / specialized_inputs: as
        :class:`~onnx2flax.ConvertedModel`.
    """

    def __repr__(self) -> str:
        return f"Nnx{self.linen!r}"

    def __init__(self, linen: ConvertedModel, *, rngs: nnx.Rngs | None = None):
        self.linen = linen
        self.module = to_nnx(linen, rngs=rngs)
        self.inputs, self.opset, self.channels_last = linen.inputs, linen.opset, linen.channels_last
        self.specialized_inputs = linen.specialized_inputs

    @property
    def outputs(self):
        return self.linen.outputs

    @property
    def variables(self) -> dict[str, Any]:
        """The module's current weights as linen variables (``{'params': ..., ...}``)."""
        variables = {"params": nnx.to_pure_dict(nnx.state(self.module, nnx.Param))}
        stats = nnx.to_pure_dict(nnx.state(self.module, nnx.BatchStat))
        if stats:
            variables["batch_stats"] = stats
        return variables

    def run(self, feeds: Mapping[str, Any]) -> list[np.ndarray]:
        """As :meth:`ConvertedModel.run <onnx2flax.ConvertedModel.run>`, with the module's
        current weights."""
        return self.linen._run(feeds, self.variables)
