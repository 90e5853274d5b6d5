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
the file's graph (the block that its weight and ReorderOutput channel counts fit). A file
that fits both (every channel count a multiple of 16) is read as onnxruntime itself reads
it: with the block of the onnxruntime installed here, and a warning saying the result is
right only if the file was saved on a machine of that block size.
"""

from __future__ import annotations

import functools
import tempfile
import warnings
import weakref
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import pool, resize
from .._core import layout as _layout
from .._core.registry import register, schema_defaults
from .._pipeline.module import OpContext
from .contrib_transformer import FUSED_CONV, fused_conv

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
            o, i, group = w.shape[0], w.shape[1], int(node.attrs["group"])
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


def _block_size(ctx: OpContext) -> int:
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
        here = _installed_block_size()
        if here not in fitting:
            raise ctx.fail(f"its channel counts fit each block size {fitting}, and the "
                           "installed onnxruntime uses none of them: save the optimized model "
                           "at ORT_ENABLE_EXTENDED instead (no nchwc ops), or convert the "
                           "original model")
        warnings.warn(f"{ctx.label}: this com.microsoft.nchwc file is machine-specific "
                      f"(weights reordered by the saving CPU's channel block) and its channel "
                      f"counts fit each block size {fitting}; read with block {here}, as the "
                      "installed onnxruntime reads it: right only if it was saved on a machine "
                      "of that block size (save at ORT_ENABLE_EXTENDED to avoid this)",
                      stacklevel=2)
        return here
    return fitting[0]


@functools.cache
def _installed_block_size() -> int:
    """The installed onnxruntime's NCHWc block size: where it puts ``w[0, 1]`` of a 32x32 1x1
    convolution's weight when it saves the reordered (``OIHWBiBo``) graph."""
    import onnxruntime as ort

    c = 32
    w = np.arange(c * c, dtype=np.float32).reshape(c, c, 1, 1)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "probe",
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
        return 0  # this onnxruntime writes no NCHWc layout
    return int(np.flatnonzero(reordered[0] == 1)[0])


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


@register("Conv", domain=_NCHWC, layout="channels_last", static_inputs=(1,), defaults=FUSED_CONV)
def nchwc_conv(ctx: OpContext, x, w, b=None, z=None):
    """FusedConv on the unblocked weight; an input with fewer channels than the weight's
    (padded) input channels gets zero channels."""
    group = int(ctx.attr("group"))
    x = _pad_channels(x, w.shape[1] * group)
    w = jnp.asarray(_unblock(ctx.static(w, "the weight"), group, _block_size(ctx)))
    return fused_conv(ctx, x, w, b, z)


@register("ReorderInput", domain=_NCHWC, layout="channels_last", defaults={"channels_last": 0})
def reorder_input(ctx: OpContext, x):
    """NCHW (or, ``channels_last``, NHWC) -> blocked: held channels-last, same values."""
    if int(ctx.attr("channels_last")):  # the NHWC input, in ONNX order, is the holding
        return _layout.to_onnx(x, _layout.channels_last(x.ndim))
    return x


@register("ReorderOutput", domain=_NCHWC, layout="channels_last", defaults={"channels_last": 0})
def reorder_output(ctx: OpContext, x):
    """Blocked -> the first ``channels`` channels, NCHW (or NHWC with ``channels_last``)."""
    channels = int(ctx.attr("channels"))
    if not 0 < channels <= x.shape[-1]:
        raise ctx.invalid(f"channels={channels} must be in 1..{x.shape[-1]}")
    y = x[..., :channels]
    if int(ctx.attr("channels_last")):
        ctx.out_perms = [_layout.identity(y.ndim)]
    return y


for _op, _fn in (("MaxPool", pool.max_pool), ("AveragePool", pool.average_pool),
                 ("GlobalAveragePool", pool.global_average_pool),
                 ("GlobalMaxPool", pool.global_max_pool)):
    register(_op, domain=_NCHWC, layout="channels_last",
             defaults=schema_defaults("", _op))(_fn)


@register("Upsample", domain=_NCHWC, layout="custom",
          defaults={"mode": "nearest", "coordinate_transformation_mode": "asymmetric"})
def nchwc_upsample(ctx: OpContext, x):
    """Integer ``scales`` ``[1, 1, sH, sW]``; nearest (floor) or linear with
    ``coordinate_transformation_mode`` (asymmetric by default)."""
    o = resize._options(ctx, ("nearest", "linear"),
                        coord=ctx.attr("coordinate_transformation_mode"),
                        nearest="floor")
    return resize._resize(ctx, x, o, [float(s) for s in ctx.attr("scales")], None, None, None)
