"""The ONNX node-test catalogue, shared by ``tests/test_backend_node.py`` and
``scripts/conformance.py``: which op each test is about, and the expected failures."""

from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path

EXPECTED_FAILURES = Path(__file__).with_name("conformance_expected_failures.txt")

_EXPANDED = re.compile(r"_expanded(_ver\d+)?$")


@functools.cache
def load_cases() -> dict:
    """name -> ``onnx.backend.test`` TestCase for every node test, in the suite's order."""
    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the suite's generators overflow casts on purpose
        return {case.name: case for case in load_model_tests(kind="node")}


def op_of(name: str) -> str:
    """The op node test ``name`` is about (``domain::Op`` outside the default domain).
    Expanded tests (``*_expanded*``: the op's function body) count for the op they expand."""
    import onnx.backend.test.case.node as node_cases

    load_cases()  # fills the registry of test names the next line reads
    node = node_cases._existing_names[_EXPANDED.sub("", name)]
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


def is_expanded(name: str) -> bool:
    return bool(_EXPANDED.search(name))


def expected_failures() -> dict[str, str]:
    """Test name (without ``_cpu``/``_cuda``) -> reason, from the expected-failures file."""
    failures = {}
    for number, line in enumerate(EXPECTED_FAILURES.read_text().splitlines(), 1):
        name, _, reason = line.partition("#")
        name = name.strip()
        if not name:
            continue
        if not reason.strip():
            raise ValueError(f"{EXPECTED_FAILURES.name}:{number}: {name} has no reason")
        failures[name] = reason.strip()
    return failures
