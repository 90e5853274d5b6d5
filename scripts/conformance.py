"""ONNX conformance: every official backend node test through onnx2flax and onnxruntime.

Writes ``docs/conformance.md`` (totals, per-op table, the reason for every failure) and
``tests/conformance_expected_failures.txt`` (the node tests ``tests/test_backend_node.py``
skips, each with its reason). Run from the repository root::

    PYTHONPATH=. .venv/bin/python scripts/conformance.py            # full run, writes both files
    PYTHONPATH=. .venv/bin/python scripts/conformance.py -k 'conv'  # a subset, prints only
    PYTHONPATH=. .venv/bin/python scripts/conformance.py --via run  # convert().run(), writes
                                                                    # docs/conformance_run.md

Both engines get the same cases and the same verdict: the onnx backend runner's own
comparison (``Runner.assert_similar_outputs``: shapes, dtypes, then
``np.testing.assert_allclose(rtol=1e-3, atol=1e-7)``, outputs in order). onnx2flax runs
through ``onnx2flax.backend`` exactly as the test module does, or (``--via run``) through
``onnx2flax.convert(model).run(feeds)``. Tests run in at most
``--jobs`` worker processes fed one test at a time; a test that exceeds ``--timeout``
seconds or kills its worker is recorded as a failure and the worker is restarted.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conformance_cases import EXPECTED_FAILURES, load_cases, op_of  # noqa: E402

DOC = ROOT / "docs" / "conformance.md"
DOC_RUN = ROOT / "docs" / "conformance_run.md"
KEEP_MARKER = "<!-- written by hand: scripts/conformance.py keeps everything below -->"
ENGINES = ("onnx2flax", "onnxruntime")

#: The ops issue 3 requires (their node tests must pass, or have a written reason).
REQUIRED_OPS = set("""
Abs Add And ArgMax ArgMin AveragePool BatchNormalization Cast CastLike Ceil Clip Concat Constant
ConstantOfShape Conv ConvTranspose Cos CumSum DepthToSpace Div Dropout Einsum Elu Equal Erf Exp
Expand Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalMaxPool
Greater GreaterOrEqual GroupNormalization HardSigmoid HardSwish Identity InstanceNormalization
IsInf IsNaN LRN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax MatMul Max MaxPool
Mean Min Mish Mod Mul Neg Not OneHot Or PRelu Pad Pow Range Reciprocal ReduceL2 ReduceLogSumExp
ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ScatterElements ScatterND Selu Shape Sigmoid Sign Sin Size Slice Softmax Softplus Softsign
SpaceToDepth Split Sqrt Squeeze Sub Sum Tanh Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
If Loop Scan LSTM GRU RNN NonZero NonMaxSuppression
""".split())


# ---------------------------------------------------------------- one test, one engine

class _Timeout(Exception):
    pass


def _first_line(text: str, limit: int = 200) -> str:
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[:limit - 3] + "..."


#: Reviewed explanations appended to failure reasons: (test-name regex, note).
NOTES = [
    (r"^test_training_dropout(_default)?(_mask)?$|^test_bernoulli|^test_random",
     "the output is random: no runtime reproduces the reference's NumPy draws"),
    (r"^test_resize_downsample_scales_(cubic|linear)_align_corners$",
     "onnxruntime computes the same output as onnx2flax: the spec's align_corners formula "
     "divides by (output length - 1) with the integer output length; the reference data "
     "divides by (input length * scale - 1)"),
    (r"^test_cast(like)?_FLOAT(16)?_to_U?INT[24](_expanded)?$",
     "the inputs run past the 2/4-bit range, where Cast's spec says float -> integer is "
     "undefined: onnx 1.23 computes this reference data at test time with ml_dtypes, whose "
     "0.7 casts give 0 there; onnx2flax wraps (keeps the low bits, as onnx 1.19's stored "
     "data); in range both truncate toward zero; onnxruntime cannot run these tests"),
    (r"^test_loop16_seq_none$",
     "onnx2flax's sequence equals the reference element for element; the onnx runner's "
     "comparison raises TypeError on a sequence whose first element is 0-d (onnxruntime "
     "fails it the same way)"),
]


def _with_note(name: str, reason: str) -> str:
    notes = [note for pattern, note in NOTES if re.search(pattern, name)]
    return "; ".join([reason, *notes]) if reason else reason


def _error(exc: Exception) -> str:
    missing = getattr(exc, "missing", None)
    if missing:  # onnx2flax's UnsupportedOpError: the message's first line lists no op
        ops = ", ".join(f"{d}::{op}" if d else op for d, op in sorted(missing))
        return f"{type(exc).__name__}: no handler for {ops}"
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _mismatch(expected: list, got: list) -> str:
    """Why ``got`` fails the runner's comparison, in one line."""
    import numpy as np

    if len(got) != len(expected):
        return f"wrong number of outputs: {len(got)}, expected {len(expected)}"
    for i, (e, g) in enumerate(zip(expected, got)):
        if isinstance(e, (list, tuple)) or isinstance(g, (list, tuple)) or e is None or g is None:
            return f"output {i}: sequence/optional output differs"
        g = np.asarray(g)
        if g.shape != e.shape:
            return f"output {i}: shape {list(g.shape)}, expected {list(e.shape)}"
        if g.dtype != e.dtype:
            return f"output {i}: dtype {g.dtype}, expected {e.dtype}"
        if e.dtype == object:
            if not np.array_equal(g, e):
                return f"output {i}: string values differ"
            continue
        e64, g64 = e.astype(np.float64), g.astype(np.float64)
        if not np.array_equal(np.isnan(e64), np.isnan(g64)):
            return f"numerical mismatch: output {i} has NaNs in other places"
        finite = np.isfinite(e64) & np.isfinite(g64)
        if not np.array_equal(e64[~finite], g64[~finite]):
            return f"numerical mismatch: output {i} has infinities in other places"
        if finite.any():
            err = np.abs(e64 - g64)[finite]
            if err.max() > 0:
                return f"numerical mismatch: output {i} max abs err {err.max():.3g}"
    return "outputs differ"


