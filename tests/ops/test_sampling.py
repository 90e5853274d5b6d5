"""GridSample, AffineGrid, RoiAlign and DeformConv: sampling at computed positions, against
onnxruntime (ONNX's reference evaluator where onnxruntime lacks the op version)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_codegen_matches, check_graph, make_model, node_model
from onnx import helper
from onnx.reference import ReferenceEvaluator

import onnx2flax
from onnx2flax.errors import OnnxConversionError

RNG = np.random.default_rng(0)


def _normal(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _check_reference(model, feeds, *, channels_last=True, rtol=1e-5, atol=1e-5):
    want = ReferenceEvaluator(model).run(None, feeds)
    got = onnx2flax.convert(model, channels_last=channels_last).run(feeds)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


# Grids reach past [-1, 1] so every padding mode matters; a few points sit exactly on
# pixel centres and edges (nearest rounding ties, reflection borders).
def _grid(n, out, r):
    grid = RNG.uniform(-1.4, 1.4, (n, *out, r)).astype(np.float32)
    grid.reshape(-1)[:6] = [-1, 1, 0, 0.25, -0.75, 1.2]
    return grid


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("align", [0, 1])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("mode, opset", [("bilinear", 16), ("nearest", 16), ("bicubic", 16),
                                         ("linear", 20), ("cubic", 20)])
def test_grid_sample_2d(mode, opset, padding, align, channels_last):
    x, grid = _normal(2, 3, 5, 6), _grid(2, (4, 7), 2)
    model = node_model("GridSample", {"x": x, "grid": grid}, opset=opset,
                       attrs={"mode": mode, "padding_mode": padding, "align_corners": align})
    check_graph(model, {"x": x, "grid": grid}, rtol=1e-4, atol=1e-5, channels_last=channels_last)


@pytest.mark.parametrize("align", [0, 1])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_grid_sample_3d(mode, padding, align):
    """Volumetric sampling (opset 20), against ONNX's reference (onnxruntime takes 4-D)."""
    x, grid = _normal(1, 2, 3, 4, 5), _grid(1, (2, 3, 2), 3)
    model = node_model("GridSample", {"x": x, "grid": grid}, opset=20,
                       attrs={"mode": mode, "padding_mode": padding, "align_corners": align})
    _check_reference(model, {"x": x, "grid": grid}, rtol=1e-4)


def test_grid_sample_after_conv_is_held_channels_last():
    """X held channels-last by a Conv; the grid is a second, ONNX-order input."""
    w = _normal(3, 3, 1, 1)
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"]),
             helper.make_node("GridSample", ["h", "grid"], ["y"], mode="bicubic")]
    x, grid = _normal(2, 3, 6, 5), _grid(2, (3, 4), 2)
    model = make_model(nodes, [("x", np.float32, x.shape), ("grid", np.float32, grid.shape)],
                       [("y", np.float32, None)], {"w": w}, opset=16)
    check_graph(model, {"x": x, "grid": grid}, rtol=1e-4)


@pytest.mark.parametrize("attrs, opset, match", [
    ({"mode": "linear"}, 16, "mode"), ({"mode": "bicubic"}, 20, "mode"),
    ({"padding_mode": "wrap"}, 16, "padding_mode")])
def test_grid_sample_bad_attributes_are_refused(attrs, opset, match):
    x, grid = _normal(1, 1, 3, 3), _grid(1, (2, 2), 2)
    model = node_model("GridSample", {"x": x, "grid": grid}, attrs=attrs, opset=opset)
    with pytest.raises(OnnxConversionError, match=f"GridSample.*{match}"):
        onnx2flax.convert(model).run({"x": x, "grid": grid})


@pytest.mark.parametrize("align", [0, 1])
@pytest.mark.parametrize("size", [[2, 3, 4, 5], [2, 3, 1, 4], [2, 1, 3, 4, 5]])
def test_affine_grid(size, align):
    theta = _normal(2, len(size) - 2, len(size) - 1)
    model = node_model("AffineGrid", {"theta": theta}, attrs={"align_corners": align},
                       consts={"size": np.array(size, np.int64)}, opset=20)
    if align and 1 in size[2:]:  # a lone position: -1 (reference), 1 (onnxruntime), 0 (torch)
        _check_reference(model, {"theta": theta})
    else:
        check_graph(model, {"theta": theta})


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("coord, opset", [("half_pixel", 16), ("output_half_pixel", 16),
                                          (None, 10)])
