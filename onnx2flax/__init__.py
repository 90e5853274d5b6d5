"""onnx2flax: convert ONNX graphs into Flax (JAX) modules with Flax-layout weights.

Public API:

- :func:`convert` -> :class:`ConvertedModel` (``.module``, ``.variables``, ``.inputs``,
  ``.outputs``, ``.run``); ``convert(..., api="nnx")`` -> :class:`NnxConvertedModel` (the
  same, ``.module`` an ``nnx.Module`` holding the weights);
- :func:`export`: PyTorch -> ONNX keeping parameter names and BatchNorm;
- :func:`compare` -> :class:`ComparisonReport`: onnx2flax vs onnxruntime (and torch),
  per output or per node;
- :func:`summarize` -> :class:`ModelSummary`: ops, support, inputs, outputs, parameter count;
- :class:`Limits`: the work and memory budget of ``convert(..., limits=...)``;
- the exceptions of :mod:`onnx2flax.errors`.
"""

from ._compare import Comparison, ComparisonReport, compare, random_feeds
from ._export import export
from ._inspect import ModelSummary, summarize
from ._limits import Limits
from .converter import ConvertedModel, TensorSpec, convert
from .errors import (InternalError, InvalidInputError, InvalidModelError, OnnxConversionError,
                     OutputExistsError, ResourceLimitError, UnsafePathError, UnsupportedOpError)

__version__ = "0.1.0"


def __getattr__(name: str):
    # flax.nnx is imported on first use only (0.2 s of import time for linen-only users).
    if name == "NnxConvertedModel":
        from .nnx import NnxConvertedModel
        return NnxConvertedModel
    raise AttributeError(f"module 'onnx2flax' has no attribute {name!r}")

__all__ = [
    "ConvertedModel", "NnxConvertedModel", "TensorSpec", "Limits", "convert", "export",
    "Comparison", "ComparisonReport", "compare", "random_feeds",
    "ModelSummary", "summarize",
    "OnnxConversionError", "InvalidModelError", "InvalidInputError", "UnsupportedOpError",
    "ResourceLimitError", "OutputExistsError", "UnsafePathError", "InternalError",
]
