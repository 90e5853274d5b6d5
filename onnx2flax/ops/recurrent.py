"""Recurrent layers RNN, GRU and LSTM, each direction a ``lax.scan`` over time.

Shapes for ``layout=0`` (ONNX's default): X ``[seq, batch, input]``; W ``[dirs, gates*hidden,
input]``; R ``[dirs, gates*hidden, hidden]``; B ``[dirs, 2*gates*hidden]`` (input biases, then
recurrence biases); sequence_lens ``[batch]``; initial_h / initial_c ``[dirs, batch, hidden]``;
P ``[dirs, 3*hidden]`` (LSTM peepholes i, o, f). Outputs Y ``[seq, dirs, batch, hidden]`` and
Y_h / Y_c ``[dirs, batch, hidden]``. ``layout=1`` puts batch first: X ``[batch, seq, input]``,
Y ``[batch, seq, dirs, hidden]``, states ``[batch, dirs, hidden]``. Gate order in W, R, B:
LSTM ``i, o, f, c``; GRU ``z, r, h``.

Constant W, R and B are read as weights, so they become Flax params like other float
initializers. With ``sequence_lens`` shorter than the sequence, steps past a batch entry's
length leave its state unchanged and give zeros in Y (as onnxruntime does); the reverse
direction reads each entry's own prefix backwards.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._core.registry import register
from .._pipeline.module import OpContext

# Lower-case name -> (fn(x, alpha, beta), default alpha, default beta); a default of None
# means the function takes no such argument (it then consumes nothing from the lists).
_ACTIVATIONS = {
    "relu": (lambda x, a, b: jax.nn.relu(x), None, None),
    "tanh": (lambda x, a, b: jnp.tanh(x), None, None),
    "sigmoid": (lambda x, a, b: jax.nn.sigmoid(x), None, None),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: jnp.where(x >= 0, x, a * x), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: jnp.where(x > a, x, 0.0), 1.0, None),
    "scaledtanh": (lambda x, a, b: a * jnp.tanh(b * x), 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: jnp.clip(a * x + b, 0.0, 1.0), 0.2, 0.5),
    "elu": (lambda x, a, b: jnp.where(x >= 0, x, a * jnp.expm1(x)), 1.0, None),
    "softsign": (lambda x, a, b: x / (1 + jnp.abs(x)), None, None),
    "softplus": (lambda x, a, b: jax.nn.softplus(x), None, None),
}


def _activations(ctx: OpContext, defaults: list[str], n_dirs: int) -> list[list]:
    """The activation functions of each direction. ``activation_alpha``/``_beta`` are
    consumed in order by the functions that take them; missing ones get the defaults."""
    names = list(ctx.attr("activations", defaults * n_dirs))
    if len(names) == len(defaults) and n_dirs == 2:
        names *= 2
    if len(names) != len(defaults) * n_dirs:
        raise ctx.invalid(f"activations {names} must list {len(defaults)} functions per "
                          f"direction ({n_dirs} direction(s))")
    alphas = list(ctx.attr("activation_alpha", []))
    betas = list(ctx.attr("activation_beta", []))
    fns = []
    for name in names:
        if not isinstance(name, str) or name.lower() not in _ACTIVATIONS:
            raise ctx.fail(f"activation {name!r} is not supported (supported: "
                           f"{sorted(_ACTIVATIONS)})")
        fn, alpha, beta = _ACTIVATIONS[name.lower()]
        alpha = alphas.pop(0) if alpha is not None and alphas else alpha
        beta = betas.pop(0) if beta is not None and betas else beta
        fns.append(partial(fn, a=alpha, b=beta))
    k = len(defaults)
    return [fns[d * k:(d + 1) * k] for d in range(n_dirs)]


def _reverse(x, lengths):
    """Reverse the time axis 0 of ``x`` ``[seq, batch, ...]``; with ``lengths`` only each
    batch entry's first ``lengths[b]`` steps (the padding stays in place)."""
    if lengths is None:
        return jnp.flip(x, 0)
    t = jnp.arange(x.shape[0])[:, None]
    index = jnp.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=0)


