"""Quantized models as onnxruntime's quantizer makes them, and models whose constant folding
needs the op handlers' fallback, against onnxruntime (graph rewrites off: the graph as
written). Marked ``zoo`` (``pytest -m zoo tests/test_quantized_models.py``): each builds a
tiny random torch model, exports and quantizes it (seconds each).

Tolerances, by format:
- QDQ and QOperator (``quantize_static``): integer arithmetic is exact, but a float
  operation that differs by an ulp (XLA's vs onnxruntime's exp, a fused multiply-add) can
  move a value across a rounding boundary of the next QuantizeLinear: one quantization step.
  Outputs must agree within 1 output quantization step and 99 % of them exactly (QDQ
  dequantizes the output, so in float units of its last scale). Measured: bit for bit.
- Dynamic (``quantize_dynamic``): DynamicQuantizeLinear's range comes from the data, so an
  ulp upstream can shift a whole tensor's scale: 1e-4 relative to the output's magnitude.
- Float models (BERT): the zoo's 1e-4 relative.
- ddddocr ``common_old`` (a DynamicQuantizeLSTM over ConvInteger layers): its ``.onnx`` from
  the ``ddddocr`` wheel (``pip download ddddocr==1.6.1 --no-deps``, unzip), path in
  ``$ONNX2FLAX_DDDDOCR_OLD``; skipped without it. The predicted characters must equal
  onnxruntime's and the logits agree within 2 % of their magnitude (onnxruntime quantizes
  the LSTM's activations on the fly, onnx2flax runs it on dequantized weights).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import run_ort

import onnx2flax

pytestmark = pytest.mark.zoo

torch = pytest.importorskip("torch")
quantization = pytest.importorskip("onnxruntime.quantization")


class _TinyResNet(torch.nn.Module):
    """ResNet-18's shape in miniature: stem, two basic blocks (one downsampling), pool, fc."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        self.block1 = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                    nn.Conv2d(8, 8, 3, 1, 1), nn.BatchNorm2d(8))
        self.block2 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                    nn.Conv2d(16, 16, 3, 1, 1), nn.BatchNorm2d(16))
        self.down = nn.Sequential(nn.Conv2d(8, 16, 1, 2), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 10)
        for m in self.modules():  # norm layers away from the identity
            if isinstance(m, nn.BatchNorm2d):
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block1(x))
        x = torch.relu(self.down(x) + self.block2(x))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


class _Reader(quantization.CalibrationDataReader):
    def __init__(self, batches):
        self._batches = iter([{"x": b} for b in batches])

    def get_next(self):
        return next(self._batches, None)


def _export(module, example, path: Path, dynamo: bool = False) -> Path:
    torch.manual_seed(0)
    module.eval()
    kwargs = {} if dynamo else {"dynamic_axes": {"x": {0: "batch"}}}
    torch.onnx.export(module, (example,), str(path), input_names=["x"], output_names=["y"],
                      dynamo=dynamo, opset_version=17, **kwargs)
    return path


def _static(tmp_path: Path, quant_format) -> tuple[Path, dict]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    float_path = _export(_TinyResNet(), torch.randn(1, 3, 32, 32), tmp_path / "resnet.onnx")
    out = tmp_path / f"resnet_{quant_format.name}.onnx"
    calibration = [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(4)]
    quantization.quantize_static(str(float_path), str(out), _Reader(calibration),
                                 quant_format=quant_format, per_channel=True)
    return out, {"x": rng.standard_normal((2, 3, 32, 32)).astype(np.float32)}


def _within_steps(got, expected, step, steps=1, exact=0.99):
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64)) / step
    assert diff.max() <= steps + 1e-3, diff.max()
    assert (diff < 1e-3).mean() >= exact, (diff < 1e-3).mean()


def _last_scale(model: onnx.ModelProto) -> float:
    """The scale of the DequantizeLinear that makes the graph's output."""
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer[model.graph.output[0].name]
    while node.op_type != "DequantizeLinear":
        node = producer[node.input[0]]
    return float(consts[node.input[1]])


def test_resnet_qdq(tmp_path):
    """QDQ: QuantizeLinear / DequantizeLinear pairs around float ops (opset 17: the ONNX
    reference evaluator has no DequantizeLinear-13 to fold weights with)."""
    path, feeds = _static(tmp_path, quantization.QuantFormat.QDQ)
    model = onnx.load(path)
    got = onnx2flax.convert(model).run(feeds)[0]
    _within_steps(got, run_ort(model, feeds, fused=False)[0], _last_scale(model))


