"""A model over 2 GB with external data converts and runs within 1.5x its weights' size of
extra memory; progress is reported for large models only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnx2flax
from helpers import make_model

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 8192
LAYERS = 9  # 9 * 8192^2 float32 = 2.4 GB
BLOCK = 1024


def _external(name: str, shape, offset: int) -> TensorProto:
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape,
                    data_location=TensorProto.EXTERNAL)
    nbytes = int(np.prod(shape)) * 4
    for key, value in (("location", "weights.bin"), ("offset", offset), ("length", nbytes)):
        t.external_data.add(key=key, value=str(value))
    return t


def _build(folder: Path, x: np.ndarray) -> np.ndarray:
    """Write the model (alternating MatMul [in, out] and Gemm transB=1 [out, in] + bias,
    Tanh between) and return NumPy's output for ``x``.

    Each weight is random in one block of rows, at a different place per layer, and zero
    elsewhere: the zeros are left as holes of a sparse file, so the test writes 100 MB to
    disk instead of 2.4 GB, while reading a tensor at a wrong offset still shows.
    """
    rng = np.random.default_rng(0)
    scale = np.float32(4 / np.sqrt(BLOCK))
    inits, nodes, h = [], [], x[0].astype(np.float64)
    row_bytes = WIDTH * 4
    with open(folder / "weights.bin", "wb") as f:
        for i in range(LAYERS):
            offset = i * WIDTH * row_bytes
            r = (i * BLOCK) % WIDTH
            block = rng.standard_normal((BLOCK, WIDTH), dtype=np.float32) * scale
            f.seek(offset + r * row_bytes)
            f.write(block.tobytes())
            inits.append(_external(f"layer{i}.weight", [WIDTH, WIDTH], offset))
            src, dst = ("x" if i == 0 else f"t{i - 1}"), f"y{i}"
            if i % 2 == 0:  # MatMul: rows are input features
                nodes.append(helper.make_node("MatMul", [src, f"layer{i}.weight"], [dst]))
                out = h[r:r + BLOCK] @ block
            else:           # Gemm transB: rows are output features
                bias = (rng.standard_normal(WIDTH) * 0.1).astype(np.float32)
                inits.append(onnx.numpy_helper.from_array(bias, f"layer{i}.bias"))
                nodes.append(helper.make_node("Gemm", [src, f"layer{i}.weight", f"layer{i}.bias"],
                                              [dst], transB=1))
                out = bias.astype(np.float64)
                out[r:r + BLOCK] += block @ h
            nodes.append(helper.make_node("Tanh", [dst], [f"t{i}"]))
            h = np.tanh(out)
        f.truncate(LAYERS * WIDTH * row_bytes)
    graph = helper.make_graph(
        nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info(f"t{LAYERS - 1}", TensorProto.FLOAT, [1, WIDTH])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, folder / "model.onnx")
    assert (folder / "model.onnx").stat().st_size < 1 << 20
    assert (folder / "weights.bin").stat().st_size > 2**31
    return h[None].astype(np.float32)


_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    import onnx2flax

    def status(key):  # Linux: VmHWM is the peak RSS since the last reset below
        line = next(l for l in open("/proc/self/status") if l.startswith(key))
        return int(line.split()[1]) * 1024
    jax.numpy.zeros(1).block_until_ready()
    x = np.load(sys.argv[2])
    open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS
    base = status("VmRSS")
    stages = []
    converted = onnx2flax.convert(sys.argv[1], progress=lambda *a: stages.append(a))
    after_convert = status("VmHWM")
    y = converted.run({"x": x})[0]
    np.save(sys.argv[3], y)
    print(json.dumps({"base": base, "convert": after_convert - base,
                      "run": status("VmHWM") - base, "stages": stages}))
""")


@pytest.mark.slow
def test_external_data_model_over_2gb(tmp_path):
    x = np.random.default_rng(1).standard_normal((1, WIDTH)).astype(np.float32)
    start = time.perf_counter()
    expected = _build(tmp_path, x)
    built = time.perf_counter()
    report, y = _measure(tmp_path / "model.onnx", x, tmp_path)
    weights = LAYERS * WIDTH * WIDTH * 4
    print(f"build {built - start:.1f} s, convert+run {time.perf_counter() - built:.1f} s; "
          f"peak RSS increase: convert {report['convert'] / weights:.2f}x, "
          f"convert+run {report['run'] / weights:.2f}x the weights ({weights / 1e9:.2f} GB)")
    assert report["run"] <= 1.5 * weights, report
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    stages = [s[0] for s in report["stages"]]
    assert stages[:3] == ["load", "normalize", "plan"]
    assert report["stages"][-1] == ["variables", LAYERS + LAYERS // 2, LAYERS + LAYERS // 2]


def _build_embedded(path: Path, x: np.ndarray) -> tuple[np.ndarray, int]:
    """A 256 MB model with its weights inside the ``.onnx`` file (initializers, and one in a
    Constant node as Paddle exports do): MatMul / Tanh layers. Returns NumPy's output for
    ``x`` and the weights' size."""
    rng = np.random.default_rng(2)
    width, layers = 4096, 4
    inits, nodes, h = [], [], x.astype(np.float64)
    for i in range(layers):
        w = rng.standard_normal((width, width), dtype=np.float32) * np.float32(1 / 64)
        tensor = onnx.numpy_helper.from_array(w, f"layer{i}.weight")
        if i == 1:
            nodes.append(helper.make_node("Constant", [], [tensor.name], value=tensor))
        else:
            inits.append(tensor)
        src = "x" if i == 0 else f"t{i - 1}"
        nodes += [helper.make_node("MatMul", [src, tensor.name], [f"y{i}"]),
                  helper.make_node("Tanh", [f"y{i}"], [f"t{i}"])]
        h = np.tanh(h @ w)
    graph = helper.make_graph(
        nodes, "embedded", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info(f"t{layers - 1}", TensorProto.FLOAT, [1, width])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return h.astype(np.float32), layers * width * width * 4


def _measure(model: Path, x: np.ndarray, folder: Path) -> tuple[dict, np.ndarray]:
    """Convert and run ``model`` in a fresh process: peak memory figures and the output."""
    np.save(folder / "x.npy", x)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(model), str(folder / "x.npy"),
                           str(folder / "y.npy")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), np.load(folder / "y.npy")


@pytest.mark.slow
def test_embedded_weights_convert_within_the_memory_bound(tmp_path):
    """Weights inside the .onnx file are not copied three times (file bytes, parsed
    protobuf, NumPy): they are read from the file like external data."""
    x = np.random.default_rng(3).standard_normal((1, 4096)).astype(np.float32)
    expected, weights = _build_embedded(tmp_path / "model.onnx", x)
    report, y = _measure(tmp_path / "model.onnx", x, tmp_path)
    print(f"peak RSS increase: convert {report['convert'] / weights:.2f}x, "
          f"convert+run {report['run'] / weights:.2f}x the weights ({weights / 1e6:.0f} MB)")
    assert report["convert"] <= 1.5 * weights, report
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_progress_off_for_small_models_and_on_request(capfd):
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                       [("x", np.float32, [1, 4])], [("y", np.float32, [1, 3])],
                       {"w": np.ones((4, 3), np.float32)})
    onnx2flax.convert(model)
    assert capfd.readouterr().err == ""
    onnx2flax.convert(model, progress=True)
    err = capfd.readouterr().err
    assert "onnx2flax: plan 1/1" in err and "onnx2flax: variables 1/1" in err
    with pytest.raises(TypeError):
        onnx2flax.convert(model, progress="yes")