@pytest.mark.parametrize("ratio", [2, 0])
def test_roi_align(mode, coord, opset, ratio):
    """Rois partly outside the image and smaller than a pixel; sampling_ratio 0 (a grid
    sized by each roi) with constant rois."""
    x = _normal(2, 3, 10, 12)
    rois = np.array([[0, 0, 9, 9], [2.5, 1.2, 7.3, 8.8], [-2, -1, 4, 3], [6, 7, 14, 13],
                     [3, 3, 3.4, 3.2]], np.float32)
    batch = np.array([0, 1, 1, 0, 1], np.int64)
    attrs = {"mode": mode, "output_height": 3, "output_width": 4, "sampling_ratio": ratio,
             "spatial_scale": 0.9}
    if coord:
        attrs["coordinate_transformation_mode"] = coord
    if ratio:
        feeds, consts = {"x": x, "rois": rois, "batch": batch}, None
    else:
        feeds, consts = {"x": x}, {"rois": rois, "batch": batch}
    model = node_model("RoiAlign", feeds, attrs=attrs, consts=consts, opset=opset,
                       out_dtypes=[np.float32])
    check_graph(model, feeds, rtol=1e-4, atol=1e-5)


def test_roi_align_adaptive_sampling_needs_constant_rois():
    """``run`` converts once per value of run-time rois (adaptive sampling needs them);
    the module alone cannot trace them."""
    x, rois = _normal(1, 2, 6, 6), np.array([[0, 0, 4, 4]], np.float32)
    batch = np.zeros(1, np.int64)
    feeds = {"x": x, "rois": rois, "batch": batch}
    model = node_model("RoiAlign", feeds, opset=16, out_dtypes=[np.float32])
    converted, _, _ = check_graph(model, feeds)
    with pytest.raises(OnnxConversionError, match="RoiAlign.*sampling_ratio 0"):
        converted.module.apply(converted.variables, np.moveaxis(x, 1, -1), rois, batch)


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("attrs, c, o, shape", [
    ({}, 2, 3, (1, 6, 7)),
    ({"pads": [1, 0, 2, 1], "strides": [2, 1], "dilations": [1, 2]}, 4, 2, (2, 7, 8)),
    ({"group": 2, "offset_group": 2}, 4, 6, (1, 5, 6)),
])
@pytest.mark.parametrize("with_mask_bias", [False, True])
def test_deform_conv(attrs, c, o, shape, with_mask_bias, channels_last):
    n, h, wd = shape
    k = (3, 2)
    group, og = attrs.get("group", 1), attrs.get("offset_group", 1)
    pads, strides, dil = attrs.get("pads", [0] * 4), attrs.get("strides", [1, 1]), \
        attrs.get("dilations", [1, 1])
    out = [(s + pads[i] + pads[i + 2] - (kk - 1) * d - 1) // st + 1
           for i, (s, kk, d, st) in enumerate(zip((h, wd), k, dil, strides))]
    x, w = _normal(n, c, h, wd), _normal(o, c // group, *k)
    offset = _normal(n, og * 6 * 2, *out, scale=1.5)
    feeds = {"x": x, "w": w, "offset": offset}
    inputs = ["x", "w", "offset"]
    if with_mask_bias:
        feeds.update(b=_normal(o), mask=RNG.uniform(0, 1, (n, og * 6, *out)).astype(np.float32))
        inputs += ["b", "mask"]
    model = node_model("DeformConv", feeds, inputs=inputs, attrs=attrs, opset=19)
    check_graph(model, feeds, rtol=1e-4, atol=1e-4, channels_last=channels_last)


@pytest.mark.parametrize("shape, k", [((1, 2, 7), (3,)), ((1, 2, 4, 5, 3), (2, 3, 2))])
def test_deform_conv_without_offsets_is_conv(shape, k):
    """1-D and 3-D (no reference implements them): zero offsets make a plain Conv."""
    x, w = _normal(*shape), _normal(3, shape[1], *k)
    out = [s - kk + 1 for s, kk in zip(shape[2:], k)]
    offset = np.zeros((shape[0], int(np.prod(k)) * len(k), *out), np.float32)
    model = node_model("DeformConv", {"x": x, "w": w, "offset": offset}, opset=19)
    conv = node_model("Conv", {"x": x, "w": w}, opset=19)
    got = onnx2flax.convert(model).run({"x": x, "w": w, "offset": offset})[0]
    np.testing.assert_allclose(got, check_graph(conv, {"x": x, "w": w})[1][0], rtol=1e-5,
                               atol=1e-5)


def test_codegen_writes_the_samplers():
    """GridSample, RoiAlign and DeformConv as generated source give the same bits."""
    x, grid = _normal(1, 2, 5, 6), _grid(1, (3, 4), 2)
    rois, batch = np.array([[0.5, 1, 4, 3.5]], np.float32), np.zeros(1, np.int64)
    offset, w = _normal(1, 8, 4, 5), _normal(3, 2, 2, 2)
    for model, feeds in [
        (node_model("GridSample", {"x": x, "grid": grid}, attrs={"mode": "bicubic"}, opset=16),
         {"x": x, "grid": grid}),
        (node_model("RoiAlign", {"x": x, "rois": rois, "batch": batch}, opset=16,
                    attrs={"sampling_ratio": 2, "output_height": 2}),
         {"x": x, "rois": rois, "batch": batch}),
        (node_model("DeformConv", {"x": x, "w": w, "offset": offset}, opset=19),
         {"x": x, "w": w, "offset": offset})]:
        assert_codegen_matches(onnx2flax.convert(model, channels_last=False), feeds)
