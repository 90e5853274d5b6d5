"""Every section of the Flax guide "Convert PyTorch Models to Flax", and its variants,
end to end: torch module -> ONNX (three exporters) -> convert -> compared with torch
(channels-last ``module.apply``, the guide's convention) and with onnxruntime (``.run``)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from torch import nn

import onnx2flax
from exporters.guide_models import (EXPORTERS, ConvBnNet, SmallResNet, TModel, Wrap, build,
                                    export_onnx)
from helpers import run_ort, transposes

# name -> (factory, input shape, decimals of agreement with torch)
CASES = {
    # the guide's sections
    "fc": (lambda: nn.Linear(3, 4), (1, 3), 6),
    "conv": (lambda: Wrap(nn.Conv2d(3, 4, kernel_size=2, padding="valid")), (1, 3, 6, 6), 6),
    "conv_then_fc": (TModel, (1, 3, 6, 6), 6),
    "batch_norm": (lambda: Wrap(nn.BatchNorm2d(3, momentum=0.1)), (1, 3, 6, 6), 6),
    "avg_pool": (lambda: Wrap(nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False)),
                 (1, 3, 6, 6), 6),
    "conv_transpose": (lambda: Wrap(nn.ConvTranspose2d(3, 4, kernel_size=2, stride=2)),
                       (1, 3, 6, 6), 6),
    # variants
    "conv_stride_dilation": (lambda: Wrap(nn.Conv2d(4, 6, 3, stride=2, dilation=2, padding=2)),
                             (2, 4, 11, 9), 6),
    "conv_groups": (lambda: Wrap(nn.Conv2d(4, 8, 3, groups=2, padding=1)), (1, 4, 7, 7), 6),
    "conv_depthwise": (lambda: Wrap(nn.Conv2d(4, 4, 3, groups=4, padding=(1, 2))),
                       (1, 4, 7, 6), 6),
    "conv1d": (lambda: Wrap(nn.Conv1d(3, 5, 3, stride=2, padding=1)), (2, 3, 17), 6),
    "conv3d": (lambda: Wrap(nn.Conv3d(2, 4, 3, stride=(1, 2, 2), padding=1)), (1, 2, 5, 8, 8), 5),
    "avg_pool_ceil_include_pad": (
        lambda: Wrap(nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=True)),
        (1, 3, 8, 7), 6),
    "avg_pool_ceil_exclude_pad": (
        lambda: Wrap(nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)),
        (1, 3, 8, 7), 6),
    "avg_pool1d": (lambda: Wrap(nn.AvgPool1d(3, 2, 1)), (1, 3, 10), 6),
    "avg_pool3d": (lambda: Wrap(nn.AvgPool3d(2, 2)), (1, 2, 4, 6, 6), 5),
    "max_pool_dilation_ceil": (lambda: Wrap(nn.MaxPool2d(3, 2, 1, dilation=2, ceil_mode=True)),
                               (1, 3, 9, 10), 6),
    "max_pool1d": (lambda: Wrap(nn.MaxPool1d(2, 2)), (1, 3, 9), 6),
    "max_pool3d": (lambda: Wrap(nn.MaxPool3d(2, 2, 1)), (1, 2, 4, 5, 5), 5),
    "conv_transpose_pad_outpad": (
        lambda: Wrap(nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1)),
        (1, 4, 5, 6), 6),
    "conv_transpose_dilation": (lambda: Wrap(nn.ConvTranspose2d(3, 4, 3, stride=2, dilation=2)),
                                (1, 3, 5, 5), 6),
    "conv_transpose_groups": (lambda: Wrap(nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2,
                                                              padding=1)), (1, 4, 5, 5), 6),
    "conv_transpose1d": (lambda: Wrap(nn.ConvTranspose1d(3, 2, 4, stride=3, padding=2)),
                         (2, 3, 7), 6),
    "conv_transpose3d": (lambda: Wrap(nn.ConvTranspose3d(2, 3, 3, stride=2, padding=1,
                                                         output_padding=1)), (1, 2, 3, 4, 4), 5),
    "batch_norm1d": (lambda: Wrap(nn.BatchNorm1d(4)), (3, 4, 6), 6),
    "batch_norm3d": (lambda: Wrap(nn.BatchNorm3d(2)), (1, 2, 3, 4, 4), 5),
    "conv_bn_relu_fc": (ConvBnNet, (2, 3, 8, 8), 5),
    "small_resnet": (SmallResNet, (2, 3, 32, 32), 5),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export each (case, exporter) once per module."""
    folder = tmp_path_factory.mktemp("guide")
    cache: dict = {}

    def get(case: str, exporter: str):
        if (case, exporter) not in cache:
            factory, shape, _ = CASES[case]
            model = build(factory)
            x = torch.from_numpy(np.random.default_rng(1).standard_normal(shape).astype(np.float32))
            path = export_onnx(model, x, str(folder / f"{case}_{exporter}.onnx"), exporter)
            with torch.no_grad():
                expected = model(x).numpy()
            cache[case, exporter] = (path, x.numpy(), expected)
        return cache[case, exporter]

    return get


