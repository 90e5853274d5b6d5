"""Evaluate nodes whose inputs are all known, in NumPy, with ONNX's reference evaluator.

Used at conversion time (constant subgraphs, weights computed by ConstantOfShape...) and at
trace time (shape subgraphs: Shape -> Gather -> Concat -> Reshape), so integer shape
arithmetic keeps ONNX's int64 semantics instead of JAX's default int32.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from .._core.graph import Node, TensorSpec, numpy_dtype, opset_for
from .._core.limits import budget
from ..errors import InvalidModelError, OnnxConversionError, ResourceLimitError, node_label

# Ops that must never be folded: random, with subgraphs / side channels, or misevaluated.
_NEVER_FOLD = {
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
    "Bernoulli", "If", "Loop", "Scan", "Dropout", "SequenceConstruct", "SequenceAt",
    "SequenceInsert", "SequenceEmpty", "SplitToSequence", "ConcatFromSequence",
    "SequenceLength", "SequenceErase", "SequenceMap", "Optional", "OptionalGetElement",
    "OptionalHasElement",
    # The reference evaluator orders an unsorted Unique wrongly (or fails); ops/dynamic.py
    # computes constant inputs exactly.
    "Unique",
    # Folded from its decoded attributes by normalize.
    "Constant",
}

# One evaluator per node and opsets, dropped with the node (keys by id() would be reused).
_evaluators: weakref.WeakKeyDictionary[Node, dict[tuple, ReferenceEvaluator]] = \
    weakref.WeakKeyDictionary()


def foldable(node: Node) -> bool:
    """Default-domain ops ONNX defines (unknown ones are left for ``check_supported`` to
    report with all the others)."""
    return node.domain == "" and node.op_type not in _NEVER_FOLD and onnx.defs.has(node.op_type)


def fold(node: Node, inputs: list[np.ndarray | None], opsets: dict[str, int],
         keep: bool = True) -> list[np.ndarray]:
    """Run one node on NumPy inputs (``None`` for omitted optional inputs): with ONNX's
    reference evaluator, else (it lacks the op's version, or fails on the inputs' types or
    shapes) with the op's own handler. ``keep``: keep the evaluator for the node's next
    run (a trace folds its nodes at every trace; normalize folds each node once, and keeps
    the nodes it folded in ``Graph.folded``)."""
    _check_output_size(node, inputs, opsets)
    cache = _evaluators.setdefault(node, {}) if keep else {}
    key = tuple(sorted(opsets.items()))
    evaluator = cache.get(key)
    if evaluator is None:
        try:
            evaluator = ReferenceEvaluator(_as_graph(node, opsets), opsets=dict(opsets))
        except Exception as exc:  # noqa: BLE001  (the handler is tried instead)
            evaluator = exc
        cache[key] = evaluator
    feeds = {name: value for name, value in zip(node.inputs, inputs) if name and value is not None}
    try:
        if isinstance(evaluator, Exception):
            raise evaluator
        outputs = evaluator.run(None, feeds)
    except (ResourceLimitError, MemoryError) as exc:
        raise ResourceLimitError(f"{node_label(node.name, node.op_type)}: {exc}") from None
    except Exception as exc:  # noqa: BLE001
        outputs = _by_handler(node, inputs, opsets, exc)
    outputs = [np.asarray(out) for out in outputs]
    for out in outputs:
        budget().charge_folded(out.nbytes, node_label(node.name, node.op_type), out.shape)
    return outputs


def _by_handler(node: Node, inputs: list[np.ndarray | None], opsets: dict[str, int],
                reference_error: Exception) -> list[np.ndarray]:
    """The op's own handler on ``inputs``, outputs cast to the types ONNX's type inference
    gives them (the handler may compute an int64 output as int32)."""
    from .module import evaluate_constant  # imports this module

    try:
        outputs = evaluate_constant(node, inputs, opsets)
    except OnnxConversionError as exc:
        raise type(exc)(f"{exc} (ONNX's reference evaluator failed too: "
                        f"{type(reference_error).__name__}: {reference_error})") from None
    if outputs is None:
        raise InvalidModelError(
            f"{node_label(node.name, node.op_type)} failed on constant inputs "
            f"{[None if v is None else v.shape for v in inputs]}: "
            f"{type(reference_error).__name__}: {reference_error}") from None
    types = _output_types(node, inputs, opsets)
    return [out if types.get(name) is None else out.astype(types[name])
            for name, out in zip(node.outputs, outputs)]


def _output_types(node: Node, inputs: list[np.ndarray | None],
                  opsets: dict[str, int]) -> dict[str, np.dtype]:
    """ONNX's type inference for ``node`` on inputs of these types (empty if it fails)."""
    graph = _as_graph(node, opsets)
    given = {name: value for name, value in zip(node.inputs, inputs) if name and value is not None}
    for info in graph.input:
        if info.name in given:
            info.type.tensor_type.elem_type = \
                onnx.helper.np_dtype_to_tensor_dtype(given[info.name].dtype)
    model = onnx.helper.make_model(graph, opset_imports=[
        onnx.helper.make_opsetid(domain, version) for domain, version in opsets.items()])
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph.output
        types = {info.name: numpy_dtype(info.type.tensor_type.elem_type) for info in inferred}
        return {name: dtype for name, dtype in types.items() if dtype is not None}
    except Exception:  # noqa: BLE001  (the handler's own types are kept)
        return {}


