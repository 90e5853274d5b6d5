"""Small valid ONNX models, seeds for the fuzzer (``test_fuzz.py``) and the hostile-input tests.

Each builder returns a fresh ``onnx.ModelProto`` that onnx2flax converts and runs; shapes are
tiny so that a mutant that still converts runs in milliseconds. Weights are seeded.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model(nodes, inputs, outputs, inits, opset=17):
    graph = helper.make_graph(
        nodes, "corpus",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _w(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def conv_bn_relu_gemm():
    """Conv -> BatchNormalization -> Relu -> Flatten -> Gemm (the guide's CNN)."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["c"], name="conv",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn.weight", "bn.bias", "bn.running_mean",
                                                "bn.running_var"], ["b"], name="bn",
                         epsilon=1e-5, momentum=0.9),
        helper.make_node("Relu", ["b"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], name="fc", transB=1),
    ]
    inits = {"conv.weight": _w(rng, 4, 3, 3, 3), "conv.bias": _w(rng, 4),
             "bn.weight": _w(rng, 4), "bn.bias": _w(rng, 4), "bn.running_mean": _w(rng, 4),
             "bn.running_var": np.abs(_w(rng, 4)) + 0.5,
             "fc.weight": _w(rng, 2, 4 * 4 * 4), "fc.bias": _w(rng, 2)}
    return _model(nodes, [("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                  [("y", TensorProto.FLOAT, ["N", 2])], inits)


def pools():
    """Strided grouped Conv -> MaxPool (dilated, ceil) -> AveragePool -> GlobalAveragePool."""
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv_g", kernel_shape=[2, 2],
                         strides=[2, 1], pads=[0, 1, 1, 0], group=2),
        helper.make_node("MaxPool", ["c"], ["m"], name="maxpool", kernel_shape=[2, 2],
                         dilations=[1, 2], ceil_mode=1),
        helper.make_node("AveragePool", ["m"], ["a"], name="avgpool", kernel_shape=[2, 1],
                         pads=[1, 0, 0, 0], count_include_pad=0),
        helper.make_node("GlobalAveragePool", ["a"], ["y"], name="gap"),
    ]
    return _model(nodes, [("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                  [("y", TensorProto.FLOAT, [1, 4, 1, 1])], {"w": _w(rng, 4, 2, 2, 2)})


def shape_reshape_matmul():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape -> MatMul (a folded shape subgraph)."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="unsq"),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "proj.weight"], ["h"], name="proj"),
        helper.make_node("Sigmoid", ["h"], ["y"], name="sig"),
    ]
    inits = {"zero": np.array(0, np.int64), "axes0": np.array([0], np.int64),
             "minus1": np.array([-1], np.int64), "proj.weight": _w(rng, 12, 3)}
    return _model(nodes, [("x", TensorProto.FLOAT, ["batch", 3, 2, 2])],
                  [("y", TensorProto.FLOAT, ["batch", 3])], inits)


def constant_subgraphs():
    """Weights computed by constant subgraphs (ConstantOfShape, Range, Expand, Tile, Constant)
    feeding elementwise ops, as Caffe2/Paddle exports do."""
    nodes = [
        helper.make_node("Constant", [], ["shape"], name="shape_const",
                         value=numpy_helper.from_array(np.array([2, 3], np.int64))),
        helper.make_node("ConstantOfShape", ["shape"], ["ones"], name="cos",
                         value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Range", ["start", "limit", "delta"], ["r"], name="range"),
        helper.make_node("Cast", ["r"], ["rf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Expand", ["rf", "shape"], ["e"], name="expand"),
        helper.make_node("Tile", ["ones", "reps"], ["t"], name="tile"),
        helper.make_node("Mul", ["x", "e"], ["m"], name="mul"),
        helper.make_node("Add", ["m", "t"], ["a"], name="add"),
        helper.make_node("Clip", ["a", "lo", "hi"], ["y"], name="clip"),
    ]
    inits = {"start": np.array(0, np.int64), "limit": np.array(3, np.int64),
             "delta": np.array(1, np.int64), "reps": np.array([1, 1], np.int64),
             "lo": np.array(-1.0, np.float32), "hi": np.array(2.0, np.float32)}
    return _model(nodes, [("x", TensorProto.FLOAT, [2, 3])], [("y", TensorProto.FLOAT, [2, 3])],
                  inits)


def residual_two_outputs():
    """Two inputs, residual Add, ConvTranspose, Transpose, Squeeze; two outputs."""
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Conv", ["x", "a.weight"], ["c"], name="a", kernel_shape=[1, 1]),
        helper.make_node("Add", ["c", "skip"], ["s"], name="res"),
        helper.make_node("ConvTranspose", ["s", "up.weight", "up.bias"], ["u"], name="up",
                         kernel_shape=[2, 2], strides=[2, 2], output_padding=[1, 0]),
        helper.make_node("Tanh", ["u"], ["y1"], name="tanh"),
        helper.make_node("GlobalMaxPool", ["s"], ["g"], name="gmp"),
        helper.make_node("Squeeze", ["g", "axes"], ["sq"], name="squeeze"),
        helper.make_node("Transpose", ["sq"], ["y2"], name="transpose", perm=[1, 0]),
    ]
    inits = {"a.weight": _w(rng, 2, 2, 1, 1), "up.weight": _w(rng, 2, 3, 2, 2),
             "up.bias": _w(rng, 3), "axes": np.array([2, 3], np.int64)}
    return _model(nodes, [("x", TensorProto.FLOAT, [1, 2, 3, 3]),
                          ("skip", TensorProto.FLOAT, [1, 2, 3, 3])],
                  [("y1", TensorProto.FLOAT, [1, 3, 7, 6]), ("y2", TensorProto.FLOAT, [2, 1])],
                  inits)


def opset9_unsqueeze_div():
    """An old-opset model: attribute-style Unsqueeze / Squeeze, Div, Clip with attributes."""
    nodes = [
        helper.make_node("Unsqueeze", ["x"], ["u"], name="unsq", axes=[0]),
        helper.make_node("Div", ["u", "d"], ["q"], name="div"),
        helper.make_node("Clip", ["q"], ["c"], name="clip", min=-1.0, max=1.0),
        helper.make_node("Squeeze", ["c"], ["y"], name="squeeze", axes=[0]),
    ]
    return _model(nodes, [("x", TensorProto.FLOAT, [3, 2])], [("y", TensorProto.FLOAT, [3, 2])],
                  {"d": np.array([2.0, -4.0], np.float32)}, opset=9)


def local_function():
    """A model-local function (Gemm + Relu), inlined by normalization."""
    rng = np.random.default_rng(7)
    fn = helper.make_function(
        "local", "Dense", ["a", "w", "b"], ["y"],
        [helper.make_node("Gemm", ["a", "w", "b"], ["h"], transB=1),
         helper.make_node("Relu", ["h"], ["y"])],
        [helper.make_opsetid("", 17)])
    model = _model([helper.make_node("Dense", ["x", "fc.weight", "fc.bias"], ["y"], name="dense",
                                     domain="local")],
                   [("x", TensorProto.FLOAT, ["N", 4])], [("y", TensorProto.FLOAT, ["N", 3])],
                   {"fc.weight": _w(rng, 3, 4), "fc.bias": _w(rng, 3)})
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.functions.append(fn)
    return model


def data_movement():
    """Run-time Slice, Pad, Resize, Expand, Tile, Split, Where, Softmax, ReduceMean, TopK,
    LayerNormalization, Range and an If on a constant condition (opset 18)."""
    rng = np.random.default_rng(8)
    then_branch = helper.make_graph(
        [helper.make_node("Neg", ["m"], ["t_out"], name="neg")], "then", [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [2, 1, 10, 1])])
    else_branch = helper.make_graph(
        [helper.make_node("Abs", ["m"], ["e_out"], name="abs")], "else", [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [2, 1, 10, 1])])
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    nodes = [
        helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["s"], name="slice"),
        helper.make_node("Pad", ["s", "pads"], ["p"], name="pad", mode="reflect"),
        helper.make_node("Resize", ["p", "", "scales"], ["r"], name="resize", mode="nearest"),
        helper.make_node("Expand", ["r", "expand_to"], ["e"], name="expand"),
        helper.make_node("Tile", ["e", "reps"], ["t"], name="tile"),
        helper.make_node("Split", ["t", "split"], ["a", "b"], name="split", axis=1),
        helper.make_node("Greater", ["a", "b"], ["g"], name="greater"),
        helper.make_node("Where", ["g", "a", "b"], ["w"], name="where"),
        helper.make_node("Softmax", ["w"], ["sm"], name="softmax", axis=-1),
        helper.make_node("LayerNormalization", ["sm", "ln.weight", "ln.bias"], ["ln"],
                         name="ln", axis=-1),
        helper.make_node("ReduceMean", ["ln", "raxes"], ["m"], name="mean", keepdims=1),
        helper.make_node("If", ["flag"], ["f"], name="if", then_branch=then_branch,
                         else_branch=else_branch),
        helper.make_node("TopK", ["ln", "k"], ["y", "idx"], name="topk", axis=-1),
        helper.make_node("Range", ["zero", "limit", "one"], ["rg"], name="range"),
        helper.make_node("Add", ["y", "f"], ["y2"], name="add"),
    ]
    inits = {"starts": i64(0, 1), "ends": i64(2, 100), "axes": i64(0, 2), "steps": i64(1, 1),
             "pads": i64(0, 0, 1, 0, 0, 0, 1, 0), "scales": np.array([1, 1, 2, 1], np.float32),
             "expand_to": i64(2, 1, 1, 1), "reps": i64(1, 2, 1, 1), "split": i64(1, 1),
             "raxes": i64(-1), "flag": np.array(True), "k": i64(2), "zero": np.array(0, np.int64),
             "limit": np.array(3, np.int64), "one": np.array(1, np.int64),
             "ln.weight": _w(rng, 3), "ln.bias": _w(rng, 3)}
    return _model(nodes, [("x", TensorProto.FLOAT, [2, 1, 4, 3])],
                  [("y2", TensorProto.FLOAT, [2, 1, 10, 2]), ("idx", TensorProto.INT64, [2, 1, 10, 2])],
                  inits, opset=18)


BUILDERS = [conv_bn_relu_gemm, pools, shape_reshape_matmul, constant_subgraphs,
            residual_two_outputs, opset9_unsqueeze_div, local_function, data_movement]


def feeds_for(converted, rng, max_elements: int = 4096):
    """Random feeds (ONNX layout) for a converted model's inputs; dynamic dims become 2.
    ``None`` when an input would be larger than ``max_elements``."""
    feeds = {}
    for spec in converted.inputs:
        shape = [d if isinstance(d, int) else 2 for d in (spec.shape or ())]
        if np.prod(shape, dtype=np.float64) > max_elements:
            return None
        dtype = spec.dtype or np.dtype(np.float32)  # an untyped input takes any dtype
        if dtype.kind == "f":
            value = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            value = rng.random(shape) > 0.5
        else:
            value = rng.integers(0, 3, shape).astype(dtype)
        feeds[spec.name] = value
    return feeds


def all_models() -> list[onnx.ModelProto]:
    return [build() for build in BUILDERS]
