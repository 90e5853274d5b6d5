"""Print a real message for every onnx2flax error class (the examples in docs/errors.md).

Run from the repository root: ``PYTHONPATH=. python docs/errors_examples.py``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import onnx2flax  # noqa: E402
from onnx2flax._core import files as _files  # noqa: E402

F = TensorProto.FLOAT


def model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(
        nodes, "example", [helper.make_tensor_value_info(*i) for i in inputs],
        [helper.make_tensor_value_info(*o) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in dict(inits).items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def conv(**attrs):
    w = np.ones((2, 2, 3, 3), np.float32)
    return model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv1", **attrs)],
                 [("x", F, [1, 2, 4, 4])], [("y", F, None)], {"w": w})


def const(name, value):
    return helper.make_node("Constant", [], [name], name=name,
                            value=numpy_helper.from_array(np.asarray(value)))


def examples(tmp: Path):
    yield "garbage bytes", lambda: onnx2flax.convert(b"not an onnx file")
    yield "dangling name", lambda: onnx2flax.convert(model(
        [helper.make_node("Relu", ["ghost"], ["y"], name="relu1")], [("x", F, [2])],
        [("y", F, [2])]))
    yield "cycle", lambda: onnx2flax.convert(model(
        [helper.make_node("Add", ["x", "b"], ["a"], name="first"),
         helper.make_node("Relu", ["a"], ["b"], name="second")], [("x", F, [2])],
        [("b", F, [2])]))
    yield "attribute type", lambda: onnx2flax.convert(model(
        [helper.make_node("Flatten", ["x"], ["y"], name="flat", axis=1.5)], [("x", F, [2, 2])],
        [("y", F, [2, 2])]))
    yield "negative strides", lambda: onnx2flax.convert(conv(strides=[-1, 1])).run(
        {"x": np.zeros((1, 2, 4, 4), np.float32)})
    yield "initializer data", lambda: onnx2flax.convert(short_initializer())
    yield "external data", lambda: onnx2flax.convert(external(tmp, "../secret.bin"))
    yield "unsupported op", lambda: onnx2flax.convert(model(
        [helper.make_node("Frobnicate", ["x"], ["y"], name="f1")], [("x", F, [2])],
        [("y", F, [2])]))
    yield "future opset", lambda: onnx2flax.convert(model(
        [helper.make_node("Relu", ["x"], ["y"], name="r")], [("x", F, [2])], [("y", F, [2])],
        opset=99))
    yield "map input", lambda: onnx2flax.convert(map_input())
    yield "ConstantOfShape 10^12", lambda: onnx2flax.convert(model(
        [const("shape", np.array([10**6, 10**6], np.int64)),
         helper.make_node("ConstantOfShape", ["shape"], ["y"], name="fill")], [],
        [("y", F, None)]))
    yield "unbounded Loop", lambda: onnx2flax.convert(unbounded_loop()).run(
        {"x": np.zeros(1, np.float32)})
    yield "run-time output 10^12", lambda: onnx2flax.convert(conv(pads=[10**6] * 4)).run(
        {"x": np.zeros((1, 2, 4, 4), np.float32)})
    relu_model = model([helper.make_node("Relu", ["x"], ["y"], name="r")], [("x", F, ["N", 3])],
                       [("y", F, ["N", 3])])
    relu = onnx2flax.convert(relu_model)
    yield "unknown feed", lambda: relu.run({"image": np.zeros((1, 3), np.float32)})
    yield "wrong dims", lambda: relu.run({"x": np.zeros((1, 4), np.float32)})
    yield "wrong dtype", lambda: relu.run({"x": np.zeros((1, 3), np.int64)})
    yield "input_shapes disagree", lambda: onnx2flax.convert(
        relu_model, input_shapes={"x": [2, 4]})
    yield "constants name no input", lambda: onnx2flax.convert(
        relu_model, constants={"sr": 16000})
    pool = model([helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[3, 3])],
                 [("x", F, ["N", 2, "H", "W"])], [("y", F, None)])
    yield "placeholder dims", lambda: onnx2flax.convert(pool).outputs
    by_shape = model([helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape")],
                     [("x", F, [2, 3]), ("s", TensorProto.INT64, [2])], [("y", F, None)])
    yield "input deciding shapes, missing", lambda: onnx2flax.convert(by_shape).specialized(
        {"x": np.zeros((2, 3), np.float32)})
    yield "compare: random shape input", lambda: onnx2flax.compare(by_shape)
    image = model([helper.make_node("Relu", ["x"], ["y"], name="r")],
                  [("x", F, ["N", 3, "H", "W"])], [("y", F, None)])
    yield "compare: unknown image size", lambda: onnx2flax.compare(image)
    future_ir = model([helper.make_node("Relu", ["x"], ["y"], name="r")], [("x", F, [2])],
                      [("y", F, [2])])
    future_ir.ir_version = 99
    yield "compare: onnxruntime refuses", lambda: onnx2flax.compare(
        future_ir, {"x": np.zeros(2, np.float32)})
    yield "compare: huge random feeds", lambda: onnx2flax.compare(model(
        [helper.make_node("Relu", ["x"], ["y"], name="r")], [("x", F, [10**5, 10**5])],
        [("y", F, None)]))
    folder = _files.output_dir(tmp / "out")
    _files.write_file(folder, "summary.txt", "x")
    yield "overwrite", lambda: _files.write_file(folder, "summary.txt", "y")
    yield "hostile name", lambda: _files.write_file(folder, "../evil.py", "y")
    yield "bug in a handler", lambda: onnx2flax.convert(broken_handler()).run(
        {"x": np.zeros(2, np.float32)})


def broken_handler():
    """A handler with a bug (registered here for the example only) on a valid model."""
    @onnx2flax.register_op("Broken", domain="example.bugs")
    def broken(ctx, x):
        return x.no_such_attribute

    m = model([helper.make_node("Broken", ["x"], ["y"], name="b1", domain="example.bugs")],
              [("x", F, [2])], [("y", F, [2])])
    m.opset_import.append(helper.make_opsetid("example.bugs", 1))
    return m


def unbounded_loop():
    """A Loop with no trip count whose condition stays true."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["v_in"], ["v_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", F, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", F, [1])])
    return model([const("c", np.array(True)),
                  helper.make_node("Loop", ["", "c", "x"], ["y"], name="forever", body=body)],
                 [("x", F, [1])], [("y", F, [1])])


