"""The module boundary: how graph inputs and outputs cross between ONNX order and the
converted module's layout, and what a feed or an output must be.

ONNX order is the file's: images ``[N, C, *spatial]``. The module's layout differs from it
only for the image tensors of a channels-last module (``TensorSpec.channels_last``): those
are ``[N, *spatial, C]``, i.e. held as ``_layout.channels_last(rank)``. Which inputs are such
images is decided before tracing (:func:`spatial_inputs`, planned once as
``Program.spatial_inputs``); which outputs are is decided by the trace (the layout the
interpreter holds each output in), and returned with the outputs as :class:`Output` (a
pytree whose spec is static, so that ``jax.jit`` and ``jax.eval_shape`` return it too).

Used by the module (its inputs and outputs), ``ConvertedModel`` (``run``'s feeds, layout
moves and casts; ``inputs`` / ``outputs``), ``compare``, ``codegen`` (the generated
module's outputs) and the tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from . import layout as _layout
from ..errors import InvalidInputError, InvalidModelError
from .graph import Graph, Node, TensorSpec
from .registry import lookup

# --- layouts ----------------------------------------------------------------------------

#: (De)quantization keeps its input's layout: a QDQ model's image input is channels-last.
_QDQ = ("QuantizeLinear", "DequantizeLinear")


def spatial_inputs(graph: Graph) -> frozenset[str]:
    """The inputs a channels-last module takes ``[N, *spatial, C]``: those of rank 3-5 that
    reach input 0 of a channels-last op through elementwise ops (and Identity,
    QuantizeLinear / DequantizeLinear) only.

    This is not the rule the trace applies (``_pipeline.module._Interpreter._call`` and the
    handlers), and cannot be it: an input's layout must be fixed before any trace (it is
    what ``ConvertedModel.inputs`` tells the user, and ``convert`` does not trace), while the
    trace only propagates the layouts it is given. So this predicts, without tracing,
    whether holding the input channels-last reaches a channels-last op with no transpose,
    from the facts the trace acts on: the registry's ``"elementwise"`` and
    ``"channels_last"`` layouts (read from the registry here as there), and what three
    ``"custom"`` handlers do that the registry does not declare: Identity, QuantizeLinear
    and DequantizeLinear keep input 0's layout (``ctx.out_perms = [ctx.in_perms[0]]`` in
    ``ops/elementwise.py``, ``ops/quantize.py``), and nchwc ReorderInput with
    ``channels_last=1`` undoes the move its ``"channels_last"`` layout makes. One owner for
    those would be a registry declaration (say ``keeps_layout=(0,)``) read by both; until the
    handlers declare it, they and this function must agree (tests/test_quantized_weights.py
    and tests/ops/test_contrib_nchwc.py check that they do). A prediction only decides where
    a transpose happens, never a value: the trace converts whatever layout it is given.
    """
    consumers: dict[str, list[Node]] = {}
    for node in graph.nodes:
        for i in node.inputs:
            consumers.setdefault(i, []).append(node)
    found = set()
    for spec in graph.inputs:
        if spec.rank is None or not 3 <= spec.rank <= 5 or spec.sequence or spec.optional:
            continue
        frontier, seen = [spec.name], set()
        while frontier and spec.name not in found:
            name = frontier.pop()
            for node in consumers.get(name, []):
                op = lookup(node, graph.opsets)
                if op is None or id(node) in seen:
                    continue
                seen.add(id(node))
                # An op whose channels_last attribute says its input is NHWC already
                # (nchwc ReorderInput) takes it as it is.
                if (op.layout == "channels_last" and node.inputs[0] == name
                        and not int(node.attrs.get("channels_last", 0))):
                    found.add(spec.name)
                elif op.layout == "elementwise" or node.op_type == "Identity" or (
                        node.op_type in _QDQ and node.inputs[0] == name):
                    frontier.extend(node.outputs)
    return frozenset(found)


def input_specs(inputs: Sequence[TensorSpec], spatial: frozenset[str],
                channels_last: bool) -> list[TensorSpec]:
    """The graph's input specs as the module takes them: ``channels_last`` set on the
    ``spatial`` inputs (``Program.spatial_inputs``) of a channels-last module."""
    return [replace(s, channels_last=channels_last and s.name in spatial) for s in inputs]


def held_perm(spec: TensorSpec, rank: int) -> _layout.Perm:
    """The layout (relative to ONNX order) of a rank-``rank`` tensor ``spec`` at the
    module's boundary: ``(0, 2, ..., 1)`` when ``spec.channels_last``, else the identity."""
    return _layout.channels_last(rank) if spec.channels_last else _layout.identity(rank)


def to_module(x, spec: TensorSpec):
    """Tensor ``x`` of ``spec`` (NumPy or JAX) from ONNX order to the module's layout:
    ``[N, C, *spatial]`` -> ``[N, *spatial, C]`` when ``spec.channels_last``, else ``x``."""
    return _layout.convert(x, _layout.identity(np.ndim(x)), held_perm(spec, np.ndim(x))) \
        if spec.channels_last else x


