"""``compare``: run onnx2flax, onnxruntime (and torch) on the same inputs and report errors.

Per output: max absolute error, the error normalized by the output's scale (max |ref|) and
where the largest error is. With ``per_node=True`` every intermediate tensor is compared
with onnxruntime (layouts mapped back to ONNX order), the nodes are ranked by normalized
error, and where the two disagree ONNX's reference evaluator (``onnx.reference``) runs the
node alone on each side's inputs and says which side computed it wrongly.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import jax
import numpy as np
import onnx

from ._core import boundary as _boundary
from ._core.graph import Graph, Node, numpy_dtype
from ._pipeline.fold import fold
from ._pipeline.load import ModelLike, load_model
from .converter import ConvertedModel, TensorSpec, _dims_example, _placeholder_hint, convert
from .errors import InvalidInputError, InvalidModelError, OnnxConversionError, ResourceLimitError

__all__ = ["Comparison", "ComparisonReport", "compare", "random_feeds"]

#: Random feeds larger than this (bytes, all inputs together) are refused.
MAX_RANDOM_FEED_BYTES = 1 << 30
#: Integer inputs that index no constant table are drawn from [0, DEFAULT_INT_HIGH).
DEFAULT_INT_HIGH = 4
#: Ops an integer input may pass through on its way to a Gather's indices.
_PASS_THROUGH = {"Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten"}


@dataclass(frozen=True)
class Comparison:
    """One tensor of onnx2flax compared with a reference engine.

    ``scale``: max |ref| of the tensor; ``error``: ``max_abs / scale`` (the error relative
    to the tensor's magnitude, not to single near-zero elements). ``ok`` when
    ``max_abs <= atol + rtol * scale``. ``valid``: set when onnx2flax's output is padded
    (``convert(bounds=...)``) and only its leading part of that shape, the reference's
    shape, was compared. ``verdict`` (per-node rows only): onnx.reference's arbitration."""

    name: str
    reference: str
    shape: tuple[int, ...]
    max_abs: float
    scale: float
    error: float
    where: tuple[int, ...]
    ok: bool
    node: str = ""
    valid: tuple[int, ...] | None = None
    verdict: str = ""

    @classmethod
    def of(cls, name: str, reference: str, got: np.ndarray, want: np.ndarray, rtol: float,
           atol: float, node: str = "", padded: bool = False) -> Comparison:
        """``padded``: ``got`` may be longer than ``want`` along any axis (bounded ops pad
        their results at the end); then its leading part is compared."""
        got = np.asarray(got)
        want = np.asarray(want)
        if padded and got.shape != want.shape and got.ndim == want.ndim \
                and all(g >= w for g, w in zip(got.shape, want.shape)):
            part = cls.of(name, reference, got[tuple(slice(0, w) for w in want.shape)], want,
                          rtol, atol, node)
            return replace(part, shape=got.shape, valid=want.shape)
        if got.shape != want.shape:
            return cls(name, reference, tuple(got.shape), float("inf"), float("nan"),
                       float("inf"), (), False, node)
        if got.size == 0:
            return cls(name, reference, got.shape, 0.0, 0.0, 0.0, (), True, node)
        g = got.astype(np.float64)
        w = want.astype(np.float64)
        same_special = (np.isnan(g) & np.isnan(w)) | ((g == w) & np.isinf(w))
        err = np.where(same_special, 0.0, np.abs(g - w))
        err = np.where(np.isnan(err), np.inf, err)
        finite = np.abs(w[np.isfinite(w)])
        scale = float(finite.max()) if finite.size else 0.0
        max_abs = float(err.max())
        error = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        where = tuple(int(i) for i in np.unravel_index(int(np.argmax(err)), err.shape))
        ok = max_abs <= atol + rtol * scale
        return cls(name, reference, got.shape, max_abs, scale, error, where, ok, node)


@dataclass(frozen=True)
class FeedInfo:
    """How one input was fed: its shape, dtype and origin (``given``, ``random normal``,
    ``random ints in [0, 257) (...)``, ``constant``)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    origin: str


@dataclass
class ComparisonReport:
    """All comparisons of one run; ``str(report)`` is a table, ``report.ok`` the verdict.

    With ``per_node=True``: ``nodes`` every intermediate tensor in graph order,
    ``first_divergence`` the first beyond tolerance, ``ranking`` the ``top`` nodes with the
    largest normalized error (each mismatching one with onnx.reference's ``verdict``).
    """

    outputs: list[Comparison]
    rtol: float
    atol: float
    nodes: list[Comparison] = field(default_factory=list)
    first_divergence: Comparison | None = None
    ranking: list[Comparison] = field(default_factory=list)
    feeds: list[FeedInfo] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.outputs)

    def table(self) -> str:
        out = [f"input {f.name}: {f.dtype}[{','.join(map(str, f.shape))}] ({f.origin})"
               for f in self.feeds]
        out += _rows(("output", "reference", "shape", "max abs err", "max |ref|", "error",
                      "at", "status"), self.outputs, lambda c: c.name)
        out.append(f"tolerance: max abs err <= {self.atol:g} + {self.rtol:g} * max|ref| "
                   f"(error = max abs err / max|ref|)  ->  {'OK' if self.ok else 'MISMATCH'}")
        if self.nodes:
            if self.first_divergence is None:
                out.append(f"per node: all {len(self.nodes)} intermediate tensors match onnxruntime")
            else:
                d = self.first_divergence
                out.append(f"per node: first divergence at {d.node}, tensor {d.name!r}: "
                           f"max abs err {d.max_abs:.3g}, error {d.error:.3g} at "
                           f"{list(d.where)}")
            out.append(f"per node: the {len(self.ranking)} largest errors of "
                       f"{len(self.nodes)} tensors")
            out += _rows(("node", "tensor", "shape", "max abs err", "max |ref|", "error", "at",
                          "status"), self.ranking, lambda c: c.node, verdicts=True)
        return "\n".join(out)

    __str__ = table

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (what ``json()`` writes); non-finite numbers as strings."""
        data = {"ok": self.ok, "rtol": self.rtol, "atol": self.atol,
                "inputs": [asdict(f) for f in self.feeds],
                "outputs": [asdict(c) for c in self.outputs]}
        if self.nodes:
            first = self.first_divergence
            data.update(node_count=len(self.nodes),
                        first_divergence=None if first is None else asdict(first),
                        ranking=[asdict(c) for c in self.ranking])
        return _plain(data)

    def json(self) -> str:
        return json.dumps(self.as_dict(), indent=1)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def _rows(header: tuple[str, ...], comparisons: list[Comparison], first: Callable,
          verdicts: bool = False) -> list[str]:
    rows = [(first(c), c.reference if not verdicts else c.name, _shape_text(c),
             f"{c.max_abs:.3g}", f"{c.scale:.3g}", f"{c.error:.3g}", str(list(c.where)),
             "ok" if c.ok else "MISMATCH") for c in comparisons]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    out = [line(header), line(tuple("-" * w for w in widths))]
    for row, c in zip(rows, comparisons):
        out.append(line(row))
        if verdicts and c.verdict:
            out.append(f"    onnx.reference: {c.verdict}")
    return out


def _shape_text(c: Comparison) -> str:
    shape = "x".join(map(str, c.shape)) or "scalar"
    return shape if c.valid is None else f"{shape} (first {'x'.join(map(str, c.valid))})"


def random_feeds(inputs: list[TensorSpec], *, seed: int = 0, batch: int = 1,
                 int_ranges: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Seeded inputs for ``inputs`` (ONNX layout). A dynamic dim 0 becomes ``batch``; any
    other dynamic dim is refused (random data would make it 1: a 1x1 image), naming the
    dims and how to give them. Floats are standard normal, integers in
    ``[0, int_ranges[name])`` (default ``DEFAULT_INT_HIGH``), bools random. Feeds of more
    than ``MAX_RANDOM_FEED_BYTES`` in all are refused."""
    rng = np.random.default_rng(seed)
    shapes = {spec.name: _feed_shape(spec, batch) for spec in inputs}
    dtypes = {spec.name: spec.dtype or np.dtype(np.float32) for spec in inputs}  # untyped: any
    total = sum(float(np.prod(shapes[n], dtype=np.float64)) * dtypes[n].itemsize for n in shapes)
    if total > MAX_RANDOM_FEED_BYTES:
        raise ResourceLimitError(
            f"random inputs of shapes {({n: list(s) for n, s in shapes.items()})} would take "
            f"{total:.3g} bytes (limit {MAX_RANDOM_FEED_BYTES}); give smaller shapes "
            "(input_shapes= / --input-shape) or real inputs (feeds= / --feeds)")
    feeds = {}
    for spec in inputs:
        shape, dtype = shapes[spec.name], dtypes[spec.name]
        if dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            high = (int_ranges or {}).get(spec.name, DEFAULT_INT_HIGH)
            feeds[spec.name] = rng.integers(0, high, shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec.name] = rng.random(shape) < 0.5
        else:
            raise InvalidInputError(f"cannot make random data for input {spec.name!r} of dtype "
                                    f"{spec.dtype}; pass feeds")
    return feeds


def _feed_shape(spec: TensorSpec, batch: int) -> tuple[int, ...]:
    if spec.sequence or spec.optional:
        raise InvalidInputError(f"input {spec.name!r} is a sequence or optional: random feeds "
                                "are made for tensors only; pass feeds")
    if spec.shape is None:
        raise InvalidInputError(f"input {spec.name!r} has no declared shape: give it "
                                f"(--input-shape {spec.name}=DIMS, or compare(input_shapes=...)) "
                                "or real inputs (--feeds FILE.npz, or compare(feeds=...))")
    shape = tuple(d if not isinstance(d, int) or d >= 0 else None for d in spec.shape)
    unknown = [(i, d) for i, d in enumerate(shape) if not isinstance(d, int) and i > 0]
    if unknown:
        dims = ", ".join(f"dim {i}" + (f" ({d!r})" if d else "") for i, d in unknown)
        example = _dims_example(spec, batch=1)
        raise InvalidInputError(
            f"input {spec.name!r} of shape {list(shape)} has unknown {dims}: random inputs "
            f"would make them 1 (a degenerate size). Give the shape (--input-shape "
            f"{spec.name}={example}, or compare(input_shapes={{{spec.name!r}: ({example})}})) or "
            f"real inputs (--feeds FILE.npz, or compare(feeds=...))")
    return tuple(d if isinstance(d, int) else batch for d in shape)


def _index_ranges(proto: onnx.ModelProto) -> dict[str, tuple[int, str]]:
    """Integer graph inputs used (directly, or through Cast / Reshape / ...) as the indices
    of a Gather on a constant table: input name -> (table size along the axis, why)."""
    graph = proto.graph
    tables = {t.name: tuple(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tables[node.output[0]] = tuple(node.attribute[0].t.dims)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    ranges = {}
    for value_info in graph.input:
        frontier, seen = [value_info.name], set()
        while frontier:
            name = frontier.pop()
            seen.add(name)
            for node in readers.get(name, []):
                if node.op_type in _PASS_THROUGH and node.input[0] == name:
                    frontier += [o for o in node.output if o not in seen]
                elif node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name \
                        and node.input[0] in tables:
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    dims = tables[node.input[0]]
                    if -len(dims) <= axis < len(dims) and dims[axis] > 0:
                        size = int(dims[axis])
                        if size < ranges.get(value_info.name, (size + 1,))[0]:
                            ranges[value_info.name] = (size, f"Gather node {node.name!r}'s "
                                                             f"table size")
    return ranges


def _ort_session(proto: onnx.ModelProto, base_dir):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # The reference should compute the graph as written, not a fused rewrite of it.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if base_dir is not None:
        with_data = onnx.ModelProto()
        with_data.CopyFrom(proto)
        onnx.load_external_data_for_model(with_data, str(base_dir))
        proto = with_data
    try:
        return ort.InferenceSession(proto.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own untyped errors)
        raise InvalidModelError(f"onnxruntime (the reference) cannot load the model: "
                                f"{_ort_message(exc)}") from None


def _ort_run(session, feeds: dict[str, Any]) -> list[np.ndarray]:
    try:
        return session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001
        shapes = {n: list(np.shape(v)) for n, v in feeds.items()}
        raise InvalidInputError(f"onnxruntime (the reference) failed to run the model on "
                                f"inputs of shapes {shapes}: {_ort_message(exc)}") from None


def _ort_message(exc: BaseException) -> str:
    """onnxruntime's message on one line, without its status prefix and C++ location."""
    text = " ".join(str(exc).split())
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    return re.sub(r"\S+\.(cc|h|cpp):\d+ [\w:~]+\(.*?\) ", "", text)[:500]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _torch_outputs(torch_module, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        result = torch_module.eval()(*[torch.from_numpy(np.array(feeds[n])) for n in names])
    if isinstance(result, Mapping):
        result = list(result.values())
    elif not isinstance(result, (tuple, list)):
        result = [result]
    return [r.detach().cpu().numpy() for r in result]


def _with_all_outputs(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` whose graph also outputs every node output (for per-node runs)."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is best effort; untyped outputs are added below
        pass
    typed = {v.name: v for v in model.graph.value_info}
    existing = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in existing:
                model.graph.output.append(typed.get(name) or onnx.ValueInfoProto(name=name))
                existing.add(name)
    return model


def compare(model: ModelLike | ConvertedModel, feeds: Mapping[str, np.ndarray] | None = None, *,
            onnx_model: ModelLike | None = None, torch_module: Any = None, rtol: float = 1e-4,
            atol: float = 1e-5, per_node: bool = False, top: int = 5, seed: int = 0,
            bounds: Mapping[str, int] | None = None,
            input_shapes: Mapping[str, Any] | None = None,
            constants: Mapping[str, Any] | None = None,
            progress: Callable[[str], None] | None = None) -> ComparisonReport:
    """Run ``model`` through onnx2flax and onnxruntime (and ``torch_module`` if given).

    ``model`` is anything :func:`convert` takes (pass ``onnx_model`` too when giving an
    already converted model); ``bounds``, ``input_shapes`` and ``constants`` go to
    :func:`convert` (``constants`` are fed to onnxruntime as inputs). Where bounds make an
    output longer than the reference's (padded), its leading part is compared.

    ``feeds`` are ONNX-layout inputs; inputs not in ``feeds`` get seeded random values
    (:func:`random_feeds`: the shapes must be known, from the model or ``input_shapes``;
    integer inputs used as a Gather's indices on a constant table are drawn below the
    table's size). ``report.feeds`` says what each input was.

    An output matches when ``max|flax - ref| <= atol + rtol * max|ref|`` (its error
    normalized by its own scale); ``report.ok`` when every output matches every reference.
    ``per_node=True`` compares every intermediate tensor, ranks the ``top`` largest errors
    and arbitrates mismatching nodes with ``onnx.reference``. ``progress(message)`` is
    called before each slow step (the first onnx2flax call compiles).
    """
    say = progress or (lambda message: None)
    if isinstance(model, ConvertedModel):
        if onnx_model is None:
            raise InvalidInputError("pass onnx_model= (the ONNX source) together with a "
                                    "ConvertedModel")
        converted, source = model, onnx_model
    else:
        options = {k: v for k, v in (("input_shapes", input_shapes), ("constants", constants))
                   if v}
        converted, source = convert(model, bounds=bounds, **options), model
    padded = bool(converted._program.bounds)
    proto, base_dir = load_model(source)
    given = {n: v for n, v in (feeds or {}).items() if n not in (constants or {})}
    feeds, infos = _feeds(converted, proto, given, seed, input_shapes or {})
    ort_feeds = {**_constant_feeds(proto, constants or {}), **feeds}
    for info in infos:
        say(f"input {info.name}: {info.dtype}[{','.join(map(str, info.shape))}] ({info.origin})")
    names = [s.name for s in converted.inputs]
    say("compiling and running the Flax model for these shapes ...")
    start = time.perf_counter()
    random_decisive = [n for n in converted.specialized_inputs if n not in given]
    with _placeholder_hint([], random_decisive, random=True):
        got = converted.run(feeds)
    say(f"compiled and ran in {time.perf_counter() - start:.2f} s; running onnxruntime")
    out_names = [s.name for s in converted.outputs]

    session = _ort_session(_with_all_outputs(proto) if per_node else proto, base_dir)
    wanted = {i.name for i in session.get_inputs()}
    ort_names = [o.name for o in session.get_outputs()]
    ort_values = dict(zip(ort_names, _ort_run(
        session, {n: v for n, v in ort_feeds.items() if n in wanted})))
    rows = [Comparison.of(n, "onnxruntime", g, ort_values[n], rtol, atol, padded=padded)
            for n, g in zip(out_names, got)]
    if torch_module is not None:
        rows += [Comparison.of(n, "torch", g, t, rtol, atol, padded=padded)
                 for n, g, t in zip(out_names, got, _torch_outputs(torch_module, feeds, names))]
    report = ComparisonReport(rows, rtol, atol, feeds=infos)
    if per_node:
        say("per node: recording every intermediate tensor")
        _compare_nodes(converted, feeds, ort_feeds, ort_values, report, top, say)
    return report


def _feeds(converted: ConvertedModel, proto: onnx.ModelProto, given, seed: int,
           input_shapes: Mapping[str, Any]) -> tuple[dict[str, Any], list[FeedInfo]]:
    """The inputs to run on: ``given`` ones, random ones for the rest; and what each is."""
    missing = [replace(s, shape=input_shapes.get(s.name, s.shape))
               for s in converted.inputs if s.name not in given]
    ranges = _index_ranges(proto)
    feeds = random_feeds(missing, seed=seed, int_ranges={n: r for n, (r, _) in ranges.items()})
    infos = []
    for spec in converted.inputs:
        value = given.get(spec.name, feeds.get(spec.name))
        if spec.name in given:
            origin = "given"
        elif value.dtype.kind == "f":
            origin = "random normal"
        elif value.dtype.kind in "iu":
            high, why = ranges.get(spec.name, (DEFAULT_INT_HIGH, "default range"))
            origin = f"random ints in [0, {high}): {why}"
        else:
            origin = "random bools"
        infos.append(FeedInfo(spec.name, tuple(np.shape(value)),
                              str(getattr(value, "dtype", "list")), origin))
    return {**given, **feeds}, infos


def _constant_feeds(proto: onnx.ModelProto, constants: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``constants`` as onnxruntime inputs, in each input's declared dtype."""
    types = {i.name: i.type.tensor_type.elem_type for i in proto.graph.input}
    out = {}
    for name, value in constants.items():
        out[name] = np.asarray(value, dtype=numpy_dtype(types.get(name, 0)))
    return out


def _compare_nodes(converted: ConvertedModel, feeds, ort_feeds, ort_values,
                   report: ComparisonReport, top: int, say: Callable[[str], None]) -> None:
    # Inputs that decide shapes, axes or branches cannot be traced: the conversion that
    # ``run`` used for their values (they are constants in it) is the one recorded.
    converted = converted.specialized(feeds)
    inputs = [feeds[s.name] for s in converted.inputs]
    moved = [_boundary.to_module(x, s) for s, x in zip(converted.inputs, inputs)]
    with jax.default_matmul_precision("highest"):
        _, state = converted.module.apply(converted.variables, *moved, mutable=["intermediates"])
    recorded = {name: np.asarray(v[0]) for name, v in state.get("intermediates", {}).items()}
    graph = converted._program.graph
    producers: dict[str, Node] = {}
    for node in graph.nodes:
        for name in node.outputs:
            if name in recorded and name in ort_values:
                producers[name] = node
                c = Comparison.of(name, "onnxruntime", recorded[name], ort_values[name],
                                  report.rtol, report.atol, f"{node.op_type} node {node.name!r}",
                                  padded=bool(converted._program.bounds))
                report.nodes.append(c)
                if not c.ok and report.first_divergence is None:
                    report.first_divergence = c
    report.ranking = sorted(report.nodes, key=_rank, reverse=True)[:max(top, 0)]
    disputed = [c for c in report.ranking if not c.ok]
    if report.first_divergence is not None and report.first_divergence not in disputed:
        disputed.append(report.first_divergence)
    if disputed:
        say(f"per node: onnx.reference arbitrates {len(disputed)} node(s)")
    flax_values = {**graph.constants, **feeds, **recorded}
    ort_all = {**graph.constants, **ort_feeds, **ort_values}
    verdicts = {id(c): _arbitrate(producers[c.name], c.name, graph, flax_values, ort_all,
                                  report.rtol, report.atol) for c in disputed}
    if verdicts:
        report.nodes = [replace(c, verdict=verdicts[id(c)]) if id(c) in verdicts else c
                        for c in report.nodes]
        report.first_divergence = next(c for c in report.nodes if not c.ok)
        report.ranking = sorted(report.nodes, key=_rank, reverse=True)[:max(top, 0)]


def _rank(c: Comparison) -> float:
    return float(np.nan_to_num(c.error, nan=np.inf))


def _arbitrate(node: Node, name: str, graph: Graph, flax_values: dict, ort_values: dict,
               rtol: float, atol: float) -> str:
    """Which side computes ``node`` wrongly: ONNX's reference evaluator runs it on
    onnx2flax's inputs and on onnxruntime's, and each side's output is checked against the
    reference run on its own inputs."""
    if node.subgraphs():
        return "not arbitrated (the node has subgraphs or was rewritten by onnx2flax)"
    k = node.outputs.index(name)
    checks = {}
    for side, values in (("onnx2flax", flax_values), ("onnxruntime", ort_values)):
        args = [values.get(i) if i else None for i in node.inputs]
        if any(a is None for a, i in zip(args, node.inputs) if i):
            return f"not arbitrated ({side}'s inputs of the node were not recorded)"
        try:
            want = fold(node, [None if a is None else np.asarray(a) for a in args],
                        graph.opsets)[k]
        except OnnxConversionError as exc:
            return f"not arbitrated (onnx.reference cannot run the node: {_first_line(exc)})"
        checks[side] = Comparison.of(name, "onnx.reference", values[name], want, rtol, atol)
    flax_ok, ort_ok = checks["onnx2flax"].ok, checks["onnxruntime"].ok
    errors = (f"(error vs onnx.reference: onnx2flax {checks['onnx2flax'].error:.3g}, "
              f"onnxruntime {checks['onnxruntime'].error:.3g})")
    if flax_ok and not ort_ok:
        return f"onnxruntime is wrong, onnx2flax agrees with the reference {errors}"
    if ort_ok and not flax_ok:
        return f"onnx2flax is wrong, onnxruntime agrees with the reference {errors}"
    if flax_ok and ort_ok:
        return (f"both compute the node correctly on their own inputs: the difference comes "
                f"from upstream {errors}")
    return f"both differ from the reference {errors}"
