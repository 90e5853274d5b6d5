"""Data-movement ops (onnx2flax/ops/movement.py: Transpose, Concat, Split, Slice, Pad,
Squeeze, Unsqueeze, DepthToSpace, SpaceToDepth, CenterCropPad, ReverseSequence) against
onnxruntime: every attribute and opset form, and held channels-last between Convs."""

from __future__ import annotations

import jax
import numpy as np
import onnx
import pytest
from onnx import helper

import onnx2flax
from helpers import (after_conv, assert_codegen_matches, assert_same, check_chain, check_graph,
                     check_node, conv_chain, convert_and_run, make_model, node_model,
                     transposes, values_and_hlo)
from onnx2flax.errors import OnnxConversionError, UnsupportedOpError

I64 = np.int64
INT64_MAX, INT64_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min
RNG = np.random.default_rng(0)


def _normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.fixture
def x4(rng):
    return rng.standard_normal((2, 3, 4, 5)).astype(np.float32)


def assert_same_as(expected, op, x, *, opset, attrs, n_out=1):
    """One-input node ``op`` at ``opset`` gives ``expected`` exactly, dtypes included (for
    opsets no runtime has)."""
    model = node_model(op, {"x": x}, attrs=attrs, outputs=n_out, opset=opset)
    got = convert_and_run(model, {"x": x})
    assert len(got) == len(expected)
    for k, (g, e) in enumerate(zip(got, expected)):
        assert_same(f"y{k}", g, e, rtol=0, atol=0)


# --- Slice -------------------------------------------------------------------------------


@pytest.mark.parametrize("starts, ends, axes, steps", [
    ([1, 0], [INT64_MAX, -1], [2, 3], None),                   # INT64_MAX end
    ([-1, 4], [INT64_MIN, 0], [3, 2], [-1, -2]),               # negative steps to the start
    ([0, 1, 1], [1, 3, 5], None, None),                        # axes default: 0..n-1
    ([-100], [100], [-1], [3]),                                # clamped, stride 3
    ([3], [1], [2], [1]),                                      # empty
    ([INT64_MAX], [INT64_MIN], [1], [-INT64_MAX]),              # one element, huge step
])
def test_slice(x4, starts, ends, axes, steps):
    consts = {"s": np.array(starts, I64), "e": np.array(ends, I64)}
    names = ["x", "s", "e"]
    if axes is not None or steps is not None:
        consts["a"] = np.array(axes if axes is not None else range(len(starts)), I64)
        names.append("a")
    if steps is not None:
        consts["st"] = np.array(steps, I64)
        names.append("st")
    check_node("Slice", {"x": x4}, consts, inputs=names)


def test_slice_int32_inputs_and_opset1(x4):
    check_node("Slice", {"x": x4}, {"s": np.array([1], np.int32), "e": np.array([-1], np.int32)})
    check_node("Slice", {"x": x4}, opset=9, attrs=dict(starts=[1, -3], ends=[INT64_MAX, 4],
                                                       axes=[0, 3]))


def test_slice_runtime_starts_are_specialized(x4):
    """``run`` converts once per value of run-time starts / ends (as onnxruntime takes them);
    the module alone cannot trace them."""
    node = helper.make_node("Slice", ["x", "s", "e"], ["y"])
    model = make_model([node], [("x", np.float32, [2, 3, 4, 5]), ("s", I64, [1]),
                                ("e", I64, [1])], [("y", np.float32, None)])
    for start, end in ((0, 1), (1, -1)):
        check_graph(model, {"x": x4, "s": np.array([start]), "e": np.array([end])})
    converted = onnx2flax.convert(model, channels_last=False)
    with pytest.raises(UnsupportedOpError, match="starts must be known"):
        converted.module.apply(converted.variables, x4, np.array([0]), np.array([1]))


