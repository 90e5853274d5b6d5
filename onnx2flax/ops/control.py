"""Control flow: If, Loop and Scan (subgraphs run by the interpreter).

Subgraph inputs and outputs are in ONNX layout; a subgraph reads values of the enclosing
graphs directly and has its own initializers. Whatever is known at trace time stays NumPy,
so a branch or loop decided by constants or shapes is resolved while tracing. Sequences
(Python lists) and optionals (``None`` when empty) exist only while tracing: a Loop that
carries them is unrolled.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._core.limits import budget, how_to_raise
from .._core.registry import register
from .._pipeline.module import OpContext
from ..errors import ResourceLimitError, UnsupportedOpError
from ._common import normalize_axis, subgraph

#: Most iterations of a Loop unrolled while tracing (one that carries sequences or
#: optionals, or whose body needs the iteration number at conversion time).
MAX_UNROLLED_ITERATIONS = 1024


def _pred(ctx: OpContext, cond):
    """A one-element condition tensor as a scalar bool."""
    if np.size(cond) != 1:
        raise ctx.invalid(f"the condition must hold one element, got shape {list(np.shape(cond))}")
    if isinstance(cond, np.ndarray):
        return np.asarray(bool(cond.reshape(())))
    return jnp.reshape(cond, ()).astype(bool)


@register("If")
def if_(ctx: OpContext, cond):
    """A condition known while tracing runs only the taken branch; a run-time condition
    becomes ``lax.cond``, whose branches must give outputs of equal shapes and dtypes."""
    then_branch, else_branch = subgraph(ctx, "then_branch"), subgraph(ctx, "else_branch")
    pred = _pred(ctx, cond)
    if isinstance(pred, np.ndarray):
        return tuple(ctx.run_graph(then_branch if pred else else_branch, []))
    branches = [lambda g=g: [_traced(v) for v in ctx.run_graph(g, [])]
                for g in (else_branch, then_branch)]
    try:
        return tuple(lax.cond(pred, branches[1], branches[0]))
    except TypeError as exc:
        raise ctx.fail("with a condition known only at run time both branches must produce "
                       "outputs of the same shapes and dtypes (jax.lax.cond; sequences of equal "
                       "lengths, optionals both empty or both set); they differ: "
                       f"{exc}") from None


def _traced(value):
    """A tensor, sequence (list) or empty optional (``None``) as JAX values."""
    if value is None:
        return None
    return [jnp.asarray(v) for v in value] if isinstance(value, list) else jnp.asarray(value)


class _DynamicCondition(Exception):
    """The Loop body's condition output depends on run-time data."""


def _carry_like(ctx: OpContext, new, old, what):
    """``new`` cast to ``old``'s dtype; the shape must not change between iterations."""
    new = jnp.asarray(new)
    if new.shape != old.shape:
        raise ctx.fail(f"{what} changes shape between iterations ({list(old.shape)} -> "
                       f"{list(new.shape)}); JAX loops need a fixed shape")
    return new.astype(old.dtype)


