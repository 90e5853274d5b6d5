"""Conv and ConvTranspose -> ``nn.Conv`` / ``nn.ConvTranspose`` with channels-last kernels.

ONNX kernels are ``[C_out, C_in/group, *k]`` (Conv) and ``[C_in, C_out/group, *k]``
(ConvTranspose); Flax kernels are ``[*k, C_in/group, C_out]``.
"""

from __future__ import annotations

import functools
import itertools

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._core.registry import register
from .._pipeline.module import OpContext
from ._common import auto_pads, check_window_fits, spatial_attrs


def _float_weights(weights, required: int):
    w = weights[1] if len(weights) > 1 else None
    if w is None or w.dtype.kind != "f" or w.ndim < 3:
        return None
    if len(weights) > 2 and weights[2] is None and required > 2:
        return None
    return w


def _conv_params(node, weights):
    w = _float_weights(weights, 3 if len(node.inputs) > 2 and node.inputs[2] else 2)
    if w is None:
        return None
    return _with_bias(node, weights, _conv_kernel(w), _conv_kernel_inverse)


def _with_bias(node, weights, kernel, inverse):
    params, sources = {"kernel": kernel}, {"kernel": (1, inverse)}
    if len(node.inputs) > 2 and node.inputs[2]:
        params["bias"] = weights[2]
        sources["bias"] = (2, None)
    return {"params": params, "sources": sources}


def _conv_kernel(w):
    """OIHW -> HWIO (any number of spatial dims)."""
    n = w.ndim - 2
    xp = np if isinstance(w, np.ndarray) else jnp
    return xp.transpose(w, (*range(2, n + 2), 1, 0))


def _conv_kernel_inverse(kernel: np.ndarray) -> np.ndarray:
    """HWIO -> OIHW."""
    n = kernel.ndim - 2
    return np.transpose(kernel, (n + 1, n, *range(n)))