def test_dynamic_batch_shape_subgraph(rng):
    """Shape -> Slice(INT64_MAX) -> Concat -> Reshape with a dim_param batch: one
    conversion serves every batch size."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Slice", ["s", "zero", "one"], ["n"]),
             helper.make_node("Concat", ["n", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["flat"]),
             helper.make_node("Slice", ["flat", "one", "big", "one"], ["y"])]
    model = make_model(nodes, [("x", np.float32, ["batch", 3, 4])], [("y", np.float32, None)],
                       {"zero": np.array([0]), "one": np.array([1]), "minus1": np.array([-1]),
                        "big": np.array([INT64_MAX])})
    converted = onnx2flax.convert(model)
    for batch in (1, 3):
        x = rng.standard_normal((batch, 3, 4)).astype(np.float32)
        np.testing.assert_array_equal(converted.run({"x": x})[0], x.reshape(batch, -1)[:, 1:])
        assert_codegen_matches(converted, {"x": x})


# --- Split -------------------------------------------------------------------------------


@pytest.mark.parametrize("opset, attrs, split, n_out", [
    (1, dict(axis=1, split=[1, 2]), None, 2),
    (2, dict(axis=-1), None, 5),
    (11, dict(axis=2, split=[1, 3]), None, 2),
    (13, dict(axis=3), [2, 0, 3], 3),
    (13, dict(), None, 2),
    (18, dict(axis=3, num_outputs=3), None, 3),   # uneven: 2, 2, 1
    (18, dict(axis=1), [1, 2], 2),
])
def test_split(x4, opset, attrs, split, n_out):
    consts = {} if split is None else {"split": np.array(split, I64)}
    if opset == 1:  # no runtime implements Split-1: compare with Split-2
        expected = check_node("Split", {"x": x4}, opset=2, attrs=attrs, outputs=n_out)[2]
        assert_same_as(expected, "Split", x4, opset=1, attrs=attrs, n_out=n_out)
        return
    check_node("Split", {"x": x4}, consts, opset=opset, attrs=attrs, outputs=n_out)


# --- Pad ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize("pads, axes", [
    ([0, 1, 2, 0, 0, 2, 1, 3], None),
    ([1, 2, 2, 1], [-1, 2]),
    ([0, -1, 1, 0, 1, 0, -2, 1], None),                       # negative pads crop
])
def test_pad(x4, mode, pads, axes):
    consts = {"pads": np.array(pads, I64)}
    names = ["x", "pads"]
    if mode == "constant":
        consts["v"] = np.array(1.5, np.float32)
        names.append("v")
    if axes is not None:
        consts["axes"] = np.array(axes, I64)
        names += [""] * (4 - len(names) - 1) + ["axes"]
    check_node("Pad", {"x": x4}, consts, opset=19, attrs=dict(mode=mode), inputs=names)


@pytest.mark.parametrize("opset, attrs", [
    (1, dict(paddings=[0, 0, 1, 2, 0, 0, 2, 1], mode="reflect")),
    (2, dict(pads=[0, 0, 1, 2, 0, 0, 2, 1], mode="constant", value=-2.0)),
    (2, dict(pads=[0, 0, 1, 2, 0, 0, 2, 1], mode="edge")),
])
def test_pad_attribute_opsets(x4, opset, attrs):
    if opset == 1:  # onnxruntime has no Pad-1: compare with Pad-2
        expected = check_node("Pad", {"x": x4}, opset=2, attrs=dict(
            pads=attrs["paddings"], mode=attrs["mode"]))[2]
        assert_same_as(expected, "Pad", x4, opset=1, attrs=attrs)
        return
    check_node("Pad", {"x": x4}, opset=opset, attrs=attrs)


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect"])
def test_pad_integer_opset11(rng, mode):
    """Pad-11 on int32: pads as an input, the constant value (an int) optional."""
    x = rng.integers(-50, 50, (3, 4)).astype(np.int32)
    consts = {"pads": np.array([1, 0, 2, 3], I64)}
    if mode == "constant":
        consts["v"] = np.array(-7, np.int32)
    check_node("Pad", {"x": x}, consts, opset=11, attrs=dict(mode=mode), rtol=0, atol=0)


def test_pad_runtime_constant_value(x4):
    check_node("Pad", {"x": x4, "v": np.array(3.0, np.float32)}, {"pads": np.array([1] * 8)},
               inputs=["x", "pads", "v"])


# --- Concat, Transpose, Squeeze, Unsqueeze -----------------------------------------------


@pytest.mark.parametrize("axis", [0, -1, 2])
def test_concat(x4, axis):
    check_node("Concat", {"x": x4, "z": x4 * 2}, {"c": np.ones((2, 3, 4, 5), np.float32)},
               attrs=dict(axis=axis))


@pytest.mark.parametrize("dtype", [np.float32, np.int64, bool])
def test_concat_unequal_sizes_and_empty_inputs(rng, dtype):
    """Inputs of different sizes along ``axis`` (negative), one of them empty there."""
    a, b, e = (rng.standard_normal(s) > 0 if dtype is bool
               else (rng.standard_normal(s) * 10).astype(dtype)
               for s in [(2, 3, 1), (2, 3, 4), (2, 3, 0)])
    check_node("Concat", {"a": a, "e": e, "b": b}, attrs=dict(axis=-1), opset=13)


def test_transpose(x4):
    check_node("Transpose", {"x": x4}, attrs=dict(perm=[2, 0, 3, 1]))
    check_node("Transpose", {"x": x4})


def test_integer_and_bool_values_move_unchanged(rng):
    """Transpose, Slice (negative axis and step), Split and Squeeze on int64 and bool."""
    i = rng.integers(-1000, 1000, (2, 1, 3, 4))
    b = rng.standard_normal((2, 1, 3, 4)) > 0
    consts = {"s": np.array([-1], I64), "e": np.array([INT64_MIN], I64),
              "a": np.array([-1], I64), "st": np.array([-2], I64), "ax": np.array([1], I64)}
    nodes = [helper.make_node("Transpose", ["i"], ["ti"], perm=[3, 1, 0, 2]),
             helper.make_node("Transpose", ["b"], ["tb"], perm=[0, 2, 3, 1]),
             helper.make_node("Slice", ["i", "s", "e", "a", "st"], ["si"]),
             helper.make_node("Slice", ["b", "s", "e", "a", "st"], ["sb"]),
             helper.make_node("Split", ["i"], ["i0", "i1"], axis=2, num_outputs=2),
             helper.make_node("Squeeze", ["b", "ax"], ["qb"])]
    bools = {"tb": bool, "sb": bool, "qb": bool}
    check_graph(nodes, {"i": i, "b": b}, consts, opset=18, out_dtypes=bools, rtol=0, atol=0)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("op, axes", [("Squeeze", [0, -2]), ("Squeeze", None),
                                      ("Unsqueeze", [0, -1]), ("Unsqueeze", [1, 3])])
def test_squeeze_unsqueeze(rng, opset, op, axes):
    x = rng.standard_normal((1, 3, 1, 4) if op == "Squeeze" else (3, 4)).astype(np.float32)
    if opset < 13:
        check_node(op, {"x": x}, opset=opset, attrs={} if axes is None else dict(axes=axes))
    else:
        check_node(op, {"x": x}, {} if axes is None else {"axes": np.array(axes, I64)},
                   opset=opset)


# --- DepthToSpace, SpaceToDepth --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(rng, mode):
    x = rng.standard_normal((2, 8, 3, 2)).astype(np.float32)
    check_node("DepthToSpace", {"x": x}, opset=13, attrs=dict(blocksize=2, mode=mode))


def test_depth_to_space_block_3(rng):
    x = rng.standard_normal((1, 18, 2, 3)).astype(np.float32)
    for mode in ("DCR", "CRD"):
        check_node("DepthToSpace", {"x": x}, opset=13, attrs=dict(blocksize=3, mode=mode))


def test_space_to_depth(rng):
    x = rng.standard_normal((2, 3, 4, 6)).astype(np.float32)
    check_node("SpaceToDepth", {"x": x}, opset=13, attrs=dict(blocksize=2))


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_space_to_depth_mode_opset28(rng, mode):
    """Opset 28 adds ``mode`` (onnxruntime lacks it: ONNX's reference evaluator)."""
    x = rng.standard_normal((2, 3, 4, 6)).astype(np.float32)
    check_node("SpaceToDepth", {"x": x}, opset=28, attrs=dict(blocksize=2, mode=mode),
               reference="onnx")


# --- channels-last: Conv -> op -> Conv stays channels-last, with no transpose ------------------


@pytest.fixture
def img(rng):
    return rng.standard_normal((2, 3, 6, 8)).astype(np.float32)


@values_and_hlo
def test_channels_last_slice(img, rng, aspect):
    check_chain([helper.make_node("Slice", ["a", "s", "e", "ax", "st"], ["b"])], img, rng, aspect,
                extra={"s": np.array([1, -1]), "e": np.array([INT64_MAX, INT64_MIN]),
                       "ax": np.array([2, 3]), "st": np.array([1, -2])})


@values_and_hlo
def test_channels_last_split_concat(img, rng, aspect):
    """Concat with a constant first: the constant, not the activation, is re-laid. A float
    Constant is a weight, hence a Flax param: re-laying it is the one transpose."""
    const = rng.standard_normal((2, 2, 6, 8)).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["const"],
                              value=onnx.numpy_helper.from_array(const)),
             helper.make_node("Split", ["a", "sp"], ["p", "q"], axis=1),
             helper.make_node("Concat", ["const", "q", "p"], ["b"], axis=1)]
    converted = check_chain(nodes, img, rng, aspect, c_mid=6, extra={"sp": np.array([1, 3])},
                            allowed=1)
    assert converted.variables["params"]["const"].shape == const.shape


