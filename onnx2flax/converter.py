"""``convert``: ONNX model -> :class:`ConvertedModel` (a Flax module plus its variables)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal, overload

import jax
import numpy as np

from . import _fuse, _layout, _progress, ops  # noqa: F401  (ops registers every handler)
from ._graph import TensorSpec
from ._load import ModelLike, load_model
from ._module import OnnxModule, _family, check_feed
from ._normalize import normalize
from ._plan import Program, plan
from ._registry import check_supported
from .errors import InternalError, InvalidInputError, InvalidModelError, ResourceLimitError

if TYPE_CHECKING:
    from .nnx import NnxConvertedModel

__all__ = ["ConvertedModel", "TensorSpec", "convert"]


class ConvertedModel:
    """A converted model.

    Attributes:
      module: a ``flax.linen.Module``; ``module.apply(variables, *inputs)``.
      variables: ``{'params': ..., 'batch_stats': ...}`` in Flax layout (HWIO conv kernels,
        ``[in, out]`` Dense kernels); ``batch_stats`` only when the model has BatchNorm.
      inputs / outputs: :class:`TensorSpec` per graph input / output, shapes in ONNX order.
      opset: the model's default-domain opset.
    """

    def __init__(self, program: Program, channels_last: bool,
                 progress: _progress.Progress | None = None):
        self._program = program
        self.channels_last = channels_last
        self.module = OnnxModule(program, channels_last)
        self.variables: dict[str, Any] = program.variables(
            None if progress is None else lambda done, total: progress("variables", done, total))
        graph = program.graph
        self.opset = graph.opset
        self.inputs: list[TensorSpec] = [
            replace(s, channels_last=channels_last and s.name in program.spatial_inputs)
            for s in graph.inputs]
        self._outputs: list[TensorSpec] | None = None
        self._jitted = jax.jit(self._apply_onnx_layout)

    @property
    def outputs(self) -> list[TensorSpec]:
        if self._outputs is None:
            if not self._program.output_channels_last:
                dummies = [jax.ShapeDtypeStruct(self._module_shape(s), s.dtype or np.float32)
                           for s in self.inputs]
                jax.eval_shape(lambda v, *x: self.module.apply(v, *x), self.variables, *dummies)
            flags = self._program.output_channels_last
            self._outputs = [replace(s, channels_last=flags.get(s.name, False))
                             for s in self._program.graph.outputs]
        return self._outputs

    @staticmethod
    def _module_shape(spec: TensorSpec) -> tuple[int, ...]:
        shape = tuple(d if isinstance(d, int) else 1 for d in spec.shape or ())
        if spec.channels_last:
            shape = tuple(shape[i] for i in _layout.channels_last(len(shape)))
        return shape

    def _apply_onnx_layout(self, variables, *inputs):
        moved = [_layout.convert(x, _layout.identity(x.ndim), _layout.channels_last(x.ndim))
                 if spec.channels_last else x for spec, x in zip(self.inputs, inputs)]
        outs = self.module.apply(variables, *moved)
        outs = outs if isinstance(outs, tuple) else (outs,)
        flags = self._program.output_channels_last
        return tuple(
            _layout.to_onnx(y, _layout.channels_last(y.ndim)) if flags.get(spec.name) else y
            for spec, y in zip(self._program.graph.outputs, outs))

    def run(self, feeds: Mapping[str, Any]) -> list[np.ndarray]:
        """Run on ``feeds`` (name -> array, ONNX layout), like onnxruntime's
        ``InferenceSession.run(None, feeds)``: a list of NumPy outputs in ONNX layout.
        Jitted; compiled once per input shape."""
        return self._run(feeds, self.variables)

    def _run(self, feeds: Mapping[str, Any], variables) -> list[np.ndarray]:
        names = [s.name for s in self.inputs]
        if not isinstance(feeds, Mapping):
            raise InvalidInputError(f"feeds must be a dict of input name -> array, got "
                                    f"{type(feeds).__name__}; the model's inputs are {names}")
        unknown = sorted(set(feeds) - set(names))
        if unknown:
            raise InvalidInputError(f"unknown input name(s) {unknown}; the model's inputs are {names}")
        missing = [n for n in names if n not in feeds]
        if missing:
            raise InvalidInputError(f"missing input(s) {missing}; the model's inputs are {names}")
        arrays = []
        for spec in self.inputs:
            value = feeds[spec.name]
            value = np.asarray(value) if not hasattr(value, "dtype") else value
            plain = replace(spec, channels_last=False)
            check_feed(plain, value, False)
            arrays.append(value if spec.dtype is None or np.dtype(value.dtype) == spec.dtype
                          else np.asarray(value, dtype=spec.dtype))
        try:
            with jax.default_matmul_precision("highest"):
                outs = self._jitted(variables, *arrays)
        except jax.errors.JaxRuntimeError as exc:  # raised by XLA while compiling or running
            if "RESOURCE_EXHAUSTED" in str(exc):
                raise ResourceLimitError(f"the model ran out of memory: {exc}") from None
            raise InternalError(f"XLA failed to compile or run the model: {exc}") from exc
        return [_cast(np.asarray(y), spec) for y, spec in zip(outs, self.outputs)]


def _cast(value: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """``value`` in the output's declared dtype (JAX computes int64 as int32 without x64),
    never across dtype families (that would hide a wrong graph)."""
    if spec.dtype is None or value.dtype == spec.dtype:
        return value
    if _family(value.dtype) != _family(spec.dtype):
        raise InvalidModelError(f"graph output {spec.name!r} is declared {spec.dtype.name}, but "
                                f"the graph computes {value.dtype.name}")
    return value.astype(spec.dtype)


@overload
def convert(model: ModelLike, *, channels_last: bool = ..., fold_batchnorm: bool = ...,
            progress: bool | _progress.Progress | None = ...,
            api: Literal["linen"] = ...) -> ConvertedModel: ...


@overload
def convert(model: ModelLike, *, channels_last: bool = ..., fold_batchnorm: bool = ...,
            progress: bool | _progress.Progress | None = ...,
            api: Literal["nnx"]) -> NnxConvertedModel: ...


def convert(model: ModelLike, *, channels_last: bool = True, fold_batchnorm: bool = False,
            progress: bool | _progress.Progress | None = None,
            api: Literal["linen", "nnx"] = "linen") -> ConvertedModel | NnxConvertedModel:
    """Convert an ONNX model (a path, bytes or ``onnx.ModelProto``) to Flax.

    ``api="linen"`` (default) returns a :class:`ConvertedModel` (a ``flax.linen`` module and
    its variables); ``api="nnx"`` an :class:`~onnx2flax.nnx.NnxConvertedModel` whose
    ``module`` is an ``nnx.Module`` holding the same weights as ``nnx.Param`` /
    ``nnx.BatchStat`` (no random initialization), with the same outputs.

    ``channels_last=True`` (default) makes image tensors ``[N, *spatial, C]`` at the module's
    boundary, as a hand-written Flax model; ``False`` keeps ONNX's ``[N, C, *spatial]``.

    ``fold_batchnorm=True`` (inference only) folds each BatchNormalization into the
    Conv / ConvTranspose / Gemm feeding it when that is its only reader and all weights are
    constant: one layer fewer, no ``batch_stats`` for it, so ``train=True`` no longer
    updates those statistics.

    ``progress``: ``True`` prints each stage (and the count of weight arrays placed) to
    stderr, ``False`` is silent, a callable is called as ``progress(stage, done, total)``;
    the default (``None``) prints only for large models (1 GiB of weights or 20,000 nodes).

    Raises :class:`~onnx2flax.errors.InvalidModelError` for unreadable or malformed models and
    :class:`~onnx2flax.errors.UnsupportedOpError` (listing every missing op at once).
    """
    if api not in ("linen", "nnx"):
        raise ValueError(f"api must be 'linen' or 'nnx', got {api!r}")
    proto, base_dir = load_model(model)
    report = _progress.reporter(progress, proto)
    if report is not None:
        report("load", 1, 1)
    graph = normalize(proto, base_dir)
    del proto  # the graph holds all it needs: a protobuf we parsed (weights and all) can go
    _fuse.drop_exporter_zero_biases(graph)
    if fold_batchnorm:
        _fuse.fold_batchnorm(graph)
    check_supported(graph)
    if report is not None:
        report("normalize", 1, 1)
    program = plan(graph)
    if report is not None:
        report("plan", 1, 1)
    converted = ConvertedModel(program, channels_last, report)
    if api == "nnx":
        from .nnx import NnxConvertedModel
        return NnxConvertedModel(converted)
    return converted
