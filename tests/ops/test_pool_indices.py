"""MaxPool's Indices output (flattened ONNX-order positions of each window's maximum)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import convert_and_run, make_model, run_ort
from onnx import TensorProto, helper


CASES = [
    (dict(kernel_shape=[2, 2]), [2, 3, 5, 5]),
    (dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), [1, 2, 6, 7]),
    (dict(kernel_shape=[2, 2], storage_order=1), [1, 2, 4, 5]),
    (dict(kernel_shape=[3], dilations=[2], strides=[2], ceil_mode=1), [2, 3, 9]),
    (dict(kernel_shape=[2, 2, 2]), [1, 2, 3, 4, 5]),
]


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("attrs,shape", CASES)
def test_maxpool_indices_match_onnxruntime(attrs, shape, channels_last):
    node = helper.make_node("MaxPool", ["x"], ["y", "i"], **attrs)
    model = make_model([node], [("x", np.float32, shape)],
                       [("y", np.float32, None), ("i", TensorProto.INT64, None)], opset=12)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    x[..., 0] = x[..., 1]  # ties: the first maximum in row-major window order wins
    got = convert_and_run(model, {"x": x}, channels_last=channels_last)
    for g, want in zip(got, run_ort(model, {"x": x})):
        assert g.dtype == want.dtype and g.shape == want.shape
        np.testing.assert_array_equal(g, want)