def _as_graph(node: Node, opsets: Mapping[str, int]) -> onnx.GraphProto:
    """``node`` alone in a graph: given a bare NodeProto the reference evaluator ignores
    ``opsets`` and runs the newest op version (Unsqueeze-13 for an opset-9 Unsqueeze)."""
    inputs = [onnx.ValueInfoProto(name=n) for n in dict.fromkeys(node.inputs) if n]
    outputs = [onnx.ValueInfoProto(name=n) for n in node.outputs if n]
    return onnx.helper.make_graph([node_proto(node, opsets)], "fold", inputs, outputs)


def node_proto(node: Node, opsets: Mapping[str, int]) -> onnx.NodeProto:
    """``node`` as a NodeProto, for ONNX's reference evaluator and shape inference. Made
    on demand: nodes keep no protobuf (one taken from the model would keep the whole
    ModelProto, weights included, alive). Attributes are those decoded (numbers, strings,
    tensors, lists of these, Optional's type); nodes with subgraphs are never evaluated
    (``_NEVER_FOLD``, and ``_compare`` arbitrates none)."""
    attrs = [_attribute(node, name, value, opsets) for name, value in node.attrs.items()]
    proto = helper.make_node(node.op_type, node.inputs, node.outputs, name=node.name,
                             domain=node.domain or None)
    proto.attribute.extend(attrs)
    return proto


def _attribute(node: Node, name: str, value: Any, opsets: Mapping[str, int]) -> onnx.AttributeProto:
    """One decoded attribute as an AttributeProto; floats were read as float32 and become
    float32 again, strings were UTF-8 and become UTF-8 bytes again."""
    if isinstance(value, np.ndarray):
        value = numpy_helper.from_array(value)
    elif isinstance(value, TensorSpec):
        value = _type_proto(value)
    elif isinstance(value, list) and value and isinstance(value[0], np.ndarray):
        value = [numpy_helper.from_array(v) for v in value]
    elif isinstance(value, list) and not value:  # no element tells the type: the schema does
        return helper.make_attribute(name, value, attr_type=_schema_type(node, name, opsets))
    return helper.make_attribute(name, value)


def _schema_type(node: Node, name: str, opsets: Mapping[str, int]) -> int:
    """The type of attribute ``name`` in the schema of ``node``'s op at its opset (else in
    the newest schema); ints for an attribute no schema defines (the reference evaluator
    cannot run such a node whatever the type)."""
    for version in ((opset_for(opsets, node.domain),), ()):
        try:
            schema = onnx.defs.get_schema(node.op_type, *version, domain=node.domain)
        except onnx.defs.SchemaError:
            continue
        if name in schema.attributes:
            return int(schema.attributes[name].type)
    return onnx.AttributeProto.INTS


def _type_proto(spec: TensorSpec) -> onnx.TypeProto:
    """The TypeProto a :class:`TensorSpec` was decoded from (an Optional's ``type``)."""
    if spec.dtype is None and spec.shape is None and not (spec.sequence or spec.optional):
        return onnx.TypeProto()
    tp = helper.make_tensor_type_proto(
        0 if spec.dtype is None else helper.np_dtype_to_tensor_dtype(spec.dtype),
        None if spec.shape is None else list(spec.shape))
    if spec.sequence:
        tp = helper.make_sequence_type_proto(tp)
    return helper.make_optional_type_proto(tp) if spec.optional else tp