def _recurrent(ctx: OpContext, x, w, r, b, sequence_lens, h0, c0=None, p=None, *, n_gates,
               defaults, cell, cell_state=False):
    """Run ``cell(xw_t, h, c, r, rb, p, acts, clip) -> (h, c)`` over the sequence in every
    direction; ``xw_t`` is one step's input projection ``x_t @ W.T + Wb``, ``c`` the cell
    state (``None`` unless ``cell_state``). Returns ``Y, Y_h, Y_c`` (``Y_c`` may be None)."""
    direction = ctx.attr("direction", "forward")  # GRU-1's schema misspells its default
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ctx.invalid(f"direction must be forward, reverse or bidirectional, got {direction!r}")
    n_dirs = 2 if direction == "bidirectional" else 1
    layout = int(ctx.attr("layout", 0))
    if layout not in (0, 1):
        raise ctx.invalid(f"layout must be 0 or 1, got {layout}")
    clip = ctx.attr("clip", None)
    if layout:
        x, h0, c0 = (None if v is None else jnp.swapaxes(v, 0, 1) for v in (x, h0, c0))
    if x.ndim != 3:
        raise ctx.invalid(f"X must be 3-D, got shape {list(x.shape)}")
    seq, batch, size = x.shape
    hidden = int(ctx.attr("hidden_size", np.shape(r)[-1]))
    gh = n_gates * hidden
    for name, value, shape in (("W", w, (n_dirs, gh, size)), ("R", r, (n_dirs, gh, hidden)),
                               ("B", b, (n_dirs, 2 * gh)), ("P", p, (n_dirs, 3 * hidden)),
                               ("initial_h", h0, (n_dirs, batch, hidden)),
                               ("initial_c", c0, (n_dirs, batch, hidden))):
        if value is not None and tuple(np.shape(value)) != shape:
            raise ctx.invalid(f"{name} must have shape {list(shape)} (ONNX layout 0), "
                              f"got {list(np.shape(value))}")
    b = jnp.zeros((n_dirs, 2 * gh), x.dtype) if b is None else jnp.asarray(b)
    h0 = jnp.zeros((n_dirs, batch, hidden), x.dtype) if h0 is None else jnp.asarray(h0)
    acts = _activations(ctx, defaults, n_dirs)
    lengths = None
    if isinstance(sequence_lens, np.ndarray) and (
            sequence_lens.shape != (batch,) or np.any((sequence_lens < 0) | (sequence_lens > seq))):
        raise ctx.invalid(f"sequence_lens must be {batch} lengths in [0, {seq}], got "
                          f"{sequence_lens.tolist()}")
    if sequence_lens is not None and not (isinstance(sequence_lens, np.ndarray)
                                          and np.all(sequence_lens == seq)):
        lengths = jnp.asarray(sequence_lens).astype(jnp.int32)

    ys, hs, cs = [], [], []
    for d in range(n_dirs):
        reverse = direction == "reverse" or d == 1
        xd = _reverse(x, lengths) if reverse else x
        xw = jnp.einsum("sbi,gi->sbg", xd, w[d]) + b[d, :gh]
        weights = dict(r=r[d], rb=b[d, gh:], p=None if p is None else p[d], acts=acts[d], clip=clip)

        def step(carry, inputs, weights=weights):
            xw_t, t = inputs
            new = cell(xw_t, *carry, **weights)
            if lengths is None:
                return new, new[0]
            valid = (t < lengths)[:, None]
            kept = jax.tree.map(lambda n, o: jnp.where(valid, n, o), new, carry)
            return kept, jnp.where(valid, new[0], 0.0)

        c_init = None if not cell_state else (
            jnp.zeros_like(h0[d]) if c0 is None else jnp.asarray(c0)[d])
        (h, c), y = lax.scan(step, (h0[d], c_init), (xw, jnp.arange(seq)))
        ys.append(_reverse(y, lengths) if reverse else y)
        hs.append(h)
        cs.append(c)
    y, y_h = jnp.stack(ys, 1), jnp.stack(hs, 0)
    y_c = jnp.stack(cs, 0) if cs[0] is not None else None
    if layout:
        y = jnp.transpose(y, (2, 0, 1, 3))
        y_h, y_c = (None if v is None else jnp.swapaxes(v, 0, 1) for v in (y_h, y_c))
    return y, y_h, y_c