def _channels_last(a: np.ndarray) -> np.ndarray:
    return np.moveaxis(a, 1, -1) if a.ndim >= 3 else a


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch_and_onnxruntime(exported, case, exporter):
    path, x, expected = exported(case, exporter)
    decimals = CASES[case][2]
    converted = onnx2flax.convert(path)
    assert converted.inputs[0].channels_last == (x.ndim >= 3)
    # The guide's convention: channels-last in, channels-last out.
    with jax.default_matmul_precision("highest"):
        y = np.asarray(converted.module.apply(converted.variables, _channels_last(x)))
    assert converted.outputs[0].channels_last == (expected.ndim >= 3)
    np.testing.assert_almost_equal(y, _channels_last(expected) if expected.ndim >= 3 else expected,
                                   decimal=decimals)
    # ONNX layout through .run, against torch and onnxruntime.
    (got,) = converted.run({converted.inputs[0].name: x})
    np.testing.assert_almost_equal(got, expected, decimal=decimals)
    (ort,) = run_ort(__import__("onnx").load(path), {converted.inputs[0].name: x})
    np.testing.assert_allclose(got, ort, rtol=1e-5, atol=1e-5)
    assert np.abs(expected).max() > 0.1  # a tolerance means nothing on near-zero outputs


def _shapes(tree):
    return jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_tmodel_parameter_tree(exported, exporter):
    path, _, _ = exported("conv_then_fc", exporter)
    variables = onnx2flax.convert(path).variables
    assert _shapes(variables) == {"params": {"conv": {"kernel": (2, 2, 3, 4), "bias": (4,)},
                                             "fc": {"kernel": (100, 2), "bias": (2,)}}}


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_tmodel_weights_are_the_guides_transposes(exported, exporter):
    path, _, _ = exported("conv_then_fc", exporter)
    params = onnx2flax.convert(path).variables["params"]
    torch_state = build(TModel).state_dict()
    np.testing.assert_array_equal(params["conv"]["kernel"],
                                  torch_state["conv.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["fc"]["kernel"], torch_state["fc.weight"].numpy().T)


def test_batchnorm_survives_onnx2flax_export(exported):
    path, _, _ = exported("conv_bn_relu_fc", "onnx2flax")
    variables = onnx2flax.convert(path).variables
    assert set(variables["params"]["bn"]) == {"scale", "bias"}
    assert set(variables["batch_stats"]["bn"]) == {"mean", "var"}
    state = build(ConvBnNet).state_dict()
    np.testing.assert_array_equal(variables["batch_stats"]["bn"]["mean"], state["bn.running_mean"])
    np.testing.assert_array_equal(variables["batch_stats"]["bn"]["var"], state["bn.running_var"])


def test_resnet_parameter_paths_mirror_torch(exported):
    path, _, _ = exported("small_resnet", "onnx2flax")
    variables = onnx2flax.convert(path).variables
    block = variables["params"]["layer2"]["0"]
    assert block["conv1"]["kernel"].shape == (3, 3, 16, 32)
    assert set(block["downsample"]["0"]) == {"kernel"}
    assert set(variables["batch_stats"]["layer2"]["0"]["downsample"]["1"]) == {"mean", "var"}


def test_dynamic_batch(exported):
    path, _, _ = exported("small_resnet", "onnx2flax")
    converted = onnx2flax.convert(path)
    model = build(SmallResNet)
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        np.testing.assert_almost_equal(converted.run({"x": x})[0], expected, decimal=5)


@pytest.mark.hlo
@pytest.mark.parametrize("exporter", ["dynamo", "onnx2flax"])
def test_resnet_hlo_has_no_transpose(exported, exporter):
    """Channels-last in, global pooling before the classifier: like a hand-written Flax
    ResNet, the compiled program has no transpose at all."""
    path, x, _ = exported("small_resnet", exporter)
    assert transposes(onnx2flax.convert(path), x) == 0


def test_flatten_after_conv_transposes_once(exported):
    """The guide's transpose-before-flatten is inserted where the layout demands it."""
    path, x, _ = exported("conv_then_fc", "onnx2flax")
    converted = onnx2flax.convert(path)
    jaxpr = str(jax.make_jaxpr(converted.module.apply)(converted.variables, _channels_last(x)))
    assert jaxpr.count("transpose[") == 1
