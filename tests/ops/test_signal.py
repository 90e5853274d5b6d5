"""DFT, STFT, the window functions and MelWeightMatrix against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_codegen_matches, check_graph, node_model
from onnx import TensorProto
from onnx.reference import ReferenceEvaluator

import onnx2flax
from onnx2flax.errors import OnnxConversionError

RNG = np.random.default_rng(0)


def _signal(shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("inverse, onesided, last", [
    (0, 0, 1), (0, 0, 2), (0, 1, 1), (1, 0, 2), (1, 0, 1), (1, 1, 2)])
@pytest.mark.parametrize("axis", [1, 2, -3])
@pytest.mark.parametrize("length", [None, 6, 11])
def test_dft(opset, inverse, onesided, last, axis, length):
    """Real / complex signals, forward / inverse, one-sided (RFFT / IRFFT), the DFT
    length padding or truncating, on each signal axis (an input from opset 20)."""
    x = _signal((2, 8, 5, last))
    consts = {}
    inputs = ["x"]
    if length is not None or opset >= 20:
        consts["n"] = np.array(length, np.int64) if length is not None else None
        inputs.append("n" if length is not None else "")
    attrs = {"inverse": inverse, "onesided": onesided}
    if opset >= 20:
        consts["axis"] = np.array(axis, np.int64)
        inputs.append("axis")
    else:
        attrs["axis"] = axis
    consts = {k: v for k, v in consts.items() if v is not None}
    model = node_model("DFT", {"x": x}, attrs=attrs, consts=consts, inputs=inputs, opset=opset)
    if inverse and onesided and length is not None and length // 2 + 1 != x.shape[axis]:
        # onnxruntime's IRFFT reads other bins when the input has more or fewer than
        # dft_length // 2 + 1; ONNX's reference (and numpy's irfft) use the first ones.
        want = ReferenceEvaluator(model).run(None, {"x": x})[0]
        got = onnx2flax.convert(model).run({"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    else:
        check_graph(model, {"x": x}, rtol=1e-4, atol=1e-4)


def test_dft_on_the_last_axis_is_refused():
    x = _signal((2, 8, 1))
    model = node_model("DFT", {"x": x}, attrs={"axis": 2}, opset=17)
    with pytest.raises(OnnxConversionError, match="DFT.*last axis"):
        onnx2flax.convert(model).run({"x": x})


@pytest.mark.parametrize("onesided, last", [(1, 1), (0, 1), (0, 2)])
@pytest.mark.parametrize("window, frame_length", [(True, None), (False, 16), (True, 16)])
@pytest.mark.parametrize("step", [4, 7])
def test_stft(onesided, last, window, frame_length, step):
    x = _signal((2, 64, last))
    consts = {"step": np.array(step, np.int64)}
    inputs = ["x", "step", "", ""]
    if window:
        consts["w"] = np.hanning(16).astype(np.float32)
        inputs[2] = "w"
    if frame_length:
        consts["len"] = np.array(frame_length, np.int64)
        inputs[3] = "len"
    model = node_model("STFT", {"x": x}, attrs={"onesided": onesided}, consts=consts,
                       inputs=inputs, opset=17)
    check_graph(model, {"x": x}, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op", ["HannWindow", "HammingWindow", "BlackmanWindow"])
@pytest.mark.parametrize("periodic", [0, 1])
@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.DOUBLE])
def test_windows_of_constant_size_fold(op, periodic, dtype):
    out = np.float32 if dtype == TensorProto.FLOAT else np.float64
    model = node_model(op, {}, attrs={"periodic": periodic, "output_datatype": dtype},
                       consts={"size": np.array(10, np.int64)}, out_dtypes=[out], opset=17)
    check_graph(model, {}, rtol=1e-6, atol=1e-6)


def test_mel_weight_matrix_of_constants_folds():
    consts = {"bins": np.array(8, np.int64), "n": np.array(16, np.int64),
              "rate": np.array(8192, np.int64), "low": np.array(0, np.float32),
              "high": np.array(4096, np.float32)}
    model = node_model("MelWeightMatrix", {}, consts=consts, out_dtypes=[np.float32], opset=17)
    check_graph(model, {})


def test_window_of_run_time_size_is_specialized():
    """``run`` converts once per run-time window size; the module alone cannot trace it."""
    feeds = {"size": np.array(4, np.int64)}
    model = node_model("HannWindow", feeds, out_dtypes=[np.float32])
    converted, _, _ = check_graph(model, feeds)
    check_graph(model, {"size": np.array(7, np.int64)})
    with pytest.raises(OnnxConversionError, match="HannWindow.*conversion-time constants"):
        converted.module.apply(converted.variables, feeds["size"])


@pytest.mark.parametrize("op, attrs, consts", [
    ("DFT", {"axis": 1}, {}), ("DFT", {"axis": 1, "inverse": 1, "onesided": 1}, {}),
    ("STFT", {}, {"step": np.array(8, np.int64), "w": np.hanning(16).astype(np.float32)})])
def test_codegen_writes_the_transforms(op, attrs, consts):
    """Generated source computes the same bits (lax.FftType parameters written as source)."""
    x = _signal((2, 64, 2 if attrs.get("onesided") else 1))
    converted = onnx2flax.convert(node_model(op, {"x": x}, attrs=attrs, consts=consts, opset=17))
    assert_codegen_matches(converted, {"x": x})
