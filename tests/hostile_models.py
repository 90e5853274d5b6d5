"""Seeded generators of hostile models, one per class of issue 12, and a runner that tries
each in a child process with a memory cap and a timeout.

Every generator is ``gen(rng, folder, big) -> Case``: it writes what it needs into
``folder`` and returns the model and how it must end: ``"error"`` (an onnx2flax error,
``ResourceLimitError`` where the class is about the budget), ``"ok"`` (converts, runs, and
equals ``expected``, computed here with NumPy from the values the generator drew) or
``"either"``. ``big`` asks for the sizes of the issue's reports (slow to build, used by the
stress command); the default sizes keep the default test fast.

Stress command (several thousand models; see docs/errors.md)::

    JAX_PLATFORMS=cpu python tests/hostile_models.py --cases 3000 [--big] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper, numpy_helper

F = np.float32

#: Address-space cap of a child process (JAX reserves about 1 GiB of it at start).
MEMORY_CAP = 3 * 2 ** 30
#: Most a case may add to the child's peak resident memory.
CASE_MEMORY = 400 * 2 ** 20
#: Seconds a case may take (convert, first run and check).
CASE_SECONDS = 20


@dataclass
class Case:
    model: onnx.ModelProto | Path
    expect: str  # "error" | "ok" | "either"
    feeds: dict[str, Any] = field(default_factory=dict)
    expected: list[np.ndarray] | None = None
    error: str = "OnnxConversionError"  # the class an "error" case must raise
    after_convert: Callable[[], None] | None = None  # e.g. truncate the external data file
    #: Convert only, and check the parameters' count and total instead of running (for
    #: models whose point is the conversion and whose run XLA compiles slowly).
    params: tuple[int, float] | None = None


def _model(nodes, inputs, outputs, inits=(), opset=18, functions=()):
    def info(name, dtype, shape):
        elem = dtype if isinstance(dtype, int) else helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        return helper.make_tensor_value_info(name, elem, shape)
    graph = helper.make_graph(nodes, "hostile", [info(*i) for i in inputs],
                              [info(*o) for o in outputs], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              functions=list(functions))
    model.ir_version = 10
    return model


def _external(tensor: onnx.TensorProto, folder: Path, location: str, data: bytes,
              offset: int = 0) -> onnx.TensorProto:
    (folder / location).write_bytes(b"\0" * offset + data)
    tensor.ClearField("raw_data")
    tensor.data_location = T.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)),
                       ("length", str(len(data)))):
        tensor.external_data.add(key=key, value=value)
    return tensor


def _save(model: onnx.ModelProto, folder: Path) -> Path:
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


# ------------------------------------------------------------------ memory safety

def string_external(rng, folder: Path, big: bool) -> Case:
    n = int(rng.integers(1, 1 << (20 if big else 12)))
    kind = rng.choice([T.STRING, T.UNDEFINED, 99])
    t = helper.make_tensor("w", T.FLOAT, [n], np.zeros(n, F))
    t.data_type = int(kind)
    _external(t, folder, "w.bin", rng.bytes(n * 8), int(rng.integers(0, 64)))
    model = _model([helper.make_node("Identity", ["w"], ["y"])], [], [("y", F, [n])], [t])
    return Case(_save(model, folder), "error", error="InvalidModelError")


_PACKED = [(T.INT4, np.int8, -8, 8), (T.UINT4, np.uint8, 0, 16), (T.INT2, np.int8, -2, 2),
           (T.UINT2, np.uint8, 0, 4)]


def packed_external(rng, folder: Path, big: bool) -> Case:
    """Valid 4- and 2-bit external data, read back exactly (cast to float32)."""
    elem, np_type, low, high = _PACKED[int(rng.integers(len(_PACKED)))]
    shape = [int(d) for d in rng.integers(1, 9, size=int(rng.integers(1, 4)))]
    values = rng.integers(low, high, size=shape).astype(np_type)
    packed = helper.make_tensor("w", elem, shape, values.reshape(-1).tolist())
    raw = numpy_helper.from_array(numpy_helper.to_array(packed), "w").raw_data
    t = _external(packed, folder, "w.bin", raw, int(rng.integers(0, 16)))
    model = _model([helper.make_node("Cast", ["w"], ["y"], to=T.FLOAT)], [], [("y", F, shape)],
                   [t], opset=21)
    return Case(_save(model, folder), "ok", expected=[values.astype(F)])


def truncated_after_convert(rng, folder: Path, big: bool) -> Case:
    """Integer constants in external data, the file emptied after ``convert``: ``run`` must
    still compute with the values read at conversion."""
    n = int(rng.integers(2, 64))
    add = rng.integers(-100, 100, size=n).astype(np.int32)
    shape = np.array([n, 1], np.int64)
    t_add = _external(numpy_helper.from_array(add, "add"), folder, "add.bin", add.tobytes())
    t_shape = _external(numpy_helper.from_array(shape, "shape"), folder, "shape.bin",
                        shape.tobytes())
    model = _model([helper.make_node("Add", ["x", "add"], ["s"]),
                    helper.make_node("Reshape", ["s", "shape"], ["y"])],
                   [("x", np.int32, [n])], [("y", np.int32, [n, 1])], [t_add, t_shape])
    x = rng.integers(-100, 100, size=n).astype(np.int32)

    def truncate():
        for name in ("add.bin", "shape.bin"):
            with open(folder / name, "r+b") as f:
                f.truncate(0)
    return Case(_save(model, folder), "ok", {"x": x}, [(x + add).reshape(n, 1)],
                after_convert=truncate)


def nul_location(rng, folder: Path, big: bool) -> Case:
    t = numpy_helper.from_array(np.ones(4, F), "w")
    _external(t, folder, "w.bin", np.ones(4, F).tobytes())
    t.external_data[0].value = "w.bin\0" + "x" * int(rng.integers(0, 8))
    model = _model([helper.make_node("Identity", ["w"], ["y"])], [], [("y", F, [4])], [t])
    return Case(_save(model, folder), "error", error="InvalidModelError")


def split_to_sequence(rng, folder: Path, big: bool) -> Case:
    n = int(rng.integers(2 ** 14 + 1, 10 ** 6 if big else 2 ** 17))
    model = _model([helper.make_node("SplitToSequence", ["x"], ["s"], axis=0),
                    helper.make_node("SequenceLength", ["s"], ["y"])],
                   [("x", F, [n, 1])], [("y", np.int64, [])])
    return Case(model, "error", {"x": np.zeros((n, 1), F)}, error="ResourceLimitError")


# ------------------------------------------------------------------ the budget

def function_bomb(rng, folder: Path, big: bool) -> Case:
    """Functions that call the next one twice (2**levels nodes once inlined), or once in
    a chain deeper than ``subgraph_depth``."""
    chain = bool(rng.integers(2))
    levels = int(rng.integers(65, 3000)) if chain else int(rng.integers(21, 31 if big else 25))
    functions = []
    for level in range(levels):
        calls = ([helper.make_node(f"F{level + 1}", ["a"], ["c"], domain="local")] if chain else
                 [helper.make_node(f"F{level + 1}", ["a"], ["b"], domain="local"),
                  helper.make_node(f"F{level + 1}", ["b"], ["c"], domain="local")])
        body = (calls if level < levels - 1 else
                [helper.make_node("Neg", ["a"], ["b"]), helper.make_node("Neg", ["b"], ["c"])])
        functions.append(helper.make_function("local", f"F{level}", ["a"], ["c"], body,
                                              [helper.make_opsetid("", 18),
                                               helper.make_opsetid("local", 1)]))
    model = _model([helper.make_node("F0", ["x"], ["y"], domain="local")],
                   [("x", F, [2])], [("y", F, [2])], functions=functions)
    model.opset_import.append(helper.make_opsetid("local", 1))
    return Case(model, "error", error="ResourceLimitError")


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def fold_bomb(rng, folder: Path, big: bool) -> Case:
    """A small constant subgraph whose folded output would take gigabytes."""
    kind = int(rng.integers(9))
    huge = int(rng.integers(2 ** 17, 2 ** 20))
    if kind == 0:  # float64 ConstantOfShape
        nodes = [helper.make_node("ConstantOfShape", ["s"], ["y"],
                                  value=numpy_helper.from_array(np.ones(1, np.float64)))]
        inits = [_const("s", [huge, 2 ** 12])]
    elif kind == 1:  # Pad-18 with axes
        axis = int(rng.integers(0, 2))
        pad = huge * (1 if axis == 0 else 4096)
        nodes = [helper.make_node("Pad", ["d", "p", "", "a"], ["y"])]
        inits = [_const("d", np.ones((2, 4096), F)), _const("p", np.array([pad, pad], np.int64)),
                 _const("a", np.array([axis], np.int64))]
    elif kind == 2:  # Gather with many indices
        nodes = [helper.make_node("Gather", ["d", "i"], ["y"])]
        inits = [_const("d", np.ones((4, 4096 * 16), F)),
                 _const("i", np.zeros(int(rng.integers(2 ** 12, 2 ** 14)), np.int64))]
    elif kind == 3:  # Einsum outer product
        a = int(rng.integers(2 ** 15, 2 ** 16))
        nodes = [helper.make_node("Einsum", ["u", "v"], ["y"], equation="i,j->ij")]
        inits = [_const("u", np.ones(a, F)), _const("v", np.ones(a, F))]
    elif kind == 4:  # ConvTranspose with a huge stride
        s = int(rng.integers(2 ** 12, 2 ** 14))
        nodes = [helper.make_node("ConvTranspose", ["d", "k"], ["y"], strides=[s, s])]
        inits = [_const("d", np.ones((1, 1, 8, 8), F)), _const("k", np.ones((1, 4, 3, 3), F))]
    elif kind == 5:  # Expand
        nodes = [helper.make_node("Expand", ["d", "s"], ["y"])]
        inits = [_const("d", np.ones(1, F)), _const("s", np.array([huge, 4096], np.int64))]
    elif kind == 6:  # Tile
        nodes = [helper.make_node("Tile", ["d", "s"], ["y"])]
        inits = [_const("d", np.ones((2, 2), F)), _const("s", np.array([huge, huge], np.int64))]
    elif kind == 7:  # Range
        nodes = [helper.make_node("Range", ["a", "b", "c"], ["y"])]
        inits = [_const("a", np.array(0.0, F)), _const("b", np.array(float(huge) * 4096, F)),
                 _const("c", np.array(1.0, F))]
    else:  # Resize by scales
        nodes = [helper.make_node("Resize", ["d", "", "s"], ["y"])]
        inits = [_const("d", np.ones((1, 1, 4, 4), F)),
                 _const("s", np.array([1, 1, huge, huge], F))]
    model = _model(nodes, [], [("y", F, None)], inits)
    return Case(model, "error", error="ResourceLimitError")


def nested_loops(rng, folder: Path, big: bool) -> Case:
    """Loops in loops whose static trip counts multiply past ``loop_iterations``."""
    depth = int(rng.integers(2, 4))
    trips = [int(rng.integers(2 ** 11, 2 ** 15)) for _ in range(depth)]
    body = None
    for k in reversed(range(depth)):
        nodes = [helper.make_node("Identity", [f"c{k}"], [f"c{k}_out"])]
        if body is None:
            nodes.append(helper.make_node("Neg", [f"v{k}"], [f"v{k}_out"]))
        else:
            nodes += [helper.make_node("Constant", [], [f"n{k + 1}"],
                                       value=_const("t", np.array(trips[k + 1]))),
                      helper.make_node("Loop", [f"n{k + 1}", "", f"v{k}"], [f"v{k}_out"],
                                       body=body)]
        body = helper.make_graph(nodes, f"body{k}", [
            helper.make_tensor_value_info(f"i{k}", T.INT64, []),
            helper.make_tensor_value_info(f"c{k}", T.BOOL, []),
            helper.make_tensor_value_info(f"v{k}", T.FLOAT, [2])], [
            helper.make_tensor_value_info(f"c{k}_out", T.BOOL, []),
            helper.make_tensor_value_info(f"v{k}_out", T.FLOAT, [2])])
    model = _model([helper.make_node("Loop", ["n0", "", "x"], ["y"], body=body)],
                   [("x", F, [2])], [("y", F, [2])], [_const("n0", np.array(trips[0]))])
    return Case(model, "error", {"x": np.ones(2, F)}, error="ResourceLimitError")


# ------------------------------------------------------------------ linear passes

def chained_if(rng, folder: Path, big: bool) -> Case:
    n = int(rng.integers(1000, 20000 if big else 2000))
    nodes, prev, flips = [], "x", rng.integers(0, 2, size=n).astype(bool)
    for i in range(n):
        then = helper.make_graph([helper.make_node("Neg", [prev], [f"t{i}"])], f"then{i}", [],
                                 [helper.make_tensor_value_info(f"t{i}", T.FLOAT, [3])])
        other = helper.make_graph([helper.make_node("Identity", [prev], [f"e{i}"])], f"else{i}",
                                  [], [helper.make_tensor_value_info(f"e{i}", T.FLOAT, [3])])
        nodes.append(helper.make_node("If", [f"c{i}"], [f"y{i}"], then_branch=then,
                                      else_branch=other))
        prev = f"y{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    inits = [_const(f"c{i}", np.array(f)) for i, f in enumerate(flips)]
    x = rng.standard_normal(3).astype(F)
    sign = -1.0 if flips.sum() % 2 else 1.0
    return Case(_model(nodes, [("x", F, [3])], [("y", F, [3])], inits), "ok", {"x": x},
                [x * F(sign)])


def castlike_chain(rng, folder: Path, big: bool) -> Case:
    n = int(rng.integers(1000, 20000 if big else 2000))
    nodes, prev = [], "x"
    for i in range(n):
        nodes.append(helper.make_node("CastLike", ["one", prev], [f"c{i}"]))
        nodes.append(helper.make_node("Mul", [prev, f"c{i}"], [f"m{i}"]))
        prev = f"m{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    x = rng.standard_normal(3).astype(F)
    return Case(_model(nodes, [("x", F, [3])], [("y", F, [3])], [_const("one", np.ones(1))]),
                "ok", {"x": x}, [x])


def alike_names(rng, folder: Path, big: bool) -> Case:
    """N weights whose names all sanitize to the same parameter path."""
    n = int(rng.integers(1000, 20000 if big else 1500))
    marks = "!@#$%^&*()"
    digits = len(str(n))
    names = ["w" + "".join(marks[int(d)] for d in f"{i:0{digits}d}") for i in range(n)]
    values = rng.standard_normal((n, 3)).astype(F)
    # One Concat rather than a chain of Adds: XLA fuses a chain of N adds of N parameters
    # into one kernel and compiles it in time quadratic in N (minutes for 4,000).
    nodes = [helper.make_node("Concat", ["x", *names], ["all"], axis=0),
             helper.make_node("Reshape", ["all", "shape"], ["rows"]),
             helper.make_node("ReduceSum", ["rows", "axis0"], ["y"], keepdims=0)]
    x = rng.standard_normal(3).astype(F)
    expected = x.astype(np.float64) + values.astype(np.float64).sum(0)
    model = _model(nodes, [("x", F, [3])], [("y", F, [3])],
                   [_const(name, v) for name, v in zip(names, values)]
                   + [_const("shape", np.array([n + 1, 3])), _const("axis0", np.array([0]))])
    return Case(model, "ok", {"x": x}, [expected.astype(F)],
                params=None if big else (n, float(values.astype(np.float64).sum())))


def dotted_name(rng, folder: Path, big: bool) -> Case:
    parts = int(rng.integers(100, 5000))
    name = ".".join(f"p{int(k)}" for k in rng.integers(0, 10, size=parts))
    w = rng.standard_normal(3).astype(F)
    model = _model([helper.make_node("Add", ["x", name], ["y"])], [("x", F, [3])],
                   [("y", F, [3])], [_const(name, w)])
    x = rng.standard_normal(3).astype(F)
    return Case(model, "ok" if len(name) <= 4096 else "error", {"x": x}, [x + w],
                error="ResourceLimitError")


def relu_chain(rng, folder: Path, big: bool) -> Case:
    n = int(rng.integers(2000, 100_000 if big else 5000))
    nodes = [helper.make_node("Relu" if i % 2 else "Neg", ["x" if i == 0 else f"r{i - 1}"],
                              ["y" if i == n - 1 else f"r{i}"]) for i in range(n)]
    x = rng.standard_normal(3).astype(F)
    y = x.copy()
    for i in range(n):
        y = np.maximum(y, 0) if i % 2 else -y
    return Case(_model(nodes, [("x", F, [3])], [("y", F, [3])]), "ok", {"x": x}, [y])


def deep_if(rng, folder: Path, big: bool) -> Case:
    depth = int(rng.integers(65, 1000))
    model = _model([], [("x", F, [3]), ("c", np.bool_, [])], [("o0", F, [3])])
    graph = model.graph
    for i in range(depth):
        leaf = helper.make_graph([helper.make_node("Abs", ["x"], [f"l{i}"])], "leaf", [],
                                 [helper.make_tensor_value_info(f"l{i}", T.FLOAT, [3])])
        node = graph.node.add()
        node.op_type, node.name = "If", f"if{i}"
        node.input.append("c")
        node.output.append(f"o{i}")
        node.attribute.add(name="else_branch", type=onnx.AttributeProto.GRAPH).g.CopyFrom(leaf)
        graph = node.attribute.add(name="then_branch", type=onnx.AttributeProto.GRAPH).g
        graph.name = f"g{i}"
        graph.output.append(helper.make_tensor_value_info(f"o{i + 1}", T.FLOAT, [3]))
    graph.node.append(helper.make_node("Neg", ["x"], [f"o{depth}"]))
    return Case(model, "error")  # protobuf refuses > ~100 levels, the budget > 64


# ------------------------------------------------------------------ entry points

def reserved_names(rng, folder: Path, big: bool) -> Case:
    name = str(rng.choice(["params", "batch_stats", "intermediates", "cache", "params.weight",
                           "batch_stats.0.bias"]))
    w = rng.standard_normal(3).astype(F)
    x = rng.standard_normal(3).astype(F)
    model = _model([helper.make_node("Mul", ["x", name], ["y"])], [("x", F, [3])],
                   [("y", F, [3])], [_const(name, w)])
    return Case(model, "ok", {"x": x}, [x * w])


def hostile_feeds(rng, folder: Path, big: bool) -> Case:
    import datetime
    kind = int(rng.integers(5))
    feed = [[[1.0, 2.0], [3.0]], np.array(["a", "b"]), np.array([object()] * 2),
            np.array([datetime.date(2020, 1, 1)] * 2, "datetime64[D]"), {"a": 1}][kind]
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "untyped", [onnx.ValueInfoProto(name="x")],
        [onnx.ValueInfoProto(name="y")]), opset_imports=[helper.make_opsetid("", 18)])
    return Case(model, "error", {"x": feed}, error="InvalidInputError")


GENERATORS: dict[str, Callable[..., Case]] = {
    f.__name__: f for f in (string_external, packed_external, truncated_after_convert,
                            nul_location, split_to_sequence, function_bomb, fold_bomb,
                            nested_loops, chained_if, castlike_chain, alike_names, dotted_name,
                            relu_chain, deep_if, reserved_names, hostile_feeds)}


# ------------------------------------------------------------------ running one case

def run_case(name: str, seed: int, big: bool) -> dict:
    """Build and try one case in this process; the outcome as a dict."""
    import jax

    import onnx2flax
    from onnx2flax import errors

    rng = np.random.default_rng([seed, sorted(GENERATORS).index(name)])
    with tempfile.TemporaryDirectory() as tmp:
        case = GENERATORS[name](rng, Path(tmp), big)
        model = case.model
        if isinstance(model, onnx.ModelProto) and model.ByteSize() < 2 ** 31:
            model = model.SerializeToString()  # as read from a file (protobuf's own checks)
        try:
            converted = onnx2flax.convert(model, progress=False)
            if case.after_convert is not None:
                case.after_convert()
            if case.params is not None:
                leaves = jax.tree_util.tree_leaves(converted.variables)
                count, total = case.params
                if len(leaves) != count or not np.isclose(
                        sum(float(np.sum(v)) for v in leaves), total, rtol=1e-5):
                    return {"outcome": "wrong", "ok": False,
                            "message": f"{len(leaves)} parameters, expected {count}"}
                return {"outcome": "converted", "ok": True, "message": ""}
            got = converted.run(case.feeds)
        except errors.OnnxConversionError as exc:
            wanted = getattr(errors, case.error)
            ok = case.expect in ("error", "either") and isinstance(exc, wanted)
            return {"outcome": type(exc).__name__, "ok": ok, "message": str(exc)[:300]}
        if case.expect == "error":
            return {"outcome": "converted", "ok": False, "message": f"expected {case.error}"}
        if case.expected is not None:
            for g, e in zip(got, case.expected):
                if np.shape(g) != np.shape(e) or not np.allclose(g, e, rtol=1e-5, atol=1e-5):
                    return {"outcome": "wrong", "ok": False,
                            "message": f"got {np.ravel(g)[:4]}, expected {np.ravel(e)[:4]}"}
        return {"outcome": "converted", "ok": True, "message": ""}


def _child(cases: list[tuple[str, int]], big: bool) -> None:
    """Run ``cases`` one by one, a JSON line before and after each (the parent learns which
    case killed the process from the last line)."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    import onnx2flax  # noqa: F401  (JAX's start-up memory is not the cases')

    for name, seed in cases:
        print(json.dumps({"start": [name, seed]}), flush=True)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        start = time.perf_counter()
        try:
            result = run_case(name, seed, big)
        except BaseException as exc:  # noqa: BLE001  (what the runner is here to find)
            result = {"outcome": f"raw {type(exc).__name__}", "ok": False,
                      "message": str(exc)[:300]}
        result["seconds"] = round(time.perf_counter() - start, 2)
        result["grew"] = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                             - before)
        print(json.dumps({"case": [name, seed], **result}), flush=True)