@register("Loop")
def loop(ctx: OpContext, trip_count=None, cond=None, *initial):
    """``lax.scan`` when the trip count is static and the condition stays true (constant, or
    passed through unchanged); otherwise ``lax.while_loop``.

    Outputs: the final loop-carried values, then the scan outputs stacked on a new axis 0.
    Scan outputs need a static iteration count: with a data-dependent condition their length
    would depend on the data, so such loops are refused. A loop bounded only by a run-time
    condition (no trip count, or a static one above ``Limits.loop_iterations`` divided by the
    static trip counts of the enclosing loops, such as the INT64_MAX torch writes for
    ``while`` loops) could run forever and is refused with
    :class:`~onnx2flax.errors.ResourceLimitError`; a trip count given as a run-time input
    bounds the loop by that value.

    A loop that carries sequences or optionals, or whose body needs the iteration number at
    conversion time (a Slice by it), is unrolled while tracing (:func:`_unrolled`).
    """
    body = subgraph(ctx, "body")
    n_carried = len(initial)
    n_scan = len(body.outputs) - 1 - n_carried
    if len(body.inputs) != 2 + n_carried or n_scan < 0:
        raise ctx.invalid(f"the body takes {len(body.inputs)} inputs and gives "
                          f"{len(body.outputs)} outputs; with {n_carried} loop-carried values it "
                          f"must take {2 + n_carried} and give at least {1 + n_carried}")
    start = True if cond is None else _pred(ctx, cond)
    static_start = isinstance(start, (bool, np.ndarray))
    current = budget()
    most = current.limits.loop_iterations // current.loop_nest
    if trip_count is None or isinstance(trip_count, np.ndarray):
        m = None if trip_count is None else int(trip_count.reshape(()))
        bound = m if m is not None and m <= most else None
    else:
        m = bound = jnp.reshape(trip_count, ())  # given at run time: it bounds the loop
    if any(v is None or isinstance(v, list) for v in initial):
        return _unrolled(ctx, body, m, start, list(initial))
    carried = [jnp.asarray(v) for v in initial]

    def body_fn(i, cond_in, values):
        outs = ctx.run_graph(body, [i, cond_in, *values])
        new = [_carry_like(ctx, v, old, f"loop-carried value {body.outputs[1 + k].name!r}")
               for k, (v, old) in enumerate(zip(outs[1:1 + n_carried], values))]
        return outs[0], new, [jnp.asarray(y) for y in outs[1 + n_carried:]]

    if static_start and (not start or isinstance(bound, int)):
        n = max(bound, 0) if start else 0

        def scan_step(values, i):
            cond_out, new, ys = body_fn(i, np.asarray(True), values)
            if n and not (isinstance(cond_out, np.ndarray) and _pred(ctx, cond_out)):
                raise _DynamicCondition
            current.check("tensor_bytes", sum(n * y.size * y.dtype.itemsize for y in ys),
                          ctx.label, f"the size in bytes of {n:,} iterations of scan outputs of "
                          f"shapes {[list(y.shape) for y in ys]}")
            return new, ys

        try:
            with current.loop(n, ctx.label):
                final, ys = lax.scan(scan_step, carried, jnp.arange(n))
            return (*final, *ys)
        except _DynamicCondition:
            pass
        except UnsupportedOpError:  # e.g. a Slice by the iteration number: known if unrolled
            if n > MAX_UNROLLED_ITERATIONS:
                raise
            return _unrolled(ctx, body, n, start, list(initial))
    if n_scan:
        raise ctx.fail(f"{n_scan} scan output(s) with an iteration count that depends on run-time "
                       "data: their length would not be known when tracing")
    if bound is None and m is not None and m <= current.limits.loop_iterations:  # nested
        current.check("loop_iterations", current.loop_nest * m, ctx.label,
                      f"its trip count {m:,} times the {current.loop_nest:,} iterations of the "
                      "loops around it")
    if bound is None:
        raise ResourceLimitError(
            f"{ctx.label}: the loop's trip count is {'missing' if m is None else f'{m:,}'}; "
            "bounded only by its condition it could run forever, so it is refused (a trip "
            f"count of at most {most:,} is needed, "
            f"the limit loop_iterations={current.limits.loop_iterations:,} divided by the "
            f"iterations of the loops around it); {how_to_raise('loop_iterations')}")

    def keep_going(state):
        i, c, _ = state
        return c & (i < bound)

    def while_step(state):
        i, c, values = state
        cond_out, new, _ = body_fn(i, c, values)
        return i + 1, jnp.asarray(_pred(ctx, cond_out)), new

    with current.loop(bound if isinstance(bound, int) else 1, ctx.label):
        _, _, final = lax.while_loop(keep_going, while_step,
                                     (jnp.asarray(0), jnp.asarray(start), carried))
    return tuple(final)


def _unrolled(ctx: OpContext, body, trip_count, start, values):
    """The loop run in Python while tracing: the iteration number and the condition are
    NumPy values, loop-carried values may be sequences or optionals and may change shape.
    Needs a trip count and conditions known at conversion time, and at most
    :data:`MAX_UNROLLED_ITERATIONS` iterations."""
    n_carried = len(values)
    if not isinstance(trip_count, (int, type(None))) or not isinstance(start, (bool, np.ndarray)):
        raise ctx.fail("a Loop that carries sequences or optionals, or whose body needs the "
                       "iteration number at conversion time, is unrolled while tracing: its trip "
                       "count and condition must be known at conversion time")
    going, i, scans = bool(start), 0, []
    while going and (trip_count is None or i < trip_count):
        if i == MAX_UNROLLED_ITERATIONS:
            raise ResourceLimitError(f"{ctx.label}: an unrolled loop may run at most "
                                     f"onnx2flax.ops.control.MAX_UNROLLED_ITERATIONS = "
                                     f"{MAX_UNROLLED_ITERATIONS} iterations")
        budget().unroll(ctx.label)
        outs = ctx.run_graph(body, [np.asarray(i, np.int64), np.asarray(going), *values])
        if not isinstance(outs[0], np.ndarray):
            raise ctx.fail("the loop is unrolled while tracing (it carries sequences or "
                           "optionals, or its body needs the iteration number), so its "
                           "condition must not depend on run-time data")
        going, i = bool(_pred(ctx, outs[0])), i + 1
        values = outs[1:1 + n_carried]
        scans.append(outs[1 + n_carried:])
    n_scan = len(body.outputs) - 1 - n_carried
    if n_scan and not scans:
        raise ctx.fail("scan outputs of an unrolled loop that runs no iteration: their shapes "
                       "are not known")
    ys = []
    for k, column in enumerate(zip(*scans)):
        shapes = {np.shape(y) for y in column}
        if len(shapes) > 1:
            raise ctx.fail(f"scan output {body.outputs[1 + n_carried + k].name!r} changes shape "
                           f"between iterations {sorted(shapes)}; it cannot be stacked")
        static = all(isinstance(y, np.ndarray) for y in column)
        ys.append((np if static else jnp).stack(column))
    return (*values, *ys)


