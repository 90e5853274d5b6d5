"""The Caffe2-era model files shipped inside the onnx wheel (``onnx/backend/test/data/light``).

Opset 9, every weight made by a ``ConstantOfShape`` node (a constant fill), old IR (the
initializers holding the shapes are listed as graph inputs too). Each must match onnxruntime
with ``max|flax - ort| <= 1e-4 * max(1, max|ort|)`` per output on a seeded random image.

A constant weight makes every channel identical and the final Softmax exactly uniform, so the
logits before the Softmax are compared as well; the ``zoo``-marked variant swaps the constant
fills for random weights, so that channel order matters and layout bugs show.
Two fast files run in the default test run; all of them with ``-m zoo``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnx2flax

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
NAMES = sorted(p.stem.removeprefix("light_") for p in LIGHT.glob("light_*.onnx"))
DEFAULT_RUN = {"bvlc_alexnet", "shufflenet"}  # fast ones; the rest are behind -m zoo


def _with_logits(model: onnx.ModelProto) -> onnx.ModelProto:
    """Also output the input of a final Softmax (the logits)."""
    last = model.graph.node[-1]
    if last.op_type == "Softmax":
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(last.input[0], onnx.TensorProto.FLOAT, None))
    return model


def _random_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Replace every ``ConstantOfShape`` weight by a seeded random initializer: fan-in scaled
    uniform for kernels, uniform in [0.5, 1.5] for vectors (valid BatchNorm variances too)."""
    rng = np.random.default_rng(seed)
    shapes = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in shapes:
            shape = tuple(int(d) for d in shapes[node.input[0]])
            if len(shape) >= 2:
                bound = 1.0 / np.sqrt(np.prod(shape[1:]))
                value = rng.uniform(-bound, bound, shape) * np.sqrt(3.0)
            else:
                value = rng.uniform(0.5, 1.5, shape)
            model.graph.initializer.append(numpy_helper.from_array(
                value.astype(np.float32), node.output[0]))
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def _check(model: onnx.ModelProto) -> None:
    try:
        converted = onnx2flax.convert(model)
    except onnx2flax.UnsupportedOpError as exc:
        pytest.xfail(str(exc))
    feeds = onnx2flax.random_feeds(converted.inputs, seed=0)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    want = session.run(None, feeds)
    got = converted.run(feeds)
    assert [g.shape for g in got] == [w.shape for w in want]
    for spec, g, w in zip(converted.outputs, got, want):
        err = float(np.max(np.abs(g.astype(np.float64) - w)))
        bound = 1e-4 * max(1.0, float(np.max(np.abs(w))))
        assert err <= bound, f"output {spec.name!r}: max abs err {err:.3g} > {bound:.3g}"


def _cases(default: set[str]):
    return [pytest.param(n, marks=() if n in default else pytest.mark.zoo) for n in NAMES]


def test_light_models_present():
    assert len(NAMES) >= 9, NAMES


@pytest.mark.parametrize("name", _cases(DEFAULT_RUN))
def test_light_model_matches_onnxruntime(name):
    _check(_with_logits(onnx.load(LIGHT / f"light_{name}.onnx")))


@pytest.mark.parametrize("name", _cases(set()))
def test_light_model_random_weights(name):
    _check(_with_logits(_random_weights(onnx.load(LIGHT / f"light_{name}.onnx"))))
