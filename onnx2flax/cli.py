"""The ``onnx2flax`` command: convert, compare, inspect, export."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from ._limits import Limits, charging
from .errors import OnnxConversionError


def _progress(message: str) -> None:
    print(f"[onnx2flax] {message}", file=sys.stderr, flush=True)


def _cmd_convert(args) -> int:
    from . import codegen
    from ._files import output_dir, write_file
    from ._inspect import summarize
    from .converter import convert

    start = time.perf_counter()
    _progress(f"converting {args.model}")
    converted = convert(args.model, channels_last=not args.channels_first,
                        bounds=dict(args.bound or ()))
    _progress(f"converted in {time.perf_counter() - start:.2f} s; writing {args.output}")
    folder = output_dir(args.output)
    written = codegen.save(converted, folder, force=args.force, api=args.api)
    layout = "\n".join(f"  {s.name}: {'channels-last' if s.channels_last else 'ONNX order'}"
                       for s in converted.inputs + converted.outputs)
    written.append(write_file(
        folder, "summary.txt", f"{summarize(args.model).text()}\nlayout at the module "
        f"boundary:\n{layout}\n{_USAGE[args.api]}\n", force=args.force))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


_USAGE = {"linen": "use: from model import Model, load_variables; "
                   "Model().apply(load_variables(), *inputs)",
          "nnx": "use: from model import load_model; load_model()(*inputs)"}


def _cmd_compare(args) -> int:
    from ._compare import compare

    _progress(f"comparing {args.model} with onnxruntime")
    report = compare(args.model, rtol=args.rtol, atol=args.atol, seed=args.seed,
                     per_node=args.per_node, bounds=dict(args.bound or ()))
    print(report.table())
    return 0 if report.ok else 1


def _cmd_inspect(args) -> int:
    from ._inspect import summarize

    summary = summarize(args.model)
    print(summary.text())
    return 0 if not summary.unsupported else 1


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape like 1,3,224,224") from None


def _bound(text: str) -> tuple[str, int]:
    name, _, count = text.rpartition("=")
    if not name or not count.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=N (N a non-negative integer)")
    return name, int(count)


def _add_bound(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bound", type=_bound, action="append", metavar="NAME=N",
                   help="at most N results for the NonZero / NonMaxSuppression / Unique node "
                   "NAME (node or output name): its output is padded to N (repeatable)")


def _add_limit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", action="append", default=[], metavar="NAME=VALUE",
                   help="raise (or lower) one of onnx2flax.Limits for a trusted model, e.g. "
                   "tensor_bytes=8G or loop_iterations=4000000 (repeatable; see docs/errors.md)")


def _cmd_export(args) -> int:
    from ._export import export, load_factory

    factory = load_factory(args.factory, args.path)
    import torch

    torch.manual_seed(args.seed)
    model = factory()
    inputs = tuple(torch.randn(shape) for shape in args.input_shape)
    _progress(f"exporting {args.factory} with inputs {[list(s) for s in args.input_shape]}")
    export(model, inputs, args.output, dynamic_batch=not args.static_batch)
    print(f"wrote {args.output}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onnx2flax", description="Convert ONNX models into Flax (JAX) modules with "
        "Flax-layout weights, and check them against onnxruntime.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert MODEL.onnx and write its weights to DIR")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--force", action="store_true", help="overwrite existing files in DIR")
    p.add_argument("--channels-first", action="store_true",
                   help="keep ONNX's NCHW layout at the module boundary")
    _add_bound(p)
    p.add_argument("--api", choices=("linen", "nnx"), default="linen",
                   help="write a flax.linen module (default) or a flax.nnx module")
    _add_limit(p)
    p.set_defaults(fn=_cmd_convert)

    p = sub.add_parser("compare", help="compare onnx2flax with onnxruntime on random inputs "
                       "(exit code 1 on mismatch)")
    p.add_argument("model")
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-node", action="store_true",
                   help="compare every intermediate tensor; report the first divergence")
    _add_bound(p)
    _add_limit(p)
    p.set_defaults(fn=_cmd_compare)

    p = sub.add_parser("inspect", help="list ops (and which are supported), inputs, outputs, "
                       "parameter count (exit code 1 if some op is unsupported)")
    p.add_argument("model")
    _add_limit(p)
    p.set_defaults(fn=_cmd_inspect)

    p = sub.add_parser("export", help="export a PyTorch module to ONNX, keeping parameter "
                       "names and BatchNorm")
    p.add_argument("factory", help="package.module:factory returning a torch.nn.Module")
    p.add_argument("--input-shape", type=_shape, action="append", required=True,
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
        with charging(Limits.parse(getattr(args, "limit", ()))):
            return args.fn(args)
    except OnnxConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
