"""Generated source at any size the ONNX file allows: dims it leaves open (``dim_param``,
unnamed) are read from the inputs at run time (``batch = x.shape[0]``), and shape
arithmetic on them (Shape -> Gather -> Concat -> Reshape, Resize scales) is Python
arithmetic in the source.

Each model is saved with ``onnx2flax.codegen.save``, imported in a fresh Python process
and run at two sizes of its open dims; the outputs are compared with onnxruntime's on the
same file, and the weights tree with ``converted.variables``.
"""

from __future__ import annotations

import onnx
import pytest
import torch

import onnx2flax
from onnx2flax import codegen
from onnx2flax.errors import OnnxConversionError

from helpers import check_source_at_sizes
from test_codegen import _ResNet


def _export(model, args, path, **options):
    torch.manual_seed(0)
    return onnx2flax.export(model.eval(), args, path, **options)


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_resnet_any_batch(tmp_path, api):
    """The ResNet-style model exported with a dynamic batch runs at batch 1 and 3."""
    torch.manual_seed(0)
    path = _export(_ResNet(), (torch.randn(2, 3, 8, 8),), tmp_path / "resnet.onnx")
    source = check_source_at_sizes(tmp_path / "out", path, [{"batch": 1}, {"batch": 3}], api=api)
    assert "batch = x_x.shape[0]" in source


class _Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 16)
        layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.enc = torch.nn.TransformerEncoder(layer, 2)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, ids):
        return self.head(self.enc(self.emb(ids)).mean(1))


def test_transformer_any_batch_and_sequence_length(tmp_path):
    batch = torch.export.Dim("batch", min=1, max=64)
    seq = torch.export.Dim("seq", min=2, max=64)
    path = _export(_Encoder(), (torch.randint(0, 50, (2, 7)),), tmp_path / "enc.onnx",
                   dynamic_shapes=({0: batch, 1: seq},))
    source = check_source_at_sizes(tmp_path / "out", path,
                             [{"batch": 2, "seq": 7}, {"batch": 3, "seq": 12}])
    assert "seq = x_x.shape[1]" in source
    # the encoder layer written once, called for each of its two instances
    assert source.count("class TransformerEncoderLayer(nn.Module):") == 1
    assert "TransformerEncoderLayer(name='0')(" in source
    assert "TransformerEncoderLayer(name='1')(" in source


class _Net(torch.nn.Module):
    """Conv, BatchNorm, a nearest 2x upsample, squeeze-excitation, max pool and a
    ``view(x.size(0), -1)`` (TorchScript: Shape -> Gather -> Unsqueeze -> Concat -> Reshape)."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.c2 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.up = torch.nn.Upsample(scale_factor=2, mode="nearest")
        self.se = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Conv2d(8, 8, 1),
                                      torch.nn.Hardsigmoid())
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.bn(self.c1(x)))
        y = y + self.up(self.c2(y))
        y = self.pool(y * self.se(y))
        f = y.mean((2, 3))
        return self.fc(f.view(f.size(0), -1)), y


def test_dynamo_height_and_width_expressions(tmp_path):
    """torch records ``2*h`` for an even height: the source reads ``h = x.shape[1] // 2``
    and runs at other even sizes."""
    batch, h, w = (torch.export.Dim(n, min=2, max=256) for n in ("batch", "h", "w"))
    path = _export(_Net(), (torch.randn(2, 3, 16, 24),), tmp_path / "net.onnx",
                   dynamic_shapes=({0: batch, 2: 2 * h, 3: 2 * w},))
    source = check_source_at_sizes(tmp_path / "out", path, [
        {"batch": 2, "2*h": 16, "2*w": 24}, {"batch": 3, "2*h": 10, "2*w": 32}])
    assert "h = x_x.shape[1] // 2" in source


def _torchscript(model, x, path, dynamic_axes, **options):
    torch.onnx.export(model.eval(), (x,), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": dynamic_axes}, **options)
    return path


def test_torchscript_shape_arithmetic_any_batch(tmp_path):
    """``view(x.size(0), -1)`` exported by TorchScript is shape arithmetic on the batch."""
    torch.manual_seed(0)
    path = _torchscript(_Net(), torch.randn(2, 3, 16, 16), tmp_path / "net.onnx", {0: "N"},
                        opset_version=13)
    assert "Gather" in {n.op_type for n in onnx.load(path).graph.node}
    check_source_at_sizes(tmp_path / "out", path, [{"N": 1}, {"N": 4}])


def test_a_size_the_model_needs_fixed_is_named(tmp_path):
    """With H and W free, the upsampled branch (even sizes only) cannot be added to the
    other: the error names the open dims and how to fix them; fixed, it generates."""
    torch.manual_seed(0)
    path = _torchscript(_Net(), torch.randn(2, 3, 16, 16), tmp_path / "net.onnx",
                        {0: "N", 2: "H", 3: "W"}, opset_version=13)
    converted = onnx2flax.convert(path)
    with pytest.raises(OnnxConversionError) as info:
        codegen.generate(converted)
    message = str(info.value)
    assert "input 'x' dims 0 (N), 2 (H), 3 (W)" in message
    assert "--input-shape x=<N>,3,<H>,<W>" in message
    fixed = onnx2flax.convert(path, input_shapes={"x": (2, 3, 16, 16)})
    assert "x_x.shape" not in codegen.generate(fixed)
