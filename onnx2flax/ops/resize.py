"""Resize and Upsample, implemented explicitly (not ``jax.image.resize``, which antialiases
by default and whose nearest mode is not ONNX's).

Resizing is separable: each resized axis is resampled on its own, in the layout the value is
held in (a channels-last ``[N, H, W, C]`` value is resized over H and W without transposing).
Per axis the sampling positions and weights are computed at conversion time in NumPy, in
float32 like onnxruntime (so ties in nearest rounding fall the same way), and applied with
one gather: ``out[i] = sum_t w[i, t] * x[idx[i, t]]`` (nearest: ``out[i] = x[idx[i]]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
from jax import lax

from .._core import layout as _layout
from .._core.dims import is_dim
from .._core.registry import register
from .._pipeline.module import OpContext
from ._common import normalize_axis

_F = np.float32
_COORD_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
                "asymmetric", "tf_half_pixel_for_nn", "tf_crop_and_resize")
_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")


@dataclass(frozen=True)
class _Options:
    mode: str  # nearest | linear | cubic
    coord: str  # coordinate_transformation_mode
    nearest: str  # nearest_mode ("simple": opset < 11 floor, ceil when downsampling)
    cubic_a: float = -0.75
    exclude_outside: bool = False
    extrapolation: float = 0.0
    antialias: bool = False


def _source_coords(o: _Options, n_in: int, n_out: int, scale, roi, exact: bool) -> np.ndarray:
    """Where each output position samples the input (ONNX's formulas). Computed as
    onnxruntime rounds: in float32 from a given scale, exactly (float64 ``* in / out``)
    when the scale comes from ``sizes``; that decides which way ties round."""
    x = np.arange(n_out, dtype=np.float64 if exact else _F)
    half = x.dtype.type(0.5)
    scale = _F(scale)

    def unscale(v):
        return v * n_in / n_out if exact else v / scale

    if o.coord == "half_pixel":
        return unscale(x + half) - half
    if o.coord == "half_pixel_symmetric":  # onnxruntime finishes this one in float64
        adjustment = _F(n_out) / (scale * _F(n_in))
        offset = _F(n_in) / _F(2) * (_F(1) - adjustment)
        return (offset + (x.astype(_F) + 0.5) / np.float64(scale) - 0.5).astype(_F)
    if o.coord == "pytorch_half_pixel":
        return unscale(x + half) - half if n_out > 1 else np.zeros(n_out, x.dtype)
    if o.coord == "asymmetric":
        return unscale(x)
    if o.coord == "tf_half_pixel_for_nn":
        return unscale(x + half)
    x = x.astype(_F)
    if o.coord == "align_corners":
        return x * _F(n_in - 1) / _F(n_out - 1) if n_out > 1 else np.zeros(n_out, _F)
    start, end = _F(roi[0]), _F(roi[1])  # tf_crop_and_resize
    if n_out > 1:
        return start * _F(n_in - 1) + x * (end - start) * _F(n_in - 1) / _F(n_out - 1)
    return np.full(n_out, _F(0.5) * (start + end) * _F(n_in - 1), _F)


def _nearest_index(o: _Options, x: np.ndarray, downsampling: bool) -> np.ndarray:
    floor = np.floor(x)
    if o.nearest == "round_prefer_floor":
        idx = np.where(x - floor == _F(0.5), floor, np.round(x))
    elif o.nearest == "round_prefer_ceil":
        idx = np.where(x - floor == _F(0.5), floor + 1, np.round(x))
    elif o.nearest == "floor" or (o.nearest == "simple" and not downsampling):
        idx = floor
    else:
        idx = np.ceil(x)
    return idx.astype(np.int64)[:, None]


def _cubic(t, a: float, xp=np):
    """Keys' cubic kernel at distances ``t`` (NumPy, or ``xp=jnp`` on traced values)."""
    t = xp.abs(t)
    return xp.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                    xp.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


def _filter(o: _Options, t: np.ndarray) -> np.ndarray:
    return np.maximum(1 - np.abs(t), 0) if o.mode == "linear" else _cubic(t, o.cubic_a)


def _taps(o: _Options, x: np.ndarray, n_in: int, scale: float):
    """Input indices ``[n_out, taps]`` and float64 weights for linear / cubic."""
    if o.antialias:
        # Downsampling stretches the filter by 1 / scale (onnxruntime's antialias). Taps
        # outside the input are clamped onto the edge, or dropped with exclude_outside.
        half = 1.0 if o.mode == "linear" else 2.0
        support, stretch = (half / scale, scale) if scale < 1 else (half, 1.0)
        window = 2 * int(np.ceil(support)) + 1
        center = x.astype(np.float64) + 0.5
        lo = np.floor(center - support + 0.5).astype(np.int64)
        hi = lo + np.clip(np.floor(center + support + 0.5).astype(np.int64) - lo, 0, window)
        idx = lo[:, None] + np.arange(int((hi - lo).max()))
        w = _filter(o, (idx - center[:, None] + 0.5) * stretch) * (idx < hi[:, None])
        if o.exclude_outside:
            w = np.where((idx < 0) | (idx >= n_in), 0.0, w)
        return idx, w / w.sum(axis=1, keepdims=True)
    if o.mode == "linear":  # the coordinate is clamped into the input first
        x = np.clip(x, 0, n_in - 1).astype(np.float64)
        base = np.floor(x)
        idx = base[:, None].astype(np.int64) + np.arange(2)
        r = (x - base)[:, None]
        return idx, np.concatenate([1 - r, r], axis=1)
    x = x.astype(np.float64)
    base = np.floor(x)
    idx = base[:, None].astype(np.int64) + np.arange(-1, 3)
    w = _filter(o, idx - x[:, None])
    if o.exclude_outside:
        w = np.where((idx < 0) | (idx >= n_in), 0.0, w)
        w = w / w.sum(axis=1, keepdims=True)
    return idx, w


def _take(x, idx: np.ndarray, axis: int):
    """``jnp.take(x, idx, axis)``, as a strided slice or a repeat when ``idx`` has that form
    (integer-factor nearest resizing): XLA gathers along inner axes need transposes."""
    n, n_in = len(idx), x.shape[axis]
    step = int(idx[1] - idx[0]) if n > 1 else 1
    if step >= 1 and np.array_equal(idx, idx[0] + step * np.arange(n)):
        return lax.slice_in_dim(x, int(idx[0]), int(idx[-1]) + 1, step, axis)
    if n % n_in == 0 and np.array_equal(idx, np.repeat(np.arange(n_in), n // n_in)):
        y = jnp.expand_dims(x, axis + 1)
        y = jnp.broadcast_to(y, y.shape[:axis + 1] + (n // n_in,) + y.shape[axis + 2:])
        return jnp.reshape(y, x.shape[:axis] + (n,) + x.shape[axis + 1:])
    return jnp.take(x, idx.astype(np.int32), axis=axis)


def _resize_axis(o: _Options, x, axis: int, n_out: int, scale: float, roi, exact: bool):
    """Resample held axis ``axis`` of ``x`` to ``n_out`` positions."""
    n_in = x.shape[axis]
    coords = _source_coords(o, n_in, n_out, scale, roi, exact)
    if o.mode == "nearest":
        idx, w = _nearest_index(o, coords, scale < 1), None
    else:
        idx, w = _taps(o, coords, n_in, scale)
    idx = np.clip(idx, 0, n_in - 1)
    taps = idx.shape[1]
    y = _take(x, idx.reshape(-1), axis)
    if w is not None:
        y = jnp.reshape(y, x.shape[:axis] + (n_out, taps) + x.shape[axis + 1:])
        w = w.astype(x.dtype).reshape((n_out, taps) + (1,) * (x.ndim - axis - 1))
        y = jnp.sum(y * w, axis=axis + 1)
    if o.coord == "tf_crop_and_resize":
        outside = (coords < 0) | (coords > n_in - 1)
        if outside.any():
            mask = outside.reshape((n_out,) + (1,) * (x.ndim - axis - 1))
            y = jnp.where(mask, jnp.asarray(o.extrapolation, x.dtype), y)
    return y


#: Coordinate modes that map output to input positions independently of the axis' size
#: (given the scale).
_SIZE_FREE = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "asymmetric",
              "tf_half_pixel_for_nn")


def _symbolic_size(ctx: OpContext, n_in, scale):
    """The output size of an axis of symbolic size ``n_in`` (generated source): an integer
    ``scale`` multiplies it; any other has no exact form."""
    if float(scale).is_integer():
        return n_in * int(scale)
    raise ctx.fail(f"resizing an axis of size {n_in} (known only at run time) by {scale}: "
                   "only integer scales are supported on such axes")


def _repeat_axis(ctx: OpContext, o: _Options, x, axis: int, factor: int):
    """Upsampling an axis of symbolic size by an integer ``factor``, as a broadcast and
    reshape: nearest modes whose coordinates do not depend on the axis' size and that
    repeat each element ``factor`` times (checked on a concrete size)."""
    for n in (5, 6):
        idx = _nearest_index(o, _source_coords(o, n, n * factor, _F(factor), None, False),
                             False) if o.mode == "nearest" and o.coord in _SIZE_FREE else None
        if idx is None or not np.array_equal(np.clip(idx, 0, n - 1).reshape(-1),
                                             np.repeat(np.arange(n), factor)):
            raise ctx.fail(f"{o.mode} resizing (coordinate_transformation_mode {o.coord!r}) of "
                           f"an axis of size {x.shape[axis]} known only at run time: only "
                           "nearest upsampling by an integer factor that repeats elements "
                           "is supported on such axes")
    y = jnp.expand_dims(x, axis + 1)
    y = jnp.broadcast_to(y, y.shape[:axis + 1] + (factor,) + y.shape[axis + 2:])
    return jnp.reshape(y, x.shape[:axis] + (x.shape[axis] * factor,) + x.shape[axis + 1:])


def _resize(ctx: OpContext, x, o: _Options, scales, sizes, roi, axes):
    """Resize held ``x`` over ONNX ``axes`` (all by default) to ``sizes`` or by ``scales``."""
    integer = o.mode != "nearest" and not jnp.issubdtype(x.dtype, jnp.floating)
    if integer and (o.antialias or not jnp.issubdtype(x.dtype, jnp.integer)):
        raise ctx.fail(f"{o.mode} resizing{' with antialias' * o.antialias} of {x.dtype} "
                       "tensors is not supported")
    perm = ctx.in_perms[0]
    rank = x.ndim
    axes = list(range(rank)) if axes is None else [normalize_axis(ctx, int(a), rank) for a in axes]
    in_sizes = [x.shape[_layout.axis_in(perm, a)] for a in axes]
    if (scales is None) == (sizes is None):
        raise ctx.invalid("exactly one of scales and sizes must be given")
    given = scales if scales is not None else sizes
    if len(given) != len(axes) or (roi is not None and len(roi) != 2 * len(axes)):
        raise ctx.invalid(f"scales/sizes ({len(given)}) and roi ({len(roi or [])}) must have "
                          f"1 and 2 entries per resized axis ({len(axes)})")
    scales_from_sizes = False
    if scales is not None:
        scales = [_F(s) for s in scales]
        if any(s <= 0 for s in scales):
            raise ctx.invalid(f"scales {list(scales)} must be positive")
        # The roi does not enter the output size (as in onnxruntime and ONNX's reference).
        sizes = [_symbolic_size(ctx, n, s) if is_dim(n) else int(np.floor(_F(n) * s))
                 for n, s in zip(in_sizes, scales)]
    else:
        if any(is_dim(n) for n in in_sizes):
            raise ctx.fail(f"resizing axes of sizes {in_sizes} (known only at run time) to "
                           "given sizes: give scales, or fixed input sizes")
        sizes = [int(s) for s in sizes]
        policy = ctx.attr("keep_aspect_ratio_policy", "stretch")
        scales_from_sizes = policy == "stretch"
        if policy == "stretch":
            scales = [_F(s) / _F(n) for s, n in zip(sizes, in_sizes)]
        elif policy in ("not_larger", "not_smaller"):
            pick = min if policy == "not_larger" else max
            scale = pick(_F(s) / _F(n) for s, n in zip(sizes, in_sizes))
            scales = [scale] * len(axes)
            sizes = [int(np.floor(scale * _F(n) + _F(0.5))) for n in in_sizes]
        else:
            raise ctx.invalid(f"keep_aspect_ratio_policy {policy!r} is not stretch, "
                              "not_larger or not_smaller")
    if any(s < 0 for s in sizes):
        raise ctx.invalid(f"output sizes {sizes} must be non-negative")
    ctx.out_perms = [perm]
    dtype = x.dtype
    if integer:  # interpolate in float32, then truncate and saturate as onnxruntime does
        x = x.astype(jnp.float32)
    for i, (axis, n_in, n_out, scale) in enumerate(zip(axes, in_sizes, sizes, scales)):
        axis_roi = None if roi is None else (roi[i], roi[len(axes) + i])
        if n_out == n_in and scale == 1 and o.coord != "tf_crop_and_resize":
            continue  # identity along this axis
        if is_dim(n_in):
            x = _repeat_axis(ctx, o, x, _layout.axis_in(perm, axis), int(scale))
            continue
        x = _resize_axis(o, x, _layout.axis_in(perm, axis), n_out, float(scale), axis_roi,
                         exact=scales_from_sizes)
    if integer:
        info = jnp.iinfo(dtype)
        x = jnp.clip(jnp.trunc(x), float(info.min), float(info.max)).astype(dtype)
    return x


def _options(ctx: OpContext, mode_names=("nearest", "linear", "cubic"), **fixed) -> _Options:
    """The Resize attributes with their defaults (``fixed`` overrides for old opsets)."""
    mode = ctx.attr("mode")
    mode = "linear" if mode == "bilinear" and ctx.node.op_type == "Upsample" else mode
    attrs = dict(
        mode=mode,
        coord=ctx.attr("coordinate_transformation_mode", "half_pixel"),
        nearest=ctx.attr("nearest_mode", "round_prefer_floor"),
        cubic_a=float(ctx.attr("cubic_coeff_a", -0.75)),
        exclude_outside=bool(int(ctx.attr("exclude_outside", 0))),
        extrapolation=float(ctx.attr("extrapolation_value", 0.0)),
        antialias=bool(int(ctx.attr("antialias", 0))))
    attrs.update(fixed)
    o = _Options(**attrs)
    if o.mode not in mode_names or o.coord not in _COORD_MODES or o.nearest not in _NEAREST_MODES:
        raise ctx.fail(f"mode {o.mode!r}, coordinate_transformation_mode {o.coord!r}, "
                       f"nearest_mode {o.nearest!r} is not a supported combination")
    return o


def _static_list(ctx: OpContext, value, what):
    """An optional 1-D static input; empty tensors (torch's placeholders) count as absent."""
    value = ctx.static(value, what)
    return None if value is None or value.size == 0 else value.reshape(-1).tolist()


@register("Resize", since=10, layout="custom", static_inputs=(1,))
def resize_v10(ctx: OpContext, x, scales):
    """Opset 10: scales only; asymmetric coordinates, nearest rounds down (up when
    downsampling), as Upsample."""
    o = _options(ctx, ("nearest", "linear"), coord="asymmetric", nearest="simple")
    return _resize(ctx, x, o, _static_list(ctx, scales, "scales"), None, None, None)


@register("Resize", since=11, layout="custom", static_inputs=(1, 2, 3))
def resize(ctx: OpContext, x, roi=None, scales=None, sizes=None):
    """Opset 11-19: ``X [, roi, scales, sizes]``; all but ``X`` known at conversion time.
    Opset 18 adds ``axes``, ``keep_aspect_ratio_policy`` and ``antialias``; 19
    ``half_pixel_symmetric``. ``roi`` is read only for ``tf_crop_and_resize``."""
    o = _options(ctx)
    if o.antialias and o.mode == "nearest":
        raise ctx.invalid("antialias applies to linear and cubic modes only")
    roi = _static_list(ctx, roi, "roi") if o.coord == "tf_crop_and_resize" else None
    return _resize(ctx, x, o, _static_list(ctx, scales, "scales"),
                   _static_list(ctx, sizes, "sizes"), roi, ctx.attr("axes", None))


@register("Upsample", layout="custom")
def upsample_v1(ctx: OpContext, x):
    """Opset 1: 4-D input, ``height_scale`` / ``width_scale``; mode nearest or bilinear."""
    if x.ndim != 4:
        raise ctx.invalid(f"input must be 4-D, got rank {x.ndim}")
    scales = [1.0, 1.0, float(ctx.attr("height_scale")), float(ctx.attr("width_scale"))]
    o = _options(ctx, ("nearest", "linear"), coord="asymmetric", nearest="simple")
    return _resize(ctx, x, o, scales, None, None, None)


@register("Upsample", since=7, layout="custom")
def upsample_v7(ctx: OpContext, x):
    o = _options(ctx, ("nearest", "linear"), coord="asymmetric", nearest="simple")
    return _resize(ctx, x, o, [float(s) for s in ctx.attr("scales")], None, None, None)


@register("Upsample", since=9, layout="custom", static_inputs=(1,))
def upsample(ctx: OpContext, x, scales):
    """Opset 9-10 (deprecated; Resize-10 semantics): ``scales`` is an input."""
    return resize_v10(ctx, x, scales)




def _reflect(x, lo: float, hi: float):
    """Fold coordinates ``x`` into ``[lo, hi]`` by reflecting at the nearer border."""
    span = hi - lo
    if span <= 0:
        return jnp.full_like(x, lo)
    below = x < lo
    dist = jnp.where(below, lo - x, x - hi)
    flips = jnp.floor(dist / span)
    rest = dist - flips * span
    even = jnp.mod(flips, 2) == 0
    inside = jnp.where(below == even, lo + rest, hi - rest)
    return jnp.where((x < lo) | (x > hi), inside, x)


@register("GridSample", since=16, layout="channels_last")
def grid_sample_v16(ctx: OpContext, x, grid):
    """Opset 16: 2-D only, modes bilinear / nearest / bicubic."""
    if x.ndim != 4:
        raise ctx.invalid(f"opset {ctx.opset} GridSample takes 4-D inputs only, got rank {x.ndim}")
    return _grid_sample(ctx, x, grid, {"bilinear": "linear", "nearest": "nearest",
                                       "bicubic": "cubic"})


@register("GridSample", since=20, layout="channels_last")
def grid_sample(ctx: OpContext, x, grid):
    """Opset 20: any rank, modes linear / nearest / cubic."""
    return _grid_sample(ctx, x, grid, {"linear": "linear", "nearest": "nearest", "cubic": "cubic"})


def _grid_sample(ctx: OpContext, x, grid, names: dict[str, str]):
    """X ``[N, *spatial, C]`` (channels-last), grid ``[N, *out, r]`` (ONNX order; its last
    axis lists coordinates in ``[-1, 1]`` fastest spatial axis first, x before y) ->
    Y ``[N, *out, C]``; ``names`` maps the version's modes to nearest / linear / cubic. As
    torch: nearest rounds half to even;
    border / reflection move coordinates lying outside into the image, then every tap
    outside it reads 0 (zeros), the edge (border) or its mirror (reflection). Cubic with
    border clamps only the taps, as torch and onnxruntime (ONNX's reference clamps the
    coordinate as well: it differs near the edges)."""
    mode = ctx.attr("mode")
    padding = ctx.attr("padding_mode")
    align = int(ctx.attr("align_corners"))
    if mode not in names or padding not in ("zeros", "border", "reflection"):
        raise ctx.invalid(f"mode {mode!r} (one of {sorted(names)} in opset {ctx.opset}) or "
                          f"padding_mode {padding!r} (zeros, border, reflection) is invalid")
    mode = names[mode]
    n, *dims, c = x.shape
    r = len(dims)
    if grid.ndim != r + 2 or grid.shape[0] != n or grid.shape[-1] != r:
        raise ctx.invalid(f"grid of shape {list(grid.shape)} does not fit a {r}-D input of "
                          f"batch {n}: expected [N, *out, {r}]")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ctx.fail(f"sampling {x.dtype} inputs is not supported")
    out = grid.shape[1:-1]
    ctype = jnp.promote_types(x.dtype, jnp.float32)  # positions and weights: >= float32
    grid = jnp.asarray(grid, ctype)
    offsets = {"nearest": [0], "linear": [0, 1], "cubic": [-1, 0, 1, 2]}[mode]
    taps = len(offsets)
    flat = jnp.zeros((n,) + out + (1,) * r, np.int32)
    weight = jnp.ones((n,) + out + (1,) * r, ctype)
    valid = jnp.ones((n,) + out + (1,) * r, bool)
    stride = 1
    for i in reversed(range(r)):  # spatial axis i reads grid coordinate r - 1 - i
        size = dims[i]
        v = grid[..., r - 1 - i]
        v = (v + 1) / 2 * (size - 1) if align else ((v + 1) * size - 1) / 2
        lo, hi = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
        if mode == "nearest":
            v = jnp.round(v)
        if padding == "border" and mode != "cubic":  # cubic clamps its taps only, as torch
            v = jnp.where((v < lo) | (v > hi), jnp.clip(v, 0, size - 1), v)
        elif padding == "reflection":
            v = _reflect(v, lo, hi)
        base = jnp.floor(v)
        idx = base[..., None] + jnp.asarray(offsets, ctype)  # [N, *out, taps]
        frac = (v - base)[..., None]
        if mode == "linear":
            w = jnp.concatenate([1 - frac, frac], axis=-1)
        elif mode == "cubic":
            w = _cubic(frac - jnp.asarray(offsets, ctype), -0.75, xp=jnp)
        else:
            w = jnp.ones_like(idx)
        if padding == "reflection":
            idx = jnp.trunc(_reflect(idx, lo, hi))
        inside = (idx >= 0) & (idx <= size - 1)
        idx = jnp.clip(idx, 0, size - 1).astype(np.int32)
        shape = (n,) + out + (1,) * i + (taps,) + (1,) * (r - 1 - i)
        flat = flat + jnp.reshape(idx, shape) * stride
        weight = weight * jnp.reshape(w, shape)
        valid = valid & jnp.reshape(inside, shape)
        stride *= size
    if padding == "zeros":  # border / reflection taps were clamped / mirrored inside
        weight = jnp.where(valid, weight, 0)
    values = jnp.take_along_axis(jnp.reshape(x, (n, -1, c)),
                                 jnp.reshape(flat, (n, -1, 1)), axis=1)
    values = jnp.reshape(values, (n,) + out + (taps ** r, c))
    y = jnp.sum(values * jnp.reshape(weight, (n,) + out + (taps ** r, 1)), axis=-2)
    return y.astype(x.dtype)


@register("AffineGrid", since=20, static_inputs=(1,))
def affine_grid(ctx: OpContext, theta, size):
    """theta ``[N, 2, 3]`` / ``[N, 3, 4]`` and size ``[N, C, H, W]`` / ``[N, C, D, H, W]``
    -> grid ``[N, H, W, 2]`` / ``[N, D, H, W, 3]`` of normalized ``(x, y[, z])``
    coordinates, as GridSample reads them."""
    size = [int(s) for s in ctx.static(size, "size").reshape(-1)]
    align = int(ctx.attr("align_corners"))
    r = len(size) - 2
    if r not in (2, 3) or theta.shape[1:] != (r, r + 1) or theta.shape[0] != size[0]:
        raise ctx.invalid(f"theta {list(theta.shape)} and size {size} must be [N, 2, 3] with "
                          "[N, C, H, W] or [N, 3, 4] with [N, C, D, H, W]")
    axes = []
    for dim in reversed(size[2:]):  # x runs along the last axis
        step = np.arange(dim, dtype=np.float64)
        if align:  # a lone position sits at -1 (ONNX's reference; torch: 0, onnxruntime: 1)
            axes.append(step * 2 / max(dim - 1, 1) - 1)
        else:
            axes.append((2 * step + 1) / dim - 1)
    mesh = list(np.meshgrid(*axes[::-1], indexing="ij"))[::-1]  # [spatial...] each, x first
    base = np.stack(mesh + [np.ones_like(mesh[0])], axis=-1).astype(np.float32)
    base = jnp.asarray(base, theta.dtype)
    return jnp.einsum("...k,nck->n...c", base, theta,
                      precision=lax.Precision.HIGHEST)


def _roi_taps(start, bin_size, grid, n_grid: int, n_out: int, size: int):
    """Bilinear taps of RoiAlign's sampling points along one axis: for roi ``r``, output
    bin ``p`` and sample ``i``, two indices and weights ``[R, n_out, n_grid, 2]`` and whether
    sample ``i`` is one of the roi's ``grid[r]`` samples ``[R, n_out, n_grid]``."""
    start, bin_size, grid = (jnp.asarray(v)[:, None, None] for v in (start, bin_size, grid))
    at = (start + np.arange(n_out)[:, None] * bin_size
          + (np.arange(n_grid) + 0.5) * bin_size / grid)
    inside = (at >= -1) & (at <= size)  # samples further out read 0
    at = jnp.maximum(at, 0)
    low = jnp.floor(at)
    edge = low >= size - 1
    low = jnp.where(edge, size - 1, low)
    at = jnp.where(edge, low, at)
    frac = (at - low)[..., None]
    weights = jnp.concatenate([1 - frac, frac], axis=-1) * inside[..., None]
    idx = jnp.stack([low, jnp.where(edge, low, low + 1)], axis=-1).astype(np.int32)
    return idx, weights, jnp.broadcast_to(np.arange(n_grid) < grid, at.shape)


def _roi_align(ctx: OpContext, x, rois, batch_indices, half_pixel: bool):
    """X ``[N, H, W, C]`` (channels-last), rois ``[R, 4]`` (x1, y1, x2, y2), batch_indices
    ``[R]`` -> ``[R, out_h, out_w, C]``: each bin averages (or maxes) bilinear samples on a
    regular grid, ``sampling_ratio`` per axis (0: ``ceil(roi size / bins)``, which needs
    the rois known at conversion time)."""
    mode = ctx.attr("mode")
    out_h, out_w = int(ctx.attr("output_height")), int(ctx.attr("output_width"))
    ratio = int(ctx.attr("sampling_ratio"))
    scale = float(ctx.attr("spatial_scale"))
    if mode not in ("avg", "max") or min(out_h, out_w) < 1 or ratio < 0:
        raise ctx.invalid(f"mode {mode!r} must be avg or max, output sizes ({out_h}, {out_w}) "
                          f"positive and sampling_ratio {ratio} >= 0")
    if x.ndim != 4 or rois.ndim != 2 or rois.shape[1] != 4 or \
            batch_indices.shape != (rois.shape[0],):
        raise ctx.invalid(f"X {list(x.shape)}, rois {list(rois.shape)} and batch_indices "
                          f"{list(batch_indices.shape)} must be [N, C, H, W], [R, 4] and [R]")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ctx.fail(f"sampling {x.dtype} inputs is not supported")
    _, height, width, _ = x.shape
    xp = np if isinstance(rois, np.ndarray) else jnp
    box = xp.asarray(rois, np.float32) * np.float32(scale) - np.float32(0.5 * half_pixel)
    size_w, size_h = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    if not half_pixel:
        size_w, size_h = xp.maximum(size_w, 1), xp.maximum(size_h, 1)
    bin_h, bin_w = size_h / out_h, size_w / out_w
    if ratio:
        grid_h = grid_w = np.full(rois.shape[0], ratio)
    elif xp is np:
        grid_h, grid_w = np.ceil(bin_h).astype(np.int64), np.ceil(bin_w).astype(np.int64)
    else:
        raise ctx.fail("sampling_ratio 0 samples each roi on a grid sized by the roi, which "
                       "needs the rois known at conversion time (a constant)")
    n_gh, n_gw = max(int(np.max(grid_h, initial=1)), 1), max(int(np.max(grid_w, initial=1)), 1)
    yi, wy, use_y = _roi_taps(box[:, 1], bin_h, grid_h, n_gh, out_h, height)
    xi, wx, use_x = _roi_taps(box[:, 0], bin_w, grid_w, n_gw, out_w, width)
    # Axes [R, out_h, grid_h, out_w, grid_w] (then C) for every sample, one corner at a time.
    b = jnp.asarray(batch_indices).astype(np.int32)[:, None, None, None, None]
    used = (use_y[:, :, :, None, None] & use_x[:, None, None, :, :])[..., None]
    result = None
    for cy in range(2):
        for cx in range(2):
            v = x[b, yi[:, :, :, None, None, cy], xi[:, None, None, :, :, cx]]
            v = v * (wy[:, :, :, None, None, cy] * wx[:, None, None, :, :, cx])[..., None]
            if mode == "avg":
                v = jnp.sum(jnp.where(used, v, 0), axis=(2, 4))
                result = v if result is None else result + v
            else:
                v = jnp.max(jnp.where(used, v, -jnp.inf), axis=(2, 4))
                result = v if result is None else jnp.maximum(result, v)
    if mode == "avg":
        count = jnp.maximum(jnp.asarray(grid_h * grid_w, x.dtype), 1)
        result = result / count[:, None, None, None]
    return result.astype(x.dtype)


# rois: static so that constant rois stay NumPy (sampling_ratio 0 needs them); run-time
# rois are fine with a positive sampling_ratio.
@register("RoiAlign", since=10, layout="channels_last", static_inputs=(1,))
def roi_align_v10(ctx: OpContext, x, rois, batch_indices):
    """Opset 10: roi corners are pixel indices (output_half_pixel), rois at least 1x1."""
    return _roi_align(ctx, x, rois, batch_indices, half_pixel=False)


@register("RoiAlign", since=16, layout="channels_last", static_inputs=(1,))
def roi_align(ctx: OpContext, x, rois, batch_indices):
    """Opset 16: ``coordinate_transformation_mode`` half_pixel (default) shifts corners by
    -0.5; output_half_pixel is opset 10's behaviour."""
    coord = ctx.attr("coordinate_transformation_mode")
    if coord not in ("half_pixel", "output_half_pixel"):
        raise ctx.invalid(f"coordinate_transformation_mode {coord!r} must be half_pixel or "
                          "output_half_pixel")
    return _roi_align(ctx, x, rois, batch_indices, half_pixel=coord == "half_pixel")
