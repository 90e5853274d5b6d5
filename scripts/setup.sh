#!/usr/bin/env bash
# Create .venv (if missing) and install onnx2flax with its test and torch extras.
# torch==2.13.0 is pinned: it is the CPU build (installed from local disk on the project's
# machines); an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" -e ".[test,torch]"
