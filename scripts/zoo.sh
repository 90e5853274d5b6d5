#!/usr/bin/env bash
# Real-model tests (pytest marker `zoo`): torchvision / timm / transformers models exported by
# both torch exporters (exporters/zoo.py) and the onnx wheel's light models, each compared with
# onnxruntime, and third-party ONNX files from PyPI wheels through the CLI
# (exporters/third_party.py); then docs/models.md is regenerated from the results.
#
#   bash scripts/zoo.sh [pytest args...]        e.g.  bash scripts/zoo.sh -k resnet
#
# Runs in its own venv ($ZOO_VENV, default .zoo-venv/), made on first use: torchvision needs
# torch 2.14.1 (a ~5.5 GB CUDA build), which must not replace the project venv's CPU torch.
# Exports are cached in $ONNX2FLAX_ZOO_CACHE (default .zoo_cache/).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${ZOO_VENV:-.zoo-venv}"
if ! "$VENV/bin/python" -c "import torchvision, timm, transformers, jax, flax, onnxruntime, onnxscript, pytest" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 timm transformers \
    numpy jax flax onnx onnxruntime onnxscript safetensors pytest
fi
status=0
PYTHONPATH=. "$VENV/bin/python" -m pytest -m zoo tests/test_zoo.py tests/test_light_models.py \
  tests/test_third_party.py -rxs "$@" || status=$?
PYTHONPATH=. "$VENV/bin/python" exporters/zoo_report.py || true
PYTHONPATH=. "$VENV/bin/python" exporters/third_party.py --report -o docs/models.md || true
exit $status
