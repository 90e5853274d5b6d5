"""RNN, GRU and LSTM against onnxruntime, and torch exports of nn.RNN/GRU/LSTM."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import helper

import onnx2flax
from onnx2flax._core.graph import opset_map
from onnx2flax._core.registry import lookup
from helpers import assert_codegen_matches, check_graph, convert_and_run, make_model, run_ort

F = np.float32
SEQ, BATCH, SIZE, HIDDEN = 5, 3, 4, 6
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def _model(op, rng, *, direction="forward", layout=0, lens=None, peepholes=False,
           runtime_weights=False, **attrs):
    """One recurrent node with weights as initializers (or inputs), X and states as inputs."""
    dirs = 2 if direction == "bidirectional" else 1
    g = GATES[op] * HIDDEN
    weights = {"W": rng.standard_normal((dirs, g, SIZE)) * 0.5,
               "R": rng.standard_normal((dirs, g, HIDDEN)) * 0.5,
               "B": rng.standard_normal((dirs, 2 * g)) * 0.5}
    if peepholes:
        weights["P"] = rng.standard_normal((dirs, 3 * HIDDEN)) * 0.5
    weights = {k: v.astype(F) for k, v in weights.items()}
    # Drawn in layout 0 and swapped to batch-first for layout 1: the same seed gives the
    # same model in both layouts.
    swap = (lambda v: np.swapaxes(v, 0, 1)) if layout else (lambda v: v)
    state_shape = [dirs, BATCH, HIDDEN]
    feeds = {"X": swap(rng.standard_normal([SEQ, BATCH, SIZE]).astype(F)),
             "h0": swap(rng.standard_normal(state_shape).astype(F))}
    names = ["X", "W", "R", "B", "lens" if lens is not None else "", "h0"]
    outputs = ["Y", "Y_h"]
    if op == "LSTM":
        feeds["c0"] = swap(rng.standard_normal(state_shape).astype(F))
        names += ["c0", "P" if peepholes else ""]
        outputs.append("Y_c")
    inits = {} if runtime_weights else dict(weights)
    if runtime_weights:
        feeds.update(weights)
    if lens is not None:
        inits["lens"] = np.asarray(lens, np.int32)
    node = helper.make_node(op, names, outputs, direction=direction, hidden_size=HIDDEN,
                            **({"layout": layout} if layout else {}), **attrs)
    inputs = [(k, F, list(v.shape)) for k, v in feeds.items()]
    return make_model([node], inputs, [(o, F, None) for o in outputs], inits, opset=14), feeds


@pytest.mark.parametrize("op,direction", [
    ("RNN", "bidirectional"), ("GRU", "bidirectional"), ("LSTM", "bidirectional"),
    ("GRU", "forward"), ("LSTM", "reverse")])
def test_directions(rng, op, direction):
    model, feeds = _model(op, rng, direction=direction)
    check_graph(model, feeds)


@pytest.mark.parametrize("op", ["GRU", "LSTM"])
def test_batch_first_layout(op):
    """onnxruntime refuses layout=1: compare with its layout-0 run of the same model."""
    model0, feeds0 = _model(op, np.random.default_rng(1), direction="bidirectional")
    model1, feeds1 = _model(op, np.random.default_rng(1), direction="bidirectional", layout=1)
    expected = run_ort(model0, feeds0)
    got = convert_and_run(model1, feeds1)
    np.testing.assert_allclose(got[0], np.transpose(expected[0], (2, 0, 1, 3)), rtol=1e-5, atol=1e-5)
    for g, e in zip(got[1:], expected[1:]):
        np.testing.assert_allclose(g, np.swapaxes(e, 0, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op,attrs", [
    ("RNN", {"activations": ["LeakyRelu", "HardSigmoid"], "activation_alpha": [0.2, 0.3],
             "activation_beta": [0.4]}),
    ("RNN", {"activations": ["Relu"], "clip": 0.7}),
    ("GRU", {"linear_before_reset": 1}),
    ("GRU", {"activations": ["HardSigmoid", "Softsign", "Sigmoid", "Elu"], "clip": 1.5}),
    ("LSTM", {"clip": 0.5}),
    ("LSTM", {"activations": ["HardSigmoid", "Tanh", "Softplus"]}),
    ("LSTM", {"input_forget": 1}),
])
def test_attributes(rng, op, attrs):
    direction = "bidirectional" if len(attrs.get("activations", [])) > 3 or op == "RNN" and \
        len(attrs.get("activations", [])) == 2 else "forward"
    model, feeds = _model(op, rng, direction=direction, **attrs)
    check_graph(model, feeds)


def test_lstm_peepholes_with_clip(rng):
    model, feeds = _model("LSTM", rng, direction="bidirectional", peepholes=True, clip=0.3)
    check_graph(model, feeds)


@pytest.mark.parametrize("op,attrs", [("GRU", {"linear_before_reset": 1}), ("LSTM", {})])
def test_variable_sequence_lengths(rng, op, attrs):
    model, feeds = _model(op, rng, direction="bidirectional", lens=[5, 2, 4], **attrs)
    check_graph(model, feeds)


def test_runtime_weights_and_missing_optional_inputs(rng):
    model, feeds = _model("LSTM", rng, direction="reverse", runtime_weights=True)
    check_graph(model, feeds)
    node = helper.make_node("GRU", ["X", "W", "R"], ["", "Y_h"], hidden_size=HIDDEN)
    w = rng.standard_normal((1, 3 * HIDDEN, SIZE)).astype(F)
    r = rng.standard_normal((1, 3 * HIDDEN, HIDDEN)).astype(F)
    model = make_model([node], [("X", F, [SEQ, BATCH, SIZE])], [("Y_h", F, None)],
                       {"W": w, "R": r}, opset=7)
    check_graph(model, {"X": rng.standard_normal((SEQ, BATCH, SIZE)).astype(F)})


def test_constant_weights_become_params(rng):
    model, feeds = _model("LSTM", rng)
    converted = onnx2flax.convert(model)
    assert set(converted.variables["params"]) == {"W", "R", "B"}
    assert_codegen_matches(converted, feeds)


def _torch_export(kind, rng, with_state, dynamo=False):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = getattr(torch.nn, kind)(SIZE, HIDDEN, num_layers=2, bidirectional=True,
                                  batch_first=True).eval()
    x = torch.from_numpy(rng.standard_normal((BATCH, SEQ, SIZE)).astype(F))
    states = ()
    names = ["x"]
    if with_state:
        h0 = torch.from_numpy(rng.standard_normal((4, BATCH, HIDDEN)).astype(F))
        states = ((h0, torch.from_numpy(rng.standard_normal((4, BATCH, HIDDEN)).astype(F))),) \
            if kind == "LSTM" else (h0,)
        names += ["h0", "c0"] if kind == "LSTM" else ["h0"]
    buf = io.BytesIO()
    if dynamo:
        buf.write(torch.onnx.export(net, (x, *states), dynamo=True, input_names=names,
                                    verbose=False).model_proto.SerializeToString())
    else:
        torch.onnx.export(net, (x, *states), buf, dynamo=False, input_names=names)
    with torch.no_grad():
        out, state = net(x, *states)
    state = state if isinstance(state, tuple) else (state,)
    feeds = {"x": x.numpy()}
    flat = [s for st in states for s in (st if isinstance(st, tuple) else (st,))]
    feeds.update({n: s.numpy() for n, s in zip(names[1:], flat)})
    return buf.getvalue(), feeds, [out.numpy()] + [s.numpy() for s in state]


@pytest.mark.parametrize("kind,with_state", [("RNN", True), ("GRU", False), ("LSTM", True),
                                              ("LSTM", False)])
def test_torch_export(rng, kind, with_state):
    """2 layers, bidirectional, batch_first, through the TorchScript exporter; compared
    with onnxruntime and torch."""
    _check_torch_export(*_torch_export(kind, rng, with_state))


def _check_torch_export(data, feeds, expected):
    model = onnx.load_from_string(data)
    missing = sorted({n.op_type for n in model.graph.node if n.op_type != "Constant"
                      and lookup(n, opset_map(model.opset_import)) is None})
    if missing:
        pytest.skip(f"the export also needs {missing}, not converted on this branch")
    _, got, _ = check_graph(model, feeds)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["LSTM"])
def test_torch_dynamo_export(rng, kind):
    """The dynamo exporter keeps LSTM (and GRU) as ONNX ops; RNN it unrolls into MatMuls."""
    _check_torch_export(*_torch_export(kind, rng, False, dynamo=True))