def run_cases(cases: list[tuple[str, int]], big: bool = False,
              seconds: float = CASE_SECONDS, report: Callable[[dict], None] | None = None
              ) -> list[dict]:
    """Run ``cases`` in child processes (capped memory, killed past ``seconds`` per case):
    one result per case, with ``ok`` False for a wrong outcome, a crash or a hang, and for
    a case slower than ``seconds`` or adding more than :data:`CASE_MEMORY`."""
    results: list[dict] = []
    todo = list(cases)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    here = str(Path(__file__).resolve())
    while todo:
        proc = subprocess.Popen([sys.executable, here, "--child", json.dumps(todo)]
                                + (["--big"] if big else []), stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=env)
        current, done = None, 0
        deadline = time.monotonic() + 60 + seconds  # start-up, then per case
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                proc.kill()
                results.append({"case": list(current or todo[done]), "outcome": "hang",
                                "ok": False, "message": f"over {seconds} s"})
                if report is not None:
                    report(results[-1])
                done += 1
                break
            line = proc.stdout.readline()
            if not line:  # the child died
                code = proc.wait()
                if current is not None:
                    results.append({"case": list(current), "outcome": f"crash ({code})",
                                    "ok": False, "message": "the process died"})
                    if report is not None:
                        report(results[-1])
                    done += 1
                break
            item = json.loads(line)
            if "start" in item:
                current = tuple(item["start"])
                deadline = time.monotonic() + seconds * 3
                continue
            current = None
            done += 1
            item["ok"] = (item["ok"] and item["seconds"] <= seconds
                          and item["grew"] <= CASE_MEMORY)
            results.append(item)
            if report is not None:
                report(item)
            deadline = time.monotonic() + seconds * 3
        sel.close()
        proc.stdout.close()
        proc.wait()
        todo = todo[done:]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=len(GENERATORS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--big", action="store_true")
    parser.add_argument("--child")
    args = parser.parse_args(argv)
    if args.child:
        _child([tuple(c) for c in json.loads(args.child)], args.big)
        return 0
    names = sorted(GENERATORS)
    cases = [(names[i % len(names)], args.seed + i // len(names)) for i in range(args.cases)]
    start = time.perf_counter()
    def report(result):
        if not result["ok"]:
            print(json.dumps(result), flush=True)

    results = run_cases(cases, args.big, report=report)
    bad = [r for r in results if not r["ok"]]
    slowest = max(results, key=lambda r: r.get("seconds", 0))
    biggest = max(results, key=lambda r: r.get("grew", 0))
    print(f"{len(results)} cases in {time.perf_counter() - start:.0f} s: {len(bad)} failed; "
          f"slowest {slowest.get('seconds')} s ({slowest['case']}), largest memory growth "
          f"{biggest.get('grew', 0) / 2 ** 20:.0f} MiB ({biggest['case']})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
