"""``convert``: ONNX model -> :class:`ConvertedModel` (a Flax module plus its variables)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import jax
import jax.numpy as jnp
import numpy as np

from . import ops  # noqa: F401  (ops registers every handler)
from ._core import boundary as _boundary, limits as _limits, progress as _progress
from ._core.graph import Graph, TensorSpec
from ._core.limits import Limits
from ._core.registry import check_supported
from ._pipeline import fuse as _fuse
from ._pipeline.bounds import Bounds, check_bounds
from ._pipeline.inputs import Specializations, static_graph_inputs
from ._pipeline.load import ModelLike, load_model, owned
from ._pipeline.module import OnnxModule
from ._pipeline.normalize import dequantize_weights as _dequantize_weights, normalize
from ._pipeline.plan import Program, plan
from .errors import (InternalError, InvalidInputError, OnnxConversionError,
                     ResourceLimitError)

if TYPE_CHECKING:
    from .nnx import NnxConvertedModel

__all__ = ["ConvertedModel", "TensorSpec", "convert"]


class ConvertedModel:
    """A converted model.

    Attributes:
      module: a ``flax.linen.Module``; ``module.apply(variables, *inputs)``.
      variables: ``{'params': ..., 'batch_stats': ...}`` in Flax layout (HWIO conv kernels,
        ``[in, out]`` Dense kernels); ``batch_stats`` only when the model has BatchNorm.
      inputs / outputs: :class:`TensorSpec` per graph input / output, shapes in ONNX order
        (``.sequence`` / ``.optional`` for sequences of tensors and optionals).
      opset: the model's default-domain opset.
      specialized_inputs: names of the inputs whose values decide shapes, axes or branches
        (Reshape's ``shape``, TopK's ``k``, an If's integer condition...): :meth:`run`
        converts the model for each distinct value of these (see :meth:`run`); ``module``
        cannot trace them (give them to :func:`convert` as ``constants=`` for a module).
    """

    def __init__(self, program: Program, channels_last: bool,
                 progress: _progress.Progress | None = None,
                 specialize: tuple[list[str], Callable[[dict], ConvertedModel]] | None = None):
        self._program = program
        self._specializations = None if specialize is None else Specializations(
            specialize[0], lambda values: self._sharing_weights(specialize[1](values)))
        self.channels_last = channels_last
        self.module = OnnxModule(program, channels_last)
        self.variables: dict[str, Any] = program.variables(
            None if progress is None else lambda done, total: progress("variables", done, total))
        graph = program.graph
        self.opset = graph.opset
        self.inputs: list[TensorSpec] = _boundary.input_specs(
            graph.inputs, program.spatial_inputs, channels_last)
        self._outputs: list[TensorSpec] | None = None
        self._jitted = jax.jit(self._apply_onnx_layout)

    def __repr__(self) -> str:
        count = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(self.variables.get("params", {})))
        spec = lambda s: s.name + ("" if s.shape is None  # noqa: E731
                                   else f"[{','.join(map(str, s.shape))}]")
        return (f"{type(self).__name__}(inputs=[{', '.join(map(spec, self.inputs))}], "
                f"outputs=[{', '.join(map(spec, self._program.graph.outputs))}], "
                f"params={count:,}, opset={self.opset})")

    @property
    def specialized_inputs(self) -> list[str]:
        return [] if self._specializations is None else list(self._specializations.names)

    def specialized(self, feeds: Mapping[str, Any]) -> ConvertedModel:
        """The conversion :meth:`run` uses for the values that ``feeds`` (name -> array; only
        :attr:`specialized_inputs` are read) give the specialized inputs: a model without
        them, whose ``module`` can be applied or written as source. ``self`` when there are
        none."""
        if self._specializations is None:
            return self
        specs = {s.name: s for s in self.inputs}
        missing = [n for n in self._specializations.names if n not in feeds]
        if missing:
            raise InvalidInputError(f"missing input(s) {missing}; they decide shapes, axes or "
                                    f"branches of the model")
        values = {}
        for name in self._specializations.names:
            value = _boundary.as_array(feeds[name], f"input {name!r}")
            _boundary.check_feed(specs[name], value, False)
            values[name] = np.asarray(value, dtype=specs[name].dtype)
        return self._specializations.get(values)

    def _sharing_weights(self, model: ConvertedModel) -> ConvertedModel:
        """``model`` (a specialization) holding this model's variables when its own are the
        same arrays by value (the usual case: the weights do not depend on the specialized
        inputs), so that specializations do not keep copies of the weights."""
        mine, tree = jax.tree_util.tree_flatten(self.variables)
        theirs, their_tree = jax.tree_util.tree_flatten(model.variables)
        if tree == their_tree and all(
                a.shape == b.shape and a.dtype == b.dtype and bool(jnp.array_equal(a, b))
                for a, b in zip(mine, theirs)):
            model.variables = self.variables
        return model

    @property
    def outputs(self) -> list[TensorSpec]:
        """The graph's output specs, ``channels_last`` set on those the module returns
        ``[N, *spatial, C]``: as the first :meth:`run` traced them, else traced without feeds
        (unknown dims as 1). With :attr:`specialized_inputs`, none channels-last (each
        specialization has its own)."""
        if self._outputs is None:
            if self._specializations is not None:
                self._outputs = list(self._program.graph.outputs)
            else:
                with _placeholder_hint(self.inputs):
                    self._outputs = self._output_specs([_boundary.stand_in(s)
                                                        for s in self.inputs])
        return self._outputs

    def _output_specs(self, inputs: Sequence[Any]) -> list[TensorSpec]:
        """The output specs (``channels_last`` as the module returns each) traced on
        ``inputs``: arrays or ``jax.ShapeDtypeStruct`` in the module's layout."""
        outs = jax.eval_shape(lambda v, *x: self.module.apply(v, *x, method="_outputs"),
                              self.variables, *inputs)
        return [o.spec for o in outs]

    def _apply_onnx_layout(self, variables, *inputs) -> list[_boundary.Output]:
        """``module.apply`` on ``inputs`` in ONNX order, outputs in ONNX order."""
        moved = [_boundary.to_module(x, spec) for spec, x in zip(self.inputs, inputs)]
        outs = self.module.apply(variables, *moved, method="_outputs")
        return [_boundary.in_onnx_order(o) for o in outs]

    def run(self, feeds: Mapping[str, Any]) -> list[Any]:
        """Run on ``feeds`` (name -> array, ONNX layout), like onnxruntime's
        ``InferenceSession.run(None, feeds)``: a list of NumPy outputs in ONNX layout.
        A sequence is given and returned as a list of arrays, an empty optional as ``None``.
        Jitted; compiled once per input shape (and per sequence length).

        Inputs in :attr:`specialized_inputs` (values that decide shapes, axes or branches)
        are frozen to the values given: the model is converted and compiled once per
        distinct value (dtype, shape and bytes) of them, and the last
        ``MAX_SPECIALIZATIONS`` (32) such conversions are kept, least recently used dropped.
        The outputs (and their channels-last flags) are then those of that conversion."""
        return self._run(feeds, self.variables)

    def _run(self, feeds: Mapping[str, Any], variables) -> list[Any]:
        names = [s.name for s in self.inputs]
        arrays = _boundary.onnx_feeds(feeds, self.inputs)
        if self._specializations is not None:
            given = dict(zip(names, arrays))
            model = self.specialized(given)
            rest = {n: v for n, v in given.items() if n not in self._specializations.names}
            return model.run(rest) if variables is self.variables else model._run(rest, variables)
        try:
            with jax.default_matmul_precision("highest"):
                outs = self._jitted(variables, *arrays)
        except jax.errors.JaxRuntimeError as exc:  # raised by XLA while compiling or running
            if "RESOURCE_EXHAUSTED" in str(exc):
                raise ResourceLimitError(f"the model ran out of memory: {exc}") from None
            raise InternalError(f"XLA failed to compile or run the model: {exc}") from exc
        if self._outputs is None:
            self._outputs = [o.spec for o in outs]
        return [_boundary.cast_output(o.value, o.spec) for o in outs]


@contextlib.contextmanager
def _placeholder_hint(inputs: list[TensorSpec], specialized: Sequence[str] = (),
                      random: bool = False):
    """Tracing without feeds (unknown dims traced as 1): an onnx2flax error raised inside
    says which input dims were such placeholders and how to give their sizes, and which
    inputs (``specialized``) would need values (``random``: they were given random ones)."""
    try:
        yield
    except OnnxConversionError as exc:
        notes = []
        if specialized:
            notes.append(f"input(s) {list(specialized)} decide shapes, axes or branches"
                         + (" and were given random values" if random else "")
                         + ": give their values with convert(model, constants={...}) or "
                         "--const NAME=VALUE" + (" (or feeds / --feeds)" if random else ""))
        unknown = _unknown_dims(inputs)
        if unknown:
            where, given, flags = unknown
            notes.append(f"traced without feeds, unknown dims as 1: {where}; if that is what "
                         f"failed, give the real sizes: convert(model, input_shapes={{{given}}}) "
                         f"or {flags}, with each <...> filled in")
        if notes and exc.args and isinstance(exc.args[0], str):
            exc.args = ("\n".join([exc.args[0], *(f"({n})" for n in notes)]), *exc.args[1:])
        raise


def _unknown_dims(inputs: list[TensorSpec]) -> tuple[str, str, str] | None:
    """The unknown dims of ``inputs`` for a message: where they are (``input 'x' dims 0
    (N), 2 (H)``), ``input_shapes=`` entries and ``--input-shape`` flags to give them, each
    ``<...>`` to fill in; ``None`` when every dim is known."""
    unknown = {s.name: [i for i, d in enumerate(s.shape or ()) if not isinstance(d, int)]
               for s in inputs}
    unknown = {n: dims for n, dims in unknown.items() if dims}
    if not unknown:
        return None
    spec = {s.name: s for s in inputs}
    where = "; ".join(f"input {n!r} dim{'s' if len(d) > 1 else ''} "
                      + ", ".join(f"{i} ({spec[n].shape[i] or 'unnamed'})" for i in d)
                      for n, d in unknown.items())
    given = ", ".join(f"{n!r}: ({_dims_example(spec[n])})" for n in unknown)
    flags = " ".join(f"--input-shape {n}={_dims_example(spec[n])}" for n in unknown)
    return where, given, flags


def _dims_example(spec: TensorSpec, batch: int | None = None) -> str:
    """``spec``'s shape as ``--input-shape`` takes it: known dims as numbers, unknown ones
    as ``<name>`` (``<dimI>`` when unnamed), dim 0 as ``batch`` when given."""
    return ",".join(str(d) if isinstance(d, int) and d >= 0
                    else str(batch) if i == 0 and batch is not None
                    else f"<{d or f'dim{i}'}>" for i, d in enumerate(spec.shape or ()))


@overload
def convert(model: ModelLike, *, channels_last: bool = ..., fold_batchnorm: bool = ...,
            bounds: Bounds | None = ..., progress: bool | _progress.Progress | None = ...,
            input_shapes: Mapping[str, Sequence[int]] | None = ...,
            constants: Mapping[str, Any] | None = ...,
            limits: Limits | None = ..., api: Literal["linen"] = ..., dequantize_weights: bool = ...) -> ConvertedModel: ...


@overload
def convert(model: ModelLike, *, channels_last: bool = ..., fold_batchnorm: bool = ...,
            bounds: Bounds | None = ..., progress: bool | _progress.Progress | None = ...,
            input_shapes: Mapping[str, Sequence[int]] | None = ...,
            constants: Mapping[str, Any] | None = ...,
            limits: Limits | None = ..., api: Literal["nnx"], dequantize_weights: bool = ...) -> NnxConvertedModel: ...


def convert(model: ModelLike, *, channels_last: bool = True, fold_batchnorm: bool = False,
            bounds: Bounds | None = None,
            progress: bool | _progress.Progress | None = None,
            input_shapes: Mapping[str, Sequence[int]] | None = None,
            constants: Mapping[str, Any] | None = None,
            limits: Limits | None = None, api: Literal["linen", "nnx"] = "linen",
            dequantize_weights: bool = False) -> ConvertedModel | NnxConvertedModel:
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

    Quantized (QDQ) weights stay quantized: each DequantizeLinear of a constant integer
    tensor keeps its inputs (the integer tensor, its scale and zero point) as params and
    runs inside the jitted function. ``dequantize_weights=True`` dequantizes them at
    conversion instead: float weights (Conv / Dense kernels), e.g. to fine-tune.

    ``bounds``: ``{name: N}`` static bounds for ops whose number of results depends on the
    data (NonZero, NonMaxSuppression, Unique), ``name`` being the node's name or its first
    output's. On run-time inputs such a node needs one (the error says so, naming it): it then
    returns exactly ``N`` results, the real ones first in the op's own order (results past
    ``N`` are dropped), then padding that cannot be mistaken for a result: -1 for indices
    (NonZero ``[rank, N]`` columns, NonMaxSuppression ``[N, 3]`` rows, Unique's indices),
    0 for Unique's counts and values. Downstream ops see the padding (Gather reads index -1
    as the last element): mask with ``index >= 0``. Nodes whose inputs are constants are
    computed exactly whatever the bound.

    ``input_shapes``: ``{input name: full shape}`` fixes the dims of graph inputs (they must
    agree with the dims the file declares); ``inputs`` then shows them, and tracing without
    feeds (``outputs``, :func:`onnx2flax.codegen.generate`) uses them where an unknown dim
    would otherwise be traced as 1.

    ``constants``: ``{input name: value}`` freezes graph inputs to values at conversion:
    they leave ``inputs`` and fold like initializers (``constants={'sr': 16000}`` makes an
    ``If`` on ``sr`` take its branch at conversion). Graph inputs left free whose values
    decide shapes, axes or branches are specialized by :meth:`ConvertedModel.run` instead.

    ``progress``: ``True`` prints each stage (and the count of weight arrays placed) to
    stderr, ``False`` is silent, a callable is called as ``progress(stage, done, total)``;
    the default (``None``) prints only for large models (1 GiB of weights or 20,000 nodes).

    ``limits``: an :class:`~onnx2flax.Limits`, the budget the conversion and every trace of
    the converted module charge (default ``Limits()``); a model that would exceed it raises
    :class:`~onnx2flax.errors.ResourceLimitError` naming the node and the limit.

    Raises :class:`~onnx2flax.errors.InvalidModelError` for unreadable or malformed models,
    :class:`~onnx2flax.errors.UnsupportedOpError` (listing every missing op at once) and
    :class:`~onnx2flax.errors.InvalidInputError` for ``bounds`` naming no bounded node, and
    for ``input_shapes`` / ``constants`` naming no graph input or disagreeing with it.
    """
    if api not in ("linen", "nnx"):
        raise InvalidInputError(f"api must be 'linen' or 'nnx', got {api!r}")
    options = _options(channels_last=channels_last, fold_batchnorm=fold_batchnorm,
                       bounds=bounds, progress=progress, input_shapes=input_shapes,
                       constants=constants, dequantize_weights=dequantize_weights, limits=limits)
    with _limits.charging(limits):
        proto, base_dir = load_model(model)
        converted = _convert(proto, base_dir, options)
    if api == "nnx":
        from .nnx import NnxConvertedModel
        return NnxConvertedModel(converted)
    return converted


def _specialize(proto, base_dir, options: dict[str, Any],
                values: dict[str, np.ndarray]) -> ConvertedModel:
    """The model converted with ``values`` frozen too (one specialization of ``run``)."""
    constants = {**(options["constants"] or {}), **values}
    return _convert(proto, base_dir, {**options, "progress": False, "constants": constants})


def _options(*, channels_last: bool = True, fold_batchnorm: bool = False,
             bounds: Bounds | None = None, progress: bool | _progress.Progress | None = None,
             input_shapes: Mapping[str, Sequence[int]] | None = None,
             constants: Mapping[str, Any] | None = None,
             dequantize_weights: bool = False, limits: Limits | None = None,
             exact_sizes: bool = False) -> dict[str, Any]:
    """The options of :func:`_convert`: :func:`convert`'s, and ``exact_sizes`` (for the ONNX
    backend, whose contract is exact output shapes): ``run`` also specializes on the inputs
    of unbounded ops of data-dependent output size, which are then computed exactly."""
    return dict(channels_last=channels_last, fold_batchnorm=fold_batchnorm, bounds=bounds,
                progress=progress, input_shapes=input_shapes, constants=constants,
                dequantize_weights=dequantize_weights, limits=limits, exact_sizes=exact_sizes)


def _convert(proto, base_dir, options: dict[str, Any]) -> ConvertedModel:
    """:func:`convert` of a loaded model; the model is kept (to convert it again for other
    values) when some input has to be specialized by ``run``."""
    with _limits.charging(options["limits"]) as budget:
        return _convert_charged(proto, base_dir, options, budget)


def _convert_charged(proto, base_dir, options: dict[str, Any], budget) -> ConvertedModel:
    report = _progress.reporter(options["progress"], proto)
    if report is not None:
        report("load", 1, 1)
    constants = options["constants"] or {}
    graph = normalize(proto, base_dir, input_shapes=options["input_shapes"], constants=constants)
    bounds = check_bounds(graph, options["bounds"])  # before the rewrites below drop nodes
    static = static_graph_inputs(graph, bounds, exact_sizes=options["exact_sizes"])
    specialize = (static, functools.partial(_specialize, proto, base_dir, options)) \
        if static else None
    if options["dequantize_weights"]:
        _dequantize_weights(graph)
    del proto  # unless kept above, the graph holds all it needs: a protobuf we parsed
    _fuse.drop_exporter_zero_biases(graph)
    if options["fold_batchnorm"]:
        _fuse.fold_batchnorm(graph)
    check_supported(graph)
    if report is not None:
        report("normalize", 1, 1)
    program = plan(graph, bounds)
    if report is not None:
        report("plan", 1, 1)
    program.limits, program.stored_bytes = budget.limits, budget.stored_bytes
    converted = ConvertedModel(program, options["channels_last"], report, specialize)
    _own_constants(graph, program)
    return converted


def _own_constants(graph: Graph, program: Program) -> None:
    """Copy the constants a trace reads out of memory-mapped files (parameters were copied
    into their device buffers), so the model keeps working if the files change."""
    weights = set(program.free_params) | {name for layer in program.layers.values()
                                          for name, _ in layer.sources.values()}
    for g in graph.graphs():
        read = {name for node in g.nodes for name in node.reads()} | {o.name for o in g.outputs}
        for name in read & g.constants.keys():
            if g is not graph or name not in weights:
                g.constants[name] = owned(g.constants[name])
