"""Training parity with PyTorch: train-mode BatchNorm, Dropout, and gradients."""

from __future__ import annotations

import copy
import functools
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from onnx import helper

import onnx2flax
from onnx2flax.errors import UnsupportedOpError

from helpers import make_model


class _CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4, momentum=0.3)
        self.fc = torch.nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def _cnn():
    torch.manual_seed(0)
    model = _CNN()
    with torch.no_grad():  # non-trivial statistics, so that momentum and layout bugs show
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-1, 1)
    return model


def _export(model, x):
    """dynamo export keeping BatchNormalization and the parameter names."""
    return torch.onnx.export(model.eval(), (x,), dynamo=True, optimize=False).model_proto


@pytest.fixture(scope="module")
def cnn():
    model = _cnn()
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    return model, x, onnx2flax.convert(_export(model, x))


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.numpy().transpose(0, 2, 3, 1)


def test_train_mode_batch_norm_matches_torch(cnn):
    model, x, converted = cnn
    model = copy.deepcopy(model)  # torch's train() forward updates its running stats
    with jax.default_matmul_precision("highest"):
        y, updates = converted.module.apply(converted.variables, _nhwc(x), train=True,
                                            mutable=["batch_stats"])
    model.train()
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(expected).max() > 0.5
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
    stats = updates["batch_stats"]["bn"]
    np.testing.assert_allclose(stats["mean"], model.bn.running_mean.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats["var"], model.bn.running_var.numpy(), rtol=1e-6, atol=1e-6)
    # The statistics moved: momentum actually applied, not a no-op.
    before = converted.variables["batch_stats"]["bn"]["mean"]
    assert np.abs(np.asarray(stats["mean"]) - np.asarray(before)).max() > 1e-3


def test_inference_mode_is_the_default(cnn):
    model, x, converted = cnn
    y = converted.module.apply(converted.variables, _nhwc(x))
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)


def _grads_torch(model, x, weights, train):
    model = copy.deepcopy(model)
    model.train(train)
    model.zero_grad()
    loss = (model(x) * torch.from_numpy(weights)).sum()
    loss.backward()
    return {name: p.grad.numpy() for name, p in model.named_parameters()}


def _grads_flax(converted, x, weights, train):
    def loss(params):
        variables = {**converted.variables, "params": params}
        if train:
            y, _ = converted.module.apply(variables, x, train=True, mutable=["batch_stats"])
        else:
            y = converted.module.apply(variables, x)
        return jnp.sum(y * weights)

    with jax.default_matmul_precision("highest"):
        return jax.grad(loss)(converted.variables["params"])


def _assert_close_rel(got, expected, what, floor=1e-6):
    """Max error relative to the tensor's largest gradient. ``floor``: gradients that are
    zero in exact arithmetic (a conv bias before train-mode BatchNorm) are rounding noise in
    both frameworks; they are compared against the model's gradient scale times ``floor``."""
    scale = max(np.abs(expected).max(), floor)
    err = np.abs(np.asarray(got) - expected).max() / scale
    assert err <= 1e-4, f"{what}: max error {err:.3g} relative to max |grad| {scale:.3g}"


@pytest.mark.parametrize("train", [True, False])
def test_cnn_gradients_match_torch(cnn, train):
    model, x, converted = cnn
    weights = np.random.default_rng(2).standard_normal((4, 5)).astype(np.float32)
    expected = _grads_torch(model, x, weights, train)
    got = _grads_flax(converted, _nhwc(x), weights, train)
    close = functools.partial(_assert_close_rel, floor=1e-2 * np.abs(expected["fc.weight"]).max())
    close(got["conv"]["kernel"], expected["conv.weight"].transpose(2, 3, 1, 0), "conv")
    close(got["conv"]["bias"], expected["conv.bias"], "conv bias")
    close(got["bn"]["scale"], expected["bn.weight"], "bn scale")
    close(got["bn"]["bias"], expected["bn.bias"], "bn bias")
    close(got["fc"]["kernel"], expected["fc.weight"].T, "fc")
    close(got["fc"]["bias"], expected["fc.bias"], "fc bias")


def test_transformer_gradients_match_torch():
    torch.manual_seed(0)
    model = torch.nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0,
                                             batch_first=True)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    try:
        converted = onnx2flax.convert(_export(model, x))
    except UnsupportedOpError as exc:
        pytest.skip(f"ops the transformer needs are not supported yet: {exc}")
    weights = np.random.default_rng(2).standard_normal((2, 5, 16)).astype(np.float32)
    expected = _grads_torch(model, x, weights, train=False)
    got = _grads_flax(converted, x.numpy(), weights, train=False)
    from onnx2flax.torch_state import to_torch_state_dict

    got = to_torch_state_dict(converted, {"params": got})
    assert set(got) == set(expected)
    for name, grad in expected.items():
        _assert_close_rel(got[name], grad, name)


def test_dropout_is_active_only_in_training():
    model = make_model([helper.make_node("Dropout", ["x", "r"], ["y"])],
                       [("x", np.float32, [1000])], [("y", np.float32, [1000])],
                       {"r": np.asarray(0.25, np.float32)})
    converted = onnx2flax.convert(model)
    x = np.random.default_rng(0).uniform(1, 2, 1000).astype(np.float32)
    np.testing.assert_array_equal(converted.module.apply(converted.variables, x), x)
    y = np.asarray(converted.module.apply(converted.variables, x, train=True,
                                          rngs={"dropout": jax.random.key(0)}))
    dropped = y == 0
    assert 0.15 < dropped.mean() < 0.35
    np.testing.assert_allclose(y[~dropped], x[~dropped] / 0.75, rtol=1e-6)


def test_finetune_example_lowers_the_loss():
    path = Path(__file__).resolve().parent.parent / "examples" / "finetune.py"
    spec = importlib.util.spec_from_file_location("finetune_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    losses, _ = example.finetune(steps=10)
    assert losses[-1] < 0.5 * losses[0], losses
