"""Shared fixtures: seeded RNG, onnxruntime reference runs; ``--codegen-all``."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_addoption(parser):
    parser.addoption("--codegen-all", action="store_true",
                     help="check the generated source of every model any test runs "
                          "(ConvertedModel.run) against the interpreter, bit for bit; by "
                          "default only the op tests' and ONNX node tests' models are")


@pytest.fixture(autouse=True)
def _codegen_all(request, monkeypatch):
    if request.config.getoption("--codegen-all"):
        from helpers import check_codegen_on_run

        check_codegen_on_run(monkeypatch)
