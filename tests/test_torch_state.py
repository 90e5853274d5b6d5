"""Flax variables -> PyTorch state_dict: exact round trips, after fine-tuning in Flax too."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from onnx import helper

import onnx2flax
from onnx2flax.torch_state import to_torch_state_dict

from helpers import make_model


class _ConvNet(torch.nn.Module):
    """Conv, BatchNorm, grouped strided ConvTranspose, Linear (Gemm)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.up = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1,
                                           groups=2)
        self.fc = torch.nn.Linear(6 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(self.up(torch.relu(self.bn(self.conv(x)))).flatten(1))


class _MLP(torch.nn.Module):
    """Linear on 3-D input: exported as MatMul with a folded Transpose of the weight."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 6)
        self.b = torch.nn.Linear(6, 3, bias=False)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def _encoder():
    return torch.nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0,
                                            batch_first=True)


def _setup(cls, shape):
    torch.manual_seed(0)
    model = cls().eval()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.uniform_(-1, 1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    proto = torch.onnx.export(model, (x,), dynamo=True, optimize=False).model_proto
    return model, x, onnx2flax.convert(proto, channels_last=False)


@pytest.fixture(scope="module", params=[(_ConvNet, (2, 3, 4, 4)), (_MLP, (2, 5, 4)),
                                        (_encoder, (2, 5, 16))],
                ids=["convnet", "mlp", "transformer"])
def setup(request):
    return _setup(*request.param)


def test_unchanged_variables_give_back_the_state_dict_exactly(setup):
    model, _, converted = setup
    state = to_torch_state_dict(converted)
    expected = {k: v.numpy() for k, v in model.state_dict().items()
                if not k.endswith("num_batches_tracked")}
    assert set(state) == set(expected)
    for name, value in expected.items():
        assert state[name].dtype == value.dtype and state[name].shape == value.shape, name
        np.testing.assert_array_equal(state[name], value, err_msg=name)


def test_fine_tuned_in_flax_loads_back_into_torch(setup):
    model, x, converted = setup
    x = x.numpy()
    target = np.random.default_rng(3).standard_normal(
        np.shape(converted.module.apply(converted.variables, x))).astype(np.float32)
    has_stats = "batch_stats" in converted.variables

    def loss_fn(params, stats):
        variables = {"params": params, **({"batch_stats": stats} if has_stats else {})}
        if has_stats:
            y, updates = converted.module.apply(variables, x, train=True, mutable=["batch_stats"])
            stats = updates["batch_stats"]
        else:
            y = converted.module.apply(variables, x)
        return jnp.mean((y - target) ** 2), stats

    opt = optax.sgd(0.05)
    params, stats = converted.variables["params"], converted.variables.get("batch_stats")
    state = opt.init(params)
    with jax.default_matmul_precision("highest"):
        for _ in range(3):
            (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
            updates, state = opt.update(grads, state)
            params = optax.apply_updates(params, updates)
        tuned = {"params": params, **({"batch_stats": stats} if has_stats else {})}
        expected = np.asarray(converted.module.apply(tuned, x))
    before = to_torch_state_dict(converted)
    after = to_torch_state_dict(converted, tuned)
    assert all(not np.array_equal(before[k], after[k]) for k in before), "training changed nothing"

    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(v) for k, v in after.items()}, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    with torch.no_grad():
        got = model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_gemm_alpha_beta_and_trans_b_are_undone():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 4)).astype(np.float32)
    c = rng.standard_normal((1, 5)).astype(np.float32)
    model = make_model([helper.make_node("Gemm", ["x", "w", "c"], ["y"], alpha=0.5, beta=2.0,
                                         transB=1)],
                       [("x", np.float32, [2, 4])], [("y", np.float32, [2, 5])], {"w": w, "c": c})
    converted = onnx2flax.convert(model)
    state = to_torch_state_dict(converted)
    np.testing.assert_allclose(state["w"], w, rtol=1e-6)
    np.testing.assert_allclose(state["c"], c, rtol=1e-6)
    assert state["c"].shape == (1, 5)
