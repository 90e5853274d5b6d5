"""The main job on a bundled example: export a PyTorch model, convert it, compare.

Exports ``exporters.guide_models.SmallResNet`` (ResNet-style: BatchNorm, residual adds,
pooling, classifier; random weights and BatchNorm statistics) with ``onnx2flax.export``,
converts it, shows the Flax parameter tree, and prints a comparison table against
onnxruntime and torch.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import onnx2flax  # noqa: E402
from exporters.guide_models import SmallResNet, build  # noqa: E402


def main() -> int:
    model = build(SmallResNet)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "small_resnet.onnx"
        start = time.perf_counter()
        onnx2flax.export(model, (x,), path)
        print(f"exported SmallResNet to ONNX in {time.perf_counter() - start:.1f} s")

        start = time.perf_counter()
        converted = onnx2flax.convert(path)
        print(f"converted in {time.perf_counter() - start:.2f} s")
        print("inputs: ", ", ".join(f"{s.name}{list(s.shape)} channels_last={s.channels_last}"
                                    for s in converted.inputs))
        shapes = jax.tree_util.tree_map(lambda a: tuple(a.shape), converted.variables)
        print("params['layer1']['0']['conv1']:", shapes["params"]["layer1"]["0"]["conv1"])
        print("batch_stats['bn1']:", shapes["batch_stats"]["bn1"])

        # The Flax model takes channels-last images, like a hand-written one.
        logits = converted.module.apply(converted.variables, x.numpy().transpose(0, 2, 3, 1))
        print("module.apply on NHWC input ->", tuple(logits.shape))

        report = onnx2flax.compare(path, {"x": x.numpy()}, torch_module=model, per_node=True)
        print()
        print(report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
