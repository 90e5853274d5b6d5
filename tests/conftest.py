"""Shared fixtures: seeded RNG; the generated-source check on every ``ConvertedModel.run``."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ONNX2FLAX_NO_CACHE", "1")  # CLI calls in tests leave ~/.cache alone

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _codegen_check(monkeypatch):
    """Every model a test runs (``ConvertedModel.run``) also has its generated source checked
    against the interpreter, bit for bit (``helpers.assert_codegen_matches``);
    ``ONNX2FLAX_SKIP_CODEGEN=1`` turns it off."""
    from helpers import check_codegen_on_run

    check_codegen_on_run(monkeypatch)
