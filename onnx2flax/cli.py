"""The ``onnx2flax`` command: convert, compare, inspect, export.

Only the standard library is imported until a command runs (``--help`` and ``--version``
never import jax, flax, onnx or torch). Exit codes: 0 success, 1 a mismatch (``compare``)
or an unsupported op (``inspect``), 2 any error (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from . import __version__
from ._core.limits import Limits, charging
from ._core.progress import say
from .errors import InvalidInputError, OnnxConversionError


def _cmd_convert(args) -> int:
    from . import codegen
    from ._core.files import output_dir, write_file
    from ._inspect import summarize

    feeds = _load_feeds(args.feeds)
    converted = _convert(args)
    frozen = [] if feeds is None else [n for n in converted.specialized_inputs if n in feeds]
    if frozen:  # generated for the values --feeds gives the inputs deciding shapes
        converted = converted.specialized(feeds)
        say(f"input(s) {frozen} decide shapes, axes or branches: generating for their values "
            f"in --feeds")
    say(f"converted; writing {args.output} (tracing the model)")
    inputs = None if feeds is None else _module_inputs(converted, feeds)
    # the outputs' layouts, traced at the feeds' shapes when given, else as the source is
    # (the open dims symbolic)
    outputs = codegen._output_specs(converted, inputs)
    # Everything that traces comes before the first write: a failure leaves no DIR behind.
    summary = (f"{summarize(args.model).text()}\nlayout at the module boundary:\n" + "\n".join(
        f"  {s.name}: {'channels-last' if s.channels_last else 'ONNX order'}"
        for s in converted.inputs + outputs) + "".join(
        f"\ninput {n} frozen to its --feeds value {feeds[n].tolist()}" for n in frozen)
        + f"\n{_USAGE[args.api]}\n")
    written = codegen.save(converted, args.output, force=args.force, api=args.api, inputs=inputs)
    written.append(write_file(output_dir(args.output), "summary.txt", summary, force=args.force))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _module_inputs(converted, feeds: dict) -> list:
    """Stand-ins for ``codegen.save(inputs=)``: the shapes and dtypes of ``feeds`` (ONNX
    layout) as the module takes them (image inputs channels-last)."""
    from dataclasses import replace

    import jax

    from ._core.boundary import module_shape

    missing = [s.name for s in converted.inputs if s.name not in feeds]
    if missing:
        raise InvalidInputError(f"--feeds lacks input(s) {missing}; the model's inputs are "
                                f"{[s.name for s in converted.inputs]}")
    return [jax.ShapeDtypeStruct(module_shape(replace(s, shape=feeds[s.name].shape)),
                                 feeds[s.name].dtype) for s in converted.inputs]


_USAGE = {"linen": "use: from model import Model, load_variables; "
                   "Model().apply(load_variables(), *inputs)",
          "nnx": "use: from model import load_model; load_model()(*inputs)"}


def _convert(args):
    """``convert`` with the command's shape, constant and bound flags."""
    from .converter import convert

    start = time.perf_counter()
    say(f"converting {args.model}")
    converted = convert(args.model, channels_last=not args.channels_first,
                        bounds=dict(args.bound or ()), **_shape_options(args))
    say(f"converted in {time.perf_counter() - start:.2f} s")
    return converted


def _shape_options(args) -> dict:
    """``input_shapes`` / ``constants`` for ``convert``, only when given (``--feeds`` need
    neither: ``run`` and ``codegen.save(inputs=)`` take their shapes)."""
    options = {}
    if args.input_shape:
        options["input_shapes"] = dict(args.input_shape)
    if args.const:
        options["constants"] = dict(args.const)
    return options


def _cmd_compare(args) -> int:
    from ._compare import compare

    feeds = _load_feeds(args.feeds)
    say(f"comparing {args.model} with onnxruntime")
    options = _shape_options(args)
    report = compare(args.model, feeds, rtol=args.rtol, atol=args.atol, seed=args.seed,
                     per_node=args.per_node, top=args.top, bounds=dict(args.bound or ()),
                     progress=say, **options)
    print(report.json() if args.json else report.table())
    return 0 if report.ok else 1


