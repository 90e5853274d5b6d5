"""Stage 2: ModelProto -> Graph.

Inlines local functions, decodes attributes and tensors once (filling in the defaults of the
op's ONNX schema at the model's opset, or of its handler), checks that every name is defined
exactly once and that the graph has no cycle (sorting it topologically), and folds nodes
whose inputs are all constant.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.inliner
from onnx import helper

from .. import ops  # noqa: F401  (registers the handlers, whose defaults fill node.attrs)
from .._core.graph import (Graph, Node, TensorSpec, decode_text, is_float_weight,
                           is_weight_dequantization, node_name, numpy_dtype, onnx_domain,
                           opset_for, opset_map)
from .._core.limits import budget
from .._core.registry import lookup, schema_defaults
from ..errors import InvalidModelError, UnsupportedOpError, node_label
from .fold import fold, foldable
from .inputs import apply_given
from .load import tensor_to_array

#: Newest default-domain opset the converter knows; newer models are refused.
_MAX_OPSET = onnx.defs.onnx_opset_version()


def normalize(model: onnx.ModelProto, base_dir: Path | None, *,
              input_shapes: Mapping[str, Sequence[int]] | None = None,
              constants: Mapping[str, Any] | None = None) -> Graph:
    """Decode ``model`` into a folded, sorted :class:`Graph`; ``input_shapes`` fixes the
    dims of graph inputs, ``constants`` freezes graph inputs to values (folded like
    initializers)."""
    opsets = opset_map(model.opset_import)
    if opsets[""] > _MAX_OPSET or opsets[""] < 1:
        raise UnsupportedOpError(
            f"the model uses default-domain opset {opsets['']}; this onnx2flax (onnx "
            f"{onnx.__version__}) knows opsets 1..{_MAX_OPSET}")
    if model.functions:
        _check_inlined_size(model)
        try:
            model = onnx.inliner.inline_local_functions(model)
        except Exception as exc:
            raise InvalidModelError(f"local functions could not be inlined: {exc}") from None
    return _decode_graph(model.graph, opsets, base_dir, outer=frozenset(),
                         given=(input_shapes, constants))


def _check_inlined_size(model: onnx.ModelProto) -> None:
    """Refuse, before inlining, functions that would expand to more nodes than the budget's
    ``inlined_nodes`` (functions calling each other twice per level double each level)."""
    local = {(f.domain, f.name, getattr(f, "overload", "")): f for f in model.functions}
    sizes: dict[tuple, float] = {}
    current = budget()

    def size(nodes, path: tuple, depth: int) -> float:
        if depth > current.limits.subgraph_depth:
            current.check("subgraph_depth", depth, f"function {path[-1][1]!r}" if path
                          else "the main graph", "the nesting depth of function calls and "
                          "subgraphs")
        total = 0.0
        for node in nodes:
            key = (node.domain, node.op_type, getattr(node, "overload", ""))
            if key in local:
                if key in path:
                    raise InvalidModelError(f"local functions cannot be inlined: "
                                            f"{key[0]}::{key[1]} calls itself")
                if key not in sizes:
                    sizes[key] = size(local[key].node, path + (key,), depth + 1)
                total += sizes[key]
            else:
                total += 1
            for a in node.attribute:
                for g in ([a.g] if a.HasField("g") else a.graphs):
                    total += size(g.node, path, depth + 1)
        return total

    current.check("inlined_nodes", size(model.graph.node, (), 0),
                  "the model's graph with its local functions inlined", "the count of nodes")


def _spec(info: onnx.ValueInfoProto, what: str) -> TensorSpec:
    return _type_spec(info.name, info.type, f"{what} {info.name!r}")


def _type_spec(name: str, tp: onnx.TypeProto, what: str) -> TensorSpec:
    """The :class:`TensorSpec` of a tensor, a sequence of tensors or an optional of either."""
    kind = tp.WhichOneof("value")
    if kind is None:  # legal, e.g. for subgraph inputs and outputs: typed by what flows in
        return TensorSpec(name, None, None)
    if kind in ("sequence_type", "optional_type"):
        inner = _type_spec(name, getattr(tp, kind).elem_type, what)
        if inner.optional or (inner.sequence and kind == "sequence_type"):
            raise UnsupportedOpError(f"{what} is a {kind.removesuffix('_type')} of "
                                     f"{inner.kind}s; onnx2flax supports sequences of tensors "
                                     "and optionals of tensors or sequences only")
        return replace(inner, sequence=True) if kind == "sequence_type" \
            else replace(inner, optional=True)
    if kind != "tensor_type":
        raise UnsupportedOpError(f"{what} is a {kind}; onnx2flax converts tensors, sequences "
                                 "of tensors and optionals of these only")
    t = tp.tensor_type
    shape = None
    if t.HasField("shape"):
        shape = tuple(
            int(d.dim_value) if d.HasField("dim_value") and d.dim_value >= 0
            else (d.dim_param or None) for d in t.shape.dim)
    dtype = numpy_dtype(t.elem_type, what) if t.elem_type else None
    if dtype is not None and dtype.kind in "OSU":
        raise UnsupportedOpError(f"{what} is a string tensor; JAX has no string "
                                 "dtype, onnx2flax converts numeric and bool tensors only")
    return TensorSpec(name, shape, dtype)


def _decode_graph(g: onnx.GraphProto, opsets: dict[str, int], base_dir: Path | None,
                  outer: frozenset[str], given: tuple | None = None) -> Graph:
    with budget().nested(f"graph {g.name[:100]!r}"):
        return _decode_nested(g, opsets, base_dir, outer, given)


def _decode_nested(g: onnx.GraphProto, opsets: dict[str, int], base_dir: Path | None,
                   outer: frozenset[str], given: tuple | None) -> Graph:
    constants: dict[str, np.ndarray] = {}
    for init in g.initializer:
        budget().check_name(init.name, "initializer")
        if init.name in constants:
            raise InvalidModelError(f"initializer {init.name!r} is defined twice")
        constants[init.name] = tensor_to_array(init, base_dir, f"initializer {init.name!r}")
    if len(g.sparse_initializer):
        raise UnsupportedOpError("sparse initializers are not supported")
    inputs = [_spec(i, "graph input") for i in g.input if i.name not in constants]
    if given is not None:
        inputs = apply_given(inputs, constants, *given)
    outputs = [_spec(o, "graph output") for o in g.output]
    names = [i.name for i in inputs]
    if len(set(names)) != len(names) or "" in names:
        raise InvalidModelError(f"graph inputs must have distinct, non-empty names, got {names}")

    nodes = []
    scope: list[frozenset[str]] = []  # what subgraphs may read: built once, on first use
    current = budget()
    for index, proto in enumerate(g.node):
        name = node_name(proto.name, proto.op_type, index)
        for text in (name, *proto.input, *proto.output):
            current.check_name(text, f"{node_label(name[:60], proto.op_type)}: the name")
        _check_schema(proto, name, opsets)
        attrs = {a.name: _attribute(a, name, proto.op_type, opsets, base_dir,
                                    lambda: _scope(scope, outer, constants, g))
                 for a in proto.attribute}
        _fill_defaults(attrs, proto, opsets)
        nodes.append(Node(name, proto.op_type, onnx_domain(proto.domain), list(proto.input),
                          list(proto.output), attrs, _torch_scope(proto)))

    known = set(constants) | {i.name for i in inputs}
    nodes = _sorted(nodes, known, outer)
    graph = Graph(g.name or "graph", nodes, inputs, outputs, constants, opsets,
                  initializers=frozenset(constants), outer=sorted(_outer_reads(nodes, known) & outer))
    produced = known | {o for n in nodes for o in n.outputs if o}
    for out in outputs:
        if out.name not in produced and out.name not in outer:
            raise InvalidModelError(f"graph output {out.name!r} is produced by no node, "
                                    "input or initializer")
    _fold_constants(graph, _declared_dtypes(g))
    return graph


#: Longest metadata value read for a node's PyTorch scope (they are a few hundred characters).
_SCOPE_TEXT = 8192


def _torch_scope(proto: onnx.NodeProto) -> tuple[tuple[str, str], ...]:
    """The node's PyTorch module scope from torch dynamo's metadata (``name_scopes``, the
    attribute paths, and ``class_hierarchy``, their classes: Python list literals, the
    root first and the node's own op last); ``()`` where absent or malformed."""
    meta = {p.key: p.value for p in proto.metadata_props
            if p.key in ("pkg.torch.onnx.name_scopes", "pkg.torch.onnx.class_hierarchy")}
    if len(meta) != 2 or any(len(v) > _SCOPE_TEXT for v in meta.values()):
        return ()
    try:
        paths = ast.literal_eval(meta["pkg.torch.onnx.name_scopes"])
        classes = ast.literal_eval(meta["pkg.torch.onnx.class_hierarchy"])
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return ()
    if not (isinstance(paths, list) and isinstance(classes, list)
            and len(paths) == len(classes) >= 2
            and all(isinstance(v, str) for v in paths + classes)):
        return ()
    return tuple(zip(paths[1:-1], classes[1:-1]))


def _declared_dtypes(g: onnx.GraphProto) -> dict[str, np.dtype]:
    """Element types the file declares for inputs and intermediate values (value_info)."""
    out = {}
    for info in (*g.input, *g.value_info):
        if info.type.WhichOneof("value") == "tensor_type":
            dtype = numpy_dtype(info.type.tensor_type.elem_type)
            if dtype is not None:
                out[info.name] = dtype
    return out


def _scope(cache: list, outer: frozenset[str], constants, g: onnx.GraphProto) -> frozenset[str]:
    """The names subgraphs of ``g`` may read (computed once per graph)."""
    if not cache:
        cache.append(frozenset(outer | set(constants) | {i.name for i in g.input}
                               | {o for n in g.node for o in n.output}))
    return cache[0]


def _attribute(a: onnx.AttributeProto, node_name: str, op_type: str, opsets, base_dir, scope):
    what = f"attribute {a.name!r} of {node_label(node_name, op_type)}"
    if a.ref_attr_name:
        raise InvalidModelError(f"{what} refers to a function attribute outside a function")
    if a.type == onnx.AttributeProto.TENSOR:
        return tensor_to_array(a.t, base_dir, what)
    if a.type == onnx.AttributeProto.GRAPH:
        return _decode_graph(a.g, opsets, base_dir, scope())
    if a.type == onnx.AttributeProto.GRAPHS:
        return [_decode_graph(sub, opsets, base_dir, scope()) for sub in a.graphs]
    if a.type == onnx.AttributeProto.TENSORS:
        return [tensor_to_array(t, base_dir, what) for t in a.tensors]
    if a.type == onnx.AttributeProto.TYPE_PROTO:  # Optional's element type
        return _type_spec("", a.tp, what)
    if a.type in (onnx.AttributeProto.SPARSE_TENSOR, onnx.AttributeProto.SPARSE_TENSORS,
                  onnx.AttributeProto.TYPE_PROTOS):
        raise UnsupportedOpError(f"{what} has type {onnx.AttributeProto.AttributeType.Name(a.type)},"
                                 " which onnx2flax does not support")
    try:
        value = helper.get_attribute_value(a)
    except Exception as exc:
        raise InvalidModelError(f"{what} cannot be read: {exc}") from None
    return decode_text(value)


def _fill_defaults(attrs: dict[str, Any], proto: onnx.NodeProto, opsets: dict[str, int]) -> None:
    """Complete ``attrs`` with the defaults of the op's ONNX schema at the node's opset, then
    with those its handler registers (for ops or versions onnx gives none), so that every
    reader of ``node.attrs`` (handlers, params builders, fusions, folds) sees one default."""
    spec = lookup(proto, opsets)
    schema = schema_defaults(onnx_domain(proto.domain), proto.op_type,
                             opset_for(opsets, proto.domain))
    for key, value in {**(spec.defaults if spec else {}), **schema}.items():
        attrs.setdefault(key, list(value) if isinstance(value, list) else value)


def _check_schema(proto: onnx.NodeProto, name: str, opsets: dict[str, int]) -> None:
    """Input/output counts and attribute names and types against the ONNX schema of a
    default-domain op, so handlers can rely on them. Unknown ops are left to
    ``check_supported``, which reports them all at once."""
    if onnx_domain(proto.domain):
        return
    opset = opsets[""]
    try:
        schema = onnx.defs.get_schema(proto.op_type, opset, "")
    except onnx.defs.SchemaError:
        return
    label = f"{node_label(name, proto.op_type)} (opset {opset})"
    for kind, given, low, high in (("inputs", len(proto.input), schema.min_input, schema.max_input),
                                   ("outputs", len(proto.output), schema.min_output,
                                    schema.max_output)):
        if not low <= given <= high:
            raise InvalidModelError(f"{label} has {given} {kind}; the op takes "
                                    f"{low}{'' if low == high else f' to {high}'}")
    for index, (formal, given) in enumerate(zip(schema.inputs, proto.input)):
        if not given and formal.option == onnx.defs.OpSchema.FormalParameterOption.Single:
            raise InvalidModelError(f"{label}: input {index} ({formal.name}) is required but "
                                    "its name is empty")
    seen = set()
    for a in proto.attribute:
        spec = schema.attributes.get(a.name)
        if a.name in seen:
            raise InvalidModelError(f"{label} has attribute {a.name!r} twice")
        seen.add(a.name)
        if spec is None:
            raise InvalidModelError(f"{label} has attribute {a.name!r}, which the op does not "
                                    f"define (it knows {sorted(schema.attributes)})")
        if a.type != int(spec.type):
            raise InvalidModelError(
                f"attribute {a.name!r} of {label} must be of type {spec.type.name}, found "
                f"{onnx.AttributeProto.AttributeType.Name(a.type)}")
    missing = sorted(k for k, spec in schema.attributes.items() if spec.required and k not in seen)
    if missing:
        raise InvalidModelError(f"{label} lacks required attribute(s) {missing}")


def _outer_reads(nodes: list[Node], known: set[str]) -> set[str]:
    produced = set(known)
    reads: set[str] = set()
    for node in nodes:
        reads.update(n for n in node.reads() if n not in produced)
        produced.update(node.outputs)
    return reads


def _sorted(nodes: list[Node], known: set[str], outer: frozenset[str]) -> list[Node]:
    """Topological order (stable); errors for dangling names, duplicates and cycles."""
    producer: dict[str, Node] = {}
    for node in nodes:
        for out in node.outputs:
            if not out:
                continue
            if out in producer or out in known:
                raise InvalidModelError(
                    f"{node_label(node.name, node.op_type)} writes {out!r}, which is already "
                    "defined by another node, input or initializer")
            producer[out] = node

    for node in nodes:
        for name in node.reads():
            if name not in producer and name not in known and name not in outer:
                raise InvalidModelError(
                    f"{node_label(node.name, node.op_type)} reads {name!r}, which no node, "
                    "input or initializer defines")
    order: list[Node] = []
    state: dict[int, int] = {}  # 1 = visiting, 2 = done
    for root in nodes:
        stack = [(root, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0:
                if state.get(id(node)) == 2:
                    continue
                state[id(node)] = 1
            names = node.reads()
            while i < len(names):
                dep = producer.get(names[i])
                i += 1
                if dep is None or state.get(id(dep)) == 2:
                    continue
                if state.get(id(dep)) == 1:
                    raise InvalidModelError(
                        f"the graph has a cycle through {node_label(node.name, node.op_type)} "
                        f"and {node_label(dep.name, dep.op_type)}")
                stack.append((node, i))
                stack.append((dep, 0))
                break
            else:
                state[id(node)] = 2
                order.append(node)
    return order


def _constant_value(node: Node) -> np.ndarray:
    attrs = node.attrs
    label = node_label(node.name, node.op_type)
    if len(attrs) != 1:
        raise InvalidModelError(f"{label} must have exactly one value attribute, found "
                                f"{sorted(attrs)}")
    if "value" in attrs:
        return np.asarray(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    raise UnsupportedOpError(f"{label}: only numeric values are supported (value, value_float(s),"
                             f" value_int(s)), found {sorted(attrs)}")


def dequantize_weights(graph: Graph) -> None:
    """Fold the weight DequantizeLinear nodes normalization kept (and what then becomes
    constant): float weights at conversion (``convert(dequantize_weights=True)``)."""
    _fold_constants(graph, {}, keep_quantized=False)


def _fold_constants(graph: Graph, dtypes: dict[str, np.dtype], keep_quantized: bool = True) -> None:
    kept = []
    consts = graph.constants
    producers = {o: n for n in graph.nodes for o in n.outputs if o}
    dtype_of: dict[str, np.dtype | None] = {}  # CastLike type sources resolved so far
    for node in graph.nodes:
        if node.op_type == "Constant" and node.domain == "":
            consts[node.outputs[0]] = _constant_value(node)
            graph.folded[node.outputs[0]] = node
            continue
        ins = [i for i in node.inputs if i]
        like = _cast_like_dtype(graph, node, producers, dtypes, dtype_of)
        if like is not None:  # CastLike(constant, input): only the input's dtype is read
            consts[node.outputs[0]] = consts[node.inputs[0]].astype(like)
            graph.folded[node.outputs[0]] = node
            continue
        if foldable(node) and all(i in consts for i in ins) and not (
                keep_quantized and is_weight_dequantization(node, consts)):
            values = fold(node, [consts[i] if i else None for i in node.inputs], graph.opsets,
                          keep=False)
            for name, value in zip(node.outputs, values):
                if name:
                    consts[name] = value
            graph.folded.update(dict.fromkeys(node.outputs, node))
            origin = _origin(graph, [i for i in ins if i in consts])
            if is_weight_dequantization(node, consts):  # onnxruntime names it W_quantized
                origin = graph.origins.get(node.inputs[0], node.inputs[0])
                origin = origin.removesuffix("_quantized")
            if origin is not None:
                for name in node.outputs:
                    graph.origins[name] = origin
            continue
        kept.append(node)
    graph.nodes = kept


# Ops whose (first) output has the dtype of input 0 (Where: of input 1).
_SAME_DTYPE = frozenset(
    "Abs Add AveragePool BatchNormalization Ceil Clip Concat Conv ConvTranspose Div Dropout Elu "
    "Erf Exp Expand Flatten Floor Gather Gelu Gemm GlobalAveragePool GlobalMaxPool "
    "GroupNormalization HardSigmoid HardSwish Identity InstanceNormalization LayerNormalization "
    "LeakyRelu Log LogSoftmax MatMul Max MaxPool Min Mish Mul Neg Pad Pow PRelu ReduceMax "
    "ReduceMean ReduceMin ReduceSum Relu Reshape Resize Selu Sigmoid Sin Cos Slice Softmax "
    "Softplus Split Sqrt Squeeze Sub Tanh Tile Transpose Unsqueeze".split())


def _cast_like_dtype(graph: Graph, node: Node, producers: dict[str, Node],
                     declared: dict[str, np.dtype], cache: dict[str, np.dtype | None]
                     ) -> np.dtype | None:
    """The target dtype of a CastLike whose data is constant and whose type source has a
    dtype known without running the graph (declared in the file, or followed back through
    dtype-preserving ops), else None. Dynamo exports make the zero bias of every bias-free
    Conv as ``CastLike(0, activation)``. ``cache`` keeps each name's answer, so N CastLikes
    walk a chain once in all."""
    if node.op_type != "CastLike" or node.domain or len(node.inputs) != 2 \
            or node.inputs[0] not in graph.constants:
        return None
    name, walked, found = node.inputs[1], [], None
    while True:
        if name in cache:
            found = cache[name]
            break
        walked.append(name)
        found = _dtype_here(graph, name, producers, declared)
        if not isinstance(found, str):
            break
        name = found
    for seen in walked:
        cache[seen] = found
    return found


def _dtype_here(graph: Graph, name: str, producers: dict[str, Node],
                declared: dict[str, np.dtype]) -> np.dtype | str | None:
    """The dtype of ``name`` if known from its own definition, the name to follow back to
    (a dtype-preserving producer's input), or None (unknown)."""
    if name in declared:
        return declared[name]
    if name in graph.constants:
        return graph.constants[name].dtype
    source = producers.get(name)
    if source is None or source.domain or source.outputs[0] != name or not source.inputs:
        return None
    if source.op_type == "Where" and len(source.inputs) == 3:
        return source.inputs[1]
    if source.op_type in _SAME_DTYPE:
        return source.inputs[0]
    if source.op_type == "Cast":
        return numpy_dtype(source.attrs.get("to", 1))
    return None


def _origin(graph: Graph, inputs: list[str]) -> str | None:
    """The one float weight a folded value was computed from, if exactly one."""
    weights = [i for i in inputs if is_float_weight(graph.constants[i])]
    if len(weights) != 1:
        return None
    return graph.origins.get(weights[0], weights[0])