def _check_output_size(node: Node, inputs: list[np.ndarray | None],
                       opsets: dict[str, int]) -> None:
    """Refuse, before evaluating, a node whose outputs would exceed the budget: their shape
    comes from a per-op rule, or for ops that cannot grow past their inputs from a bound on
    those, or else from ONNX shape inference on the node alone."""
    label = node_label(node.name, node.op_type)
    try:
        shape = _output_shape(node, inputs)
    except (TypeError, ValueError, OverflowError, IndexError) as exc:
        raise InvalidModelError(f"{label}: its output size cannot "
                                f"be computed from its inputs ({exc})") from None
    current = budget()
    itemsize = max([v.itemsize for v in inputs if v is not None] + [1])
    if shape is None:
        bound = _input_bound(node, inputs)
        room = min(current.allowed("tensor_bytes"),
                   current.allowed("folded_bytes") - current.folded, _CHEAP_BYTES)
        if bound is not None and bound * 8 <= room:
            return
        shapes = _inferred_shapes(node, inputs, opsets)
        if shapes is None:
            if bound is None:
                raise ResourceLimitError(
                    f"{label}: the size of its output cannot be known before evaluating it "
                    "(ONNX shape inference gives none), so it is not folded")
            shape = [bound]
        else:
            nbytes = sum(float(np.prod(s, dtype=np.float64)) * size for s, size in shapes)
            current.check_tensor(nbytes, label, max(shapes, key=len)[0])
            current.check("folded_bytes", current.folded + nbytes, label,
                          "the total size in bytes of values computed from constants")
            return
    if not all(0 <= d < np.inf for d in shape):  # also catches NaN
        raise InvalidModelError(f"{label}: output dims {shape} are not sizes")
    nbytes = (float(np.prod(shape, dtype=np.float64)) if shape else 1.0) * itemsize
    current.check_tensor(nbytes, label, shape)
    current.check("folded_bytes", current.folded + nbytes, label,
                  "the total size in bytes of values computed from constants")


#: Below this bound an op that cannot grow past its inputs is evaluated without inference.
_CHEAP_BYTES = 64 * 2 ** 20

#: Ops whose outputs hold at most (product or sum of the input sizes) x (largest rank)
#: elements whatever their attributes.
_WITHIN_INPUTS = frozenset(
    "Abs Acos Acosh And ArgMax ArgMin Asin Asinh Atan Atanh BitShift BitwiseAnd BitwiseNot "
    "BitwiseOr BitwiseXor Cast CastLike Ceil Clip Compress Concat Cos Cosh CumSum DepthToSpace "
    "Div Einsum Elu Equal Erf Exp Flatten Floor Gather GatherElements GatherND Gelu Greater "
    "GreaterOrEqual HardSigmoid HardSwish Identity IsInf IsNaN LeakyRelu Less LessOrEqual Log "
    "LogSoftmax MatMul Max Mean Min Mod Mul Neg NonMaxSuppression NonZero Not Or Pow Reciprocal ReduceL1 ReduceL2 "
    "ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum "
    "ReduceSumSquare Relu Reshape Round ScatterElements ScatterND Selu Shape Sigmoid Sign Sin "
    "Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh "
    "TopK Transpose Trilu Unsqueeze Where Xor".split())


def _input_bound(node: Node, inputs: list[np.ndarray | None]) -> float | None:
    if node.op_type not in _WITHIN_INPUTS:
        return None
    sizes = [float(max(v.size, 1)) for v in inputs if v is not None] or [1.0]
    rank = max([v.ndim for v in inputs if v is not None] + [1])
    return max(float(np.prod(sizes)), sum(sizes)) * rank


def _inferred_shapes(node: Node, inputs: list[np.ndarray | None],
                     opsets: dict[str, int]) -> list[tuple[list[int], int]] | None:
    """The output shapes and item sizes ONNX shape inference gives ``node`` (small integer
    inputs passed as values, the others as shapes and types), or ``None`` when some dim
    stays unknown."""
    given, infos = [], []
    for name, value in zip(node.inputs, inputs):
        if not name or value is None or name in given:
            continue
        given.append(name)
        elem = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
        if value.dtype.kind in "iub" and value.size <= 64:
            infos.append(onnx.numpy_helper.from_array(value, name))
        else:
            infos.append(onnx.helper.make_tensor_value_info(name, elem, value.shape))
    graph = onnx.helper.make_graph(
        [node_proto(node, opsets)], "infer", [i for i in infos if isinstance(i, onnx.ValueInfoProto)],
        [onnx.ValueInfoProto(name=n) for n in node.outputs if n],
        initializer=[i for i in infos if isinstance(i, onnx.TensorProto)])
    model = onnx.helper.make_model(graph, opset_imports=[
        onnx.helper.make_opsetid(domain, version) for domain, version in opsets.items()])
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    except Exception:  # noqa: BLE001  (inference failing only means "unknown")
        return None
    known = {v.name: v for v in (*inferred.output, *inferred.value_info)}
    shapes = []
    for name in node.outputs:
        if not name:
            continue
        info = known.get(name)
        tensor = info.type.tensor_type if info is not None else None
        if tensor is None or not tensor.HasField("shape") \
                or not all(d.HasField("dim_value") for d in tensor.shape.dim):
            return None
        try:
            size = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).itemsize
        except (KeyError, ValueError, TypeError):
            size = 8
        shapes.append(([int(d.dim_value) for d in tensor.shape.dim], size))
    return shapes