def _clip(x, clip):
    return x if clip is None else jnp.clip(x, -clip, clip)


def _rnn_cell(xw, h, c, r, rb, p, acts, clip):
    """H = f(x W^T + h R^T + Wb + Rb)."""
    (f,) = acts
    return f(_clip(xw + h @ r.T + rb, clip)), None


def _gru_cell(xw, h, c, r, rb, p, acts, clip, linear_before_reset):
    """Gates z, r; the candidate applies the reset gate to h before the recurrent matmul,
    or to its result with ``linear_before_reset``; H = (1 - z) * candidate + z * h."""
    f, g = acts
    hidden = h.shape[-1]
    xz, xr, xh = jnp.split(xw, 3, axis=-1)
    hz, hr = jnp.split(h @ r[:2 * hidden].T + rb[:2 * hidden], 2, axis=-1)
    z = f(_clip(xz + hz, clip))
    reset = f(_clip(xr + hr, clip))
    r_h, rb_h = r[2 * hidden:], rb[2 * hidden:]
    if linear_before_reset:
        candidate = g(_clip(xh + reset * (h @ r_h.T + rb_h), clip))
    else:
        candidate = g(_clip(xh + (reset * h) @ r_h.T + rb_h, clip))
    return (1 - z) * candidate + z * h, None


def _lstm_cell(xw, h, c, r, rb, p, acts, clip, input_forget):
    """Gates i, o, f, c with optional peepholes; ``input_forget`` couples f = 1 - i."""
    f, g, act_h = acts
    xi, xo, xf, xc = jnp.split(xw + h @ r.T + rb, 4, axis=-1)
    pi, po, pf = (0.0, 0.0, 0.0) if p is None else jnp.split(p, 3)
    i = f(_clip(xi + pi * c, clip))
    forget = 1 - i if input_forget else f(_clip(xf + pf * c, clip))
    c_new = forget * c + i * g(_clip(xc, clip))
    o = f(_clip(xo + po * c_new, clip))
    return o * act_h(c_new), c_new


@register("RNN")
def rnn(ctx: OpContext, x, w, r, b=None, sequence_lens=None, initial_h=None):
    """Elman RNN; outputs Y, Y_h (shapes in the module docstring)."""
    y, y_h, _ = _recurrent(ctx, x, w, r, b, sequence_lens, initial_h, n_gates=1,
                           defaults=["Tanh"], cell=_rnn_cell)
    return y, y_h


@register("GRU")
def gru(ctx: OpContext, x, w, r, b=None, sequence_lens=None, initial_h=None):
    """GRU (``linear_before_reset``, opset 3+; 0 before); outputs Y, Y_h."""
    cell = partial(_gru_cell, linear_before_reset=int(ctx.attr("linear_before_reset", 0)))
    y, y_h, _ = _recurrent(ctx, x, w, r, b, sequence_lens, initial_h, n_gates=3,
                           defaults=["Sigmoid", "Tanh"], cell=cell)
    return y, y_h


@register("LSTM")
def lstm(ctx: OpContext, x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None,
         p=None):
    """LSTM with peepholes ``P`` and ``input_forget``; outputs Y, Y_h, Y_c."""
    cell = partial(_lstm_cell, input_forget=int(ctx.attr("input_forget")))
    return _recurrent(ctx, x, w, r, b, sequence_lens, initial_h, initial_c, p, n_gates=4,
                      defaults=["Sigmoid", "Tanh", "Tanh"], cell=cell, cell_state=True)
