"""``compare`` / ``convert -o`` / ``inspect`` (CLI) on models whose graph inputs decide
shapes, axes or branches (run specializes on them), checked against onnxruntime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import load_generated, make_model, run_ort
from onnx import helper
from test_input_shapes import _rate_model

from onnx2flax import cli

F, I64 = np.float32, np.int64
ROOT = Path(__file__).resolve().parent.parent
RNG = np.random.default_rng(5)


@pytest.mark.parametrize("module", ["onnx2flax._pipeline.inputs", "onnx2flax.converter"])
def test_modules_import_first_without_a_cycle(module):
    """_module -> _plan -> _normalize -> _inputs -> _module was a cycle: importing any of
    them first failed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", f"import {module}"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def _shape_model():
    """Reshape by the graph input ``s``, ReduceSum over the graph input ``axes``."""
    nodes = [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Reshape", ["h", "s"], ["r"]),
             helper.make_node("ReduceSum", ["r", "axes"], ["y"], keepdims=0)]
    return make_model(nodes, [("x", F, [4, 6]), ("s", I64, [2]), ("axes", I64, [1])],
                      [("y", F, None)], opset=13)


def _save(tmp_path, name, model, feeds=None):
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    if feeds is not None:
        np.savez(tmp_path / f"{name}.npz", **feeds)
    return str(path), str(tmp_path / f"{name}.npz")


def _shape_feeds(shape, axes):
    return {"x": RNG.standard_normal((4, 6)).astype(F), "s": np.array(shape, I64),
            "axes": np.array(axes, I64)}


@pytest.mark.parametrize("per_node", [False, True])
def test_compare_feeds_decide_the_shapes(tmp_path, capsys, per_node):
    feeds = _shape_feeds([3, 8], [1])
    model, npz = _save(tmp_path, "shape", _shape_model(), feeds)
    flags = ["--per-node"] if per_node else []
    assert cli.main(["compare", model, "--feeds", npz, "--json", *flags]) == 0
    report = json.loads(capsys.readouterr().out)
    (want,) = run_ort(_shape_model(), feeds)
    assert report["ok"] and report["outputs"][0]["shape"] == list(want.shape) == [3]
    if per_node:  # recorded on the conversion run() used for s = [3, 8], axes = [1]
        assert report["node_count"] == 3 and report["first_divergence"] is None
        assert {r["name"]: r["shape"] for r in report["ranking"]}["r"] == [3, 8]


def test_compare_random_values_for_deciding_inputs_are_named(tmp_path, capsys):
    model, _ = _save(tmp_path, "shape", _shape_model())
    assert cli.main(["compare", model]) == 2
    err = capsys.readouterr().err
    assert "input(s) ['s', 'axes'] decide shapes, axes or branches and were given random " \
           "values" in err and "--const NAME=VALUE" in err
    assert cli.main(["compare", model, "--const", "s=6,4", "--const", "axes=0,"]) == 0


@pytest.mark.parametrize("rate, chunk", [(16000, 256), (8000, 96)])
def test_compare_if_on_an_integer_input_per_node(tmp_path, capsys, rate, chunk):
    feeds = {"x": RNG.standard_normal(chunk).astype(F), "state": np.ones(4, F),
             "sr": np.array(rate, I64)}
    model, npz = _save(tmp_path, "rate", _rate_model(), feeds)
    assert cli.main(["compare", model, "--feeds", npz, "--per-node", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["node_count"] == 4 and report["first_divergence"] is None


def _generated_outputs(folder, name, *inputs):
    generated = load_generated(folder, name)
    out = generated.Model().apply(generated.load_variables(), *inputs)
    return [np.asarray(y) for y in (out if isinstance(out, tuple) else (out,))]


def test_convert_output_names_the_inputs_to_freeze_or_generates_for_them(tmp_path, capsys):
    feeds = _shape_feeds([2, 12], [0])
    model, npz = _save(tmp_path, "shape", _shape_model(), feeds)
    (want,) = run_ort(_shape_model(), feeds)
    assert cli.main(["convert", model, "-o", str(tmp_path / "none")]) == 2
    assert "input(s) ['s', 'axes'] decide shapes, axes or branches: give their values with " \
           "convert(model, constants={...}) or --const NAME=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    for folder, flags in (("const", ["--const", "s=2,12", "--const", "axes=0,"]),
                          ("feeds", ["--feeds", npz])):
        assert cli.main(["convert", model, "-o", str(tmp_path / folder), *flags]) == 0
        (got,) = _generated_outputs(tmp_path / folder, f"gen_{folder}", feeds["x"])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert "input s frozen to its --feeds value [2, 12]" in \
        (tmp_path / "feeds" / "summary.txt").read_text()


def test_inspect_names_the_inputs_deciding_shapes(tmp_path, capsys):
    model, _ = _save(tmp_path, "shape", _shape_model())
    assert cli.main(["inspect", model]) == 0
    assert "inputs deciding shapes, axes or branches: ['s', 'axes']" in capsys.readouterr().out
    assert cli.main(["inspect", model, "--const", "s=3,8"]) == 0
    out = capsys.readouterr().out
    assert "inputs deciding shapes, axes or branches: ['axes']" in out
    assert "constant input s = [3, 8]" in out


def test_convert_and_inspect_with_const_and_input_shape(tmp_path, capsys):
    rate = _rate_model()  # random weights: one model for both sides
    model, _ = _save(tmp_path, "rate", rate)
    assert cli.main(["inspect", model, "--const", "sr=8000", "--input-shape", "x=96"]) == 0
    out = capsys.readouterr().out
    assert "x: float32[96]" in out and "constant input sr = 8000" in out
    assert "inputs deciding" not in out
    assert cli.main(["convert", model, "-o", str(tmp_path / "out"), "--const", "sr=8000",
                     "--input-shape", "x=96"]) == 0
    x, state = RNG.standard_normal(96).astype(F), np.ones(4, F)
    got = _generated_outputs(tmp_path / "out", "gen_rate", x, state)
    want = run_ort(rate, {"x": x, "state": state, "sr": np.array(8000, I64)})
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