def _run_engine(engine: str, case, channels_last: bool | None, via: str) -> tuple[list, bool]:
    """The outputs of every data set, and whether the whole model was folded at conversion
    time (onnx2flax evaluates all-constant nodes with onnx's reference evaluator).
    ``via``: ``'backend'`` (``onnx2flax.backend``) or ``'run'`` (``convert(model).run``)."""
    names = [i.name for i in case.model.graph.input]
    if engine == "onnx2flax":
        import onnx2flax
        from onnx2flax.backend import OnnxFlaxBackend

        kwargs = {} if channels_last is None else {"channels_last": channels_last}
        if via == "run":
            converted = onnx2flax.convert(case.model, **kwargs)
            outputs = [converted.run(dict(zip(names, inputs))) for inputs, _ in _data_sets(case)]
        else:
            rep = OnnxFlaxBackend.prepare(case.model, "CPU", **kwargs)
            outputs = [list(rep.run(inputs)) for inputs, _ in _data_sets(case)]
            converted = rep.converted
        models = converted._specializations.values() if converted.specialized_inputs \
            else [converted]
        return outputs, all(not c._program.graph.nodes for c in models)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(case.model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
    # onnxruntime's Python API wants arrays where the suite sometimes has NumPy scalars.
    return [sess.run(None, {n: _as_array(x) for n, x in zip(names, inputs)})
            for inputs, _ in _data_sets(case)], False


def _as_array(x):
    import numpy as np

    return np.asarray(x) if isinstance(x, np.generic) else x


def _data_sets(case):
    from onnx.backend.test.runner import _normalize_tensor

    for inputs, outputs in case.data_sets:
        yield [_normalize_tensor(x) for x in inputs], [_normalize_tensor(y) for y in outputs]


def run_test(engine: str, case, timeout: float, channels_last: bool | None,
             via: str = "backend") -> dict:
    """``{"ok", "reason", "folded", "seconds"}`` for one engine on one test."""
    name = case.name
    from onnx.backend.test.runner import Runner

    start = time.perf_counter()
    folded = False
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        results, folded = _run_engine(engine, case, channels_last, via)
        reason = ""
        for got, (_, expected) in zip(results, _data_sets(case)):
            try:
                Runner.assert_similar_outputs(expected, got, rtol=case.rtol, atol=case.atol)
            except Exception:  # noqa: BLE001 (any failure of the comparison is a verdict)
                reason = _mismatch(expected, got)
                break
    except _Timeout:
        reason = f"timeout: more than {timeout:g} s"
    except Exception as exc:  # noqa: BLE001 (the failure is the result)
        reason = _error(exc)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return {"ok": not reason, "reason": _with_note(name, reason), "folded": folded and not reason,
            "seconds": round(time.perf_counter() - start, 3)}


def worker(engines: list[str], timeout: float, channels_last: bool | None, via: str) -> None:
    """Read test names on stdin, write one JSON line per (test, engine) on the real stdout."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints from libraries go to stderr, not into the protocol
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    def alarm(*_):
        raise _Timeout

    signal.signal(signal.SIGALRM, alarm)
    import jax

    cases = load_cases()
    out.write("READY\n")
    done = 0
    for line in sys.stdin:
        name = line.strip()
        for engine in engines:
            result = run_test(engine, cases[name], timeout, channels_last, via)
            out.write(json.dumps({"name": name, "engine": engine, **result}) + "\n")
        done += 1
        if done % 50 == 0:
            jax.clear_caches()


# ---------------------------------------------------------------- parent: scheduling

def _worker_command(args) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--timeout",
           str(args.timeout), "--engines", ",".join(args.engines), "--via", args.via]
    if args.channels_last is not None:
        cmd += ["--channels-last", str(int(args.channels_last))]
    return cmd


def _slot(args, todo: queue.Queue, results: dict, lock: threading.Lock, progress) -> None:
    """Feed tests one at a time to a worker; restart it after a hang or crash."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = None
    while True:
        try:
            name = todo.get_nowait()
        except queue.Empty:
            break
        if proc is None:
            proc = subprocess.Popen(_worker_command(args), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    text=True, env=env, cwd=ROOT)
            if _read_line(proc, 300) != "READY":
                proc.kill()
                raise RuntimeError("a conformance worker failed to start")
        proc.stdin.write(name + "\n")
        proc.stdin.flush()
        got = {}
        while len(got) < len(args.engines):
            line = _read_line(proc, args.timeout + 60)
            if not line:
                code = proc.poll()
                why = ("timeout: the worker hung" if code in (None, -signal.SIGKILL)
                       else f"crash: the worker died (exit code {code})")
                for engine in args.engines:
                    got.setdefault(engine, {"ok": False, "reason": why, "folded": False,
                                            "seconds": None})
                proc.kill()
                proc.wait()
                proc = None
                break
            record = json.loads(line)
            got[record.pop("engine")] = {k: v for k, v in record.items() if k != "name"}
        with lock:
            results[name] = got
            progress(name, got)
    if proc is not None:
        proc.stdin.close()
        proc.wait()


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    """One line from the worker, or '' when it dies or stays silent for ``timeout`` s."""
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        return proc.stdout.readline().strip()
    finally:
        timer.cancel()


def run_all(args, names: list[str]) -> dict:
    todo: queue.Queue = queue.Queue()
    for name in names:
        todo.put(name)
    results: dict = {}
    lock = threading.Lock()
    start = time.time()

    def progress(name, got):
        n = len(results)
        if n % 50 == 0 or n == len(names) or not args.quiet:
            passed = {e: sum(r[e]["ok"] for r in results.values()) for e in args.engines}
            print(f"[{n}/{len(names)} {time.time() - start:.0f}s] {passed}", flush=True)

    threads = [threading.Thread(target=_slot, args=(args, todo, results, lock, progress))
               for _ in range(max(1, min(args.jobs, len(names))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# ---------------------------------------------------------------- reports

def _versions() -> dict[str, str]:
    import flax
    import jax
    import numpy
    import onnx
    import onnxruntime

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"onnx2flax": f"git {commit}", "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "jax": jax.__version__,
            "flax": flax.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _folded(results: dict, names=None) -> int:
    return sum(results[n]["onnx2flax"].get("folded", False) for n in (names or results))


def write_doc(args, results: dict, ops: dict[str, str], seconds: float) -> str:
    by_op: dict[str, list[str]] = collections.defaultdict(list)
    for name in results:
        by_op[ops[name]].append(name)
    total = len(results)
    passed = {e: sum(r[e]["ok"] for r in results.values()) for e in ENGINES}
    required = [n for n in results if ops[n] in REQUIRED_OPS]
    req_passed = {e: sum(results[n][e]["ok"] for n in required) for e in ENGINES}
    versions = _versions()
    busy = sum(args.timeout if r["onnx2flax"]["seconds"] is None else r["onnx2flax"]["seconds"]
               for r in results.values())
    layout = {None: "default (channels_last=True)", True: "channels_last=True",
              False: "channels_last=False"}[args.channels_last]
    via_run = args.via == "run"
    lines = [
        "# ONNX conformance" + (" through `convert(model).run(feeds)`" if via_run else ""),
        "",
        "Every official ONNX backend node test (`onnx.backend.test`, the models and reference",
        "outputs that ship with the installed `onnx`), run through "
        + ("the public API, `onnx2flax.convert(model).run(feeds)` (what a user calls),"
           if via_run else "`onnx2flax.backend`") + " and",
        "through onnxruntime (CPU) in the same harness, with the onnx runner's own comparison",
        "(shapes, dtypes, then `assert_allclose(rtol=1e-3, atol=1e-7)`, outputs in order).",
        "Expanded tests (`*_expanded*`: the op's function body) count for the op they expand.",
        "",
        "Regenerate (from the repository root; about "
        f"{max(1, round(seconds / 60))} min with {args.jobs} processes here):",
        "",
        "    PYTHONPATH=. .venv/bin/python scripts/conformance.py"
        + (" --via run" if via_run else ""),
        "",
        *(["It rewrites this file only. The same suite through `onnx2flax.backend` (which also",
           "computes ops of data-dependent output size exactly on run-time inputs, as the backend",
           "contract asks; `run` wants a `bounds=` for those) is in",
           "[conformance.md](conformance.md)."] if via_run else [
          "It rewrites this file and `tests/conformance_expected_failures.txt`, the node tests",
          "`tests/test_backend_node.py` skips (each with its reason). Review the diff of both.",
          "`--via run` measures the public API instead, `convert(model).run(feeds)`: see",
          "[conformance_run.md](conformance_run.md)."]),
        "`-k REGEX` runs a subset and only prints; `--jobs`, `--timeout`, `--via backend/run`",
        "and `--channels-last 0/1` are in `--help`.",
        "",
        "## Totals",
        "",
        f"- Run on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, {seconds:.0f} s "
        f"wall; onnx2flax layout: {layout}.",
        f"- onnx2flax time summed over tests (conversion, compilation, run): {busy:.0f} s, about",
        "  what `pytest -m conformance tests/test_backend_node.py` takes in one process.",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        "| | node tests | onnx2flax passes | of which folded | onnxruntime passes |",
        "|---|---:|---:|---:|---:|",
        f"| all | {total} | {passed['onnx2flax']} | {_folded(results)} | "
        f"{passed['onnxruntime']} |",
        f"| ops listed in issue 3 | {len(required)} | {req_passed['onnx2flax']} | "
        f"{_folded(results, required)} | {req_passed['onnxruntime']} |",
        "",
        "*Folded*: every node of the model was evaluated at conversion time, as onnx2flax does",
        "for any node whose inputs are all constant (with onnx's reference evaluator), because",
        "the test feeds only values onnx2flax needs statically (shapes, axes, Range bounds...;",
        "`run` specializes on those inputs: it converts the model for the values given).",
        "",
        "## Per op",
        "",
        "`*`: an op issue 3 requires. Cases include expanded tests.",
        "",
        "| op | cases | onnx2flax passed | of which folded | onnx2flax failed | "
        "onnxruntime passed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for op in sorted(by_op, key=str.lower):
        names = by_op[op]
        ok = sum(results[n]["onnx2flax"]["ok"] for n in names)
        ort_ok = sum(results[n]["onnxruntime"]["ok"] for n in names)
        mark = " *" if op in REQUIRED_OPS else ""
        lines.append(f"| {op}{mark} | {len(names)} | {ok} | {_folded(results, names)} | "
                     f"{len(names) - ok} | {ort_ok} |")
    for engine in ENGINES:
        failed = [n for n in results if not results[n][engine]["ok"]]
        lines += ["", f"## {engine} failures ({len(failed)})", "",
                  "| test | op | reason |", "|---|---|---|"]
        lines += [f"| {n} | {ops[n]} | {_cell(results[n][engine]['reason'])} |"
                  for n in sorted(failed)]
    text = "\n".join(lines) + "\n"
    doc = DOC_RUN if via_run else DOC
    # The sections after KEEP_MARKER (contrib domains, checked by their own tests) are kept.
    old = doc.read_text() if doc.exists() else ""
    if KEEP_MARKER in old:
        text += "\n" + KEEP_MARKER + old.split(KEEP_MARKER, 1)[1]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    return text


def write_expected(results: dict, ops: dict[str, str]) -> None:
    failed = sorted(n for n in results if not results[n]["onnx2flax"]["ok"])
    width = max((len(n) for n in failed), default=0)
    header = [
        "# Node tests (onnx.backend.test) onnx2flax is known to fail, with the reason.",
        "# tests/test_backend_node.py skips these. Generated by scripts/conformance.py (which",
        "# also writes docs/conformance.md); regenerate after adding ops and review the diff.",
        "# Format: test name (without the _cpu/_cuda suffix), then '# op: reason'.",
    ]
    body = [f"{n.ljust(width)}  # {ops[n]}: {results[n]['onnx2flax']['reason']}" for n in failed]
    EXPECTED_FAILURES.write_text("\n".join(header + body) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", "--filter", help="only tests whose name matches this regex "
                        "(prints results; writes no files)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--timeout", type=float, default=120,
                        help="seconds per test and engine (default 120)")
    parser.add_argument("--channels-last", type=int, choices=(0, 1), default=None,
                        help="convert with channels_last=0/1 (default: convert's default)")
    parser.add_argument("--via", choices=("backend", "run"), default="backend",
                        help="onnx2flax through onnx2flax.backend (default; writes "
                        "docs/conformance.md and the expected failures) or through the public "
                        "API, convert(model).run(feeds) (writes docs/conformance_run.md)")
    parser.add_argument("--engines", default=",".join(ENGINES), help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-q", "--quiet", action="store_true", help="less progress output")
    args = parser.parse_args(argv)
    args.engines = args.engines.split(",")
    args.channels_last = None if args.channels_last is None else bool(args.channels_last)
    if args.worker:
        worker(args.engines, args.timeout, args.channels_last, args.via)
        return 0
    if not args.filter and args.engines != list(ENGINES):
        parser.error("--engines needs -k (the full report compares both engines)")
    cases = load_cases()
    names = [n for n in cases if not args.filter or re.search(args.filter, n)]
    ops = {n: op_of(n) for n in names}
    start = time.time()
    results = run_all(args, names)
    seconds = time.time() - start
    if args.filter:
        for name in sorted(results):
            row = "  ".join(f"{e}: {'ok' if r['ok'] else r['reason']}"
                            for e, r in results[name].items())
            print(f"{name} [{ops[name]}]  {row}")
        passed = {e: sum(r[e]["ok"] for r in results.values()) for e in args.engines}
        print(f"{len(results)} tests, passed: {passed}, {seconds:.0f} s")
        return 0
    write_doc(args, results, ops, seconds)
    written = [DOC_RUN] if args.via == "run" else [DOC, EXPECTED_FAILURES]
    if args.via != "run":
        write_expected(results, ops)
    passed = {e: sum(r[e]["ok"] for r in results.values()) for e in ENGINES}
    print(f"{len(results)} tests, passed: {passed}, {seconds:.0f} s; wrote "
          + " and ".join(str(p.relative_to(ROOT)) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