def _cmd_inspect(args) -> int:
    from dataclasses import replace

    from ._inspect import summarize

    summary = summarize(args.model)
    given = {name: tuple(v.shape) for name, v in (_load_feeds(args.feeds) or {}).items()}
    given.update(dict(args.input_shape or ()))
    consts = dict(args.const or ())
    names = [s.name for s in summary.inputs]
    unknown = sorted((set(given) | set(consts)) - set(names))
    if unknown:
        raise InvalidInputError(f"--input-shape / --feeds / --const name(s) {unknown} are not "
                                f"inputs of the model; its inputs are {names}")
    summary.inputs = [replace(s, shape=given.get(s.name, s.shape)) for s in summary.inputs
                      if s.name not in consts]
    summary.deciding = [n for n in summary.deciding if n not in consts]
    print(summary.text())
    for name, value in consts.items():
        print(f"constant input {name} = {value.tolist()}")
    return 0 if not summary.unsupported else 1


def _cmd_export(args) -> int:
    try:
        import torch
    except ImportError:
        raise OnnxConversionError("onnx2flax export needs PyTorch: pip install "
                                  "'onnx2flax[torch]'") from None

    from ._export import export, load_factory

    factory = load_factory(args.factory, args.path)
    torch.manual_seed(args.seed)
    try:
        model = factory()
        inputs = tuple(torch.randn(shape) for shape in args.input_shape)
        say(f"exporting {args.factory} with inputs {[list(s) for s in args.input_shape]}")
        export(model, inputs, args.output, dynamic_batch=not args.static_batch)
    except OnnxConversionError:
        raise
    except Exception as exc:  # noqa: BLE001  (the factory and torch's exporter are user code)
        while exc.__cause__ is not None:  # the exporter wraps the model's own error
            exc = exc.__cause__
        raise InvalidInputError(f"exporting {args.factory} with inputs of shapes "
                                f"{[list(s) for s in args.input_shape]} failed: "
                                f"{type(exc).__name__}: {_first_line(exc)}") from None
    print(f"wrote {args.output}")
    return 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _load_feeds(path: str | None) -> dict | None:
    """The arrays of an ``.npz`` file (input name -> array), read without pickle."""
    if path is None:
        return None
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise InvalidInputError(f"--feeds {path!r} is not a readable .npz file of arrays: "
                                f"{_first_line(exc)}") from None


def _dims(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape like 1,3,224,224") from None
    if any(d < 0 for d in dims):
        raise argparse.ArgumentTypeError(f"{text!r}: dims must be non-negative")
    return dims


def _named_shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=DIMS, e.g. x=1,3,224,224")
    return name, _dims(dims)


def _const(text: str):
    import numpy as np

    name, sep, value = text.rpartition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE, e.g. sr=16000 or "
                                         "axes=0,2")
    parts = value.split(",")
    listed = len(parts) > 1  # "axes=1," is the one-element list [1], "sr=16000" a scalar
    parts = parts[:-1] if listed and parts[-1] == "" else parts
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: VALUE must be a number or a comma "
                                             "list of numbers") from None
    return name, np.asarray(numbers if listed else numbers[0])


def _bound(text: str) -> tuple[str, int]:
    name, _, count = text.rpartition("=")
    if not name or not count.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=N (N a non-negative integer)")
    return name, int(count)


def _add_bound(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bound", type=_bound, action="append", metavar="NAME=N",
                   help="at most N results for the NonZero / NonMaxSuppression / Unique node "
                   "NAME (node or output name): its output is padded to N (repeatable)")


def _add_inputs(p: argparse.ArgumentParser, feeds_help: str) -> None:
    p.add_argument("--input-shape", type=_named_shape, action="append", metavar="NAME=DIMS",
                   help="shape of graph input NAME, e.g. x=1,3,224,224: fixes its unknown "
                   "dims (repeatable)")
    p.add_argument("--const", type=_const, action="append", metavar="NAME=VALUE",
                   help="freeze graph input NAME to VALUE (a number or a comma list, e.g. "
                   "sr=16000; axes=1, for the one-element list [1]): it is no longer an input "
                   "(repeatable)")
    p.add_argument("--feeds", metavar="FILE.npz", help=feeds_help)


def _add_cache(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-cache", action="store_true",
                   help="do not use the persistent XLA compilation cache (by default compiled "
                   "programs are kept in $ONNX2FLAX_CACHE_DIR or ~/.cache/onnx2flax/jax, so "
                   "a second run at the same shapes skips compilation; ONNX2FLAX_NO_CACHE=1 "
                   "does the same as this flag)")


