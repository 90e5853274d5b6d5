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
the onnxruntime it runs with (once, by letting it reorder a known 1x1 convolution).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import _layout
from .._registry import register
from ..errors import UnsupportedOpError
from . import conv, pool, resize
from .contrib_transformer import fused_conv

_NCHWC = "com.microsoft.nchwc"


@functools.cache
def block_size() -> int:
    """onnxruntime's NCHWc block size on this machine: where it puts ``w[0, 1]`` of a 32x32
    1x1 convolution's weight when it reorders it to ``OIHWBiBo``."""
    import onnxruntime as ort

    c = 32
    w = np.arange(c * c, dtype=np.float32).reshape(c, c, 1, 1)
    node = helper.make_node("Conv", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "probe",
                              [helper.make_tensor_value_info("x", 1, [1, c, 4, 4])],
                              [helper.make_tensor_value_info("y", 1, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # its warning that such files are machine-specific
        options.optimized_model_filepath = str(Path(folder) / "probe.onnx")
        ort.InferenceSession(model.SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
        saved = onnx.load(options.optimized_model_filepath)
    reordered = [numpy_helper.to_array(t).ravel() for t in saved.graph.initializer
                 if list(t.dims) == [c, c, 1, 1]]
    if not reordered or not (reordered[0] == 1).any():
        raise UnsupportedOpError("com.microsoft.nchwc ops: this onnxruntime does not use the "
                                 "NCHWc layout, so the file's reordered weights cannot be read")
    return int(np.flatnonzero(reordered[0] == 1)[0])


def _unblock(w: np.ndarray, group: int) -> np.ndarray:
    """A block-reordered nchwc Conv weight ``[O, I, *k]`` back in ONNX order."""
    b = block_size()
    o, i, *k = w.shape
    if o % b:
        raise ValueError(f"nchwc Conv weight {list(w.shape)}: {o} output channels are not a "
                         f"multiple of the block size {b}")
    flat = np.ascontiguousarray(w).reshape(-1)
    n = len(k)
    if group == 1 and i % b == 0:  # OIHWBiBo
        blocked = flat.reshape(o // b, i // b, *k, b, b)
        order = (0, n + 3, 1, n + 2, *range(2, n + 2))
    else:  # OIHWBo: plain NCHW input, or depthwise
        blocked = flat.reshape(o // b, i, *k, b)
        order = (0, n + 2, 1, *range(2, n + 2))
    return np.transpose(blocked, order).reshape(w.shape)


def _nchwc_conv_params(node, weights):
    w = weights[1]
    if w is None or w.dtype.kind != "f":
        return None
    unblocked = [weights[0], _unblock(w, int(node.attrs.get("group", 1))), *weights[2:]]
    built = conv._conv_params(node, unblocked)
    if built is not None:  # the file's block-reordered kernel cannot be written back
        built["sources"].pop("kernel", None)
    return built


def _pad_channels(x, channels: int):
    """Channels-last ``x`` with zero channels appended up to ``channels``."""
    missing = channels - x.shape[-1]
    return x if missing <= 0 else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, missing)])


@register("Conv", domain=_NCHWC, layout="channels_last", params=_nchwc_conv_params)
def nchwc_conv(ctx, x, w, b=None, z=None):
    """FusedConv on the unblocked weight; an input with fewer channels than the weight's
    (padded) input channels gets zero channels."""
    group = int(ctx.attr("group", 1))
    x = _pad_channels(x, w.shape[1] * group)
    if ctx.layer_plan is None:
        w = jnp.asarray(_unblock(ctx.static(w, "the weight"), group))
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