def _ints(value) -> list[int]:
    value = np.asarray(value)
    if value.dtype.kind not in "iu":
        raise TypeError(f"sizes must be integers, got {value.dtype.name}")
    return [int(d) for d in value.reshape(-1)]


def _output_shape(node: Node, inputs: list[np.ndarray | None]) -> list[float] | None:
    """The output shape of size-creating ops, from their (constant) inputs; float dims so
    that absurd sizes cannot overflow."""
    op = node.op_type
    shapes = [list(np.shape(v)) for v in inputs if v is not None]
    given = [v is not None for v in inputs]
    if op == "ConstantOfShape" and given[:1] == [True]:
        return _ints(inputs[0])
    if op == "Expand" and given[:2] == [True, True]:
        return _broadcast([shapes[0], _ints(inputs[1])])
    if op == "Tile" and given[:2] == [True, True]:
        return [d * r for d, r in zip(shapes[0], _ints(inputs[1]))]
    if op == "Range" and len(inputs) == 3 and all(given):
        start, limit, delta = (float(np.asarray(v).reshape(-1)[0]) for v in inputs)
        if delta == 0 or not np.isfinite([start, limit, delta]).all():
            raise ValueError(f"start {start}, limit {limit}, delta {delta} give no finite range")
        return [max(np.ceil((limit - start) / delta), 0.0)]
    if op == "Pad" and given[:1] == [True]:
        pads = _ints(inputs[1]) if len(inputs) > 1 and given[1] else _ints(node.attrs.get("pads", []))
        rank = len(shapes[0])
        if len(pads) == 2 * rank:
            return [float(d + a + b) for d, a, b in zip(shapes[0], pads[:rank], pads[rank:])]
        return None
    if op in ("Resize", "Upsample") and given[:1] == [True]:
        rank = len(shapes[0])
        if len(inputs) > 3 and given[3] and np.size(inputs[3]):
            return [float(d) for d in _ints(inputs[3])]
        scales = next((np.asarray(v, np.float64).reshape(-1) for v in inputs[1:3]
                       if v is not None and np.size(v) == rank and np.asarray(v).dtype.kind == "f"),
                      None)
        if scales is not None:
            return [np.floor(d * s) for d, s in zip(shapes[0], scales)]
        return None
    if op == "OneHot" and len(inputs) > 1 and all(given[:2]):
        return shapes[0] + [float(np.abs(np.asarray(inputs[1])).reshape(-1)[0])]
    if op in ("MatMul", "Gemm") and len(shapes) >= 2 and all(len(s) >= 2 for s in shapes[:2]):
        a, b = shapes[:2]
        rows = a[-1] if node.attrs.get("transA") == 1 else a[-2]
        cols = b[-2] if node.attrs.get("transB") == 1 else b[-1]
        batch = _broadcast([a[:-2], b[:-2]]) if len(a) + len(b) > 4 else []
        return None if batch is None else batch + [float(rows), float(cols)]
    if op in _BROADCASTING and len(shapes) >= 2:
        return _broadcast(shapes)
    return None


_BROADCASTING = {"Add", "Sub", "Mul", "Div", "Pow", "Mod", "Where", "Equal", "Less",
                 "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor", "BitShift",
                 "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Max", "Min", "Mean", "Sum", "PRelu"}


def _broadcast(shapes: list[list[int]]) -> list[float] | None:
    """NumPy broadcasting of ``shapes`` (``None`` when they do not broadcast)."""
    rank = max(len(s) for s in shapes)
    out = []
    for dims in zip(*[[1] * (rank - len(s)) + list(s) for s in shapes]):
        big = {d for d in dims if d != 1}
        if len(big) > 1:
            return None
        out.append(float(big.pop() if big else 1))
    return out
