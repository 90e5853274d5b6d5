"""onnx2flax: convert ONNX graphs into Flax (JAX) modules with Flax-layout weights.

Public API:

- :func:`convert` -> :class:`ConvertedModel` (``.module``, ``.variables``, ``.inputs``,
  ``.outputs``, ``.run``); ``convert(..., api="nnx")`` -> :class:`NnxConvertedModel` (the
  same, ``.module`` an ``nnx.Module`` holding the weights);
- :func:`export`: PyTorch -> ONNX keeping parameter names and BatchNorm;
- :func:`compare` -> :class:`ComparisonReport`: onnx2flax vs onnxruntime (and torch),
  per output or per node;
- :func:`summarize` -> :class:`ModelSummary`: ops, support, inputs, outputs, parameter count;
- :func:`register_op` and :class:`OpContext`: handlers for custom or contrib ops;
- :func:`enable_compilation_cache`: a persistent XLA compilation cache across processes;
- :class:`Limits`: the work and memory budget of ``convert(..., limits=...)``;
- the exceptions of :mod:`onnx2flax.errors`.

Importing the package is cheap: jax, flax and onnx are imported on first use of a name
that needs them (PEP 562), so ``onnx2flax --help`` starts in a fraction of a second.
"""

from __future__ import annotations

import importlib

from .errors import (CodegenError, InternalError, InvalidInputError, InvalidModelError,
                     OnnxConversionError, OutputExistsError, ResourceLimitError, UnsafePathError,
                     UnsupportedOpError)

__version__ = "0.1.0"

#: Public name -> the private module defining it, imported on first access.
_LAZY = {
    "Comparison": "._compare", "ComparisonReport": "._compare", "compare": "._compare",
    "random_feeds": "._compare",
    "export": "._export",
    "ModelSummary": "._inspect", "summarize": "._inspect",
    "ConvertedModel": ".converter", "TensorSpec": ".converter", "convert": ".converter",
    "NnxConvertedModel": ".nnx",
    "register_op": "._extend", "OpContext": "._extend",
    "enable_compilation_cache": "._cache",
    "Limits": "._core.limits",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'onnx2flax' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ConvertedModel", "NnxConvertedModel", "TensorSpec", "Limits", "convert", "export",
    "Comparison", "ComparisonReport", "compare", "random_feeds",
    "ModelSummary", "summarize", "register_op", "OpContext", "enable_compilation_cache",
    "OnnxConversionError", "InvalidModelError", "InvalidInputError", "UnsupportedOpError",
    "ResourceLimitError", "OutputExistsError", "UnsafePathError", "InternalError", "CodegenError",
]
