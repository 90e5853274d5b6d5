"""Generated source at any size the ONNX file allows: dims it leaves open (``dim_param``,
unnamed) are read from the inputs at run time (``batch = x.shape[0]``), and shape
arithmetic on them (Shape -> Gather -> Concat -> Reshape, Resize scales) is Python
arithmetic in the source.

Each model is saved with ``onnx2flax.codegen.save``, imported in a fresh Python process
and run at two sizes of its open dims; the outputs are compared with onnxruntime's on the
same file, and the weights tree with ``converted.variables``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import check_generated_source
from onnx import TensorProto, helper
from test_codegen import _ResNet

import onnx2flax
from onnx2flax import codegen
from onnx2flax._core import boundary as _boundary
from onnx2flax.errors import OnnxConversionError

#: Runs in a fresh interpreter: imports DIR/model.py, loads its weights, applies it (jitted)
#: to the arrays of DIR/inputs.npz (module layout) and saves the outputs to DIR/outputs.npz.
_RUNNER = textwrap.dedent("""
    import importlib.util, sys
    import jax, numpy as np
    folder, api = sys.argv[1], sys.argv[2]
    spec = importlib.util.spec_from_file_location("generated_model", folder + "/model.py")
    model = importlib.util.module_from_spec(spec)
    sys.modules["generated_model"] = model
    spec.loader.exec_module(model)
    with np.load(folder + "/inputs.npz") as data:
        xs = [data[f"x{i}"] for i in range(len(data.files))]
    if api == "nnx":
        from flax import nnx
        outs = nnx.jit(lambda m, *a: m(*a))(model.load_model(), *xs)
    else:
        outs = jax.jit(lambda v, *a: model.Model().apply(v, *a))(model.load_variables(), *xs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    flat = jax.tree.leaves(jax.tree.map(np.asarray, model.load_variables()))
    np.savez(folder + "/outputs.npz", *[np.asarray(o) for o in outs])
    np.savez(folder + "/weights.npz", *flat)
""")


def _run_generated(folder, api, module_inputs):
    np.savez(folder / "inputs.npz", **{f"x{i}": x for i, x in enumerate(module_inputs)})
    result = subprocess.run([sys.executable, "-c", _RUNNER, str(folder), api],
                            capture_output=True, text=True, timeout=600,
                            env={"JAX_PLATFORMS": "cpu", "PATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(folder / "outputs.npz") as data:
        outs = [data[f"arr_{i}"] for i in range(len(data.files))]
    with np.load(folder / "weights.npz") as data:
        weights = [data[f"arr_{i}"] for i in range(len(data.files))]
    return outs, weights


def _feeds(converted, sizes: dict[str, int], seed=0):
    """Random feeds: each open dim at ``sizes[its dim_param]``; integer inputs in [0, 50)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in converted.inputs:
        shape = [d if isinstance(d, int) else sizes[d] for d in spec.shape]
        feeds[spec.name] = (rng.integers(0, 50, shape) if spec.dtype.kind in "iu"
                            else rng.standard_normal(shape)).astype(spec.dtype)
    return feeds


def _check_at_sizes(tmp_path, model, size_list, *, api="linen", channels_last=True):
    """Save ``model``'s source once, then run it at each sizes of ``size_list`` in a fresh
    process against onnxruntime; its weights are ``converted.variables``."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(model)
    converted = onnx2flax.convert(proto, channels_last=channels_last)
    assert any(not isinstance(d, int) for s in converted.inputs for d in s.shape)
    codegen.save(converted, tmp_path, api=api)
    source = (tmp_path / codegen.MODEL_FILE).read_text()
    check_generated_source(source)
    session = ort.InferenceSession(proto.SerializeToString())
    for k, sizes in enumerate(size_list):
        feeds = _feeds(converted, sizes, seed=k)
        expected = session.run(None, feeds)
        module_inputs = [_boundary.to_module(feeds[s.name], s) for s in converted.inputs]
        got, weights = _run_generated(tmp_path, api, module_inputs)
        assert len(got) == len(expected)
        for spec, g, e in zip(converted.outputs, got, expected):
            g = _boundary.to_onnx(g, spec)
            assert g.shape == e.shape, (sizes, spec.name)
            np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-5, err_msg=f"{sizes} {spec.name}")
    reference = jax.tree.leaves(jax.tree.map(np.asarray, converted.variables))
    assert len(weights) == len(reference)
    for a, b in zip(weights, reference):
        np.testing.assert_array_equal(a, b)
    return source


def _export(model, args, path, **options):
    torch.manual_seed(0)
    return onnx2flax.export(model.eval(), args, path, **options)


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_resnet_any_batch(tmp_path, api):
    """The ResNet-style model exported with a dynamic batch runs at batch 1 and 3."""
    torch.manual_seed(0)
    path = _export(_ResNet(), (torch.randn(2, 3, 8, 8),), tmp_path / "resnet.onnx")
    source = _check_at_sizes(tmp_path / "out", path, [{"batch": 1}, {"batch": 3}], api=api)
    assert "batch = x_x.shape[0]" in source


class _Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 16)
        layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.enc = torch.nn.TransformerEncoder(layer, 2)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, ids):
        return self.head(self.enc(self.emb(ids)).mean(1))


def test_transformer_any_batch_and_sequence_length(tmp_path):
    batch = torch.export.Dim("batch", min=1, max=64)
    seq = torch.export.Dim("seq", min=2, max=64)
    path = _export(_Encoder(), (torch.randint(0, 50, (2, 7)),), tmp_path / "enc.onnx",
                   dynamic_shapes=({0: batch, 1: seq},))
    source = _check_at_sizes(tmp_path / "out", path,
                             [{"batch": 2, "seq": 7}, {"batch": 3, "seq": 12}])
    assert "seq = x_x.shape[1]" in source


class _Net(torch.nn.Module):
    """Conv, BatchNorm, a nearest 2x upsample, squeeze-excitation, max pool and a
    ``view(x.size(0), -1)`` (TorchScript: Shape -> Gather -> Unsqueeze -> Concat -> Reshape)."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.c2 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.up = torch.nn.Upsample(scale_factor=2, mode="nearest")
        self.se = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Conv2d(8, 8, 1),
                                      torch.nn.Hardsigmoid())
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.bn(self.c1(x)))
        y = y + self.up(self.c2(y))
        y = self.pool(y * self.se(y))
        f = y.mean((2, 3))
        return self.fc(f.view(f.size(0), -1)), y


