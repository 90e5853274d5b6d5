"""Resize and Upsample against onnxruntime: every coordinate transformation, nearest
rounding, linear, cubic (coefficient, exclude_outside), antialias, scales or sizes, axes and
keep_aspect_ratio_policy; channels-last resizing without transposes."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import onnx2flax
from helpers import (assert_codegen_matches, check_chain, check_graph, convert_and_run,
                     make_model, run_ort, values_and_hlo)

I64 = np.int64
COORDS = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
          "asymmetric", "tf_crop_and_resize"]
MODES = [dict(mode="nearest", nearest_mode=m)
         for m in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")] + [
    dict(mode="linear"), dict(mode="linear", antialias=1), dict(mode="cubic"),
    dict(mode="cubic", cubic_coeff_a=-0.5, exclude_outside=1), dict(mode="cubic", antialias=1)]


@pytest.fixture
def x(rng):
    return rng.standard_normal((1, 2, 5, 7)).astype(np.float32)


CONSTS = {"roi": np.array([0, 0, 0.1, -0.2, 1, 1, 0.8, 1.3], np.float32),
          "up": np.array([1, 1, 2.0, 1.5], np.float32),
          "down": np.array([1, 1, 0.6, 0.43], np.float32),
          "size_up": np.array([1, 2, 8, 11], I64),
          "size_down": np.array([1, 2, 3, 5], I64)}


@pytest.mark.parametrize("coord", COORDS)
def test_resize_modes(x, coord):
    """Every mode x (up, down) x (scales, sizes) for one coordinate transformation."""
    nodes = []
    for k, attrs in enumerate(MODES):
        attrs = dict(attrs, coordinate_transformation_mode=coord)
        if coord == "tf_crop_and_resize":
            attrs["extrapolation_value"] = 7.0
        roi = "roi" if coord == "tf_crop_and_resize" else ""
        for target in ("up", "down", "size_up", "size_down"):
            inputs = ["x", roi, "", target] if target.startswith("size") else ["x", roi, target]
            nodes.append(helper.make_node("Resize", inputs, [f"y{k}_{target}"], **attrs))
    check_graph(nodes, {"x": x}, CONSTS, opset=19, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("opset", [11, 13])
def test_resize_opset11_13(x, opset):
    """Opsets 11/13: tf_half_pixel_for_nn, and torch-style empty roi / scales placeholders."""
    consts = {"empty": np.zeros(0, np.float32), **CONSTS}
    nodes = [helper.make_node("Resize", ["x", "empty", "up"], ["a"], mode="nearest",
                              coordinate_transformation_mode="tf_half_pixel_for_nn"),
             helper.make_node("Resize", ["x", "empty", "empty", "size_up"], ["b"],
                              mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
             helper.make_node("Resize", ["x", "roi", "down"], ["c"], mode="cubic",
                              coordinate_transformation_mode="tf_crop_and_resize")]
    check_graph(nodes, {"x": x}, consts, opset=opset, rtol=1e-4, atol=1e-5)


def test_resize_axes_and_aspect_ratio(x):
    """Opset 18: ``axes`` (scales, sizes, roi per listed axis), keep_aspect_ratio_policy."""
    consts = {"s2": np.array([1.5, 0.5], np.float32), "z2": np.array([9, 4], I64),
              "roi2": np.array([0.2, 0.1, 0.9, 0.7], np.float32)}
    nodes = [helper.make_node("Resize", ["x", "", "s2"], ["a"], axes=[3, 2], mode="linear"),
             helper.make_node("Resize", ["x", "roi2", "", "z2"], ["b"], axes=[-2, -1],
                              mode="linear", coordinate_transformation_mode="tf_crop_and_resize")]
    for policy in ("stretch", "not_larger", "not_smaller"):
        nodes.append(helper.make_node("Resize", ["x", "", "", "z2"], [f"c_{policy}"],
                                      axes=[2, 3], keep_aspect_ratio_policy=policy, mode="cubic"))
    check_graph(nodes, {"x": x}, consts, opset=18, rtol=1e-4, atol=1e-5)


def test_resize_integers_and_5d(rng):
    """Nearest gathers exactly; linear on integers truncates its float result (which may
    differ by one from onnxruntime's where it lands within rounding of an integer); linear
    over three spatial axes."""
    xi = rng.integers(-100, 100, (1, 2, 3, 4)).astype(np.int32)
    xu = rng.integers(0, 255, (1, 2, 3, 4)).astype(np.uint8)
    x5 = rng.standard_normal((1, 2, 3, 4, 5)).astype(np.float32)
    consts = {"s4": np.array([1, 1, 2.5, 0.75], np.float32),
              "s5": np.array([1, 1, 2, 0.5, 1.4], np.float32)}
    nodes = [helper.make_node("Resize", ["xi", "", "s4"], ["a"], mode="nearest"),
             helper.make_node("Resize", ["x5", "", "s5"], ["b"], mode="linear")]
    check_graph(nodes, {"xi": xi, "x5": x5}, consts, opset=13, out_dtypes={"b": np.float32},
                rtol=1e-4, atol=1e-5)
    nodes = [helper.make_node("Resize", ["xi", "", "s4"], ["a"], mode="linear"),
             helper.make_node("Resize", ["xu", "", "s4"], ["b"], mode="linear")]
    check_graph(nodes, {"xi": xi, "xu": xu}, consts, opset=13, out_dtypes={"b": np.uint8},
                rtol=0, atol=1)


@pytest.mark.parametrize("opset", [7, 9, 10])
def test_upsample_and_resize_v10(x, opset):
    """Opset < 11: asymmetric coordinates; nearest rounds down (up when downsampling)."""
    consts = {"up": CONSTS["up"], "odd": np.array([1, 1, 1.7, 3.0], np.float32),
              "down": CONSTS["down"]}
    if opset == 7:
        nodes = [helper.make_node("Upsample", ["x"], [f"y_{m}"], mode=m,
                                  scales=[1.0, 1.0, 1.7, 3.0]) for m in ("nearest", "linear")]
    else:
        nodes = [helper.make_node("Upsample", ["x", s], [f"y_{m}_{s}"], mode=m)
                 for m in ("nearest", "linear") for s in ("up", "odd")]
    if opset == 10:
        nodes = [helper.make_node("Resize", ["x", s], [f"r_{m}_{s}"], mode=m)
                 for m in ("nearest", "linear") for s in ("up", "odd", "down")]
    check_graph(nodes, {"x": x}, consts if opset > 7 else {}, opset=opset, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attrs, scales", [
    (dict(mode="nearest"), [1, 1, 2, 0.5]),   # a repeat and a strided slice: no gather at all
    (dict(mode="linear", coordinate_transformation_mode="align_corners"), [1, 1, 2, 1.5]),
    (dict(mode="cubic", antialias=1), [1, 1, 1.5, 0.5])])
@values_and_hlo
def test_resize_channels_last(rng, attrs, scales, aspect):
    """Conv -> Resize -> Conv resizes H and W of the channels-last value in place: no layout
    transpose (XLA's CPU gathers along inner axes add their own, not counted there)."""
    x = rng.standard_normal((2, 3, 6, 8)).astype(np.float32)
    check_chain([helper.make_node("Resize", ["a", "", "sc"], ["b"], **attrs)], x, rng, aspect,
                opset=18, extra={"sc": np.array(scales, np.float32)},
                layout_only=attrs["mode"] != "nearest")


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_upsample_opset1(x, mode):
    """Upsample-1 (height_scale / width_scale; no runtime has it) equals Upsample-7."""
    expected = check_graph([helper.make_node("Upsample", ["x"], ["y"], scales=[1.0, 1.0, 2.0, 3.0],
                                             mode="linear" if mode == "bilinear" else mode)],
                           {"x": x}, opset=7)[2]
    node = helper.make_node("Upsample", ["x"], ["y"], height_scale=2.0, width_scale=3.0,
                            mode=mode)
    model = make_model([node], [("x", np.float32, list(x.shape))], [("y", np.float32, None)],
                       opset=1)
    np.testing.assert_allclose(convert_and_run(model, {"x": x})[0], expected[0],
                               rtol=1e-6, atol=1e-6)


def test_resize_dynamic_batch(rng):
    """A dim_param batch: one conversion serves every batch size."""
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear", axes=[2, 3])
    model = make_model([node], [("x", np.float32, ["N", 2, 5, 7])], [("y", np.float32, None)],
                       {"sizes": np.array([3, 9], I64)}, opset=18)
    converted = onnx2flax.convert(model)
    for batch in (1, 3):
        x = rng.standard_normal((batch, 2, 5, 7)).astype(np.float32)
        np.testing.assert_allclose(converted.run({"x": x})[0], run_ort(model, {"x": x})[0],
                                   rtol=1e-5, atol=1e-5)
        assert_codegen_matches(converted, {"x": x})


def test_resize_nearest_ties_from_sizes():
    """With ``sizes`` the sampling positions are exact ratios (2 * 7/4 = 3.5 is a tie,
    which float32's 2 / (4/7) = 3.4999998 would miss), as in onnxruntime."""
    x = np.arange(7, dtype=np.float32).reshape(1, 7)
    nodes, consts = [], {}
    for n_out in (3, 4, 5, 9, 12):
        consts[f"s{n_out}"] = np.array([1, n_out], I64)
        for coord in ("asymmetric", "half_pixel"):
            for rounding in ("round_prefer_ceil", "round_prefer_floor"):
                nodes.append(helper.make_node(
                    "Resize", ["x", "", "", f"s{n_out}"], [f"y{n_out}_{coord}_{rounding}"],
                    mode="nearest", coordinate_transformation_mode=coord, nearest_mode=rounding))
    check_graph(nodes, {"x": x}, consts, opset=19)