def to_onnx(y, spec: TensorSpec):
    """Tensor ``y`` of ``spec`` from the module's layout to ONNX order: ``[N, *spatial, C]``
    -> ``[N, C, *spatial]`` when ``spec.channels_last``, else ``y``."""
    return _layout.to_onnx(y, held_perm(spec, np.ndim(y))) if spec.channels_last else y


def module_shape(spec: TensorSpec) -> tuple[int, ...]:
    """``spec``'s shape in the module's layout, unknown dims as 1 (tracing without feeds)."""
    shape = tuple(d if isinstance(d, int) else 1 for d in spec.shape or ())
    return tuple(shape[i] for i in held_perm(spec, len(shape)))


def stand_in(spec: TensorSpec):
    """A ``jax.ShapeDtypeStruct`` for input ``spec`` in the module's layout (see
    :func:`module_shape`; untyped: float32); a sequence gets one element, an optional a
    value."""
    tensor = jax.ShapeDtypeStruct(module_shape(spec), spec.dtype or np.float32)
    return [tensor] if spec.sequence else tensor


def held_input(spec: TensorSpec, value: Any) -> tuple[Any, _layout.Perm | None]:
    """Module input ``value`` of ``spec`` (from :func:`input_specs`; an array in the
    module's layout, a list of arrays, ``None``), checked, as the interpreter holds it:
    ``(array, its layout relative to ONNX order)``, a sequence or ``None`` with layout
    ``None``."""
    check_feed(spec, value, spec.channels_last)
    if value is None or isinstance(value, (list, tuple)):
        return _as_jax(value), None
    return jnp.asarray(value), held_perm(spec, np.ndim(value))


def _returns_channels_last(perm: _layout.Perm, channels_last: bool) -> bool:
    """Whether a graph output held as ``perm`` is returned channels-last (image outputs of a
    channels-last module) rather than in ONNX order."""
    rank = len(perm)
    return channels_last and rank >= 3 and perm == _layout.channels_last(rank)


def module_output(value, perm: _layout.Perm, channels_last: bool):
    """Graph output tensor ``value`` held as ``perm`` as the module returns it (a JAX array):
    ``[N, *spatial, C]`` when :func:`_returns_channels_last`, else in ONNX order."""
    return jnp.asarray(value if _returns_channels_last(perm, channels_last)
                       else _layout.to_onnx(value, perm))


@struct.dataclass
class Output:
    """A graph output at the boundary: ``value`` (an array, a list of arrays for a sequence,
    ``None`` for an empty optional) and ``spec``, static, the output's spec with
    ``channels_last`` set when the module returns it ``[N, *spatial, C]``. The module gives
    ``value`` in its layout; :func:`in_onnx_order` moves it to ONNX order."""

    value: Any
    spec: TensorSpec = struct.field(pytree_node=False)


def graph_output(spec: TensorSpec, value, perm: _layout.Perm | None,
                 channels_last: bool) -> Output:
    """Graph output ``spec`` computed as ``value`` held as ``perm`` (``None`` for sequences
    and empty optionals), checked against its declared kind, as a module with
    ``channels_last`` returns it."""
    check_output(spec, value)
    if perm is None:
        return Output(_as_jax(value), spec)
    return Output(module_output(value, perm, channels_last),
                  replace(spec, channels_last=_returns_channels_last(perm, channels_last)))


def in_onnx_order(output: Output) -> Output:
    """``output`` (from the module) with its tensor in ONNX order."""
    return replace(output, value=to_onnx(output.value, output.spec)) \
        if output.spec.channels_last else output


def _as_jax(value):
    """A sequence (list or tuple of arrays) as a list of JAX arrays; ``None`` stays."""
    return None if value is None else [jnp.asarray(v) for v in value]


# --- feeds and outputs ------------------------------------------------------------------


def onnx_feeds(feeds: Mapping[str, Any], specs: Sequence[TensorSpec]) -> list[Any]:
    """``run``'s ``feeds`` (name -> array in ONNX order; a list of arrays for a sequence,
    ``None`` for an empty optional) for inputs ``specs``, checked, in their order, each
    tensor in its declared dtype."""
    names = [s.name for s in specs]
    if not isinstance(feeds, Mapping):
        raise InvalidInputError(f"feeds must be a dict of input name -> array, got "
                                f"{type(feeds).__name__}; the model's inputs are {names}")
    unknown = sorted(set(feeds) - set(names), key=repr)
    if unknown:
        raise InvalidInputError(f"unknown input name(s) {unknown}; the model's inputs are {names}")
    missing = [n for n in names if n not in feeds]
    if missing:
        raise InvalidInputError(f"missing input(s) {missing}; the model's inputs are {names}")
    arrays = []
    for spec in specs:
        value = _as_feed(feeds[spec.name], spec)
        check_feed(spec, value, False)
        arrays.append(_map_tensors(lambda x, s=spec: x if s.dtype is None or x.dtype == s.dtype
                                   else np.asarray(x, dtype=s.dtype), value))
    return arrays


