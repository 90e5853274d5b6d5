"""onnx2flax: convert ONNX graphs into Flax (JAX) modules with Flax-layout weights.

Public API: :func:`convert` / :class:`ConvertedModel`, :func:`export` (PyTorch -> ONNX that
keeps parameter names and BatchNorm), :func:`compare` (against onnxruntime and torch), and
the exception classes in :mod:`onnx2flax.errors`.
"""

from .converter import ConvertedModel, TensorSpec, convert
from .errors import (InternalError, InvalidInputError, InvalidModelError, OnnxConversionError,
                     OutputExistsError, ResourceLimitError, UnsafePathError, UnsupportedOpError)

__version__ = "0.1.0"

__all__ = [
    "ConvertedModel", "TensorSpec", "convert",
    "OnnxConversionError", "InvalidModelError", "InvalidInputError", "UnsupportedOpError",
    "ResourceLimitError", "OutputExistsError", "UnsafePathError", "InternalError",
]