def _scan(ctx: OpContext, body, states, xs, in_dirs, out_axes, out_dirs):
    """``lax.scan`` of ``body`` over ``xs`` (each scanned along axis 0)."""
    n_state = len(states)
    xs = [jnp.flip(x, 0) if d else x for x, d in zip(xs, in_dirs)]
    lengths = {int(x.shape[0]) for x in xs}
    if len(lengths) > 1:
        raise ctx.invalid(f"scan inputs have different lengths {sorted(lengths)}")
    states = [jnp.asarray(s) for s in states]

    def step(carry, slices):
        outs = ctx.run_graph(body, [*carry, *slices])
        new = [_carry_like(ctx, v, old, f"state {body.outputs[k].name!r}")
               for k, (v, old) in enumerate(zip(outs[:n_state], carry))]
        return new, [jnp.asarray(y) for y in outs[n_state:]]

    final, ys = lax.scan(step, states, xs)
    outs = []
    for y, axis, d in zip(ys, out_axes, out_dirs):
        y = jnp.flip(y, 0) if d else y
        outs.append(jnp.moveaxis(y, 0, normalize_axis(ctx, int(axis), y.ndim)))
    return (*final, *outs)


def _scan_counts(ctx: OpContext, body, inputs):
    """Numbers of states, scan inputs and scan outputs, checked against the body."""
    n_in = int(ctx.attr("num_scan_inputs"))
    n_state = len(inputs) - n_in
    if not 0 <= n_state < len(inputs) or any(v is None for v in inputs):
        raise ctx.invalid(f"num_scan_inputs is {n_in} for {len(inputs)} inputs (all required)")
    n_out = len(body.outputs) - n_state
    if len(body.inputs) != len(inputs) or n_out < 0:
        raise ctx.invalid(f"the body takes {len(body.inputs)} inputs and gives "
                          f"{len(body.outputs)} outputs for {n_state} states and {n_in} scan inputs")
    return n_state, n_in, n_out


@register("Scan", since=9)
def scan(ctx: OpContext, *inputs):
    """Opset 9+: states then ``num_scan_inputs`` scan inputs, scanned along
    ``scan_input_axes``; scan outputs stacked along ``scan_output_axes``."""
    body = subgraph(ctx, "body")
    n_state, n_in, n_out = _scan_counts(ctx, body, inputs)
    in_axes = ctx.attr("scan_input_axes", [0] * n_in)
    in_dirs = ctx.attr("scan_input_directions", [0] * n_in)
    out_axes = ctx.attr("scan_output_axes", [0] * n_out)
    out_dirs = ctx.attr("scan_output_directions", [0] * n_out)
    if not len(in_axes) == len(in_dirs) == n_in or not len(out_axes) == len(out_dirs) == n_out:
        raise ctx.invalid(f"scan axes/directions must list {n_in} inputs and {n_out} outputs")
    xs = [jnp.moveaxis(x, normalize_axis(ctx, int(a), np.ndim(x)), 0)
          for x, a in zip(inputs[n_state:], in_axes)]
    return _scan(ctx, body, inputs[:n_state], xs, in_dirs, out_axes, out_dirs)


@register("Scan", since=8)
def scan_v8(ctx: OpContext, sequence_lens, *inputs):
    """Opset 8: every input and output has a leading batch axis; scan inputs are
    ``[batch, seq, ...]``. Runs the opset-9 scan per batch entry (``vmap``)."""
    body = subgraph(ctx, "body")
    n_state, n_in, n_out = _scan_counts(ctx, body, inputs)
    in_dirs = ctx.attr("directions", [0] * n_in)
    if len(in_dirs) != n_in:
        raise ctx.invalid(f"directions must list {n_in} scan inputs, got {list(in_dirs)}")
    seq = np.shape(inputs[n_state])[1]
    if sequence_lens is not None:
        lens = ctx.static(sequence_lens, "sequence_lens (unless omitted)")
        if np.any(lens != seq):
            raise ctx.fail(f"sequence_lens {lens.tolist()} differ from the sequence length {seq}:"
                           " variable-length batches are not supported")

    def one(states, xs):
        return _scan(ctx, body, states, xs, in_dirs, [0] * n_out, [0] * n_out)

    return jax.vmap(one)([jnp.asarray(s) for s in inputs[:n_state]],
                         [jnp.asarray(x) for x in inputs[n_state:]])
