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
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out", "summary.txt", "variables.msgpack"]
    restored = serialization.msgpack_restore((out / "variables.msgpack").read_bytes())
    assert restored["params"]["conv"]["kernel"].shape == (2, 2, 3, 4)
    assert main(["convert", path, "-o", str(out)]) == 2  # exists: needs --force
    assert main(["convert", path, "-o", str(out), "--force"]) == 0
