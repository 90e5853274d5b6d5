"""Max and average pooling (onnx2flax/ops/pool.py) against onnxruntime: auto_pad,
asymmetric pads, count_include_pad, ceil_mode with dilations, the global pools. (LpPool and
MaxUnpool: test_pool_lp.py; MaxPool's indices: test_pool_indices.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from helpers import check_node


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2])),
    ("MaxPool", dict(kernel_shape=[2, 3], auto_pad="SAME_LOWER", strides=[2, 2])),
    ("AveragePool", dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2])),
    ("AveragePool", dict(kernel_shape=[3, 2], pads=[2, 0, 1, 1], count_include_pad=1)),
    ("AveragePool", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2], ceil_mode=1,
                         dilations=[2, 1])),
    ("MaxPool", dict(kernel_shape=[3, 3], pads=[1, 0, 1, 2], strides=[2, 3], ceil_mode=1)),
    ("GlobalAveragePool", {}),
    ("GlobalMaxPool", {}),
])
def test_pool_attributes(rng, op, attrs):
    check_node(op, {"x": rng.standard_normal((2, 3, 9, 8)).astype(np.float32)}, opset=19,
               attrs=attrs)
