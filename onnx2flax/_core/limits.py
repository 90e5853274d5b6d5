"""The work and memory budget every stage charges: :class:`Limits`.

A model file is data: a few hundred bytes can ask for gigabytes of folded constants,
millions of inlined nodes or nested loops that never end. Each stage that allocates or loops
on the model's say-so charges the budget of the conversion (or trace) in progress *before*
it allocates or loops, and a charge past a limit raises
:class:`~onnx2flax.errors.ResourceLimitError` naming the node, the limit and how to raise
it: ``convert(..., limits=Limits(name=value))`` or the CLI's ``--limit name=value``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError, ResourceLimitError

__all__ = ["Limits"]

_GIB = 2 ** 30


@dataclass(frozen=True)
class Limits:
    """Bounds on what a model may make onnx2flax allocate or do (all positive ints).

    - ``tensor_bytes``: bytes of any one tensor the converter decodes, folds or traces.
    - ``folded_bytes``: bytes of all values computed at conversion or trace time
      (folded constants, shape arithmetic) beyond twice the bytes the model stores itself
      (initializers and ``Constant`` tensors), so converting a real model's weights (a cast,
      a transpose) always fits while a tiny file cannot ask for gigabytes.
    - ``inlined_nodes``: nodes of the graph once model-local functions are inlined
      (counted before inlining).
    - ``loop_iterations``: iterations of a static-count Loop times those of the Loops
      around it (run-time loops, ``lax.scan`` / ``lax.while_loop``).
    - ``unrolled_iterations``: iterations of all Loops unrolled while tracing, together.
    - ``trace_steps``: nodes run while tracing the model once (unrolled loop bodies count
      every time).
    - ``sequence_length``: tensors in one sequence (SplitToSequence...).
    - ``subgraph_depth``: nesting of subgraphs (If / Loop / Scan bodies in bodies).
    - ``name_length``: characters of a tensor, node or weight name.
    """

    tensor_bytes: int = 4 * _GIB
    # 1 GiB: weights made by ConstantOfShape (the onnx wheel's Caffe2-era models, VGG-size
    # ones included) must fold with the defaults.
    folded_bytes: int = _GIB
    inlined_nodes: int = 250_000
    loop_iterations: int = 2 ** 20
    unrolled_iterations: int = 2 ** 16
    trace_steps: int = 1_000_000
    sequence_length: int = 2 ** 14
    subgraph_depth: int = 64
    name_length: int = 4096

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidInputError(f"Limits.{f.name} must be a positive int, got {value!r}")

    @classmethod
    def parse(cls, items: list[str] | tuple[str, ...], base: Limits | None = None) -> Limits:
        """``base`` (default: the defaults) with ``NAME=VALUE`` items applied (the CLI's
        ``--limit``); VALUE is an int, optionally with a K/M/G/T suffix (powers of 1024)."""
        changes = {}
        names = [f.name for f in dataclasses.fields(cls)]
        for item in items:
            name, _, text = item.partition("=")
            name = name.strip().replace("-", "_")
            if name not in names:
                raise InvalidInputError(f"--limit {item!r}: unknown limit {name!r}; the limits "
                                        f"are {names}")
            changes[name] = _int(text.strip(), item)
        return dataclasses.replace(base or cls(), **changes)


def _int(text: str, item: str) -> int:
    scale = 1
    if text[-1:].upper() in _SUFFIXES:
        scale, text = _SUFFIXES[text[-1].upper()], text[:-1]
    if not text.isdigit():
        raise InvalidInputError(f"--limit {item!r}: the value must be a positive integer "
                                "(optionally with a K, M, G or T suffix)")
    return int(text) * scale


_SUFFIXES = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


class Budget:
    """What one conversion or one trace has charged so far against ``limits``."""

    def __init__(self, limits: Limits, stored_bytes: int = 0):
        self.limits = limits
        self.stored_bytes = stored_bytes
        self.folded = 0
        self.steps = 0
        self.unrolled = 0
        self.loop_nest = 1  # product of the static trip counts of the enclosing loops
        self.depth = 0

    def check(self, name: str, amount: float, where: str, what: str) -> None:
        """Refuse ``amount`` of limit ``name`` (``what`` says what it measures)."""
        allowed = self.allowed(name)
        if amount > allowed:
            raise ResourceLimitError(
                f"{where}: {what} is {_show(amount)}, over the limit {name}={_show(allowed)}; "
                f"{how_to_raise(name)}")

    def allowed(self, name: str) -> int:
        value = getattr(self.limits, name)
        return value + 2 * self.stored_bytes if name == "folded_bytes" else value

    def check_tensor(self, nbytes: float, where: str, shape=None) -> None:
        if nbytes <= self.allowed("tensor_bytes"):
            return
        what = "the tensor's size in bytes" if shape is None \
            else f"the size in bytes of a tensor of shape [{', '.join(map(_show, shape))}]"
        self.check("tensor_bytes", nbytes, where, what)

    def charge_folded(self, nbytes: float, where: str, shape=None) -> None:
        """Check a value computed at conversion or trace time, then count it."""
        self.check_tensor(nbytes, where, shape)
        self.check("folded_bytes", self.folded + nbytes, where,
                   "the total size in bytes of values computed from constants")
        self.folded += int(nbytes)

    def step(self, where: str) -> None:
        self.steps += 1
        if self.steps > self.limits.trace_steps:
            self.check("trace_steps", self.steps, where, "the count of nodes run while tracing")

    def check_sequence(self, length: int, where: str) -> None:
        self.check("sequence_length", length, where, "the count of tensors in the sequence")

    def check_name(self, name: str, what: str) -> None:
        if len(name) > self.limits.name_length:
            self.check("name_length", len(name), f"{what} {name[:60]!r}...",
                       "the name's length in characters")

    @contextlib.contextmanager
    def nested(self, where: str) -> Iterator[None]:
        """One level of subgraph nesting."""
        self.depth += 1
        try:
            self.check("subgraph_depth", self.depth, where, "the nesting depth of subgraphs")
            yield
        finally:
            self.depth -= 1

    @contextlib.contextmanager
    def loop(self, iterations: int, where: str) -> Iterator[None]:
        """A loop of ``iterations`` static iterations running its body (once traced)."""
        self.check("loop_iterations", self.loop_nest * iterations, where,
                   "the iteration count of this loop times those of the loops around it")
        outer, self.loop_nest = self.loop_nest, self.loop_nest * max(iterations, 1)
        try:
            yield
        finally:
            self.loop_nest = outer

    def unroll(self, where: str) -> None:
        """One more iteration of a loop unrolled while tracing."""
        self.unrolled += 1
        self.check("unrolled_iterations", self.unrolled, where,
                   "the count of loop iterations unrolled while tracing")


def how_to_raise(name: str) -> str:
    return (f"raise it with convert(..., limits=onnx2flax.Limits({name}=...)) or the command "
            f"line's --limit {name}=... if the model is trusted")


def _show(value) -> str:
    if not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)  # a symbolic dim
    return f"{int(value):,}" if value < 1e18 else f"{float(value):.3g}"


_current: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("onnx2flax_budget",
                                                                       default=None)


def budget() -> Budget:
    """The budget of the conversion or trace in progress (the defaults outside one)."""
    current = _current.get()
    return current if current is not None else Budget(Limits())


@contextlib.contextmanager
def charging(limits: Limits | None, stored_bytes: int = 0) -> Iterator[Budget]:
    """Make a fresh budget for ``limits`` the one stages charge inside the block
    (``None``: the limits of the block around, else the defaults)."""
    if limits is None:
        outer = _current.get()
        limits = Limits() if outer is None else outer.limits
    elif not isinstance(limits, Limits):
        raise InvalidInputError(f"limits must be an onnx2flax.Limits, got {type(limits).__name__}")
    current = Budget(limits, stored_bytes)
    token = _current.set(current)
    try:
        yield current
    finally:
        _current.reset(token)
