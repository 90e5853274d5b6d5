"""The module boundary (``onnx2flax._core.boundary``): layout moves between ONNX order and the
module's layout, and output layouts returned by the trace (no state written while tracing)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from helpers import make_model
from onnx import helper

import onnx2flax
from onnx2flax._core import boundary as _boundary
from onnx2flax._core.graph import TensorSpec

F = np.float32


def test_layout_moves_are_inverse_and_only_for_channels_last_specs():
    x = np.arange(2 * 3 * 4 * 5, dtype=F).reshape(2, 3, 4, 5)
    image = TensorSpec("x", (2, 3, 4, 5), np.dtype(F), channels_last=True)
    plain = TensorSpec("x", (2, 3, 4, 5), np.dtype(F))
    moved = _boundary.to_module(x, image)
    np.testing.assert_array_equal(moved, np.moveaxis(x, 1, -1))
    np.testing.assert_array_equal(_boundary.to_onnx(moved, image), x)
    assert _boundary.to_module(x, plain) is x and _boundary.to_onnx(x, plain) is x
    assert _boundary.module_shape(TensorSpec("x", ("N", 3, 4, 5), np.dtype(F),
                                             channels_last=True)) == (1, 4, 5, 3)


def _pool_model():
    """A 3x3 max pool on ``x [N, 2, H, W]``: traced with H = W = 1 (no feeds) it fails."""
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3])
    return make_model([node], [("x", F, ["N", 2, "H", "W"])], [("y", F, None)], opset=13)


def test_run_gives_the_output_layouts_it_traced():
    """``outputs`` after ``run`` are the layouts run's own trace returned: no trace without
    feeds (which cannot work for this model), no state left on the program."""
    converted = onnx2flax.convert(_pool_model())
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 5)).astype(F)
    assert converted.run({"x": x})[0].shape == (1, 2, 3, 3)
    assert converted.outputs[0].channels_last
    assert not hasattr(converted._program, "output_channels_last")


def test_module_returns_outputs_with_static_layouts():
    """``module.apply(..., method="_outputs")`` returns ``_boundary.Output`` pytrees whose
    spec is static: ``jax.eval_shape`` keeps it."""
    converted = onnx2flax.convert(_pool_model(), channels_last=False)
    x = jax.ShapeDtypeStruct((1, 2, 5, 5), F)
    (out,) = jax.eval_shape(lambda v, x: converted.module.apply(v, x, method="_outputs"),
                            converted.variables, x)
    assert out.value.shape == (1, 2, 3, 3) and not out.spec.channels_last
    with pytest.raises(onnx2flax.errors.OnnxConversionError):
        converted.outputs  # noqa: B018  (traced without feeds: H = W = 1)