def test_resnet_qoperator(tmp_path):
    """QOperator: QLinearConv, QLinearAdd, QLinearGlobalAveragePool, QGemm..."""
    path, feeds = _static(tmp_path, quantization.QuantFormat.QOperator)
    model = onnx.load(path)
    ops = {n.op_type for n in model.graph.node}
    assert {"QLinearConv", "QLinearAdd", "QLinearGlobalAveragePool"} <= ops, ops
    got = onnx2flax.convert(model).run(feeds)[0]
    expected = run_ort(model, feeds, fused=False)[0]
    _within_steps(got, expected, _last_scale(model) if got.dtype.kind == "f" else 1)


@pytest.mark.parametrize("dynamo", [False, True])
def test_mlp_dynamic(tmp_path, dynamo):
    torch.manual_seed(0)
    nn = torch.nn
    mlp = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 128), nn.ReLU(),
                        nn.Linear(128, 10))
    float_path = _export(mlp, torch.randn(4, 64), tmp_path / "mlp.onnx", dynamo)
    out = tmp_path / "mlp_dynamic.onnx"
    quantization.quantize_dynamic(str(float_path), str(out))
    model = onnx.load(out)
    feeds = {"x": np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)}
    got = onnx2flax.convert(model).run(feeds)[0]
    expected = run_ort(model, feeds, fused=False)[0]
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def _bert(tmp_path: Path, dynamo: bool) -> Path:
    """HuggingFace BertModel (tiny random config) taking ``input_ids``, exported."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=512)
    bert = transformers.BertModel(config).eval()

    class _Ids(torch.nn.Module):  # input_ids only, as a positional argument
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, x):
            out = self.bert(input_ids=x)
            return out.last_hidden_state, out.pooler_output

    ids = torch.randint(0, 100, (1, 16))
    path = tmp_path / f"bert_{'dynamo' if dynamo else 'script'}.onnx"
    torch.onnx.export(_Ids().eval(), (ids,), str(path), input_names=["x"],
                      output_names=["last_hidden_state", "pooler_output"], dynamo=dynamo,
                      opset_version=17)
    return path


_BERT_IDS = {"x": np.random.default_rng(2).integers(0, 100, (1, 16)).astype(np.int64)}


@pytest.mark.parametrize("dynamo", [False, True])
def test_bert_folds_its_token_type_buffer(tmp_path, dynamo):
    """The token_type_ids buffer's GatherElements is folded by the op's handler (ONNX's
    reference evaluator fails on it)."""
    proto = onnx.load(_bert(tmp_path, dynamo))
    got = onnx2flax.convert(proto).run(_BERT_IDS)
    for g, e in zip(got, run_ort(proto, _BERT_IDS, fused=False)):
        assert np.abs(g - e).max() <= 1e-4 * max(1.0, np.abs(e).max())


@pytest.mark.parametrize("dynamo", [False, True])
def test_bert_dynamic(tmp_path, dynamo):
    """BERT through quantize_dynamic (13 MatMulInteger, 9 DynamicQuantizeLinear; measured
    1.5e-7 relative)."""
    out = tmp_path / "bert_dynamic.onnx"
    quantization.quantize_dynamic(str(_bert(tmp_path, dynamo)), str(out))
    proto = onnx.load(out)
    assert any(n.op_type == "MatMulInteger" for n in proto.graph.node)
    got = onnx2flax.convert(proto).run(_BERT_IDS)
    for g, e in zip(got, run_ort(proto, _BERT_IDS, fused=False)):
        assert np.abs(g - e).max() <= 1e-4 * max(1.0, np.abs(e).max())


def test_ddddocr_common_old():
    path = os.environ.get("ONNX2FLAX_DDDDOCR_OLD")
    if not path or not Path(path).is_file():
        pytest.skip("set ONNX2FLAX_DDDDOCR_OLD to ddddocr 1.6.1's common_old.onnx")
    model = onnx.load(path)
    assert any(n.op_type == "DynamicQuantizeLSTM" for n in model.graph.node)
    rng = np.random.default_rng(0)
    for width in (96, 160):
        feeds = {"input1": rng.random((1, 1, 64, width)).astype(np.float32)}
        got = onnx2flax.convert(model).run(feeds)[0]
        expected = run_ort(model, feeds, fused=False)[0]
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
        assert np.abs(got - expected).max() <= 0.02 * np.abs(expected).max()