def short_initializer():
    w = numpy_helper.from_array(np.ones(2, np.float32), "fc.weight")
    w.dims[:] = [3]
    m = model([helper.make_node("Add", ["x", "fc.weight"], ["y"], name="add")],
              [("x", F, [3])], [("y", F, [3])])
    m.graph.initializer.append(w)
    return m


def external(tmp: Path, location: str) -> Path:
    m = model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [("x", F, [2])],
              [("y", F, [2])])
    t = TensorProto(name="w", data_type=F, dims=[2], data_location=TensorProto.EXTERNAL)
    entry = t.external_data.add()
    entry.key, entry.value = "location", location
    m.graph.initializer.append(t)
    (tmp / "m").mkdir(exist_ok=True)
    path = tmp / "m" / "model.onnx"
    path.write_bytes(m.SerializeToString())
    return path


def map_input():
    m = model([helper.make_node("Identity", ["x"], ["y"], name="id")], [("x", F, [2])],
              [("y", F, [2])])
    m.graph.input[0].type.CopyFrom(helper.make_map_type_proto(
        TensorProto.INT64, helper.make_tensor_type_proto(F, [2])))
    return m


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for title, action in examples(Path(tmp)):
            try:
                action()
            except onnx2flax.OnnxConversionError as exc:
                message = str(exc).split("\n--------------------")[0].replace(tmp, "/tmp/...")
                print(f"{title}: {type(exc).__name__}\n    {message}\n")
            else:
                print(f"{title}: no error raised", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
