"""Benchmark onnx2flax against onnxruntime, torch eager and hand-written Flax.

    python benchmarks/run.py            # every model (slow: minutes)
    python benchmarks/run.py --quick    # ResNet-50 at batch 1, few repetitions

For each model: conversion time (no jit) and peak memory during conversion (in a fresh
process, RSS above the baseline, against the weights' size); then, for every engine, the
first call (trace + compile + run) and the steady-state latency, with the engines'
repetitions interleaved (noisy machines: the ratios are the figures that count); and the
number of ``transpose`` ops in the compiled HLO of the converted and hand-written models,
and whether their optimized HLO is the same program (``canonical_hlo``): when it is, any
latency ratio away from 1.00 is the machine's noise, not overhead of the converter.
A model with an op onnx2flax cannot convert yet gets an ``unsupported: ...`` row.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent))  # an onnx2flax on PYTHONPATH (or installed) comes first

import jax  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

import flax_models  # noqa: E402
import models  # noqa: E402
import onnx2flax  # noqa: E402


@dataclass
class Spec:
    name: str
    make_torch: object
    inputs: object  # batch -> list of NumPy arrays in ONNX layout
    make_flax: object = None  # hand-written channels-last module, or None
    image: bool = True
    batches: tuple = (1,)


def _image(batch):
    return [np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)]


def _tokens(batch):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 30522, (batch, 128)).astype(np.int64),
            np.ones((batch, 128), np.int64)]


SPECS = {
    "resnet50": Spec("ResNet-50", models.ResNet50, _image, flax_models.ResNet50, batches=(1, 8)),
    "mobilenetv3": Spec("MobileNetV3-Small", models.MobileNetV3Small, _image,
                        flax_models.MobileNetV3Small),
    "vit_b16": Spec("ViT-B/16", models.ViTB16, _image, flax_models.ViTB16),
    "bert_base": Spec("BERT-base (seq 128)", models.BertBase, _tokens, flax_models.BertBase,
                      image=False),
}


def export(spec: Spec, key: str, cache: Path) -> Path:
    """Export the seeded torch model once (cached); dynamic batch, names and BatchNorm kept."""
    path = cache / f"{key}.onnx"
    if path.exists():
        return path
    torch.manual_seed(0)
    model = models.randomize_norms(spec.make_torch())
    args = tuple(torch.from_numpy(a) for a in spec.inputs(2))
    cache.mkdir(parents=True, exist_ok=True)
    if hasattr(onnx2flax, "export"):
        onnx2flax.export(model, args, path)
    else:
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.onnx.export(model, args, str(path), dynamo=True, optimize=False,
                          dynamic_shapes=tuple({0: batch} for _ in args), external_data=False)
    torch.save(model.state_dict(), cache / f"{key}.pt")
    return path


def measure_convert_memory(path: Path) -> dict:
    """Peak RSS increase while converting, in a fresh process (Linux: the peak is reset
    just before converting)."""
    code = (
        "import json, sys, jax, onnx2flax\n"
        "jax.numpy.zeros(1).block_until_ready()\n"
        "onnx2flax.convert  # the package imports lazily (PEP 562): import it first, as jax\n"
        "def status(key):\n"
        "    line = [l for l in open('/proc/self/status') if l.startswith(key)][0]\n"
        "    return int(line.split()[1]) * 1024\n"
        "open('/proc/self/clear_refs', 'w').write('5')  # peak RSS := current RSS\n"
        "base = status('VmRSS')\n"
        "onnx2flax.convert(sys.argv[1])\n"
        "print(json.dumps({'peak': status('VmHWM') - base}))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [p for p in (os.environ.get("PYTHONPATH"), str(HERE.parent)) if p]))
    proc = subprocess.run([sys.executable, "-c", code, str(path.resolve())], cwd=HERE,
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        print(f"conversion-memory run failed: {proc.stderr.strip()[-300:]}", file=sys.stderr)
        return {"peak": float("nan")}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def weights_bytes(path: Path) -> int:
    model = onnx.load(str(path))
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def compiled_hlo(fn, *args) -> str:
    """The optimized HLO text of ``jax.jit(fn)`` on ``args``."""
    return jax.jit(fn).lower(*args).compile().as_text()


def count_transposes(hlo: str) -> int:
    return len(re.findall(r"=\s*\S+\s+transpose\(", hlo))


def canonical_hlo(hlo: str) -> str:
    """``hlo`` without what does not change the computation: module and instruction names
    (renumbered in order of first use), metadata, the debug tables of source files and stack
    frames; scalar constants are written at their uses, so the order in which XLA happened
    to declare them does not matter. Two programs with equal canonical text are the same
    program."""
    hlo = re.sub(r"\n\n(FileNames|FunctionNames|FileLocations|StackFrames)\n.*?(?=\n\n)", "",
                 hlo, flags=re.S)
    hlo = re.sub(r",?\s*(metadata=\{[^}]*\}|stack_frame_id=\d+)", "", hlo)
    hlo = re.sub(r"^HloModule \S+", "HloModule m", hlo, flags=re.M)
    constants = dict(re.findall(r"^\s*(%\S+) = (\S+\[\] constant\([^)]*\))$", hlo, flags=re.M))
    hlo = re.sub(r"^\s*%\S+ = \S+\[\] constant\([^)]*\)\n", "", hlo, flags=re.M)
    names: dict[str, str] = {}

    def rename(match):
        token = match.group(0)
        return constants.get(token) or names.setdefault(token, f"%v{len(names)}")
    return re.sub(r"%[\w.\-]+|\b[A-Za-z_][\w\-]*\.\d+\b", rename, hlo)


@dataclass
class Engine:
    name: str
    make: object  # () -> callable(*inputs) (fresh: includes trace/compile on first call)
    inputs: list
    first: list = field(default_factory=list)
    steady: list = field(default_factory=list)
    transposes: int | None = None
    hlo: str | None = None


def _block(out):
    return jax.block_until_ready(out) if not isinstance(out, (list, torch.Tensor)) else out


def _jax_engine(name, module, variables, inputs):
    def make():
        jax.clear_caches()
        fn = jax.jit(module.apply)
        return lambda *x: fn(variables, *x)
    engine = Engine(name, make, inputs)
    engine.hlo = canonical_hlo(hlo := compiled_hlo(module.apply, variables, *inputs))
    engine.transposes = count_transposes(hlo)
    return engine


def run_model(key: str, spec: Spec, batch: int, args, cache: Path) -> list[str]:
    path = export(spec, key, cache)
    label = f"{spec.name} b{batch}"
    times, cpu = [], []
    try:
        for _ in range(args.convert_reps):
            gc.collect()
            t, c = time.perf_counter(), time.process_time()
            converted = onnx2flax.convert(path)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    except onnx2flax.OnnxConversionError as exc:
        return [f"| {label} | unsupported: {str(exc).splitlines()[0][:90]} "
                + "| " * 8]
    memory = measure_convert_memory(path)["peak"] if args.memory else float("nan")
    wbytes = weights_bytes(path)
    onnx_inputs = spec.inputs(batch)
    layout = [np.moveaxis(a, 1, -1) if spec.image else a for a in onnx_inputs]
    folded = onnx2flax.convert(path, fold_batchnorm=True)

    engines = [_jax_engine("onnx2flax", converted.module, converted.variables, layout),
               _jax_engine("onnx2flax fold_bn", folded.module, folded.variables, layout)]
    if spec.make_flax is not None:
        hand = spec.make_flax()
        engines.append(_jax_engine("hand-written Flax", hand, converted.variables, layout))
    sess_opts = ort.SessionOptions()
    names = [s.name for s in converted.inputs]
    engines.append(Engine("onnxruntime", lambda: (lambda s: lambda *x: s.run(
        None, dict(zip(names, x))))(ort.InferenceSession(str(path), sess_opts,
                                                         providers=["CPUExecutionProvider"])),
        onnx_inputs))
    torch.manual_seed(0)
    tmodel = spec.make_torch()
    tmodel.load_state_dict(torch.load(cache / f"{key}.pt"))
    tmodel.eval()

    def make_torch():
        def call(*x):
            with torch.no_grad():
                return tmodel(*[torch.from_numpy(a) for a in x])
        return call
    engines.append(Engine("torch eager", make_torch, onnx_inputs))

    # correctness of what is timed
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, dict(zip(names, onnx_inputs)))[0]
    errors = {}
    for e in engines[:-2]:
        out = e.make()(*e.inputs)
        out = np.asarray(out[0] if isinstance(out, tuple) else out)
        out = np.moveaxis(out, -1, 1) if out.ndim == 4 else out
        errors[e.name] = float(np.abs(out - ref).max() / max(1.0, np.abs(ref).max()))

    callers = {}
    # the engines' order rotates every round: an engine run right after torch would pay
    # for torch's OpenMP threads still spinning
    def rotated(r):
        return engines[r % len(engines):] + engines[:r % len(engines)]

    for r in range(args.first_reps):
        for e in rotated(r):
            t = time.perf_counter()
            fn = e.make()
            _block(fn(*e.inputs))
            e.first.append(time.perf_counter() - t)
            callers[e.name] = fn
    for r in range(args.reps):
        for e in rotated(r):
            fn = callers[e.name]
            t = time.perf_counter()
            _block(fn(*e.inputs))
            e.steady.append(time.perf_counter() - t)

    hand = next((e for e in engines if e.name == "hand-written Flax"), None)
    rows = []
    for e in engines:
        lat = statistics.median(e.steady)
        first = statistics.median(e.first)
        ratio = f"{lat / statistics.median(hand.steady):.2f}" if hand else ""
        cratio = f"{first / statistics.median(hand.first):.2f}" if hand else ""
        conv = (f"{statistics.median(times):.2f} (cpu {statistics.median(cpu):.2f})"
                if e.name == "onnx2flax" else "")
        mem = (f"{memory / 2**20:.0f} / {wbytes / 2**20:.0f} ({memory / wbytes:.2f}x)"
               if e.name == "onnx2flax" and memory == memory else "")
        err = f"{errors[e.name]:.1e}" if e.name in errors else ""
        same = ("yes" if e.hlo == hand.hlo else "no") if hand and e.hlo and e is not hand else ""
        rows.append(f"| {label} | {e.name} | {conv} | {mem} | {first:.2f} | {cratio} | "
                    f"{lat * 1e3:.1f} | {ratio} | {same} | "
                    f"{'' if e.transposes is None else e.transposes} | {err} |")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="ResNet-50 at batch 1 only, few repetitions (a smoke run)")
    parser.add_argument("--models", default=",".join(SPECS), help="comma-separated: "
                        + ", ".join(SPECS))
    parser.add_argument("--reps", type=int, default=10, help="steady-state calls per engine")
    parser.add_argument("--first-reps", type=int, default=2, help="fresh compiles per engine")
    parser.add_argument("--convert-reps", type=int, default=3)
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the conversion-memory subprocess")
    parser.add_argument("--cache", type=Path, default=HERE / ".cache",
                        help="where exported ONNX files are kept")
    args = parser.parse_args(argv)
    keys = args.models.split(",")
    if args.quick:
        keys, args.reps, args.first_reps, args.convert_reps = ["resnet50"], 3, 1, 1
    print(f"# onnx2flax benchmarks: jax {jax.__version__} ({jax.devices()[0].platform}), "
          f"onnxruntime {ort.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| model | engine | convert s | convert peak MB / weights MB | first call s | "
          "vs hand | latency ms | vs hand | same program as hand | transposes | "
          "max err vs ORT |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key in keys:
        spec = SPECS[key]
        for batch in (spec.batches[:1] if args.quick else spec.batches):
            for row in run_model(key, spec, batch, args, args.cache):
                print(row, flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\n(benchmark process peak RSS {peak:.1f} GB)")


if __name__ == "__main__":
    main()
