"""com.microsoft.nchwc: the blocked-channel layout ops onnxruntime writes into a graph saved
at ORT_ENABLE_ALL (ReorderInput, Conv, MaxPool, AveragePool, GlobalAveragePool,
GlobalMaxPool, Upsample, ReorderOutput), mapped back to plain channels-last ops.

A blocked tensor ``[N, C_pad, H, W]`` holds channel ``c`` at block ``c // B``, lane
``c % B`` in memory; its values are those of an ordinary NCHW tensor with ``C_pad``
channels (the model's own channels, then zeros). So onnx2flax holds it channels-last like
any image: ReorderInput and ReorderOutput only pad / slice channels (no transpose), and the
Conv weights, which onnxruntime stores block-reordered (``OIHWBiBo``, or ``OIHWBo`` when the
input is plain NCHW or the convolution depthwise), are put back in ONNX order at conversion.

``B`` is the block size of the machine that saved the file (8 with AVX2, 16 with
AVX-512); onnxruntime warns that such files are only valid there. onnx2flax reads it from
the file's graph (the block that its weight and ReorderOutput channel counts fit) and
refuses a file that fits both, never the block of the machine it runs on.
"""

from __future__ import annotations

import weakref

import jax.numpy as jnp
import numpy as np

from .. import _layout
from .._registry import register
from . import pool, resize
from .contrib_transformer import fused_conv

_NCHWC = "com.microsoft.nchwc"
_BLOCK_SIZES = (8, 16)  # onnxruntime's MlasNchwcGetBlockSize: AVX2, AVX-512
_FITTING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph -> its blocks


