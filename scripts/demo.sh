#!/usr/bin/env bash
# Set up (scripts/setup.sh), then export the bundled ResNet-style PyTorch model, convert it,
# run it and print the comparison with onnxruntime and torch.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export JAX_PLATFORMS=cpu
.venv/bin/python examples/demo.py "$@"