@values_and_hlo
def test_channels_last_pad(img, rng, aspect):
    check_chain([helper.make_node("Pad", ["a", "p"], ["b"], mode="reflect")], img, rng, aspect,
                extra={"p": np.array([0, 0, 1, 2, 0, 0, 2, 1])})


@values_and_hlo
def test_channels_last_squeeze_unsqueeze_transpose(img, rng, aspect):
    nodes = [helper.make_node("Unsqueeze", ["a", "ax"], ["u"]),
             helper.make_node("Squeeze", ["u", "ax"], ["t"]),
             helper.make_node("Transpose", ["t"], ["t2"], perm=[0, 1, 3, 2]),
             helper.make_node("Transpose", ["t2"], ["b"], perm=[0, 1, 3, 2])]
    check_chain(nodes, img, rng, aspect, extra={"ax": np.array([2])})


@values_and_hlo
@pytest.mark.parametrize("op, mode", [("DepthToSpace", "DCR"), ("DepthToSpace", "CRD"),
                                      ("SpaceToDepth", None), ("SpaceToDepth", "CRD")])
def test_channels_last_depth_space(rng, op, mode, aspect):
    """The shuffle is done on the channels-last value (SpaceToDepth's mode is opset 28,
    checked with ONNX's reference evaluator)."""
    attrs = dict(blocksize=2, **({} if mode is None else dict(mode=mode)))
    x = rng.standard_normal((1, 3, 4, 6)).astype(np.float32)
    c_mid = 1 if op == "DepthToSpace" else 16
    opset = 28 if op == "SpaceToDepth" and mode else 17
    model = conv_chain([helper.make_node(op, ["a"], ["b"], **attrs)], x, rng, c_mid=c_mid,
                       opset=opset)
    if aspect == "values":
        check_graph(model, {"x": x}, reference="onnxruntime" if opset == 17 else "onnx",
                    rtol=1e-4, atol=1e-4)
    else:  # The block shuffle itself is a transpose; nothing else is.
        assert transposes(onnx2flax.convert(model), x) <= 1


