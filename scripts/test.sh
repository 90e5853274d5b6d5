#!/usr/bin/env bash
# Set up (scripts/setup.sh), type-check the op handlers (mypy, configured in pyproject.toml)
# and run the default test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export JAX_PLATFORMS=cpu
.venv/bin/python -m mypy
.venv/bin/python -m pytest -q -p no:randomly "$@"
