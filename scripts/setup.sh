#!/usr/bin/env bash
# Create .venv (if missing) and install onnx2flax with its test and torch extras.
# torch==2.13.0 is pinned (the version the tests are run with). What pip gets depends on its
# index: the project's machines serve the CPU build; PyPI on Linux x86_64 serves the CUDA
# build (several GB). For the CPU build elsewhere, install it first from PyTorch's CPU index
# (see README, "The two commands").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" -e ".[test,torch]"
