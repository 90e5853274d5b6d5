"""Fine-tune a converted model with optax, then load the weights back into PyTorch.

    python examples/finetune.py

A small PyTorch CNN (Conv -> BatchNorm -> ReLU -> Linear) is exported to ONNX, converted
to Flax, trained for a few steps on a synthetic regression task in train mode (BatchNorm
uses batch statistics and updates its running statistics, as torch's ``train()``), and the
result is written back into the PyTorch model with ``to_torch_state_dict``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import onnx2flax
from onnx2flax.torch_state import to_torch_state_dict


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def finetune(steps: int = 20, learning_rate: float = 5e-3, seed: int = 0):
    """Returns ``(losses, torch_model)``: the loss at each step and the PyTorch model holding
    the fine-tuned weights."""
    torch.manual_seed(seed)
    model = SmallCNN().eval()
    example = torch.randn(16, 3, 8, 8)
    # dynamo export keeps BatchNormalization and the parameter names (optimize=False).
    proto = torch.onnx.export(model, (example,), dynamo=True, optimize=False).model_proto
    converted = onnx2flax.convert(proto)  # channels-last: x is [N, H, W, C]

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((16, 8, 8, 3)).astype(np.float32)
    y = rng.standard_normal((16, 4)).astype(np.float32)

    def loss_fn(params, batch_stats):
        out, updates = converted.module.apply({"params": params, "batch_stats": batch_stats}, x,
                                              train=True, mutable=["batch_stats"])
        return jnp.mean((out - y) ** 2), updates["batch_stats"]

    @jax.jit
    def step(params, batch_stats, opt_state):
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    optimizer = optax.adam(learning_rate)
    params, batch_stats = converted.variables["params"], converted.variables["batch_stats"]
    opt_state = optimizer.init(params)
    losses = []
    for i in range(steps):
        params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state)
        losses.append(float(loss))
        print(f"step {i:3d}  loss {losses[-1]:.5f}")

    state = to_torch_state_dict(converted, {"params": params, "batch_stats": batch_stats})
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    return losses, model


if __name__ == "__main__":
    losses, _ = finetune()
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
