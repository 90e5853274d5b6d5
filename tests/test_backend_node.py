"""The official ONNX backend node tests (``onnx.backend.test``) through ``onnx2flax.backend``.

Each test converts a one-op model (or its expanded function body) with the default
``convert`` and compares ``.run`` (ONNX layout) with the suite's reference outputs, using the
onnx runner's comparison (``rtol=1e-3, atol=1e-7``).

Every run also checks the model's generated source (``onnx2flax.codegen``) against the
interpreter, bit for bit (``helpers.assert_codegen_matches``; ``ONNX2FLAX_SKIP_CODEGEN=1``
turns it off).

Tests listed in ``conformance_expected_failures.txt`` are skipped; each has its reason there.
That file and ``docs/conformance.md`` are written by ``scripts/conformance.py``.

The whole suite (~1900 models, one conversion and compilation each: ~5 minutes on one core)
is too long for the default run, so it is marked ``conformance``
(``pytest -m conformance tests/test_backend_node.py``). The default run keeps a representative
subset (~270 tests, ~1 minute): for every op, the first two of its own (not expanded) tests
that are not expected to fail, on CPU.
"""

from __future__ import annotations

import re
import unittest
import warnings
from collections import defaultdict

import onnx.backend.test
import pytest
from conformance_cases import expected_failures, is_expanded, op_of

from onnx2flax.backend import OnnxFlaxBackend

_PER_OP = 2

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the suite's case generators overflow casts on purpose
    backend_test = onnx.backend.test.BackendTest(OnnxFlaxBackend, __name__)
_failing = expected_failures()
if _failing:
    backend_test.exclude("^(?:" + "|".join(map(re.escape, _failing)) + ")_(?:cpu|cuda)$")


def _fast_subset(names: list[str]) -> set[str]:
    chosen: dict[str, list[str]] = defaultdict(list)
    for name in sorted(names):
        base = name.removesuffix("_cpu")
        if base == name or base in _failing or is_expanded(base):
            continue
        picks = chosen[op_of(base)]
        if len(picks) < _PER_OP:
            picks.append(name)
    return {name for picks in chosen.values() for name in picks}


#: Every node test (marked ``conformance``, so outside the default run).
OnnxBackendNodeModelTest = pytest.mark.conformance(
    backend_test.test_cases["OnnxBackendNodeModelTest"])

#: The default run's subset: the same test functions, unmarked.
OnnxBackendNodeSubsetTest = type("OnnxBackendNodeSubsetTest", (unittest.TestCase,), {
    name: getattr(OnnxBackendNodeModelTest, name)
    for name in _fast_subset([n for n in vars(OnnxBackendNodeModelTest) if n.startswith("test_")])})