def test_dynamo_height_and_width_expressions(tmp_path):
    """torch records ``2*h`` for an even height: the source reads ``h = x.shape[1] // 2``
    and runs at other even sizes."""
    batch, h, w = (torch.export.Dim(n, min=2, max=256) for n in ("batch", "h", "w"))
    path = _export(_Net(), (torch.randn(2, 3, 16, 24),), tmp_path / "net.onnx",
                   dynamic_shapes=({0: batch, 2: 2 * h, 3: 2 * w},))
    source = _check_at_sizes(tmp_path / "out", path, [
        {"batch": 2, "2*h": 16, "2*w": 24}, {"batch": 3, "2*h": 10, "2*w": 32}])
    assert "h = x_x.shape[1] // 2" in source


def _torchscript(model, x, path, dynamic_axes, **options):
    torch.onnx.export(model.eval(), (x,), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": dynamic_axes}, **options)
    return path


def test_torchscript_shape_arithmetic_any_batch(tmp_path):
    """``view(x.size(0), -1)`` exported by TorchScript is shape arithmetic on the batch."""
    torch.manual_seed(0)
    path = _torchscript(_Net(), torch.randn(2, 3, 16, 16), tmp_path / "net.onnx", {0: "N"},
                        opset_version=13)
    assert "Gather" in {n.op_type for n in onnx.load(path).graph.node}
    _check_at_sizes(tmp_path / "out", path, [{"N": 1}, {"N": 4}])


def test_a_size_the_model_needs_fixed_is_named(tmp_path):
    """With H and W free, the upsampled branch (even sizes only) cannot be added to the
    other: the error names the open dims and how to fix them; fixed, it generates."""
    torch.manual_seed(0)
    path = _torchscript(_Net(), torch.randn(2, 3, 16, 16), tmp_path / "net.onnx",
                        {0: "N", 2: "H", 3: "W"}, opset_version=13)
    converted = onnx2flax.convert(path)
    with pytest.raises(OnnxConversionError) as info:
        codegen.generate(converted)
    message = str(info.value)
    assert "input 'x' dims 0 (N), 2 (H), 3 (W)" in message
    assert "--input-shape x=<N>,3,<H>,<W>" in message
    fixed = onnx2flax.convert(path, input_shapes={"x": (2, 3, 16, 16)})
    assert "x_x.shape" not in codegen.generate(fixed)


def _shape_graph():
    """Shape arithmetic in ONNX ops only: a [N, S, 6] input reshaped to [N, S*2, 3] from
    Shape, Slice, Gather, Mul, Div, Concat; a Range over S cast to float and expanded to
    [N, S, 6]; the size and shape as outputs; a Slice to the end of N."""
    n = helper.make_node
    def i64(name, v):
        return helper.make_tensor(name, TensorProto.INT64, [len(v)], v)

    nodes = [
        n("Shape", ["x"], ["shape"]),
        n("Slice", ["shape", "zero", "one"], ["n"]),
        n("Gather", ["shape", "one_scalar"], ["s"], axis=0),
        n("Unsqueeze", ["s", "zero"], ["s1"]),
        n("Mul", ["s1", "two"], ["s2"]),
        n("Gather", ["shape", "two_scalar"], ["c"], axis=0),
        n("Div", ["c", "two_scalar"], ["c2"]),
        n("Unsqueeze", ["c2", "zero"], ["c3"]),
        n("Concat", ["n", "s2", "c3"], ["target"], axis=0),
        n("Reshape", ["x", "target"], ["y"]),
        n("Range", ["zero_scalar", "s", "one_scalar"], ["r_int"]),
        n("Cast", ["r_int"], ["r"], to=TensorProto.FLOAT),
        n("Expand", ["r6", "shape"], ["e"]),
        n("Unsqueeze", ["r", "last"], ["r6"]),
        n("Add", ["x", "e"], ["z"]),
        n("Size", ["x"], ["size"]),
        n("Slice", ["x", "zero", "far"], ["head"]),  # tf2onnx's "to the end": 1e9
    ]
    nodes.insert(13, nodes.pop(12))  # Unsqueeze before the Expand reading it
    inits = [i64("zero", [0]), i64("one", [1]), i64("two", [2]), i64("last", [-1]),
             i64("far", [10 ** 9]),
             helper.make_tensor("one_scalar", TensorProto.INT64, [], [1]),
             helper.make_tensor("two_scalar", TensorProto.INT64, [], [2]),
             helper.make_tensor("zero_scalar", TensorProto.INT64, [], [0])]
    graph = helper.make_graph(
        nodes, "shapes", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("shape", TensorProto.INT64, None),
         helper.make_tensor_value_info("size", TensorProto.INT64, None),
         helper.make_tensor_value_info("head", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_shape_arithmetic_at_two_sizes(tmp_path):
    source = _check_at_sizes(tmp_path, _shape_graph(), [{"N": 1, "S": 2}, {"N": 3, "S": 5}])
    assert "N = x_x.shape[0]" in source and "S = x_x.shape[1]" in source