def _conv_transpose_kernel(w, group: int):
    """``[C_in, C_out/g, *k]`` -> the forward-conv kernel ``[*k, C_in/g, C_out]`` over the
    stride-dilated input, spatially flipped (ConvTranspose is the gradient of Conv)."""
    xp = np if isinstance(w, np.ndarray) else jnp
    c_in, c_out_g, *k = w.shape
    n = len(k)
    w = xp.reshape(w, (group, c_in // group, c_out_g, *k))
    w = xp.transpose(w, (*range(3, n + 3), 1, 0, 2))  # [*k, C_in/g, g, C_out/g]
    w = xp.reshape(w, (*k, c_in // group, group * c_out_g))
    return xp.flip(w, axis=tuple(range(n)))


def _conv_transpose_kernel_inverse(kernel: np.ndarray, group: int) -> np.ndarray:
    """Undo :func:`_conv_transpose_kernel`: ``[*k, C_in/g, C_out]`` -> ``[C_in, C_out/g, *k]``."""
    n = kernel.ndim - 2
    *k, c_in_g, c_out = kernel.shape
    w = np.reshape(np.flip(kernel, axis=tuple(range(n))), (*k, c_in_g, group, c_out // group))
    w = np.transpose(w, (n + 1, n, n + 2, *range(n)))  # [g, C_in/g, C_out/g, *k]
    return np.reshape(w, (group * c_in_g, c_out // group, *k))


def _conv_nd(x, kernel, strides, pads, dilations, group, lhs_dilation=None,
             preferred_element_type=None):
    """Channels-last convolution with a ``[*k, I, O]`` kernel."""
    n = kernel.ndim - 2
    dims = lax.ConvDimensionNumbers((0, n + 1, *range(1, n + 1)), (n + 1, n, *range(n)),
                                    (0, n + 1, *range(1, n + 1)))
    return lax.conv_general_dilated(x, kernel, strides, pads, lhs_dilation=lhs_dilation,
                                    rhs_dilation=dilations, dimension_numbers=dims,
                                    feature_group_count=group,
                                    preferred_element_type=preferred_element_type)


def _kernel_shape(ctx: OpContext, w) -> tuple[int, ...]:
    k = tuple(int(d) for d in w.shape[2:])
    declared = ctx.attr("kernel_shape", None)
    if declared is not None and tuple(int(d) for d in declared) != k:
        raise ctx.invalid(f"kernel_shape {list(declared)} disagrees with the weight's shape "
                          f"{list(w.shape)}")
    return k


def conv_geometry(ctx: OpContext, x, w):
    """Checked ``kernel_shape, group, strides, dilations, pads`` of a Conv-like node (also
    ConvInteger, QLinearConv); X ``[N, *spatial, C_in]`` (channels-last), W
    ``[C_out, C_in/g, *k]``; ``auto_pad`` resolved into ``pads``."""
    k = _kernel_shape(ctx, w)
    group = int(ctx.attr("group"))
    strides, dilations, pads = spatial_attrs(ctx, k)
    if x.ndim != len(k) + 2:
        raise ctx.invalid(f"input has rank {x.ndim}, a {len(k)}-D kernel needs rank {len(k) + 2}")
    if group < 1 or x.shape[-1] != w.shape[1] * group or w.shape[0] % group:
        raise ctx.invalid(f"input has {x.shape[-1]} channels; weight {list(w.shape)} with group "
                          f"{group} expects {w.shape[1] * group}")
    pads = auto_pads(ctx, x.shape[1:-1], k, strides, dilations, pads)
    check_window_fits(ctx, x.shape[1:-1], k, dilations, pads)
    return k, group, strides, dilations, pads


def integer_conv(ctx: OpContext, x, w):
    """conv(X, W) of integer tensors accumulated exactly in int32 (X channels-last, W in ONNX
    order ``[C_out, C_in/g, *k]``; zero points already subtracted)."""
    _, group, strides, dilations, pads = conv_geometry(ctx, x, w)
    return _conv_nd(jnp.asarray(x, jnp.int32), _conv_kernel(jnp.asarray(w, jnp.int32)), strides,
                    pads, dilations, group, preferred_element_type=jnp.int32)


@register("Conv", layout="channels_last", params=_conv_params)
def conv(ctx: OpContext, x, w, b=None):
    """Y = conv(X, W) + B; X ``[N, *spatial, C_in]`` (channels-last), W ``[C_out, C_in/g, *k]``."""
    k, group, strides, dilations, pads = conv_geometry(ctx, x, w)
    if ctx.layer_plan is not None:
        return ctx.layer(nn.Conv, x, features=int(w.shape[0]), kernel_size=k, strides=strides,
                         padding=pads, kernel_dilation=dilations, feature_group_count=group,
                         use_bias=b is not None)
    y = _conv_nd(x, _conv_kernel(w), strides, pads, dilations, group)
    return y if b is None else y + b


def _conv_transpose_params(node, weights):
    w = _float_weights(weights, 3 if len(node.inputs) > 2 and node.inputs[2] else 2)
    if w is None:
        return None
    group = int(node.attrs["group"])
    if group < 1 or w.shape[0] % group:
        return None
    return _with_bias(node, weights, _conv_transpose_kernel(w, group),
                      functools.partial(_conv_transpose_kernel_inverse, group=group))


@register("ConvTranspose", layout="channels_last", params=_conv_transpose_params)
def conv_transpose(ctx: OpContext, x, w, b=None):
    """Transposed convolution; X ``[N, *spatial, C_in]``, W ``[C_in, C_out/g, *k]``.

    Flax pads the stride-dilated input, ONNX and torch crop the output, so per spatial dim
    the input padding is ``(d*(k-1) - pad_begin, d*(k-1) - pad_end + output_padding)``.
    """
    k = _kernel_shape(ctx, w)
    n = len(k)
    group = int(ctx.attr("group"))
    strides, dilations, pads = spatial_attrs(ctx, k)
    output_padding = [int(p) for p in ctx.attr("output_padding", [0] * n)]
    output_shape = ctx.attr("output_shape", None)
    auto_pad = ctx.attr("auto_pad")
    if x.ndim != n + 2:
        raise ctx.invalid(f"input has rank {x.ndim}, a {n}-D kernel needs rank {n + 2}")
    if group < 1 or x.shape[-1] != w.shape[0] or w.shape[0] % group:
        raise ctx.invalid(f"input has {x.shape[-1]} channels; weight {list(w.shape)} with group "
                          f"{group} expects {w.shape[0]}")
    if len(output_padding) != n:
        raise ctx.invalid(f"output_padding {output_padding} must have {n} entries")
    sizes = x.shape[1:-1]
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if output_shape is not None:
            target = [int(v) for v in output_shape][-n:]
        else:
            target = [size * s for size, s in zip(sizes, strides)]
        pads = []
        for size, kk, s, d, op, out in zip(sizes, k, strides, dilations, output_padding, target):
            total = s * (size - 1) + op + (kk - 1) * d + 1 - out
            if auto_pad == "SAME_UPPER":
                pads.append((total // 2, total - total // 2))
            else:
                pads.append((total - total // 2, total // 2))
    elif auto_pad == "VALID":
        pads = [(0, 0)] * n
    padding = [(d * (kk - 1) - pb, d * (kk - 1) - pe + op)
               for kk, d, (pb, pe), op in zip(k, dilations, pads, output_padding)]
    if any(s * (size - 1) + 1 + lo + hi < (kk - 1) * d + 1
           for size, s, (lo, hi), kk, d in zip(sizes, strides, padding, k, dilations)):
        raise ctx.invalid(f"pads {pads} leave no output for input size {list(sizes)}")
    c_out = int(w.shape[1]) * group
    if ctx.layer_plan is not None:
        if group == 1:
            return ctx.layer(nn.ConvTranspose, x, features=c_out, kernel_size=k, strides=strides,
                             padding=padding, kernel_dilation=dilations, use_bias=b is not None)
        return ctx.layer(nn.Conv, x, features=c_out, kernel_size=k, strides=(1,) * n,
                         padding=padding, input_dilation=strides, kernel_dilation=dilations,
                         feature_group_count=group, use_bias=b is not None)
    y = _conv_nd(x, _conv_transpose_kernel(w, group), (1,) * n, padding, dilations, group,
                 lhs_dilation=strides)
    return y if b is None else y + b


@register("Col2Im", since=18, static_inputs=(1, 2))
def col2im(ctx: OpContext, x, image_shape, block_shape):
    """``[N, C * prod(block), L] -> [N, C, *image]``: sum every column of sliding blocks
    back into the (padded, then cropped) image; the inverse of im2col."""
    image = [int(v) for v in ctx.static(image_shape, "image_shape").reshape(-1)]
    block = tuple(int(v) for v in ctx.static(block_shape, "block_shape").reshape(-1))
    strides, dilations, pads = spatial_attrs(ctx, block)
    n_cells = int(np.prod(block))
    if len(image) != len(block) or x.ndim != 3 or any(b < 1 for b in block) or \
            x.shape[1] % max(n_cells, 1):
        raise ctx.invalid(f"input {list(x.shape)}, image_shape {image} and block_shape "
                          f"{list(block)} do not fit: expected [N, C * {n_cells}, L]")
    padded = [n + pb + pe for n, (pb, pe) in zip(image, pads)]
    counts = [(p - (b - 1) * d - 1) // s + 1 for p, b, d, s in zip(padded, block, dilations,
                                                                    strides)]
    if any(c < 1 for c in counts) or int(np.prod(counts)) != x.shape[2]:
        raise ctx.invalid(f"{x.shape[2]} columns do not match the {counts} blocks that fit "
                          f"the padded image {padded}")
    # Flat position in the padded image of block cell k in block l, per axis then combined.
    where = np.zeros((1, 1), np.int64)
    for size, b, d, s, c in zip(padded, block, dilations, strides, counts):
        along = np.arange(b)[:, None] * d + np.arange(c)[None, :] * s
        where = (where[:, None, :, None] * size + along[None, :, None, :]).reshape(
            where.shape[0] * b, where.shape[1] * c)
    n, channels = x.shape[0], x.shape[1] // n_cells
    y = jnp.zeros((n, channels, int(np.prod(padded))), x.dtype)
    y = y.at[:, :, where.reshape(-1)].add(jnp.reshape(x, (n, channels, -1)))
    y = y.reshape((n, channels, *padded))
    return y[(slice(None), slice(None), *(slice(pb, pb + m) for m, (pb, _) in zip(image, pads)))]


@register("DeformConv", since=19, layout="channels_last")
def deform_conv(ctx: OpContext, x, w, offset, b=None, mask=None):
    """X ``[N, *spatial, C]`` (channels-last); W ``[oC, C/group, *k]``, offset
    ``[N, offset_group * prod(k) * n, *out]`` and mask ``[N, offset_group * prod(k), *out]``
    (ONNX order) -> ``[N, *out, oC]``. Each kernel cell samples X (linear interpolation,
    zeros outside) at its position moved by its offset (per axis, in axis order), scaled
    by its mask; the samples are then convolved with W as a grouped convolution."""
    k = _kernel_shape(ctx, w)
    r = len(k)
    group = int(ctx.attr("group"))
    offset_group = int(ctx.attr("offset_group"))
    strides, dilations, pads = spatial_attrs(ctx, k)
    n, *sizes, c = x.shape
    cells = int(np.prod(k))
    if x.ndim != r + 2 or group < 1 or offset_group < 1 or c != w.shape[1] * group or \
            w.shape[0] % group or c % offset_group:
        raise ctx.invalid(f"input {list(x.shape)} (channels last), weight {list(w.shape)}, "
                          f"group {group} and offset_group {offset_group} do not fit")
    out = [(m + pb + pe - (kk - 1) * d - 1) // s + 1
           for m, kk, d, s, (pb, pe) in zip(sizes, k, dilations, strides, pads)]
    if offset.shape != (n, offset_group * cells * r, *out) or (
            mask is not None and mask.shape != (n, offset_group * cells, *out)):
        raise ctx.invalid(f"offset {list(offset.shape)} and mask "
                          f"{None if mask is None else list(mask.shape)} must be "
                          f"[{n}, {offset_group * cells * r}, *{out}] and "
                          f"[{n}, {offset_group * cells}, *{out}]")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ctx.fail(f"deformable convolution of {x.dtype} inputs is not supported")
    ctype = jnp.promote_types(x.dtype, jnp.float32)  # positions and weights: >= float32
    offset = jnp.reshape(offset, (n, offset_group, cells, r, *out)).astype(ctype)
    cell = np.indices(k).reshape(r, cells)  # kernel cell -> its index along each axis
    # Per axis: the sampling position of every (batch, offset group, cell, output position).
    taps = []
    for i in range(r):
        view = [1] * r
        view[i] = out[i]
        base = (np.arange(out[i]).reshape(view) * strides[i] - pads[i][0]
                + cell[i].reshape((cells,) + (1,) * r) * dilations[i])
        at = base + offset[:, :, :, i]
        low = jnp.floor(at)
        frac = at - low
        taps.append([(low + t, frac if t else 1 - frac) for t in (0, 1)])
    groups = jnp.reshape(x, (n, -1, offset_group, c // offset_group)).transpose(0, 2, 1, 3)
    sampled = 0
    for corner in itertools.product((0, 1), repeat=r):
        flat, weight = 0, 1
        for i, t in enumerate(corner):
            idx, wt = taps[i][t]
            weight = weight * jnp.where((idx >= 0) & (idx <= sizes[i] - 1), wt, 0)
            flat = flat * sizes[i] + jnp.clip(idx, 0, sizes[i] - 1).astype(np.int32)
        values = groups[np.arange(n)[:, None, None], np.arange(offset_group)[None, :, None],
                        jnp.reshape(flat, (n, offset_group, -1))]
        sampled = sampled + values * jnp.reshape(weight, (n, offset_group, -1, 1))
    sampled = jnp.reshape(sampled, (n, offset_group, cells, *out, -1))
    if mask is not None:
        sampled = sampled * jnp.reshape(mask, (n, offset_group, cells, *out, 1)).astype(ctype)
    # [N, og, cells, *out, C/og] -> [N, *out, group, C/group, cells]
    cols = jnp.moveaxis(sampled, (1, 2), (-3, -1))
    cols = jnp.reshape(cols, (n, *out, group, c // group, cells))
    kernel = jnp.reshape(jnp.asarray(w, ctype), (group, w.shape[0] // group, c // group, cells))
    y = jnp.einsum("n...gck,gock->n...go", cols, kernel, precision=lax.Precision.HIGHEST)
    y = jnp.reshape(y, (n, *out, w.shape[0]))
    return (y if b is None else y + jnp.asarray(b, ctype)).astype(x.dtype)
