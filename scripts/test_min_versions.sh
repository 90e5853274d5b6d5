#!/usr/bin/env bash
# Test onnx2flax against the MINIMUM versions it declares: makes .min-venv/ with every
# runtime dependency pinned to the lower bound in pyproject.toml (numpy, onnx, onnxruntime,
# jax, jaxlib, flax, ml_dtypes) and runs a representative subset of the tests there.
# Not part of the default run (it downloads the old wheels once; then about 2 minutes on 2
# cores). No torch there: tests that need it are left out (the generated-source check,
# which every run does, covers NNX); so are the tests listed below, with their reason.
# Usage: bash scripts/test_min_versions.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${MIN_VENV:-.min-venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# name>=X in [project].dependencies -> name==X (jax's lower bound also pins jaxlib).
PINS=$("$VENV/bin/python" - <<'PY'
import re
text = open("pyproject.toml").read()
deps = re.search(r"^dependencies = \[(.*?)\]", text, re.S | re.M).group(1)
pins = []
for name, version in re.findall(r'"([A-Za-z0-9_.-]+)>=([0-9.]+)"', deps):
    pins.append(f"{name}=={version}")
    if name == "jax":
        pins.append(f"jaxlib=={version}")
print(" ".join(pins))
PY
)
echo "minimum versions: $PINS"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q $PINS "pytest>=8" "hypothesis>=6"
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" -m pip check
"$VENV/bin/python" -m pip list 2>/dev/null | grep -iE "^(numpy|onnx|onnxruntime|jax|jaxlib|flax|ml.dtypes) "
JAX_PLATFORMS=cpu "$VENV/bin/python" -m pytest -q -p no:randomly \
  tests/test_fixtures.py tests/test_per_node.py tests/test_cli.py tests/test_extend.py \
  tests/test_light_models.py tests/ops/test_elementwise.py \
  tests/ops/test_shape.py tests/ops/test_movement.py tests/ops/test_control.py \
  tests/ops/test_sequence.py \
  --deselect tests/test_fixtures.py::test_cli_export_then_compare \
  `# opsets newer than the minimum onnx (1.19: opset 24) / onnxruntime (1.19: opset 21) know:` \
  --deselect "tests/ops/test_elementwise.py::test_unary_float[22]" \
  --deselect tests/ops/test_elementwise.py::test_mod_float_floor_opset28 \
  --deselect tests/ops/test_movement.py::test_space_to_depth_mode_opset28 \
  --deselect "tests/ops/test_movement.py::test_channels_last_depth_space[SpaceToDepth-CRD-values]" \
  --deselect "tests/ops/test_movement.py::test_channels_last_depth_space[SpaceToDepth-CRD-hlo]" \
  `# matches onnxruntime, but jax 0.8.1 lowers a negative-step slice with one more transpose:` \
  --deselect "tests/ops/test_movement.py::test_channels_last_slice[hlo]" "$@"