@values_and_hlo
def test_transpose_of_onnx_order_values_is_done_once(aspect):
    """A ViT patch embedding: Conv -> Reshape [N, C, L] -> Transpose [N, L, C] -> Add ->
    LayerNormalization -> MatMul -> Add (residual) -> LayerNormalization. The Transpose of an
    ONNX-order value is done (not recorded), so the residual stream stays in ONNX order, and
    the Reshape, which only regroups the Conv output's spatial dims, keeps it channels-last,
    so that Transpose only relabels it: the compiled program has no transpose at all."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    inits = {"w": rng.standard_normal((6, 3, 4, 4)).astype(np.float32),
             "shape": np.array([2, 6, 4], np.int64),
             "pos": rng.standard_normal((1, 4, 6)).astype(np.float32),
             "g": rng.uniform(0.5, 1.5, 6).astype(np.float32),
             "m": rng.standard_normal((6, 6)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], strides=[4, 4]),
             helper.make_node("Reshape", ["c", "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Add", ["t", "pos"], ["e"]),
             helper.make_node("LayerNormalization", ["e", "g"], ["n"], axis=-1),
             helper.make_node("MatMul", ["n", "m"], ["h"]),
             helper.make_node("Add", ["e", "h"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "g"], ["y"], axis=-1)]
    model = make_model(nodes, [("x", np.float32, [2, 3, 8, 8])], [("y", np.float32, None)],
                       inits)
    if aspect == "values":
        check_graph(model, {"x": x}, rtol=1e-4, atol=1e-4)
    else:
        assert transposes(onnx2flax.convert(model), x) == 0


@values_and_hlo
def test_nhwc_input_transposed_for_a_conv_compiles_without_transposes(aspect):
    """tf2onnx's pattern: an NHWC graph input, Transpose to NCHW, Conv, Relu, Transpose back
    to NHWC. The transposes cancel against the channels-last layout: none in the program."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Transpose", ["r"], ["y"], perm=[0, 2, 3, 1])]
    model = make_model(nodes, [("x", np.float32, [2, 8, 8, 3])], [("y", np.float32, None)],
                       {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32)})
    if aspect == "values":
        check_graph(model, {"x": x}, rtol=1e-4, atol=1e-4)
    else:
        assert transposes(onnx2flax.convert(model), x) == 0