def _as_feed(value: Any, spec: TensorSpec):
    """``value`` with its tensors as arrays: a list or tuple given for a sequence becomes a
    list of arrays, any other value (nested lists too) one array; ``None`` stays."""
    if value is None:
        return None
    if spec.sequence and isinstance(value, (list, tuple)):
        return [as_array(v, f"element {i} of input {spec.name!r}") for i, v in enumerate(value)]
    return as_array(value, f"input {spec.name!r}")


def as_array(value: Any, what: str):
    """``value`` as a NumPy or JAX array of numbers or bools (a torch tensor, a nested list:
    converted), else :class:`~onnx2flax.errors.InvalidInputError`."""
    if not isinstance(value, (np.ndarray, jax.Array)):
        try:
            value = np.asarray(value)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise InvalidInputError(f"{what} cannot be read as an array ({type(exc).__name__}: "
                                    f"{exc})") from None
    dtype = np.dtype(value.dtype)  # ml_dtypes (bfloat16, int4, float8...) are kind "V"
    if dtype.kind in "OSUMm" or dtype.type is np.void:
        raise InvalidInputError(f"{what} has dtype {value.dtype}; onnx2flax takes arrays of "
                                "numbers or bools")
    return value


def check_feed(spec: TensorSpec, value: Any, channels_last: bool) -> None:
    """Raise :class:`InvalidInputError` unless ``value`` fits input ``spec``: an array for a
    tensor (``[N, *spatial, C]`` when ``channels_last``, else in ONNX order), a list of
    arrays for a sequence, ``None`` too for an optional."""
    what = f"input {spec.name!r}"
    if value is None:
        if not spec.optional:
            raise InvalidInputError(f"{what} is a {spec.kind}, got None (only optional inputs "
                                    "may be None)")
        return
    if spec.sequence:
        if not isinstance(value, (list, tuple)):
            raise InvalidInputError(f"{what} is a {spec.kind}: it takes a list of arrays, got "
                                    f"{type(value).__name__}")
        for i, element in enumerate(value):
            _check_tensor(spec, element, False, f"element {i} of {what}")
        return
    if isinstance(value, (list, tuple)):
        raise InvalidInputError(f"{what} is a {spec.kind}, not a sequence: it takes an array, "
                                f"got a {type(value).__name__}")
    _check_tensor(spec, value, channels_last, what)


def _check_tensor(spec: TensorSpec, value: Any, channels_last: bool, what: str) -> None:
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        raise InvalidInputError(f"{what} must be an array, got {type(value).__name__}")
    shape = tuple(np.shape(value))
    layout = _layout.channels_last(len(shape)) if channels_last else None
    if spec.shape is not None:
        if len(shape) != len(spec.shape):
            raise InvalidInputError(
                f"{what} must have rank {len(spec.shape)} (shape {list(spec.shape)}"
                f"{', channels-last' if channels_last else ''}), got shape {list(shape)}")
        onnx_shape = shape if layout is None else tuple(
            shape[layout.index(i)] for i in range(len(shape)))
        for axis, (want, got) in enumerate(zip(spec.shape, onnx_shape)):
            if isinstance(want, int) and want != got:
                raise InvalidInputError(
                    f"{what} has shape {list(onnx_shape)} in ONNX order, but "
                    f"dim {axis} must be {want} (expected {list(spec.shape)})")
    if spec.dtype is not None and _family(np.dtype(dtype)) != _family(spec.dtype):
        raise InvalidInputError(
            f"{what} must be {spec.dtype.name}, got {np.dtype(dtype).name}")


def check_output(spec: TensorSpec, value: Any) -> None:
    """Raise :class:`InvalidModelError` when graph output ``spec`` is declared a tensor and
    the graph computes a sequence or an empty optional, or the other way round."""
    typed = spec.sequence or spec.optional or spec.dtype is not None or spec.shape is not None
    if value is None:
        found = "an empty optional"
        ok = spec.optional or not typed
    elif isinstance(value, list):
        found = "a sequence"
        ok = spec.sequence or not typed
    else:
        found = "a tensor"
        ok = not spec.sequence
    if not ok:
        raise InvalidModelError(f"graph output {spec.name!r} is declared a {spec.kind}, but "
                                f"the graph computes {found}")


def cast_output(value, spec: TensorSpec):
    """Output ``value`` of ``spec`` (an array, a list of arrays, ``None``) as NumPy in the
    output's declared dtype (JAX computes int64 as int32 without x64), never across dtype
    families (that would hide a wrong graph)."""
    def cast(y):
        y = np.asarray(y)
        if spec.dtype is None or y.dtype == spec.dtype:
            return y
        if _family(y.dtype) != _family(spec.dtype):
            raise InvalidModelError(f"graph output {spec.name!r} is declared {spec.dtype.name}, "
                                    f"but the graph computes {y.dtype.name}")
        return y.astype(spec.dtype)

    return _map_tensors(cast, value)


def _map_tensors(fn, value):
    """``fn`` applied to a tensor, to each tensor of a sequence; ``None`` stays."""
    if value is None:
        return None
    return [fn(v) for v in value] if isinstance(value, list) else fn(value)


def _family(dtype: np.dtype) -> str:
    return {"f": "float", "c": "complex", "b": "bool", "i": "int", "u": "int"}.get(dtype.kind, dtype.kind)
