"""The exception hierarchy of onnx2flax.

Every error raised on purpose by the package is an :class:`OnnxConversionError`;
catching that one class is enough to handle any bad model, bad feed or unsupported
construct. Messages name the node (name and op type), the input or attribute, what
was expected and what was found.
"""

from __future__ import annotations


class OnnxConversionError(Exception):
    """Base class of every error onnx2flax raises on purpose."""


class InvalidModelError(OnnxConversionError, ValueError):
    """The model file or graph is malformed (unreadable bytes, dangling names, cycles,
    attributes out of range, external data that is missing or outside the model folder)."""


class UnsupportedOpError(OnnxConversionError, NotImplementedError):
    """The graph holds ops (or op versions, or attribute values) onnx2flax cannot convert.

    ``missing`` maps ``(domain, op_type)`` to ``(count, first_node_name)``.
    """

    def __init__(self, message: str, missing: dict[tuple[str, str], tuple[int, str]] | None = None):
        super().__init__(message)
        self.missing = dict(missing or {})


class InvalidInputError(OnnxConversionError, ValueError):
    """Feeds given to ``ConvertedModel.run`` or ``module.apply`` do not match the model's
    inputs (unknown or missing names, wrong rank, static dims or dtype), or ``convert``'s
    ``bounds`` name no node they can apply to."""


class ResourceLimitError(OnnxConversionError, MemoryError):
    """A tensor or loop would exceed the configured size or iteration limits."""


class OutputExistsError(OnnxConversionError, FileExistsError):
    """A file to write already exists and overwriting was not asked for (``--force``), or the
    output path is not a folder."""


class UnsafePathError(OnnxConversionError, ValueError):
    """A file name to write is not a plain name inside the output folder (separators,
    ``..``, absolute paths, NUL bytes, or a symbolic link in its place)."""


class CodegenError(OnnxConversionError):
    """The model converts, but part of it cannot be written as standalone source
    (``onnx2flax.codegen``)."""


class InternalError(OnnxConversionError, RuntimeError):
    """An op handler or layer builder failed in a way no check anticipated: a bug in
    onnx2flax rather than in the model. The original exception is chained
    (``__cause__``); please report it together with the model."""


def node_label(name: str, op_type: str) -> str:
    """How messages refer to a node: ``Conv node 'conv1'``."""
    return f"{op_type} node {name!r}"
