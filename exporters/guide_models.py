"""The PyTorch models of the Flax guide "Convert PyTorch Models to Flax", its variants,
and a small ResNet-style network; plus one function that exports through any exporter.

Every model is built seeded, with BatchNorm statistics and affine parameters randomized
(a freshly initialized BatchNorm is the identity and would hide layout or epsilon bugs).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable

import torch
from torch import nn

EXPORTERS = ("dynamo", "torchscript", "onnx2flax")


class TModel(nn.Module):
    """The guide's Conv -> view -> Linear model (input ``[N, 3, 6, 6]``)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(in_channels=3, out_channels=4, kernel_size=2, padding="valid")
        self.fc = nn.Linear(in_features=100, out_features=2)

    def forward(self, x):
        x = self.conv(x)
        x = x.view(x.shape[0], -1)
        return self.fc(x)


class ConvBnNet(nn.Module):
    """Conv -> BatchNorm -> ReLU -> Flatten -> Linear (input ``[N, 3, 8, 8]``)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + identity)


class SmallResNet(nn.Module):
    """ResNet-style: stem conv/BN/ReLU/max-pool, two residual stages, global average pool,
    classifier (input ``[N, 3, 32, 32]``)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(_Block(16, 16, 1), _Block(16, 16, 1))
        self.layer2 = nn.Sequential(_Block(16, 32, 2), _Block(32, 32, 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Wrap(nn.Module):
    """One layer (or function) as a module, for the guide's single-layer sections."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.randn(m.num_features, generator=gen) * 0.5 + 1)
                    m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
    return model.eval()


def build(factory: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_norms(factory(), seed)


def export_onnx(model: nn.Module, example: torch.Tensor, path: str, exporter: str) -> str:
    """Export ``model`` on ``example`` with ``exporter``: ``"dynamo"`` and ``"torchscript"``
    are ``torch.onnx.export`` with its defaults (input named ``x``), ``"onnx2flax"`` is
    :func:`onnx2flax.export` (names and BatchNorm kept, dynamic batch)."""
    model = model.eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "onnx2flax":
            import onnx2flax

            onnx2flax.export(model, (example,), path)
        elif exporter in ("dynamo", "torchscript"):
            torch.onnx.export(model, (example,), path, input_names=["x"],
                              dynamo=exporter == "dynamo")
        else:
            raise ValueError(f"unknown exporter {exporter!r}; expected one of {EXPORTERS}")
    return path
