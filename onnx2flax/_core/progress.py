"""Progress reports: ``(stage, done, total)`` callbacks while a large model converts, and
:func:`say`, the one line format every progress message uses (``onnx2flax: ...``)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

Progress = Callable[[str, int, int], None]

#: Models with at least this many bytes of initializers, or this many nodes, report
#: progress by default.
AUTO_BYTES = 1 << 30
AUTO_NODES = 20_000


def say(message: str) -> None:
    """Print one progress line to stderr: ``onnx2flax: <message>``."""
    print(f"onnx2flax: {message}", file=sys.stderr, flush=True)


def reporter(progress: bool | Progress | None, proto: onnx.ModelProto) -> Progress | None:
    """The callback ``convert(progress=...)`` asks for: ``None`` decides by model size,
    ``True`` prints to stderr, ``False`` stays silent, a callable is called as is."""
    if progress is None:
        progress = _is_large(proto)
    if progress is True:
        return _Printer()
    if progress is False:
        return None
    if callable(progress):
        return progress
    raise TypeError(f"progress must be a bool, None or a callable, got {type(progress).__name__}")


def _is_large(proto: onnx.ModelProto) -> bool:
    """Read from the loaded file, not from the decoded graph: the first report ("load")
    comes before normalize, so whether to report is decided before the graph is decoded."""
    from .graph import numpy_dtype  # imports onnx: not at the CLI's start

    graph = proto.graph
    if len(graph.node) >= AUTO_NODES:
        return True
    size = 0
    for t in graph.initializer:
        count = 1
        for d in t.dims:
            count *= max(int(d), 0)
        dtype = numpy_dtype(t.data_type)
        if dtype is not None:  # else reported by the loader
            size += count * dtype.itemsize
    return size >= AUTO_BYTES


class _Printer:
    """Prints ``onnx2flax: <stage> <done>/<total> (<seconds> s)`` lines to stderr, at most
    every half second within a stage (always its first and last step)."""

    def __init__(self) -> None:
        self._start = self._last = time.perf_counter()

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if done not in (1, total) and now - self._last < 0.5:
            return
        self._last = now
        say(f"{stage} {done}/{total} ({now - self._start:.1f} s)")
