"""Real models (``exporters/zoo.py``) through both torch exporters, against onnxruntime.

Marked ``zoo``: excluded from the default run; ``bash scripts/zoo.sh`` runs them in a venv
with torchvision, timm and transformers. Exports are cached in ``$ONNX2FLAX_ZOO_CACHE``
(default ``.zoo_cache/``), keyed by the torch version and the exporter script's contents.

Each output must satisfy ``max|flax - ort| <= 1e-4 * max(1, max|ort|)``. A model using ops
onnx2flax does not convert yet is an expected failure naming them; anything else (a numeric
mismatch, a crash) fails, with the first diverging node when outputs mismatch. Every case
writes a JSON result that ``exporters/zoo_report.py`` turns into ``docs/models.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx2flax

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "exporters"))
import zoo  # noqa: E402

pytestmark = pytest.mark.zoo

CACHE = Path(os.environ.get("ONNX2FLAX_ZOO_CACHE", ROOT / ".zoo_cache"))
RESULTS = CACHE / "results"
_FAMILY_PACKAGES = {"torchvision": "torchvision", "timm": "timm", "transformers": "transformers"}


def _tolerance(reference: np.ndarray) -> float:
    return 1e-4 * max(1.0, float(np.max(np.abs(reference))) if reference.size else 0.0)


def _export_dir() -> Path:
    import torch

    digest = hashlib.sha256((ROOT / "exporters" / "zoo.py").read_bytes()).hexdigest()[:12]
    return CACHE / f"torch-{torch.__version__}-{digest}"


def _exported(name: str, exporter: str) -> tuple[Path, Path]:
    """The cached export of ``name``, made on first use."""
    out = _export_dir()
    onnx_path, npz_path = zoo.paths(out, name, exporter)
    if not (onnx_path.exists() and npz_path.exists()):
        zoo.export(name, out, exporter)
    return onnx_path, npz_path


def _ort(path: Path, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _record(name: str, exporter: str, **result) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"model": name, "family": zoo.MODELS[name].family, "exporter": exporter, **result}
    (RESULTS / f"{name}.{exporter}.json").write_text(json.dumps(result, indent=1))


@pytest.mark.parametrize("exporter", zoo.EXPORTERS)
@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_zoo_model_matches_onnxruntime(name, exporter):
    pytest.importorskip("torch")
    pytest.importorskip(_FAMILY_PACKAGES[zoo.MODELS[name].family])
    try:
        onnx_path, npz_path = _exported(name, exporter)
    except Exception as exc:  # the torch exporter's failure, not onnx2flax's
        detail = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
        _record(name, exporter, status="export-failed", detail=detail[:300])
        pytest.skip(f"torch.onnx.export ({exporter}) failed: {detail[:300]}")
    graph_inputs = {i.name for i in onnx.load(str(onnx_path), load_external_data=False).graph.input}
    feeds = {k: v for k, v in np.load(npz_path).items() if k in graph_inputs}

    start = time.perf_counter()
    try:
        converted = onnx2flax.convert(onnx_path)
        convert_s = time.perf_counter() - start
        got = converted.run(feeds)
    except onnx2flax.UnsupportedOpError as exc:
        ops = sorted(f"{d}::{op}" if d else op for d, op in exc.missing)
        _record(name, exporter, status="unsupported", missing_ops=ops, detail=str(exc)[:2000])
        pytest.xfail(str(exc))
    except Exception as exc:
        _record(name, exporter, status="error", detail=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    run_s = time.perf_counter() - start - convert_s
    want = _ort(onnx_path, feeds)

    outputs = []
    for spec, g, w in zip(converted.outputs, got, want):
        err = float(np.max(np.abs(g.astype(np.float64) - w))) if g.shape == w.shape else float("inf")
        outputs.append({"name": spec.name, "shape": list(w.shape), "max_abs_err": err,
                        "max_abs_ref": float(np.max(np.abs(w))) if w.size else 0.0,
                        "ok": bool(err <= _tolerance(w))})
    ok = len(got) == len(want) and all(o["ok"] for o in outputs)
    result = dict(status="pass" if ok else "mismatch", outputs=outputs,
                  max_abs_err=max(o["max_abs_err"] for o in outputs),
                  convert_s=round(convert_s, 2), first_run_s=round(run_s, 2))
    if not ok:
        report = onnx2flax.compare(onnx_path, feeds, per_node=True, rtol=1e-4, atol=1e-4)
        first = report.first_divergence
        result["first_divergence"] = None if first is None else {
            "node": first.node, "tensor": first.name, "max_abs_err": first.max_abs,
            "error": first.error}
    _record(name, exporter, **result)
    assert ok, json.dumps(result, indent=1)
