"""``export``: PyTorch module -> ONNX file that keeps parameter names and BatchNorm.

Both torch exporters fold BatchNormalization into the preceding Conv by default (the
TorchScript exporter in eval mode, the dynamo exporter through its optimizer), which throws
away ``batch_stats`` and trainability. This wrapper uses the dynamo exporter without the
optimizer, so every ``nn.Module`` parameter and buffer keeps its ``state_dict`` name.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from .errors import InvalidInputError, OnnxConversionError

__all__ = ["export"]


def load_factory(spec: str, path: str | os.PathLike | None = None) -> Callable[[], Any]:
    """The callable named by ``spec`` (``package.module:factory``), importing only that
    module (and its packages). The working directory is not searched (a module planted
    there, such as an ``onnxscript.py`` that torch's exporter would import, must not run):
    it is taken off ``sys.path`` where ``python -m`` put it (unless onnx2flax itself is
    imported from there), and only ``path``, if given, is added in front."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InvalidInputError(f"{spec!r} must look like package.module:factory")
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    here = {"", ".", os.getcwd()} - {package_root}
    sys.path[:] = [p for p in sys.path if p not in here]
    if path is not None:
        folder = os.path.abspath(path)
        if not os.path.isdir(folder):
            raise InvalidInputError(f"--path {str(path)!r} is not a folder")
        sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInputError(f"cannot import {module_name!r} for {spec!r}: {exc} (modules "
                                "in the working directory are found only with --path .)"
                                ) from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
    if not callable(factory):
        raise InvalidInputError(f"{spec!r}: {module_name!r} has no callable {attr!r}")
    return factory


def export(torch_module: Any, args: Sequence[Any] | Any, path: str | os.PathLike, *,
           input_names: Sequence[str] | None = None,
           output_names: Sequence[str] | None = None,
           dynamic_batch: bool = True, opset: int | None = None,
           verbose: bool = False, **options: Any) -> str:
    """Export ``torch_module`` (put in eval mode) on example ``args`` to ``path``.

    Inputs are named ``input_names`` (default ``x`` for one input, ``input_0``... otherwise);
    with ``dynamic_batch`` dim 0 of every tensor input is dynamic (named ``batch``).
    Further ``options`` go to ``torch.onnx.export``. Returns the path written.
    """
    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the environment
        raise OnnxConversionError("onnx2flax.export needs PyTorch: pip install 'onnx2flax[torch]'"
                                  ) from None
    args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if input_names is None:
        input_names = ["x"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))]
    if len(input_names) != len(args):
        raise InvalidInputError(f"{len(input_names)} input_names for {len(args)} args")
    kwargs: dict[str, Any] = dict(input_names=list(input_names), dynamo=True, optimize=False,
                                  external_data=False)
    if output_names is not None:
        kwargs["output_names"] = list(output_names)
    if opset is not None:
        kwargs["opset_version"] = opset
    if dynamic_batch and tensors:
        batch = torch.export.Dim("batch", min=1, max=2**20)
        kwargs["dynamic_shapes"] = tuple(
            {0: batch} if isinstance(a, torch.Tensor) and a.ndim > 0 else None for a in args)
    kwargs.update(options)
    torch_module = torch_module.eval()
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        if not verbose:
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            stack.enter_context(_quiet_logger("torch.onnx"))
            stack.enter_context(_quiet_logger("torch.export"))
            # torch's own deprecations inside the exporter (pytree's LeafSpec), not the user's
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore", FutureWarning)
        try:
            torch.onnx.export(torch_module, args, os.fspath(path), **kwargs)
        except Exception as exc:  # noqa: BLE001  (torch's exporter raises many kinds)
            cause = exc
            while cause.__cause__ is not None:  # the exporter wraps the model's own error
                cause = cause.__cause__
            first = (str(cause).strip().splitlines() or [""])[0]
            raise InvalidInputError(f"torch.onnx.export failed for {type(torch_module).__name__}"
                                    f": {type(cause).__name__}: {first}") from exc
    return os.fspath(path)


@contextlib.contextmanager
def _quiet_logger(name: str):
    """The exporter logs progress and notices as warnings, and its failures (raised anyway)
    as errors."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