def test_transposed_residual_stream_is_transposed_once():
    """x [N, C, L] (ONNX order) -> Transpose [N, L, C] -> LayerNorm -> MatMul -> Add (residual)
    -> LayerNorm: the Transpose is done once; recording it instead would leave the residual
    stream transposed and transpose it back for each LayerNorm and the MatMul."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 4)).astype(np.float32)
    inits = {"g": rng.uniform(0.5, 1.5, 6).astype(np.float32),
             "m": rng.standard_normal((6, 6)).astype(np.float32)}
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
             helper.make_node("LayerNormalization", ["t", "g"], ["n"], axis=-1),
             helper.make_node("MatMul", ["n", "m"], ["h"]),
             helper.make_node("Add", ["t", "h"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "g"], ["y"], axis=-1)]
    model = make_model(nodes, [("x", np.float32, [2, 6, 4])], [("y", np.float32, None)], inits)
    converted, _, _ = check_graph(model, {"x": x}, rtol=1e-4, atol=1e-4)
    jaxpr = jax.make_jaxpr(converted.module.apply)(converted.variables, x)
    assert str(jaxpr).count("transpose[") == 1


# --- CenterCropPad, ReverseSequence --------------------------------------------------------


@pytest.mark.parametrize("shape, axes", [
    ([2, 3, 2, 8], None),        # crop H (odd difference), pad W
    ([4, 10], [2, 3]),           # crop H by one, pad W by three
    ([6], [-1]),
    ([3, 6], [1, 3]),            # channels: unchanged; W cropped by two
])
def test_center_crop_pad_held_channels_last(shape, axes):
    """After a Conv (held channels-last), axes are remapped and the layout kept."""
    attrs = {} if axes is None else {"axes": axes}
    model, feeds = after_conv([("CenterCropPad", ["shape"], attrs, np.float32)],
                              consts={"shape": np.array(shape, np.int64)},
                              opset=18, shape=(2, 3, 5, 7))
    check_graph(model, feeds)


def test_center_crop_pad_shape_mismatch_is_refused():
    x = _normal(2, 3)
    model = node_model("CenterCropPad", {"x": x}, consts={"s": np.array([2], np.int64)},
                       opset=18)
    with pytest.raises(OnnxConversionError, match="CenterCropPad.*one non-negative size"):
        onnx2flax.convert(model).run({"x": x})


@pytest.mark.parametrize("time_axis, batch_axis, shape", [(0, 1, (5, 4, 3)), (1, 0, (4, 5)),
                                                          (0, 1, (5, 4))])
def test_reverse_sequence(time_axis, batch_axis, shape):
    x = _normal(*shape)
    lens = np.array([5, 1, 3, 2], np.int64)
    model = node_model("ReverseSequence", {"x": x, "lens": lens}, opset=10,
                       attrs={"time_axis": time_axis, "batch_axis": batch_axis})
    check_graph(model, {"x": x, "lens": lens})


def test_reverse_sequence_same_axes_are_refused():
    x, lens = _normal(3, 3), np.array([1, 2, 3], np.int64)
    model = node_model("ReverseSequence", {"x": x, "lens": lens}, opset=10,
                       attrs={"time_axis": 0, "batch_axis": 0})
    with pytest.raises(OnnxConversionError, match="ReverseSequence.*time_axis"):
        onnx2flax.convert(model).run({"x": x, "lens": lens})
