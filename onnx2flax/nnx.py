"""A converted model as a Flax NNX module (``flax.nnx``), holding the converted weights.

::

    model = to_nnx(onnx2flax.convert("model.onnx"))
    y = model(x)                                   # inference (running statistics)
    y = model(x, train=True, mutable=["batch_stats"])  # train mode; updates the BatchStats
    grads = nnx.grad(loss_fn)(model)               # Params: same tree as the linen params

The module is Flax's own linen-to-NNX bridge (``flax.nnx.bridge.ToNNX``) around the converted
linen module, with every variable set directly from ``converted.variables`` (``params`` as
``nnx.Param``, ``batch_stats`` as ``nnx.BatchStat``, at the same paths): there is no random
initialization pass, and outputs are those of ``converted.module.apply``.
"""

from __future__ import annotations

from flax import nnx
from flax.nnx import bridge
from flax.nnx.bridge.variables import linen_vars_to_nnx_attrs

from .converter import ConvertedModel

__all__ = ["to_nnx"]


def to_nnx(converted: ConvertedModel, *, rngs: nnx.Rngs | None = None,
           variables=None) -> bridge.ToNNX:
    """``converted`` as an ``nnx.Module`` holding ``variables`` (default:
    ``converted.variables``). ``rngs`` (e.g. ``nnx.Rngs(dropout=0)``) feeds Dropout in train
    mode; a call can also pass ``rngs=`` itself."""
    model = bridge.ToNNX(converted.module, rngs=rngs)
    attrs = linen_vars_to_nnx_attrs(converted.variables if variables is None else variables)
    for name, value in attrs.items():
        if hasattr(model, name) or name.startswith(("to_nnx__", "_pytree__")):
            raise ValueError(f"the model's top-level variable {name!r} clashes with an attribute "
                             "of the NNX module; rename it in the ONNX file")
        setattr(model, name, nnx.data(value))
    return model
