"""Generated source against hand-written Flax: code lines and classes.

For ResNet-50 (torchvision's architecture, ``models.ResNet50``) and a BERT-base encoder
(``models.BertBase``), exported with a dynamic batch through ``onnx2flax.export``, prints
the code lines (not blank, not a comment, not a docstring) and the classes of the source
``onnx2flax.codegen.generate`` writes, beside those of the hand-written Flax models of
``flax_models.py``; and checks that the source runs at two batch sizes against
onnxruntime (the max error relative to max |output|)::

    JAX_PLATFORMS=cpu PYTHONPATH=. .venv/bin/python benchmarks/codegen_lines.py
"""

from __future__ import annotations

import ast
import inspect
import sys
import tempfile
import time
import types
from pathlib import Path

import jax
import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flax_models  # noqa: E402
import models  # noqa: E402

import onnx2flax  # noqa: E402
from onnx2flax import codegen  # noqa: E402
from onnx2flax._core import boundary  # noqa: E402


def code_lines(source: str) -> int:
    """Lines holding code: not blank, not comments, not docstrings."""
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                getattr(body[0], "value", None), ast.Constant) and isinstance(
                body[0].value.value, str):
            docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    return sum(1 for k, line in enumerate(source.splitlines(), 1)
               if line.strip() and not line.strip().startswith("#") and k not in docstrings)


def classes(source: str) -> list[str]:
    return [n.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef)]


def hand_written(names: list[str]) -> str:
    return "\n".join(inspect.getsource(getattr(flax_models, n)) for n in names)


CASES = {
    "ResNet-50": (models.ResNet50, lambda b: [np.random.default_rng(0).standard_normal(
        (b, 3, 224, 224)).astype(np.float32)],
        ["_bn", "_conv", "Downsample", "Bottleneck", "Stage", "ResNet50"]),
    "BERT-base (seq 128)": (models.BertBase, lambda b: [
        np.random.default_rng(0).integers(0, 30522, (b, 128)).astype(np.int64),
        np.ones((b, 128), np.int64)],
        ["_dense", "_gelu", "Attention", "PostNormBlock", "BertBase"]),
}


def main() -> None:
    ort.set_default_logger_severity(3)  # its notes on CastLike folding
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, (make, inputs, flax_names) in CASES.items():
            torch.manual_seed(0)
            model = models.randomize_norms(make())
            path = Path(tmp) / "model.onnx"
            onnx2flax.export(model, tuple(torch.from_numpy(a) for a in inputs(2)), path)
            converted = onnx2flax.convert(path)
            start = time.perf_counter()
            source = codegen.generate(converted)
            seconds = time.perf_counter() - start
            module = types.ModuleType("generated")
            sys.modules["generated"] = module
            exec(compile(source, "<generated>", "exec"), module.__dict__)
            session = ort.InferenceSession(str(path))
            errors = []
            for batch in (1, 3):
                feeds = dict(zip([s.name for s in converted.inputs], inputs(batch)))
                expected = session.run(None, feeds)
                xs = [boundary.to_module(feeds[s.name], s) for s in converted.inputs]
                outs = jax.jit(module.Model().apply)(converted.variables, *xs)
                outs = outs if isinstance(outs, tuple) else (outs,)
                errors.append(max(
                    float(np.max(np.abs(np.asarray(boundary.to_onnx(o, s)) - e))
                          / np.max(np.abs(e))) for s, o, e in zip(converted.outputs, outs,
                                                                  expected)))
            hand = hand_written(flax_names)
            rows.append((label, code_lines(source), len(classes(source)),
                         code_lines(hand), len(classes(hand)), seconds, errors))
    print("| model | generated code lines | generated classes | hand-written code lines | "
          "hand-written classes | generate s | max rel err, batch 1 / 3 |")
    print("|---|---|---|---|---|---|---|")
    for label, lines, n_classes, hand_lines, hand_classes, seconds, errors in rows:
        print(f"| {label} | {lines} | {n_classes} | {hand_lines} | {hand_classes} | "
              f"{seconds:.1f} | {errors[0]:.1e} / {errors[1]:.1e} |")


if __name__ == "__main__":
    main()
