"""com.microsoft.nchwc: small hand-built CNNs saved by an onnxruntime session at
ORT_ENABLE_ALL (which rewrites them into the blocked-channel ops with block-reordered
weights) convert, match onnxruntime, and compile without a transpose."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import (check_graph, convert_and_run, make_model, run_ort, transposes,
                     values_and_hlo)
from onnx import helper, numpy_helper

import onnx2flax
from onnx2flax.errors import InvalidModelError, UnsupportedOpError

RNG = np.random.default_rng(0)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _saved_by_onnxruntime(model, tmp_path):
    """The graph an onnxruntime session saves at ORT_ENABLE_ALL, and its op counts."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    saved = onnx.load(options.optimized_model_filepath)
    return saved, Counter((n.domain, n.op_type) for n in saved.graph.node)


def _conv(x, w, y, **attrs):
    return helper.make_node("Conv", [x, w, f"{w}_b"], [y], **attrs)


def _weights(name, o, i, k):
    return {name: _rand(o, i, k, k), f"{name}_b": _rand(o)}


@values_and_hlo
@pytest.mark.parametrize("c_in", [3, 32])
def test_nchwc_cnn(tmp_path, c_in, aspect):
    """Plain (3 channels) and reordered (32) inputs; convolutions with fused activations
    and a fused residual sum, a depthwise one, 20 channels (padded to the block), max /
    average / global pools and nearest and linear upsampling."""
    nodes = [_conv("x", "w1", "a", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["a1"]),
             _conv("a1", "w2", "b", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["b", "a1"], ["s"]), helper.make_node("Relu", ["s"], ["s1"]),
             _conv("s1", "dw", "d", pads=[1, 1, 1, 1], group=32),
             helper.make_node("MaxPool", ["d"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
             _conv("m", "w3", "e", strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["e"], ["e1"]),
             helper.make_node("AveragePool", ["e1"], ["p"], kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["p", "", "up"], ["u"], mode="nearest"),
             helper.make_node("Resize", ["p", "", "up"], ["ul"], mode="linear",
                              coordinate_transformation_mode="asymmetric"),
             helper.make_node("GlobalAveragePool", ["u"], ["g"]),
             helper.make_node("GlobalMaxPool", ["ul"], ["gm"]),
             helper.make_node("Add", ["g", "gm"], ["y"])]
    consts = {**_weights("w1", 32, c_in, 3), **_weights("w2", 32, 32, 3),
              **_weights("dw", 32, 1, 3), **_weights("w3", 20, 32, 3),
              "up": np.array([1, 1, 2, 2], np.float32)}
    model = make_model(nodes, [("x", np.float32, [1, c_in, 16, 16])], [("y", np.float32, None)],
                       consts, opset=17)
    saved, ops = _saved_by_onnxruntime(model, tmp_path)
    assert ops[("com.microsoft.nchwc", "Conv")] == 4
    assert ("com.microsoft.nchwc", "ReorderOutput") in ops
    assert (("com.microsoft.nchwc", "ReorderInput") in ops) == (c_in == 32)
    x = _rand(1, c_in, 16, 16)
    if aspect == "values":
        check_graph(saved, {"x": x}, rtol=1e-4, atol=1e-4)
    else:  # layout_only: XLA's gather lowering of the linear resize has one of its own
        assert transposes(onnx2flax.convert(saved), x, layout_only=True) == 0


@values_and_hlo
def test_nchwc_nhwc_input_and_output(tmp_path, aspect):
    """An NHWC graph (Transpose -> Conv -> Transpose): onnxruntime folds the transposes into
    ReorderInput / ReorderOutput with ``channels_last=1``; the module takes and returns the
    NHWC tensors as they are, without a transpose. (20 output channels, padded to the block,
    tell the file's block size.)"""
    model = _nhwc_model(20)
    saved, ops = _saved_by_onnxruntime(model, tmp_path)
    assert set(ops) == {("com.microsoft.nchwc", op)
                        for op in ("ReorderInput", "Conv", "ReorderOutput")}
    assert all(a.i == 1 for n in saved.graph.node for a in n.attribute
               if a.name == "channels_last")
    x = _rand(1, 8, 8, 32)
    if aspect == "values":
        converted, _, _ = check_graph(saved, {"x": x}, rtol=1e-4, atol=1e-4)
        # the NHWC input and output stay as they are at the module's boundary
        assert not converted.inputs[0].channels_last
        assert not converted.outputs[0].channels_last
    else:  # ... without a transpose
        assert transposes(onnx2flax.convert(saved), x) == 0


def _nhwc_model(c_out):
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
             _conv("xt", "w1", "a", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["a1"]),
             helper.make_node("Transpose", ["a1"], ["y"], perm=[0, 2, 3, 1])]
    return make_model(nodes, [("x", np.float32, [1, 8, 8, 32])], [("y", np.float32, None)],
                      _weights("w1", c_out, 32, 3), opset=17)


def test_nchwc_block_size_not_in_file_read_as_onnxruntime_does(tmp_path):
    """32 channels in and out fit block 8 and block 16 alike: the file cannot say how its
    weights were reordered, so it is read with the installed onnxruntime's block (as
    onnxruntime itself reads it), with a warning; equal to the original model here."""
    model = _nhwc_model(32)
    saved, _ = _saved_by_onnxruntime(model, tmp_path)
    x = _rand(1, 8, 8, 32)
    with pytest.warns(UserWarning, match="machine-specific.*ORT_ENABLE_EXTENDED"):
        got = convert_and_run(saved, {"x": x})
    np.testing.assert_allclose(got[0], run_ort(model, {"x": x}, fused=False)[0],
                               rtol=1e-4, atol=1e-4)


def test_nchwc_ambiguous_block_refused_when_onnxruntime_has_none(tmp_path, monkeypatch):
    """If the installed onnxruntime uses neither fitting block, nothing says which one the
    file used: refused, naming the node, rather than guessed."""
    from onnx2flax.ops import contrib_nchwc

    saved, _ = _saved_by_onnxruntime(_nhwc_model(32), tmp_path)
    monkeypatch.setattr(contrib_nchwc, "_installed_block_size", lambda: 0)
    with pytest.raises(UnsupportedOpError, match="Conv node.*ORT_ENABLE_EXTENDED"):
        onnx2flax.convert(saved).run({"x": _rand(1, 8, 8, 32)})


def test_nchwc_weight_of_no_block_size_invalid(tmp_path):
    """A nchwc Conv weight with 12 output channels (a multiple of neither 8 nor 16) is no
    file onnxruntime writes: an error naming the node, not a guess."""
    saved, _ = _saved_by_onnxruntime(_nhwc_model(20), tmp_path)
    conv = next(n for n in saved.graph.node if n.op_type == "Conv")
    weight = next(t for t in saved.graph.initializer if t.name == conv.input[1])
    weight.CopyFrom(numpy_helper.from_array(_rand(12, 32, 3, 3), conv.input[1]))
    with pytest.raises(InvalidModelError, match="Conv node .*fit no onnxruntime block size"):
        onnx2flax.convert(saved).run({"x": _rand(1, 8, 8, 32)})


def _blocked(w, b):
    """``w`` [O, I, kh, kw] in onnxruntime's OIHWBiBo order for block ``b`` (its documented
    layout: ``[O/b, I/b, kh, kw, b_in, b_out]``), stored under the shape ``[O, I, kh, kw]``."""
    o, i, kh, kw = w.shape
    return (w.reshape(o // b, b, i // b, b, kh, kw).transpose(0, 2, 4, 5, 3, 1)
            .reshape(w.shape))


@pytest.mark.parametrize("block", [8, 16])
def test_nchwc_file_of_either_block_size(tmp_path, block):
    """The file this machine's onnxruntime saves (its layout checked against ours), rewritten
    to what a block-8 (AVX2) and a block-16 (AVX-512) machine write, converts to the
    original model's results either way, whatever this machine's block size."""
    nodes = [_conv("x", "w1", "a", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["a1"]),
             _conv("a1", "w2", "y", pads=[1, 1, 1, 1])]
    consts = {**_weights("w1", 32, 32, 3), **_weights("w2", 8, 32, 3)}
    model = make_model(nodes, [("x", np.float32, [1, 32, 8, 8])], [("y", np.float32, None)],
                       consts, opset=17)
    saved, _ = _saved_by_onnxruntime(model, tmp_path)
    convs = [n for n in saved.graph.node if n.domain == "com.microsoft.nchwc"
             and n.op_type == "Conv"]
    inits = {t.name: t for t in saved.graph.initializer}

    def padded(name, b):  # w2's 8 output channels padded to the block with zeros
        w, bias = consts[name], consts[f"{name}_b"]
        missing = -len(w) % b
        return (np.concatenate([w, np.zeros((missing, *w.shape[1:]), np.float32)]),
                np.concatenate([bias, np.zeros(missing, np.float32)]))

    here = len(numpy_helper.to_array(inits[convs[1].input[1]]))  # this machine's block
    for n, name in zip(convs, ("w1", "w2")):
        np.testing.assert_array_equal(numpy_helper.to_array(inits[n.input[1]]),
                                      _blocked(padded(name, here)[0], here))
        w, bias = padded(name, block)
        inits[n.input[1]].CopyFrom(numpy_helper.from_array(_blocked(w, block), n.input[1]))
        inits[n.input[2]].CopyFrom(numpy_helper.from_array(bias, n.input[2]))
    x = _rand(1, 32, 8, 8)
    expected = run_ort(model, {"x": x}, fused=False)
    got = convert_and_run(saved, {"x": x})
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=1e-4)


def _blocked_o(w, b):
    """``w`` [O, I, kh, kw] in onnxruntime's OIHWBo order (``[O/b, I, kh, kw, b_out]``)."""
    o, i, kh, kw = w.shape
    return w.reshape(o // b, b, i, kh, kw).transpose(0, 2, 3, 4, 1).reshape(w.shape)


@pytest.mark.parametrize("block", [8, 16])
def test_nchwc_block_told_by_input_channels(tmp_path, block):
    """All channel counts multiples of 16, but a first Conv with 8 input channels: a block-16
    machine runs it on the plain NCHW input (weight OIHWBo), a block-8 one reorders the
    input first (ReorderInput, weight OIHWBiBo); either file converts right."""
    nodes = [_conv("x", "w1", "a", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["a1"]),
             _conv("a1", "w2", "y", pads=[1, 1, 1, 1])]
    consts = {**_weights("w1", 16, 8, 3), **_weights("w2", 32, 16, 3)}
    model = make_model(nodes, [("x", np.float32, [1, 8, 8, 8])], [("y", np.float32, None)],
                       consts, opset=17)
    saved, _ = _saved_by_onnxruntime(model, tmp_path)
    graph = saved.graph
    convs = [n for n in graph.node if n.domain == "com.microsoft.nchwc" and n.op_type == "Conv"]
    inits = {t.name: t for t in graph.initializer}
    reorders = [n for n in graph.node if n.op_type == "ReorderInput"]
    here = 8 if reorders else 16  # the block of this machine's onnxruntime
    first = (_blocked if here == 8 else _blocked_o)(consts["w1"], here)
    np.testing.assert_array_equal(numpy_helper.to_array(inits[convs[0].input[1]]), first)
    if block == 8 and not reorders:
        graph.node.insert(0, helper.make_node("ReorderInput", ["x"], ["x_nchwc"],
                                              domain="com.microsoft.nchwc"))
        convs[0].input[0] = "x_nchwc"
    elif block == 16 and reorders:
        graph.node.remove(reorders[0])
        convs[0].input[0] = "x"
    for n, name, layout in zip(convs, ("w1", "w2"), (_blocked if block == 8 else _blocked_o,
                                                     _blocked)):
        inits[n.input[1]].CopyFrom(numpy_helper.from_array(layout(consts[name], block),
                                                           n.input[1]))
    x = _rand(1, 8, 8, 8)
    expected = run_ort(model, {"x": x}, fused=False)
    got = convert_and_run(saved, {"x": x})
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=1e-4)
