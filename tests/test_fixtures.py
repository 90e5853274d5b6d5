"""The bundled fixtures (``fixtures/make_fixtures.py``): every file converts and matches the
torch output stored beside it and onnxruntime — no torch needed at test time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import onnx2flax

FIXTURES = sorted((Path(__file__).resolve().parent.parent / "fixtures").glob("*.onnx"))


def test_fixtures_exist():
    assert len(FIXTURES) >= 8


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_fixture_matches_torch_and_onnxruntime(path):
    data = np.load(path.with_suffix(".npz"))
    report = onnx2flax.compare(path, {"x": data["x"]})
    assert report.ok, report.table()
    (got,) = onnx2flax.convert(path).run({"x": data["x"]})
    np.testing.assert_almost_equal(got, data["y"], decimal=5)


def test_cli_compare_and_inspect(capsys):
    from onnx2flax.cli import main

    path = str(next(p for p in FIXTURES if p.stem == "conv_bn_onnx2flax"))
    assert main(["inspect", path]) == 0
    assert "BatchNormalization" in capsys.readouterr().out
    assert main(["compare", path, "--per-node"]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "per node: all" in out


def test_cli_convert_writes_only_into_its_folder(tmp_path):
    from flax import serialization

    from onnx2flax.cli import main

    path = str(next(p for p in FIXTURES if p.stem == "tmodel_dynamo"))
    out = tmp_path / "out"
    assert main(["convert", path, "-o", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["model.py", "out", "summary.txt",
                                                          "weights.msgpack"]
    restored = serialization.msgpack_restore((out / "weights.msgpack").read_bytes())
    assert restored["params"]["conv"]["kernel"].shape == (2, 2, 3, 4)
    assert main(["convert", path, "-o", str(out)]) == 2  # exists: needs --force
    assert main(["convert", path, "-o", str(out), "--force"]) == 0
    assert main(["convert", path, "-o", str(out), "--force", "--api", "nnx"]) == 0
    assert "class Model(nnx.Module)" in (out / "model.py").read_text()
    assert "load_model()" in (out / "summary.txt").read_text()


def test_cli_export_then_compare(tmp_path, monkeypatch):
    """``onnx2flax export package.module:factory`` keeps names, then converts and matches."""
    from onnx2flax.cli import main

    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    out = tmp_path / "convbn.onnx"
    assert main(["export", "exporters.guide_models:ConvBnNet", "--input-shape", "2,3,8,8",
                 "-o", str(out), "--path", "."]) == 0
    variables = onnx2flax.convert(out).variables
    assert set(variables["batch_stats"]["bn"]) == {"mean", "var"}
    assert main(["compare", str(out)]) == 0


def test_cli_reports_unsupported_ops_in_one_error(tmp_path, capsys):
    import onnx
    from onnx import helper

    from onnx2flax.cli import main

    nodes = [helper.make_node("FancyOp", ["x"], ["a"], name="f1"),
             helper.make_node("FancyOp", ["a"], ["b"], name="f2"),
             helper.make_node("OtherOp", ["b"], ["y"], name="o1")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1])],
                              [helper.make_tensor_value_info("y", 1, [1])])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph), path)
    assert main(["convert", str(path), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "FancyOp: 2 node(s), first 'f1'" in err and "OtherOp: 1 node(s), first 'o1'" in err
    assert not (tmp_path / "o").exists()
