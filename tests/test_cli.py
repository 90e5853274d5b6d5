"""The command line and ``compare``: start-up without jax, exit codes, errors, the input
flags, the compilation cache, normalized errors, feeds, per-node ranking and arbitration,
JSON; the reprs."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnx2flax
from onnx2flax import _compare, cli
from tests.helpers import make_model, run_ort

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


def _run_cli(args, tmp_path, env=None, **kwargs):
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path / "poison"), str(ROOT)]), "JAX_PLATFORMS": "cpu", **(env or {})}
    return subprocess.run([sys.executable, "-m", "onnx2flax.cli", *args], env=environ,
                          capture_output=True, text=True, timeout=300, **kwargs)


def _poison(tmp_path, *modules: str) -> None:
    """Packages named ``modules`` that raise on import, first on the child's path."""
    for name in modules:
        folder = tmp_path / "poison" / name
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text(f"raise ImportError('{name} must not be imported')\n")


def test_help_and_version_without_jax_flax_onnx(tmp_path):
    _poison(tmp_path, "jax", "flax", "onnx", "onnxruntime", "torch")
    for args in (["--help"], ["convert", "--help"], ["compare", "--help"], ["inspect", "--help"],
                 ["export", "--help"]):
        done = _run_cli(args, tmp_path)
        assert done.returncode == 0, done.stderr
        assert "usage: onnx2flax" in done.stdout
    done = _run_cli(["--version"], tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == f"onnx2flax {onnx2flax.__version__}"
    compare_help = _run_cli(["compare", "--help"], tmp_path).stdout
    assert "--rtol" in compare_help and "--atol" in compare_help and "max|ref|" in compare_help


def test_export_without_torch_is_one_line_exit_2(tmp_path):
    _poison(tmp_path, "torch")
    done = _run_cli(["export", "exporters.guide_models:ConvBnNet", "--input-shape", "1,3,8,8",
                     "-o", str(tmp_path / "m.onnx")], tmp_path, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: onnx2flax export needs PyTorch: pip install 'onnx2flax[torch]'"]


def test_export_bad_factory_and_bad_shape_exit_2(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    monkeypatch.chdir(ROOT)
    out = str(tmp_path / "m.onnx")
    assert cli.main(["export", "exporters.guide_models:NoSuchNet", "--input-shape", "1,3,8,8",
                     "-o", out]) == 2
    assert "'exporters.guide_models' has no callable 'NoSuchNet'" in capsys.readouterr().err
    assert cli.main(["export", "no_such_module:f", "--input-shape", "1", "-o", out]) == 2
    assert "cannot import 'no_such_module'" in capsys.readouterr().err
    # ConvBnNet takes 3 channels: the exporter's failure is one line, exit 2.
    assert cli.main(["export", "exporters.guide_models:ConvBnNet", "--input-shape", "1,5,8,8",
                     "-o", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[1].startswith("error: torch.onnx.export failed for ConvBnNet")
    assert "to have 3 channels, but got 5" in err[1]
    with pytest.raises(SystemExit) as exit_:
        cli.main(["export", "exporters.guide_models:ConvBnNet", "--input-shape", "1,a", "-o", out])
    assert exit_.value.code == 2


def _relu_model(ir_version=8, typed=True, opset=True):
    x = (helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]) if typed
         else onnx.ValueInfoProto(name="x"))
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if not opset:
        del model.opset_import[:]
    model.ir_version = ir_version
    return model


@pytest.mark.parametrize("kwargs, message", [
    (dict(ir_version=99), "Unsupported model IR version: 99"),
    (dict(typed=False), "does not have type information"),
    (dict(opset=False), "onnxruntime (the reference) cannot load the model")])
def test_onnxruntime_failures_are_onnx2flax_errors(tmp_path, capsys, kwargs, message):
    path = tmp_path / "m.onnx"
    path.write_bytes(_relu_model(**kwargs).SerializeToString())
    np.savez(tmp_path / "feeds.npz", x=np.ones((2, 3), np.float32))
    assert cli.main(["compare", str(path), "--feeds", str(tmp_path / "feeds.npz")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "onnxruntime_src" not in err
    assert err.strip().splitlines()[-1].startswith("error: ") and message in err


def test_cli_errors_exit_2(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not onnx")
    assert cli.main(["inspect", str(path)]) == 2
    assert cli.main(["compare", str(FIXTURES / "tmodel_onnx2flax.onnx"), "--feeds",
                     str(path)]) == 2
    assert "is not a readable .npz file" in capsys.readouterr().err
    pickled = tmp_path / "obj.npz"
    np.savez(pickled, x=np.array([{"a": 1}], dtype=object))
    assert cli.main(["compare", str(FIXTURES / "tmodel_onnx2flax.onnx"), "--feeds",
                     str(pickled)]) == 2
    assert "allow_pickle" in capsys.readouterr().err


def _image_model(rng, dims=("N", 3, "H", "W")):
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["y"], name="pool", kernel_shape=[2, 2],
                              strides=[2, 2])]
    return make_model(nodes, [("x", np.float32, list(dims))], [("y", np.float32, None)],
                      {"w": w})


def test_unknown_spatial_dims_are_refused_with_how_to_give_them(rng):
    with pytest.raises(onnx2flax.InvalidInputError) as err:
        onnx2flax.compare(_image_model(rng))
    message = str(err.value)
    assert "dim 2 ('H'), dim 3 ('W')" in message and "--input-shape x=1,3,<H>,<W>" in message
    assert "--feeds" in message
    no_shape = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", np.float32, None)],
                          [("y", np.float32, None)])
    with pytest.raises(onnx2flax.InvalidInputError, match="'x' has no declared shape"):
        onnx2flax.compare(no_shape)


def test_feeds_file_fixes_shapes_and_is_printed(rng, tmp_path, capsys):
    path = tmp_path / "img.onnx"
    path.write_bytes(_image_model(rng).SerializeToString())
    x = rng.standard_normal((2, 3, 10, 12)).astype(np.float32)
    np.savez(tmp_path / "feeds.npz", x=x)
    assert cli.main(["compare", str(path), "--feeds", str(tmp_path / "feeds.npz"),
                     "--per-node", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["ok"] and report["inputs"] == [
        {"name": "x", "shape": [2, 3, 10, 12], "dtype": "float32", "origin": "given"}]
    (want,) = run_ort(_image_model(np.random.default_rng(0)), {"x": x})
    assert report["outputs"][0]["shape"] == list(want.shape)
    assert report["node_count"] == 3 and len(report["ranking"]) == 3
    assert "onnx2flax: input x: float32[2,3,10,12] (given)" in captured.err
    assert "compiled and ran in" in captured.err


def test_convert_with_feeds_and_nothing_left_behind(rng, tmp_path, capsys):
    path = tmp_path / "img.onnx"
    path.write_bytes(_image_model(rng).SerializeToString())
    out = tmp_path / "out"
    # Unknown H and W traced as 1: the pool fails, and no DIR is left behind.
    assert cli.main(["convert", str(path), "-o", str(out)]) == 2
    assert "MaxPool node 'pool'" in capsys.readouterr().err and not out.exists()
    np.savez(tmp_path / "feeds.npz", x=np.zeros((2, 3, 10, 12), np.float32))
    assert cli.main(["convert", str(path), "-o", str(out), "--feeds",
                     str(tmp_path / "feeds.npz")]) == 0
    assert "# input 'x': float32[2, 10, 12, 3] channels-last" in (out / "model.py").read_text()
    assert "  y: channels-last" in (out / "summary.txt").read_text()


def test_absurd_random_feeds_are_refused(rng):
    model = make_model([helper.make_node("Relu", ["x"], ["y"])],
                       [("x", np.float32, [100000, 100000])], [("y", np.float32, None)])
    with pytest.raises(onnx2flax.ResourceLimitError, match="random inputs of shapes"):
        onnx2flax.compare(model)


def test_token_ids_drawn_below_the_embedding_table_size(rng):
    table = rng.standard_normal((257, 8)).astype(np.float32)
    nodes = [helper.make_node("Cast", ["ids"], ["i64"], to=TensorProto.INT64),
             helper.make_node("Gather", ["table", "i64"], ["y"], name="embed")]
    model = make_model(nodes, [("ids", np.int32, [1, 4096])], [("y", np.float32, None)],
                       {"table": table})
    report = onnx2flax.compare(model)
    assert report.ok, report.table()
    assert report.feeds[0].origin == "random ints in [0, 257): Gather node 'embed''s table size"
    ids = onnx2flax.random_feeds(onnx2flax.convert(model).inputs, int_ranges={"ids": 257})["ids"]
    assert ids.max() > 200 and ids.min() >= 0  # the whole table is exercised


def test_errors_are_normalized_by_the_output_scale():
    want = np.array([0.0, 1e-30, 2.0, -4.0], np.float32)
    got = want + np.float32(1e-5)
    c = _compare.Comparison.of("y", "ref", got, want, rtol=1e-4, atol=0.0)
    assert c.scale == 4.0 and c.error == pytest.approx(float(np.max(np.abs(got - want))) / 4.0)
    assert c.ok  # the elementwise relative error at 1e-30 would be ~1e25


def _chain_model(rng):
    w = rng.standard_normal((6, 6)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Tanh", ["m"], ["t"], name="tanh"),
             helper.make_node("Relu", ["t"], ["r"], name="relu"),
             helper.make_node("Neg", ["r"], ["y"], name="neg")]
    return make_model(nodes, [("x", np.float32, [4, 6])], [("y", np.float32, [4, 6])], {"w": w})


def test_per_node_ranking_and_arbitration_blames_onnx2flax(rng, monkeypatch):
    from tests.test_per_node import _skewed

    model = _chain_model(rng)
    feeds = {"x": rng.standard_normal((4, 6)).astype(np.float32)}
    _skewed(monkeypatch, "Tanh", 0.05)
    report = onnx2flax.compare(model, feeds, per_node=True, top=3)
    assert not report.ok and len(report.ranking) == 3
    errors = [c.error for c in report.ranking]
    assert errors == sorted(errors, reverse=True)
    by_tensor = {c.name: c for c in report.nodes}
    assert by_tensor["t"].verdict.startswith("onnx2flax is wrong")
    assert by_tensor["m"].ok and not by_tensor["m"].verdict
    downstream = [c for c in report.ranking if c.name in ("r", "y") and not c.ok]
    assert downstream and all("from upstream" in c.verdict for c in downstream)
    assert "onnx.reference: onnx2flax is wrong" in report.table()


def test_per_node_arbitration_blames_onnxruntime(rng, monkeypatch):
    model = _chain_model(rng)
    feeds = {"x": rng.standard_normal((4, 6)).astype(np.float32)}
    real = _compare._ort_run

    def wrong_relu(session, ort_feeds):  # onnxruntime's Relu output made wrong, alone
        names = [o.name for o in session.get_outputs()]
        values = real(session, ort_feeds)
        return [v + 0.5 if n == "r" else v for n, v in zip(names, values)]

    monkeypatch.setattr(_compare, "_ort_run", wrong_relu)
    report = onnx2flax.compare(model, feeds, per_node=True)
    assert report.first_divergence.name == "r"
    assert report.first_divergence.verdict.startswith("onnxruntime is wrong")


SHAPES_API = "input_shapes" in inspect.signature(onnx2flax.convert).parameters


@pytest.mark.skipif(not SHAPES_API, reason="convert(input_shapes=, constants=) not merged yet")
def test_input_shape_and_const_flags(rng, tmp_path, capsys):
    path = tmp_path / "img.onnx"
    path.write_bytes(_image_model(rng).SerializeToString())
    assert cli.main(["compare", str(path), "--input-shape", "x=1,3,16,12"]) == 0
    assert "input x: float32[1,3,16,12] (random normal)" in capsys.readouterr().out
    assert cli.main(["convert", str(path), "-o", str(tmp_path / "out"), "--input-shape",
                     "x=1,3,16,12"]) == 0
    add = make_model([helper.make_node("Add", ["x", "b"], ["y"])],
                     [("x", np.float32, [2, 3]), ("b", np.float32, [])], [("y", np.float32, None)])
    path = tmp_path / "add.onnx"
    path.write_bytes(add.SerializeToString())
    assert cli.main(["compare", str(path), "--const", "b=2.5"]) == 0
    assert cli.main(["inspect", str(path), "--const", "b=2.5"]) == 0


def test_inspect_shows_given_shapes(rng, tmp_path, capsys):
    path = tmp_path / "img.onnx"
    path.write_bytes(_image_model(rng).SerializeToString())
    assert cli.main(["inspect", str(path), "--input-shape", "x=1,3,16,12"]) == 0
    assert "x: float32[1, 3, 16, 12]" in capsys.readouterr().out
    assert cli.main(["inspect", str(path), "--input-shape", "nope=1"]) == 2
    assert "['nope'] are not inputs of the model" in capsys.readouterr().err


def test_compilation_cache_files_appear(tmp_path):
    """A second run at the same shapes reads the compiled program from the cache (files
    appear on the first run; ``--no-cache`` writes none)."""
    cache = tmp_path / "cache"
    env = {"ONNX2FLAX_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "ONNX2FLAX_NO_CACHE": ""}
    model = str(FIXTURES / "tmodel_onnx2flax.onnx")
    tmp_path.joinpath("poison").mkdir()
    off = _run_cli(["compare", model, "--no-cache"], tmp_path, env)
    assert off.returncode == 0, off.stderr
    assert not cache.exists()
    first = _run_cli(["compare", model], tmp_path, env)
    assert first.returncode == 0, first.stderr
    assert f"compilation cache: {cache}" in first.stderr
    entries = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert entries
    second = _run_cli(["compare", model], tmp_path, env)
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == entries  # all hits


def test_enable_compilation_cache_in_python(tmp_path):
    cache = tmp_path / "api-cache"
    code = ("import numpy as np, onnx2flax\n"
            f"onnx2flax.enable_compilation_cache({str(cache)!r}, min_compile_time_s=0)\n"
            f"m = onnx2flax.convert({str(FIXTURES / 'tmodel_onnx2flax.onnx')!r})\n"
            "m.run({'x': np.zeros((1, 3, 6, 6), np.float32)})\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT),
                                            "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr
    assert any(p.is_file() for p in cache.rglob("*"))


def test_reprs_are_short():
    path = FIXTURES / "conv_bn_onnx2flax.onnx"
    converted = onnx2flax.convert(path)
    proto = onnx.load(path)
    weights = sum(int(np.prod(t.dims)) for t in proto.graph.initializer
                  if t.data_type == TensorProto.FLOAT and np.prod(t.dims) > 1
                  and "running" not in t.name)
    text = repr(converted)
    assert text == (f"ConvertedModel(inputs=[x[batch,3,8,8]], outputs=[linear[batch,5]], "
                    f"params={weights:,}, opset=20)")
    module = repr(converted.module)
    assert len(module) < 200 and "nodes=" in module and "inputs=['x']" in module


def test_error_examples_run(monkeypatch, capsys):
    """``docs/errors_examples.py`` raises the documented error for each of its examples,
    and each example (title and class) is shown in docs/errors.md."""
    import runpy

    from onnx2flax._core import registry as _registry

    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    script = runpy.run_path(str(ROOT / "docs" / "errors_examples.py"))
    assert script["main"]() == 0
    printed = [line for line in capsys.readouterr().out.splitlines()
               if line and not line.startswith(" ")]
    docs = (ROOT / "docs" / "errors.md").read_text()
    assert len(printed) >= 20
    assert [line for line in printed if line not in docs] == []
