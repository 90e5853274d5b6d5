"""``compare``: run onnx2flax, onnxruntime (and torch) on the same inputs and report errors.

Per output: max absolute error, max relative error and where the largest error is. With
``per_node=True`` every intermediate tensor is compared with onnxruntime (layouts mapped back
to ONNX order) and the first node whose output diverges is reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import jax
import numpy as np
import onnx

from ._load import ModelLike, load_model
from .converter import ConvertedModel, TensorSpec, convert
from .errors import InvalidInputError

__all__ = ["Comparison", "ComparisonReport", "compare", "random_feeds"]


@dataclass(frozen=True)
class Comparison:
    """One tensor of onnx2flax compared with a reference engine.

    ``valid``: set when onnx2flax's output is padded (``convert(bounds=...)``) and only its
    leading part of that shape, the reference's shape, was compared."""

    name: str
    reference: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    where: tuple[int, ...]
    ok: bool
    node: str = ""
    valid: tuple[int, ...] | None = None

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
            return cls(name, reference, tuple(got.shape), float("inf"), float("inf"), (), False, node)
        if got.size == 0:
            return cls(name, reference, got.shape, 0.0, 0.0, (), True, node)
        g = got.astype(np.float64)
        w = want.astype(np.float64)
        same_special = (np.isnan(g) & np.isnan(w)) | ((g == w) & np.isinf(w))
        err = np.where(same_special, 0.0, np.abs(g - w))
        err = np.where(np.isnan(err), np.inf, err)
        rel = err / np.maximum(np.abs(w), np.finfo(np.float32).tiny)
        where = tuple(int(i) for i in np.unravel_index(int(np.argmax(err)), err.shape))
        ok = bool(np.all(err <= atol + rtol * np.abs(np.where(np.isfinite(w), w, 0.0))))
        return cls(name, reference, got.shape, float(err.max()), float(rel.max()), where, ok, node)


@dataclass
class ComparisonReport:
    """All comparisons of one run; ``str(report)`` is a table, ``report.ok`` the verdict.

    ``first_divergence`` (with ``per_node=True``) is the first node output, in graph order,
    that differs from onnxruntime beyond tolerance.
    """

    outputs: list[Comparison]
    rtol: float
    atol: float
    nodes: list[Comparison] = field(default_factory=list)
    first_divergence: Comparison | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.outputs)

    def table(self) -> str:
        header = ("output", "reference", "shape", "max abs err", "max rel err", "at", "status")
        rows = [(c.name, c.reference, _shape_text(c), f"{c.max_abs:.3g}",
                 f"{c.max_rel:.3g}", str(list(c.where)), "ok" if c.ok else "MISMATCH")
                for c in self.outputs]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
        out = [line(header), line(tuple("-" * w for w in widths)), *map(line, rows)]
        out.append(f"tolerance: |flax - ref| <= {self.atol:g} + {self.rtol:g} * |ref|  ->  "
                   f"{'OK' if self.ok else 'MISMATCH'}")
        if self.nodes:
            if self.first_divergence is None:
                out.append(f"per node: all {len(self.nodes)} intermediate tensors match onnxruntime")
            else:
                d = self.first_divergence
                out.append(f"per node: first divergence at {d.node}, tensor {d.name!r}: "
                           f"max abs err {d.max_abs:.3g}, max rel err {d.max_rel:.3g} at "
                           f"{list(d.where)}")
        return "\n".join(out)

    __str__ = table


def _shape_text(c: Comparison) -> str:
    shape = "x".join(map(str, c.shape)) or "scalar"
    return shape if c.valid is None else f"{shape} (first {'x'.join(map(str, c.valid))})"


def random_feeds(inputs: list[TensorSpec], *, seed: int = 0, batch: int = 1) -> dict[str, np.ndarray]:
    """Seeded inputs for ``inputs`` (ONNX layout): dynamic dims become ``batch`` for dim 0
    and 1 elsewhere; floats are standard normal, integers in [0, 4), bools random."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in inputs:
        shape = tuple(d if isinstance(d, int) else (batch if i == 0 else 1)
                      for i, d in enumerate(spec.shape or ()))
        dtype = spec.dtype or np.dtype(np.float32)  # an untyped input takes any dtype
        if dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            feeds[spec.name] = rng.integers(0, 4, shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec.name] = rng.random(shape) < 0.5
        else:
            raise InvalidInputError(f"cannot make random data for input {spec.name!r} of dtype "
                                    f"{spec.dtype}; pass feeds")
    return feeds


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
    return ort.InferenceSession(proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


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
            atol: float = 1e-5, per_node: bool = False, seed: int = 0,
            bounds: Mapping[str, int] | None = None) -> ComparisonReport:
    """Run ``model`` through onnx2flax and onnxruntime (and ``torch_module`` if given).

    ``model`` is anything :func:`convert` takes (pass ``onnx_model`` too when giving an
    already converted model); ``bounds`` go to :func:`convert`, and where they make an output
    longer than the reference's (padded), its leading part is compared. ``feeds`` are
    ONNX-layout inputs; random ones (seeded) when ``None``. Returns a
    :class:`ComparisonReport`; ``report.ok`` is True when every output satisfies
    ``|flax - ref| <= atol + rtol * |ref|`` for every reference.
    """
    if isinstance(model, ConvertedModel):
        if onnx_model is None:
            raise ValueError("pass onnx_model= (the ONNX source) together with a ConvertedModel")
        converted, source = model, onnx_model
    else:
        converted, source = convert(model, bounds=bounds), model
    padded = bool(converted._program.bounds)
    proto, base_dir = load_model(source)
    feeds = dict(feeds) if feeds is not None else random_feeds(converted.inputs, seed=seed)
    names = [s.name for s in converted.inputs]
    got = converted.run(feeds)
    out_names = [s.name for s in converted.outputs]

    session = _ort_session(_with_all_outputs(proto) if per_node else proto, base_dir)
    ort_names = [o.name for o in session.get_outputs()]
    ort_values = dict(zip(ort_names, session.run(None, {n: feeds[n] for n in names})))
    rows = [Comparison.of(n, "onnxruntime", g, ort_values[n], rtol, atol, padded=padded)
            for n, g in zip(out_names, got)]
    if torch_module is not None:
        rows += [Comparison.of(n, "torch", g, t, rtol, atol, padded=padded)
                 for n, g, t in zip(out_names, got, _torch_outputs(torch_module, feeds, names))]
    report = ComparisonReport(rows, rtol, atol)
    if per_node:
        _compare_nodes(converted, feeds, ort_values, report)
    return report


def _compare_nodes(converted: ConvertedModel, feeds, ort_values, report: ComparisonReport) -> None:
    inputs = [feeds[s.name] for s in converted.inputs]
    moved = [np.moveaxis(x, 1, -1) if s.channels_last else x
             for s, x in zip(converted.inputs, inputs)]
    with jax.default_matmul_precision("highest"):
        _, state = converted.module.apply(converted.variables, *moved, mutable=["intermediates"])
    recorded = state.get("intermediates", {})
    for node in converted._program.graph.nodes:
        for name in node.outputs:
            if name in recorded and name in ort_values:
                (value,) = recorded[name]
                c = Comparison.of(name, "onnxruntime", np.asarray(value), ort_values[name],
                                  report.rtol, report.atol, f"{node.op_type} node {node.name!r}",
                                  padded=bool(converted._program.bounds))
                report.nodes.append(c)
                if not c.ok and report.first_divergence is None:
                    report.first_divergence = c