def _fits(graph, b: int) -> bool:
    """Whether the file's nchwc nodes are what onnxruntime's nchwc transformer writes at
    block size ``b``: every Conv weight has a multiple of ``b`` output channels; a group-1
    Conv reads a plain NCHW input (weight ``OIHWBo``) exactly when its input channels are
    below ``b``, else a blocked one with a multiple of ``b``; a grouped one is depthwise or
    has multiples of ``b``; a ReorderOutput's input has ``channels`` padded up to a
    multiple of ``b``."""
    padded: dict[str, int] = {}  # blocked tensor -> its padded channel count, where known
    blocked: set[str] = set()  # every blocked tensor (ReorderInput's padding is not known)
    for node in graph.nodes:
        if node.domain == _NCHWC and node.op_type == "Conv":
            w = graph.constants.get(node.inputs[1])
            if w is None or w.ndim < 3:
                continue
            o, i, group = w.shape[0], w.shape[1], int(node.attrs.get("group", 1))
            if o % b or (group == 1 and (i % b if node.inputs[0] in blocked else i >= b)):
                return False
            if group > 1 and not (i == 1 and o == group) and (i % b or o // group % b):
                return False
            padded[node.outputs[0]] = o
            blocked.add(node.outputs[0])
        elif node.domain == _NCHWC and node.op_type == "ReorderInput":
            blocked.add(node.outputs[0])
        elif node.domain == _NCHWC and node.op_type == "ReorderOutput":
            c_pad = padded.get(node.inputs[0])
            channels = int(node.attrs.get("channels", 0))  # its handler checks it is there
            if c_pad is not None and channels and c_pad != -(-channels // b) * b:
                return False
        elif node.inputs and node.inputs[0] in blocked:  # pools, Upsample, Add, Relu, ...
            blocked.add(node.outputs[0])
            if node.inputs[0] in padded:
                padded[node.outputs[0]] = padded[node.inputs[0]]
    return True


def _block_size(ctx) -> int:
    """The block size the file was saved with, read from its graph (not from this machine):
    the one of 8 and 16 that its nchwc nodes fit; an error when both or neither do."""
    graph = ctx._interp.graph
    if graph not in _FITTING:  # once per graph, not per Conv
        _FITTING[graph] = [b for b in _BLOCK_SIZES if _fits(graph, b)]
    fitting = _FITTING[graph]
    if not fitting:
        raise ctx.invalid("the com.microsoft.nchwc nodes fit no onnxruntime block size "
                          f"{_BLOCK_SIZES} (weight / ReorderOutput channel counts)")
    if len(fitting) > 1:
        raise ctx.fail("this file is machine-specific (onnxruntime warns so when it saves "
                       "the ORT_ENABLE_ALL graph): its weights are reordered by the saving "
                       f"CPU's channel block size, and its channel counts fit each of "
                       f"{fitting}, so the block cannot be told from the file. Save the "
                       "optimized model at ORT_ENABLE_EXTENDED instead (no nchwc ops), or "
                       "convert the original model")
    return fitting[0]


def _unblock(w: np.ndarray, group: int, b: int) -> np.ndarray:
    """A block-reordered nchwc Conv weight ``[O, I, *k]`` (block ``b``) back in ONNX order."""
    o, i, *k = w.shape
    flat = np.ascontiguousarray(w).reshape(-1)
    n = len(k)
    if group == 1 and i >= b:  # OIHWBiBo
        blocked = flat.reshape(o // b, i // b, *k, b, b)
        order = (0, n + 3, 1, n + 2, *range(2, n + 2))
    else:  # OIHWBo: plain NCHW input, or depthwise
        blocked = flat.reshape(o // b, i, *k, b)
        order = (0, n + 2, 1, *range(2, n + 2))
    return np.transpose(blocked, order).reshape(w.shape)


def _pad_channels(x, channels: int):
    """Channels-last ``x`` with zero channels appended up to ``channels``."""
    missing = channels - x.shape[-1]
    return x if missing <= 0 else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, missing)])


@register("Conv", domain=_NCHWC, layout="channels_last", static_inputs=(1,))
def nchwc_conv(ctx, x, w, b=None, z=None):
    """FusedConv on the unblocked weight; an input with fewer channels than the weight's
    (padded) input channels gets zero channels."""
    group = int(ctx.attr("group", 1))
    x = _pad_channels(x, w.shape[1] * group)
    w = jnp.asarray(_unblock(ctx.static(w, "the weight"), group, _block_size(ctx)))
    return fused_conv(ctx, x, w, b, z)


@register("ReorderInput", domain=_NCHWC, layout="channels_last")
def reorder_input(ctx, x):
    """NCHW (or, ``channels_last``, NHWC) -> blocked: held channels-last, same values."""
    if int(ctx.attr("channels_last", 0)):  # the NHWC input, in ONNX order, is the holding
        return _layout.to_onnx(x, _layout.channels_last(x.ndim))
    return x


@register("ReorderOutput", domain=_NCHWC, layout="channels_last")
def reorder_output(ctx, x):
    """Blocked -> the first ``channels`` channels, NCHW (or NHWC with ``channels_last``)."""
    channels = int(ctx.attr("channels"))
    if not 0 < channels <= x.shape[-1]:
        raise ctx.invalid(f"channels={channels} must be in 1..{x.shape[-1]}")
    y = x[..., :channels]
    if int(ctx.attr("channels_last", 0)):
        ctx.out_perms = [_layout.identity(y.ndim)]
    return y


for _op, _fn in (("MaxPool", pool.max_pool), ("AveragePool", pool.average_pool),
                 ("GlobalAveragePool", pool.global_average_pool),
                 ("GlobalMaxPool", pool.global_max_pool)):
    register(_op, domain=_NCHWC, layout="channels_last")(_fn)


@register("Upsample", domain=_NCHWC, layout="custom")
def nchwc_upsample(ctx, x):
    """Integer ``scales`` ``[1, 1, sH, sW]``; nearest (floor) or linear with
    ``coordinate_transformation_mode`` (asymmetric by default)."""
    o = resize._options(ctx, ("nearest", "linear"),
                        coord=ctx.attr("coordinate_transformation_mode", "asymmetric"),
                        nearest="floor")
    return resize._resize(ctx, x, o, [float(s) for s in ctx.attr("scales")], None, None, None)
