"""Signal processing: DFT, STFT, the window functions and MelWeightMatrix.

ONNX holds complex values as a trailing axis of size 2 (real, imaginary); a real signal has
a trailing axis of size 1. Transforms run in complex64 with ``jnp.fft``. Windows and mel
matrices depend only on their sizes, which must be constants: they are folded.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from .._core.registry import register
from .._pipeline.module import OpContext
from ._common import normalize_axis


def _scalar(ctx: OpContext, value, what: str):
    """A static scalar input (a 0-D or one-element tensor) as a Python number."""
    value = ctx.static(value, what)
    if value.size != 1:
        raise ctx.invalid(f"{what} must be a scalar, got shape {list(value.shape)}")
    return value.reshape(-1)[0].item()


def _to_complex(ctx: OpContext, x):
    """``[..., 1]`` (real) or ``[..., 2]`` (real, imaginary) -> complex64 ``[...]``."""
    if x.ndim < 2 or x.shape[-1] not in (1, 2):
        raise ctx.invalid(f"the last axis must have size 1 (real) or 2 (complex), got shape "
                          f"{list(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ctx.invalid(f"signals must be floating point, got {x.dtype}")
    x = jnp.asarray(x, jnp.float32)
    return x[..., 0] if x.shape[-1] == 1 else lax.complex(x[..., 0], x[..., 1])


def _from_complex(y, dtype):
    return jnp.stack([jnp.real(y), jnp.imag(y)], axis=-1).astype(dtype)


def _dft(ctx: OpContext, x, dft_length, axis: int):
    """DFT of ``x`` along ``axis`` (of the ONNX input, last axis excluded)."""
    inverse = int(ctx.attr("inverse"))
    onesided = int(ctx.attr("onesided"))
    if x.ndim < 2:
        raise ctx.invalid(f"input must have rank >= 2, got shape {list(x.shape)}")
    axis = normalize_axis(ctx, axis, x.ndim)
    if axis == x.ndim - 1:
        raise ctx.invalid("axis must not be the last axis (it holds real and imaginary parts)")
    signal = _to_complex(ctx, x)
    if inverse and onesided and x.shape[-1] != 2:
        raise ctx.invalid("an inverse one-sided DFT (IRFFT) takes a complex input")
    if dft_length is None:
        n = 2 * (x.shape[axis] - 1) if inverse and onesided else x.shape[axis]
    else:
        n = int(_scalar(ctx, dft_length, "dft_length"))
    if n < 1:
        raise ctx.invalid(f"dft_length must be positive, got {n}")
    if inverse and onesided:
        return jnp.fft.irfft(signal, n=n, axis=axis)[..., None].astype(x.dtype)
    if inverse or x.shape[-1] == 2:
        y = (jnp.fft.ifft if inverse else jnp.fft.fft)(signal, n=n, axis=axis)
        if onesided:
            y = jnp.take(y, np.arange(n // 2 + 1), axis=axis)
    else:
        y = _rfft(signal, n, axis, onesided)
    return _from_complex(y, x.dtype)


def _rfft(signal, n: int, axis: int, onesided: bool):
    """DFT of a real signal: bins above ``n // 2`` are the conjugates of those below, made
    so explicitly (exact zeros where the imaginary parts cancel, as in float64)."""
    y = jnp.fft.rfft(signal, n=n, axis=axis)
    if onesided:
        return y
    mirror = jnp.conj(jnp.take(y, np.arange((n - 1) // 2, 0, -1), axis=axis))
    return jnp.concatenate([y, mirror], axis=axis)


@register("DFT", since=17, static_inputs=(1,))
def dft_v17(ctx: OpContext, x, dft_length=None):
    """Opset 17: ``input [..., 1 | 2]``, axis attribute (default 1). Output ``[..., 2]``
    (``[..., 1]`` for an inverse one-sided DFT), ``n // 2 + 1`` bins when one-sided."""
    return _dft(ctx, x, dft_length, int(ctx.attr("axis")))


@register("DFT", since=20, static_inputs=(1, 2))
def dft(ctx: OpContext, x, dft_length=None, axis=None):
    """Opset 20: the axis is an input (default -2)."""
    return _dft(ctx, x, dft_length, -2 if axis is None else int(_scalar(ctx, axis, "axis")))


@register("STFT", since=17, static_inputs=(1, 3))
def stft(ctx: OpContext, signal, frame_step, window=None, frame_length=None):
    """``signal [batch, length, 1 | 2]`` -> ``[batch, frames, bins, 2]``: the DFT of each
    windowed frame, ``frames = 1 + (length - frame_length) // frame_step``."""
    onesided = int(ctx.attr("onesided"))
    step = int(_scalar(ctx, frame_step, "frame_step"))
    if frame_length is not None:
        size = int(_scalar(ctx, frame_length, "frame_length"))
    else:
        size = signal.shape[1] if window is None else window.shape[0]
    if signal.ndim != 3:
        raise ctx.invalid(f"signal must be [batch, length, 1 | 2], got {list(signal.shape)}")
    if step < 1 or not 1 <= size <= signal.shape[1]:
        raise ctx.invalid(f"frame_step {step} must be >= 1 and frame_length {size} within the "
                          f"signal length {signal.shape[1]}")
    if window is not None and window.shape != (size,):
        raise ctx.invalid(f"window of shape {list(window.shape)} must be [{size}]")
    if onesided and signal.shape[-1] != 1:
        raise ctx.invalid("a one-sided STFT takes a real signal")
    frames = 1 + (signal.shape[1] - size) // step
    starts = np.arange(frames)[:, None] * step + np.arange(size)
    framed = _to_complex(ctx, signal)[:, starts]  # [batch, frames, size]
    if window is not None:
        framed = framed * jnp.asarray(window, jnp.float32)
    if signal.shape[-1] == 1:
        y = _rfft(framed, size, -1, onesided)
    else:
        y = jnp.fft.fft(framed, axis=-1)
    return _from_complex(y, signal.dtype)


@register("HannWindow", "HammingWindow", "BlackmanWindow", since=17, static_inputs=(0,))
@register("MelWeightMatrix", since=17, static_inputs=(0, 1, 2, 3, 4))
def constant_only(ctx: OpContext, *inputs):
    """Folded at conversion time (by ONNX's reference evaluator) when the inputs are
    known then, as they must be: the output's shape depends on their values."""
    raise ctx.fail("the output's shape depends on the inputs' values, which are only known at "
                   "run time; the op is supported on conversion-time constants only")
