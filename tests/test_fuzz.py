"""Seeded fuzzing: mutants of valid models either convert and run, or raise an
``OnnxConversionError`` subclass. No other exception, no crash, no hang.

The mutator (below, seeded) works on the models of ``fuzz_corpus`` at two levels:

* bytes: truncation, random bytes, bit flips, inserted and deleted runs, pure garbage;
* protobuf: model-local functions rewired or made recursive, attributes out of range or of the wrong type, deleted / duplicated attributes,
  node inputs renamed to dangling names or to later outputs (cycles), duplicated outputs,
  nodes deleted / duplicated / retyped, initializers with negative, zero or huge dims,
  out-of-range values (axes, indices, shapes, repeats, NaN),
  wrong element types, short or missing data, external data pointing outside the folder,
  dropped initializers, graph inputs with bad dims, non-tensor types (sequence, map),
  string tensors, future / zero / unknown opsets, dangling graph outputs.

``N_MUTANTS`` (2,400) mutants run by default. Every mutant is converted; every one that
converts is traced (``.outputs``: ``jax.eval_shape`` over the whole interpreter, no
compilation); only the first ``MAX_RUNS`` (60) traced ones are also compiled and run on a
small random input, because each ``run`` jits (~0.1-0.5 s). A mutant slower than
``BUDGET_S`` seconds is reported as a failure (a hang or an allocation to investigate).
Set ``ONNX2FLAX_FUZZ_MUTANTS`` / ``ONNX2FLAX_FUZZ_SEED`` to fuzz longer or elsewhere.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto, helper, numpy_helper

import onnx2flax
from onnx2flax.errors import InternalError, OnnxConversionError

from fuzz_corpus import all_models, feeds_for

N_MUTANTS = int(os.environ.get("ONNX2FLAX_FUZZ_MUTANTS", "2400"))
SEED = int(os.environ.get("ONNX2FLAX_FUZZ_SEED", "20261123"))
MAX_RUNS = 60
BUDGET_S = 10.0

_INTS = [-(2**63), -(2**31), -7, -2, -1, 0, 1, 2, 3, 5, 64, 2**31, 2**40, 2**62]
_FLOATS = [float("nan"), float("inf"), -float("inf"), -1.0, 0.0, 1e-30, 1e30, 0.5]
_ELEM_TYPES = list(range(0, 25))
_OPS = ["Conv", "Relu", "Gemm", "MatMul", "Reshape", "Concat", "Add", "Foo", "Loop", "Slice",
        "ConstantOfShape", "Expand", "Tile", "Range", "Pad", "Resize", "MaxPool", "If", "Cast",
        "Transpose", "Gather", "Squeeze", "Unsqueeze", "BatchNormalization", "Identity"]


# ---------------------------------------------------------------- byte-level mutations

def _bytes_mutant(data: bytes, rng: np.random.Generator) -> bytes:
    kind = rng.integers(6)
    buf = bytearray(data)
    if kind == 0:  # truncate
        return bytes(buf[: rng.integers(len(buf))])
    if kind == 1:  # flip a few bits
        for _ in range(rng.integers(1, 6)):
            i = rng.integers(len(buf))
            buf[i] ^= 1 << int(rng.integers(8))
        return bytes(buf)
    if kind == 2:  # overwrite a run with random bytes
        i = rng.integers(len(buf))
        n = int(rng.integers(1, 16))
        buf[i:i + n] = rng.bytes(n)
        return bytes(buf)
    if kind == 3:  # insert random bytes
        i = rng.integers(len(buf))
        return bytes(buf[:i]) + rng.bytes(int(rng.integers(1, 16))) + bytes(buf[i:])
    if kind == 4:  # delete a run
        i = rng.integers(len(buf))
        return bytes(buf[:i] + buf[i + int(rng.integers(1, 32)):])
    return rng.bytes(int(rng.integers(0, 256)))  # garbage


# ---------------------------------------------------------------- protobuf-level mutations

def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _names(graph: onnx.GraphProto) -> list[str]:
    names = [i.name for i in graph.input] + [i.name for i in graph.initializer]
    return names + [o for n in graph.node for o in n.output]


def _mutate_attribute(node: onnx.NodeProto, rng) -> None:
    if not node.attribute:
        node.attribute.append(helper.make_attribute(
            _pick(rng, ["kernel_shape", "axis", "pads", "group", "perm", "to"]),
            int(_pick(rng, _INTS)) if rng.random() < 0.5 else [int(_pick(rng, _INTS))] * 2))
        return
    attr = _pick(rng, node.attribute)
    kind = rng.integers(6)
    if kind == 0:  # value out of range
        if attr.type == AttributeProto.INT:
            attr.i = int(_pick(rng, _INTS))
        elif attr.type == AttributeProto.INTS and attr.ints:
            attr.ints[int(rng.integers(len(attr.ints)))] = int(_pick(rng, _INTS))
        elif attr.type == AttributeProto.FLOAT:
            attr.f = _pick(rng, _FLOATS)
        elif attr.type == AttributeProto.FLOATS and attr.floats:
            attr.floats[0] = _pick(rng, _FLOATS)
        elif attr.type == AttributeProto.TENSOR:
            _mutate_tensor(attr.t, rng)
        else:
            attr.s = rng.bytes(4)
    elif kind == 1:  # wrong attribute type
        new = _pick(rng, [helper.make_attribute(attr.name, 1.5),
                          helper.make_attribute(attr.name, "SAME_UPPER"),
                          helper.make_attribute(attr.name, [1.0, 2.0]),
                          helper.make_attribute(attr.name, ["a", "b"]),
                          helper.make_attribute(attr.name, 3)])
        attr.CopyFrom(new)
    elif kind == 2:  # list length changed
        if attr.type == AttributeProto.INTS:
            if rng.random() < 0.5 and attr.ints:
                del attr.ints[-1]
            else:
                attr.ints.append(int(_pick(rng, _INTS)))
        else:
            attr.type = int(rng.integers(0, 15))  # type tag disagreeing with the payload
    elif kind == 3:
        node.attribute.remove(attr)
    elif kind == 4:
        node.attribute.append(attr)  # duplicated attribute
    else:
        attr.name = _pick(rng, ["", "kernel_shape", "bogus", attr.name + "x"])


def _mutate_tensor(t: onnx.TensorProto, rng) -> None:
    kind = rng.integers(9)
    if kind >= 7:  # same type and dims, values out of range (axes, indices, shapes, NaN)
        try:
            value = numpy_helper.to_array(t).copy()
        except Exception:  # noqa: BLE001  (an earlier mutation broke it already)
            return
        if value.size:
            flat = value.reshape(-1)
            i = int(rng.integers(flat.size))
            if value.dtype.kind in "iu":
                flat[i] = np.array(_pick(rng, _INTS)).astype(value.dtype)
            elif value.dtype.kind == "f":
                flat[i] = _pick(rng, _FLOATS)
            t.CopyFrom(numpy_helper.from_array(value, t.name))
    elif kind == 0 and t.dims:
        t.dims[int(rng.integers(len(t.dims)))] = int(_pick(rng, _INTS))
    elif kind == 1:
        t.dims.append(int(_pick(rng, [0, 1, 2, 2**20, 2**40])))
    elif kind == 2:
        t.data_type = int(_pick(rng, _ELEM_TYPES))
    elif kind == 3:  # short / missing data
        if t.raw_data:
            t.raw_data = t.raw_data[: int(rng.integers(len(t.raw_data) + 1))]
        else:
            t.ClearField("float_data")
            t.ClearField("int64_data")
            t.raw_data = rng.bytes(int(rng.integers(0, 9)))
    elif kind == 4:  # external data pointing somewhere hostile
        t.data_location = TensorProto.EXTERNAL
        del t.external_data[:]
        for key, value in (("location", _pick(rng, ["../../etc/passwd", "/etc/passwd", "w.bin",
                                                    "", "a/../../x"])),
                           ("offset", _pick(rng, ["0", "-5", "x", str(2**40)])),
                           ("length", _pick(rng, ["4", "-1", "10000000000000"]))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
    elif kind == 5:  # string tensor
        t.data_type = TensorProto.STRING
        t.ClearField("raw_data")
        t.string_data.extend([b"a"] * max(1, int(np.prod(t.dims)) if t.dims else 1))
    else:
        t.dims[:] = [int(_pick(rng, _INTS)) for _ in range(int(rng.integers(0, 4)))]


def _mutate_value_info(info: onnx.ValueInfoProto, rng) -> None:
    kind = rng.integers(5)
    tt = info.type.tensor_type
    if kind == 0:
        tt.elem_type = int(_pick(rng, _ELEM_TYPES))
    elif kind == 1 and tt.shape.dim:
        tt.shape.dim[int(rng.integers(len(tt.shape.dim)))].dim_value = int(
            _pick(rng, [-3, -1, 0, 1, 2**40, 2**62]))
    elif kind == 2:
        dim = tt.shape.dim.add()
        dim.dim_value = int(_pick(rng, [0, 1, 5]))
    elif kind == 3:
        info.type.CopyFrom(_pick(rng, [
            helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [2])),
            helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(
                TensorProto.FLOAT, [1])),
            onnx.TypeProto()]))
    else:
        info.name = _pick(rng, ["", "nowhere", info.name + "_"])


def _mutate_function(fn: onnx.FunctionProto, rng) -> None:
    """Model-local functions: renamed, retyped, rewired, recursive, or with bad attributes."""
    node = _pick(rng, fn.node)
    kind = rng.integers(6)
    if kind == 0:
        node.op_type, node.domain = _pick(rng, [(fn.name, fn.domain), ("Relu", ""),
                                                ("Nope", ""), ("Gemm", "local")])
    elif kind == 1 and node.input:
        node.input[int(rng.integers(len(node.input)))] = _pick(rng, ["ghost", "y", "a", ""])
    elif kind == 2:
        fn.name = _pick(rng, ["", "Other", fn.name + "2"])
    elif kind == 3:
        del fn.input[int(rng.integers(len(fn.input))):]
    elif kind == 4:
        fn.output.append(_pick(rng, ["y", "h", "zz"]))
    else:
        _mutate_attribute(node, rng)


def _proto_mutant(model: onnx.ModelProto, rng) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for _ in range(int(rng.integers(1, 3))):
        kind = rng.integers(19)
        if kind >= 15:  # issue 12's hostile classes
            _hostile_mutation(m, int(kind), rng)
            continue
        if kind == 14 and len(m.functions):
            _mutate_function(_pick(rng, m.functions), rng)
            continue
        node = _pick(rng, g.node) if len(g.node) else None
        if kind in (0, 1) and node is not None:
            _mutate_attribute(node, rng)
        elif kind == 2 and node is not None and node.input:  # dangling / cyclic / other name
            i = int(rng.integers(len(node.input)))
            node.input[i] = _pick(rng, ["ghost", "", node.output[0] if node.output else "z"]
                                  + _names(g))
        elif kind == 3 and node is not None and node.output:  # duplicated output names
            node.output[0] = _pick(rng, _names(g) + [""])
        elif kind == 4 and node is not None:
            _pick(rng, [lambda: g.node.remove(node), lambda: g.node.append(node),
                        lambda: node.input.append(_pick(rng, _names(g))),
                        lambda: node.output.append(_pick(rng, ["extra", _pick(rng, _names(g))]))])()
        elif kind == 5 and node is not None:
            node.op_type = _pick(rng, _OPS)
        elif kind == 6 and node is not None:
            node.domain = _pick(rng, ["com.microsoft", "ai.onnx", "ai.onnx.ml", "x"])
        elif kind in (7, 8) and len(g.initializer):
            _mutate_tensor(_pick(rng, g.initializer), rng)
        elif kind == 9 and len(g.initializer):
            g.initializer.remove(_pick(rng, g.initializer))
        elif kind == 10 and len(g.input):
            _mutate_value_info(_pick(rng, g.input), rng)
        elif kind == 11 and len(g.output):
            _mutate_value_info(_pick(rng, g.output), rng)
        elif kind == 12:
            op = _pick(rng, m.opset_import)
            op.version = int(_pick(rng, [0, -1, 1, 7, 10, 13, 25, 99, 2**40]))
            if rng.random() < 0.2:
                op.domain = _pick(rng, ["", "ai.onnx", "weird"])
            if rng.random() < 0.2:
                m.ir_version = int(_pick(rng, [0, 3, 99]))
        else:  # a string initializer read by a node
            t = helper.make_tensor("strs", TensorProto.STRING, [2], [b"a", b"b"])
            g.initializer.append(t)
            if node is not None and node.input:
                node.input[0] = "strs"
    return m


_RESERVED = ["params", "batch_stats", "intermediates", "params.weight", "a" + ".b" * 2100,
             ".".join(["x"] * 40), "w" * 5000]


def _hostile_mutation(m: onnx.ModelProto, kind: int, rng) -> None:
    """Issue 12's classes grafted onto a corpus model: a reserved or overlong weight name,
    nested If, a function bomb, a folding bomb (the last three with unused outputs: still
    decoded, inlined and folded)."""
    g = m.graph
    if kind == 15 and len(g.initializer):
        init = _pick(rng, g.initializer)
        old, new = init.name, _pick(rng, _RESERVED)
        init.name = new
        for node in g.node:
            node.input[:] = [new if i == old else i for i in node.input]
    elif kind == 16:
        depth = int(rng.integers(1, 100))
        node = g.node.add(op_type="If", input=["cond_" + str(depth)], output=["if_out"])
        g.initializer.append(numpy_helper.from_array(np.array(True), "cond_" + str(depth)))
        for level in range(depth):
            leaf = helper.make_graph([helper.make_node("Constant", [], [f"l{level}"],
                                                       value_float=1.0)], "leaf", [],
                                     [helper.make_tensor_value_info(f"l{level}", TensorProto.FLOAT, [])])
            node.attribute.add(name="else_branch", type=AttributeProto.GRAPH).g.CopyFrom(leaf)
            sub = node.attribute.add(name="then_branch", type=AttributeProto.GRAPH).g
            sub.name = f"nest{level}"
            sub.output.append(helper.make_tensor_value_info(f"n{level}", TensorProto.FLOAT, []))
            if level == depth - 1:
                sub.node.append(helper.make_node("Constant", [], [f"n{level}"], value_float=2.0))
            else:
                node = sub.node.add(op_type="If", input=[f"cond_{depth}"], output=[f"n{level}"])
    elif kind == 17:
        levels = int(rng.integers(2, 40))
        calls = int(rng.integers(1, 4))
        for level in range(levels):
            body, prev = [], "a"
            for k in range(calls if level < levels - 1 else 0):
                out = "c" if k == calls - 1 else f"t{k}"
                body.append(helper.make_node(f"B{level + 1}", [prev], [out], domain="bomb"))
                prev = out
            body = body or [helper.make_node("Identity", ["a"], ["c"])]
            m.functions.append(helper.make_function("bomb", f"B{level}", ["a"], ["c"], body,
                                                    [helper.make_opsetid("", 17),
                                                     helper.make_opsetid("bomb", 1)]))
        m.opset_import.append(helper.make_opsetid("bomb", 1))
        g.node.append(helper.make_node("B0", [_pick(rng, _names(g) or ["x"])], ["bomb_out"],
                                       domain="bomb"))
    else:
        huge = int(_pick(rng, [2**20, 2**31, 2**40]))
        op = _pick(rng, ["ConstantOfShape", "Expand", "Tile", "Pad", "Gather", "Einsum"])
        d = numpy_helper.from_array(np.ones((2, 2), np.float32), "fold_d")
        s_ = numpy_helper.from_array(np.array([huge, 2], np.int64), "fold_s")
        g.initializer.extend([d, s_])
        inputs = {"ConstantOfShape": ["fold_s"], "Expand": ["fold_d", "fold_s"],
                  "Tile": ["fold_d", "fold_s"], "Pad": ["fold_d", "fold_s"],
                  "Gather": ["fold_d", "fold_s"], "Einsum": ["fold_d", "fold_d"]}[op]
        attrs = {"equation": "ij,kl->ijkl"} if op == "Einsum" else {}
        if op == "Pad":
            g.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "fold_a"))
            inputs += ["", "fold_a"]
        g.node.append(helper.make_node(op, inputs, ["fold_out"], **attrs))


def _mutant(models, rng) -> bytes:
    model = _pick(rng, models)
    if rng.random() < 0.25:
        return _bytes_mutant(model.SerializeToString(), rng)
    return _proto_mutant(model, rng).SerializeToString()


# ---------------------------------------------------------------- the test

class _Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise _Timeout()


#: Lower than the defaults: a mutant may legitimately build a tensor as large as the limits
#: allow, and filling gigabytes would take the whole time budget.
_LIMITS = onnx2flax.Limits(tensor_bytes=2**24, folded_bytes=2**26, inlined_nodes=2**12,
                           trace_steps=2**16)


def test_fuzz_mutants_fail_cleanly():
    rng = np.random.default_rng(SEED)
    models = all_models()
    failures, slow = [], []
    stats = {"converted": 0, "traced": 0, "ran": 0, "refused": 0}
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for index in range(N_MUTANTS):
            data = _mutant(models, rng)
            start = time.perf_counter()
            signal.alarm(int(BUDGET_S * 3))
            try:
                stage = "convert"
                converted = onnx2flax.convert(data, limits=_LIMITS)
                stats["converted"] += 1
                stage = "trace"
                converted.outputs  # noqa: B018  (eval_shape over the interpreter)
                stats["traced"] += 1
                if stats["ran"] < MAX_RUNS:
                    feeds = feeds_for(converted, np.random.default_rng(index))
                    if feeds is not None:
                        stage = "run"
                        converted.run(feeds)
                        stats["ran"] += 1
            except OnnxConversionError:
                stats["refused"] += 1
            except _Timeout:
                failures.append((index, stage, "hang", data))
            except Exception as exc:  # noqa: BLE001  (the point of the test)
                failures.append((index, stage, f"{type(exc).__name__}: {exc}"[:300], data))
            finally:
                signal.alarm(0)
            elapsed = time.perf_counter() - start
            if elapsed > BUDGET_S:
                slow.append((index, round(elapsed, 1)))
    finally:
        signal.signal(signal.SIGALRM, old)
    report = "\n".join(f"mutant {i} ({stage}): {msg}" for i, stage, msg, _ in failures[:20])
    assert not failures, f"{len(failures)} mutants escaped ({stats}):\n{report}"
    assert not slow, f"mutants over {BUDGET_S}s: {slow}"
    # The corpus must keep exercising the later stages, not only the parser.
    assert stats["converted"] > N_MUTANTS // 20 and stats["ran"] > MAX_RUNS // 2, stats


@pytest.mark.parametrize("index", range(len(all_models())))
def test_corpus_models_convert_and_run(index):
    model = all_models()[index]
    onnx.checker.check_model(model, full_check=True)
    converted = onnx2flax.convert(model)
    outs = converted.run(feeds_for(converted, np.random.default_rng(index)))
    assert all(np.isfinite(o).all() for o in outs)
