"""Silero VAD v5 (``silero_vad.onnx``, opset 16: an ``If`` on the run-time sample rate ``sr``)
streaming 6 chunks with its state fed back, against onnxruntime: ``sr`` fed at run time
(``run`` specializes on it) and frozen with ``constants={'sr': ...}``, both layouts.

Marked ``zoo`` (``pytest -m zoo tests/test_silero_vad.py``). The file comes from the
``silero-vad`` wheel: installed (``pip install silero-vad --no-deps``), or downloaded and
unzipped (``pip download silero-vad --no-deps -d DIR``, then unzip) with
``ONNX2FLAX_SILERO_VAD=DIR/silero_vad/data/silero_vad.onnx``. Skipped when absent.
The default run checks the same pattern on a small hand-built model
(``tests/test_input_shapes.py``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import run_ort

import onnx2flax

pytestmark = pytest.mark.zoo


def _model_path() -> Path:
    given = os.environ.get("ONNX2FLAX_SILERO_VAD")
    if given:
        return Path(given)
    spec = importlib.util.find_spec("silero_vad")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    pytest.skip("silero_vad.onnx not found: pip install silero-vad --no-deps, or set "
                "ONNX2FLAX_SILERO_VAD to the file from the unzipped wheel")


@pytest.fixture(scope="module")
def model_path():
    path = _model_path()
    if not path.is_file():
        pytest.skip(f"{path} does not exist (ONNX2FLAX_SILERO_VAD / the silero-vad wheel)")
    return path


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("rate, chunk", [(16000, 512), (8000, 256)])
def test_streaming_matches_onnxruntime(model_path, rate, chunk, frozen, channels_last):
    rng = np.random.default_rng(rate)
    reference = onnx.load(str(model_path))
    converted = onnx2flax.convert(model_path, channels_last=channels_last,
                                  constants={"sr": rate} if frozen else None)
    assert converted.specialized_inputs == ([] if frozen else ["sr"])
    sr = np.array(rate, np.int64)
    state = want_state = np.zeros((2, 1, 128), np.float32)
    for step in range(6):
        # speech-like input: a tone in noise, louder in later chunks
        t = np.arange(chunk) + step * chunk
        x = (0.1 * step * np.sin(2 * np.pi * 220 * t / rate)
             + 0.01 * rng.standard_normal(chunk)).astype(np.float32)[None]
        feeds = {"input": x, "state": state} | ({} if frozen else {"sr": sr})
        out, state = converted.run(feeds)
        want, want_state = run_ort(reference, {"input": x, "state": want_state, "sr": sr})
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5, err_msg=f"step {step}")
        np.testing.assert_allclose(state, want_state, rtol=1e-4, atol=1e-5,
                                   err_msg=f"state after step {step}")
        state = np.array(state)