def _add_limit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", action="append", default=[], metavar="NAME=VALUE",
                   help="raise (or lower) one of onnx2flax.Limits for a trusted model, e.g. "
                   "tensor_bytes=8G or loop_iterations=4000000 (repeatable; see docs/errors.md)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onnx2flax", description="Convert ONNX models into Flax (JAX) modules with "
        "Flax-layout weights, and check them against onnxruntime.",
        epilog="exit codes: 0 success, 1 mismatch (compare) or unsupported op (inspect), "
        "2 error")
    parser.add_argument("--version", action="version", version=f"onnx2flax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert MODEL.onnx and write its weights to DIR")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--force", action="store_true", help="overwrite existing files in DIR")
    p.add_argument("--channels-first", action="store_true",
                   help="keep ONNX's NCHW layout at the module boundary")
    _add_bound(p)
    _add_inputs(p, "an .npz of example inputs (input name -> array): their shapes are the "
                "shapes model.py is written for")
    p.add_argument("--api", choices=("linen", "nnx"), default="linen",
                   help="write a flax.linen module (default) or a flax.nnx module")
    _add_limit(p)
    p.set_defaults(fn=_cmd_convert)

    p = sub.add_parser("compare", help="compare onnx2flax with onnxruntime (exit code 1 on "
                       "mismatch)", description="Run the model through onnx2flax and "
                       "onnxruntime on the same inputs and print the error per output. An "
                       "output matches when |flax - ref| <= atol + rtol * max|ref| everywhere "
                       "(max|ref|: the largest magnitude of that output).")
    p.add_argument("model")
    p.add_argument("--rtol", type=float, default=1e-4, metavar="R",
                   help="relative tolerance, a fraction of the output's max|ref| "
                   "(default 1e-4)")
    p.add_argument("--atol", type=float, default=1e-5, metavar="A",
                   help="absolute tolerance (default 1e-5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    _add_inputs(p, "an .npz of real inputs (input name -> array) instead of random ones")
    p.add_argument("--per-node", action="store_true",
                   help="compare every intermediate tensor; rank the nodes by error, and let "
                   "onnx.reference arbitrate where onnx2flax and onnxruntime disagree")
    p.add_argument("--top", type=int, default=5, metavar="K",
                   help="with --per-node: how many nodes to list (default 5)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_bound(p)
    _add_cache(p)
    _add_limit(p)
    p.set_defaults(fn=_cmd_compare)

    p = sub.add_parser("inspect", help="list ops (and which are supported), inputs, outputs, "
                       "parameter count (exit code 1 if some op is unsupported)")
    p.add_argument("model")
    _add_inputs(p, "an .npz of inputs: their shapes are shown as the inputs' shapes")
    _add_limit(p)
    p.set_defaults(fn=_cmd_inspect)

    p = sub.add_parser("export", help="export a PyTorch module to ONNX, keeping parameter "
                       "names and BatchNorm (needs torch)")
    p.add_argument("factory", help="package.module:factory returning a torch.nn.Module")
    p.add_argument("--input-shape", type=_dims, action="append", required=True,
                   help="shape of one input, e.g. 1,3,224,224 (repeat for several inputs)")
    p.add_argument("-o", "--output", required=True, help="ONNX file to write")
    p.add_argument("--static-batch", action="store_true", help="do not make dim 0 dynamic")
    p.add_argument("--seed", type=int, default=0, help="torch seed for the factory's weights")
    p.add_argument("--path", metavar="DIR", help="folder to import the factory's module from "
                   "(the working directory is not searched unless given: --path .)")
    p.set_defaults(fn=_cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if not getattr(args, "no_cache", True) and not os.environ.get("ONNX2FLAX_NO_CACHE"):
            _enable_cache()
        with charging(Limits.parse(getattr(args, "limit", ()))):
            return args.fn(args)
    except OnnxConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  (one line, not a traceback: see the exit codes)
        print(f"error: internal error in onnx2flax ({type(exc).__name__}: {_first_line(exc)}); "
              "please report it with the model", file=sys.stderr)
        if os.environ.get("ONNX2FLAX_DEBUG"):
            raise
        return 2


def _enable_cache() -> None:
    from ._cache import enable_compilation_cache

    try:
        folder = enable_compilation_cache()
    except OSError as exc:
        say(f"compilation cache off ({exc})")
        return
    say(f"compilation cache: {folder}")


if __name__ == "__main__":
    sys.exit(main())
