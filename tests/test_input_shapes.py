"""``convert(input_shapes=, constants=)`` and ``run`` specializing on graph inputs that decide
shapes, axes or branches (issue 11 part A), checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import check_source_at_sizes, make_model, run_ort
from onnx import TensorProto, helper

import onnx2flax
from onnx2flax._pipeline import inputs as _inputs
from onnx2flax import codegen
from onnx2flax.errors import InvalidInputError, OutputExistsError

F, I64 = np.float32, np.int64
RNG = np.random.default_rng(11)


def _assert_matches(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


# --- input_shapes ------------------------------------------------------------------------------

def _pool_model():
    """A 3x3 max pool on ``x [N, 2, H, W]``: traced with H = W = 1 it cannot work."""
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3])
    return make_model([node], [("x", F, ["N", 2, "H", "W"])], [("y", F, None)], opset=13)


def test_placeholder_dims_are_named_in_the_error():
    converted = onnx2flax.convert(_pool_model())
    with pytest.raises(onnx2flax.errors.OnnxConversionError) as info:
        converted.outputs
    message = str(info.value)
    assert "input 'x' dims 0 (N), 2 (H), 3 (W)" in message
    assert "input_shapes={'x': (<N>,2,<H>,<W>)}" in message
    assert "--input-shape x=<N>,2,<H>,<W>" in message


def test_generated_source_keeps_the_dims_open(tmp_path):
    """The source of the same model reads N, H and W from its input: it runs at any sizes
    the window fits."""
    source = check_source_at_sizes(tmp_path, _pool_model(), [{"N": 1, "H": 5, "W": 4},
                                                             {"N": 2, "H": 7, "W": 9}])
    assert "N = x_x.shape[0]" in source


def _needs_fixed_dims():
    """``x [N, 2, H, W]`` reshaped to ``[-1, 8]``: whether it fits depends on the sizes."""
    node = helper.make_node("Reshape", ["x", "shape"], ["y"])
    return make_model([node], [("x", F, ["N", 2, "H", "W"])], [("y", F, None)], opset=13,
                      initializers={"shape": np.array([-1, 8], I64)})


def test_codegen_names_the_open_dims_a_node_needs_fixed():
    with pytest.raises(onnx2flax.errors.OnnxConversionError) as info:
        codegen.generate(onnx2flax.convert(_needs_fixed_dims()))
    message = str(info.value)
    assert "Reshape node" in message and "input 'x' dims 0 (N), 2 (H), 3 (W)" in message
    assert "--input-shape x=<N>,2,<H>,<W>" in message
    fixed = onnx2flax.convert(_needs_fixed_dims(), input_shapes={"x": [1, 2, 2, 2]})
    assert "reshape(1, 8)" in codegen.generate(fixed)


def test_input_shapes_fix_the_traced_dims(tmp_path):
    model = _pool_model()
    converted = onnx2flax.convert(model, input_shapes={"x": [2, 2, 7, 6]})
    assert converted.inputs[0].shape == (2, 2, 7, 6)
    assert converted.outputs[0].name == "y"
    assert "float32[2, 7, 6, 2] channels-last" in codegen.generate(converted)
    x = RNG.standard_normal((2, 2, 7, 6)).astype(F)
    _assert_matches(converted.run({"x": x}), run_ort(model, {"x": x}))
    with pytest.raises(InvalidInputError, match="dim 2 must be 7"):
        converted.run({"x": np.ones((2, 2, 8, 6), F)})
    written = codegen.save(converted, tmp_path / "out")
    assert sorted(p.name for p in written) == ["model.py", "weights.msgpack"]


@pytest.mark.parametrize("shapes, message", [
    ({"z": [1, 2, 3, 3]}, r"input_shapes names unknown graph input\(s\) \['z'\]; the model's "
                          r"inputs are \['x'\]"),
    ({"x": [1, 3, 4, 4]}, r"input_shapes\['x'\] = \[1, 3, 4, 4\]: dim 1 of input 'x' is "
                          r"declared 2 \(shape \['N', 2, 'H', 'W'\]\)"),
    ({"x": [1, 2, 4]}, r"has rank 3; input 'x' is declared \['N', 2, 'H', 'W'\] \(rank 4\)"),
    ({"x": [1, 2, -4, 4]}, r"must be non-negative ints"),
    ({"x": "1244"}, r"input_shapes\['x'\] must be a sequence of ints, got '1244'"),
    ([("x", [1, 2, 4, 4])], r"input_shapes must be a dict of graph input name -> shape"),
])
def test_input_shapes_errors(shapes, message):
    with pytest.raises(InvalidInputError, match=message):
        onnx2flax.convert(_pool_model(), input_shapes=shapes)


# --- constants -----------------------------------------------------------------------------------

def _topk_model():
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1)
    return make_model([node], [("x", F, [3, "W"]), ("k", I64, [1])],
                      [("v", F, None), ("i", I64, None)], opset=11)


def test_constants_freeze_an_input_at_conversion():
    model = _topk_model()
    x = RNG.standard_normal((3, 6)).astype(F)
    converted = onnx2flax.convert(model, constants={"k": [2]})  # a list takes the input's dtype
    assert [s.name for s in converted.inputs] == ["x"]
    assert converted.specialized_inputs == []
    _assert_matches(converted.run({"x": x}), run_ort(model, {"x": x, "k": np.array([2], I64)}))
    with pytest.raises(InvalidInputError, match=r"unknown input name\(s\) \['k'\]"):
        converted.run({"x": x, "k": np.array([2], I64)})


@pytest.mark.parametrize("constants, message", [
    ({"kk": 2}, r"constants names unknown graph input\(s\) \['kk'\]; the model's inputs are "
                r"\['x', 'k'\]"),
    ({"k": np.array([2.0], F)}, r"constants\['k'\]: input 'k' must be int64, got float32"),
    ({"k": [[2]]}, r"constants\['k'\]: input 'k' must have rank 1"),
    ({"k": [2.5]}, r"constants\['k'\]: input 'k' must be int64, got float64"),
    ({"k": [[2], [3, 4]]}, r"constants\['k'\] is not an array"),
])
def test_constants_errors(constants, message):
    with pytest.raises(InvalidInputError, match=message):
        onnx2flax.convert(_topk_model(), constants=constants)


# --- run specializes on inputs that decide shapes, axes or branches --------------------------

def _shape_inputs_model():
    """Reshape's shape, Unsqueeze's axes, Slice's starts/ends, TopK's k, Tile's repeats,
    ConstantOfShape's shape and Range's limit, all graph inputs."""
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("Unsqueeze", ["r", "axes"], ["u"]),
             helper.make_node("Slice", ["x", "starts", "ends"], ["s"]),
             helper.make_node("TopK", ["x", "k"], ["tv", "ti"], axis=1),
             helper.make_node("Tile", ["x", "repeats"], ["t"]),
             helper.make_node("ConstantOfShape", ["shape"], ["c"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])),
             helper.make_node("Range", ["zero", "limit", "one"], ["g"])]
    inputs = [("x", F, [4, 6]), ("shape", I64, [2]), ("axes", I64, [1]), ("starts", I64, [2]),
              ("ends", I64, [2]), ("k", I64, [1]), ("repeats", I64, [2]), ("limit", I64, [])]
    outputs = [(n, F, None) for n in ("u", "s", "tv", "t", "c")] + [("ti", I64, None),
                                                                     ("g", I64, None)]
    return make_model(nodes, inputs, outputs,
                      {"zero": np.array(0, I64), "one": np.array(1, I64)}, opset=13)


def _shape_feeds(shape, axes, starts, ends, k, repeats, limit):
    values = dict(shape=shape, axes=axes, starts=starts, ends=ends, k=k, repeats=repeats)
    return {"x": RNG.standard_normal((4, 6)).astype(F), "limit": np.array(limit, I64),
            **{n: np.array(v, I64) for n, v in values.items()}}


def test_run_specializes_on_shape_inputs_per_value(monkeypatch):
    model = _shape_inputs_model()
    converted = onnx2flax.convert(model)
    assert converted.specialized_inputs == ["shape", "axes", "starts", "ends", "k", "repeats",
                                            "limit"]
    first = _shape_feeds([3, 8], [0], [1, 0], [3, 5], [2], [1, 2], 5)
    second = _shape_feeds([2, 12], [2], [0, 2], [4, -1], [4], [2, 1], 3)
    for feeds in (first, second, {**first, "x": RNG.standard_normal((4, 6)).astype(F)}):
        _assert_matches(converted.run(feeds), run_ort(model, feeds))
    assert len(converted._specializations) == 2  # a new x alone converts nothing anew
    monkeypatch.setattr(_inputs, "MAX_SPECIALIZATIONS", 2)
    third = _shape_feeds([6, 4], [1], [0, 0], [2, 2], [1], [1, 1], 1)
    _assert_matches(converted.run(third), run_ort(model, third))
    assert len(converted._specializations) == 2  # the least recently used one went
    _assert_matches(converted.run(first), run_ort(model, first))


def test_specialization_key_is_the_value_with_its_shape():
    """``[1, 2]`` and ``[[1, 2]]`` have the same bytes: different shapes, different keys."""
    node = helper.make_node("Reshape", ["x", "s"], ["y"])
    model = make_model([node], [("x", F, [2, 3]), ("s", I64, None)], [("y", F, None)], opset=13)
    converted = onnx2flax.convert(model)
    x = RNG.standard_normal((2, 3)).astype(F)
    for s in (np.array([3, 2], I64), np.array([[3, 2]], I64)[0], np.array([6], I64)):
        _assert_matches(converted.run({"x": x, "s": s}), run_ort(model, {"x": x, "s": s}))
    assert len(converted._specializations) == 2


def test_specializations_share_the_weights():
    """A Reshape by a run-time shape after a Gemm: each conversion for a new shape holds the
    first conversion's weights, not a copy."""
    w = RNG.standard_normal((6, 8)).astype(F)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Reshape", ["h", "s"], ["y"])]
    model = make_model(nodes, [("x", F, [4, 6]), ("s", I64, [2])], [("y", F, None)], {"w": w},
                       opset=13)
    converted = onnx2flax.convert(model)
    for shape in ([8, 4], [2, 16]):
        feeds = {"x": RNG.standard_normal((4, 6)).astype(F), "s": np.array(shape, I64)}
        _assert_matches(converted.run(feeds), run_ort(model, feeds))
        assert converted.specialized(feeds).variables is converted.variables


def _rate_model():
    """Silero VAD's pattern: ``sr`` (a run-time int64 scalar) decides an If whose branches are
    valid only for their own rate (a chunk of 256 samples at 16 kHz, 96 at 8 kHz: 256 is no
    multiple of 3, 96 none of 64), and a state is fed back."""
    def branch(name, frame):
        frames = helper.make_node("Reshape", ["x", f"{name}_shape"], [f"{name}_f"])
        energy = helper.make_node("ReduceSumSquare", [f"{name}_f"], [f"{name}_e"], axes=[1],
                                  keepdims=0)
        mix = helper.make_node("MatMul", [f"{name}_e", f"{name}_w"], [f"{name}_m"])
        return helper.make_graph(
            [frames, energy, mix], name, [],
            [helper.make_tensor_value_info(f"{name}_m", TensorProto.FLOAT, None)],
            [helper.make_tensor(f"{name}_shape", TensorProto.INT64, [2], [-1, frame]),
             helper.make_tensor(f"{name}_w", TensorProto.FLOAT, [8 if frame == 32 else 32, 4],
                                RNG.standard_normal(4 * (8 if frame == 32 else 32)).tolist())])
    nodes = [helper.make_node("Equal", ["sr", "rate16k"], ["is16k"]),
             helper.make_node("If", ["is16k"], ["feat"], then_branch=branch("k16", 32),
                              else_branch=branch("k8", 3)),
             helper.make_node("Mul", ["state", "decay"], ["kept"]),
             helper.make_node("Add", ["kept", "feat"], ["stateN"]),
             helper.make_node("Tanh", ["stateN"], ["out"])]
    return make_model(nodes, [("x", F, [None]), ("state", F, [4]), ("sr", I64, [])],
                      [("out", F, None), ("stateN", F, None)],
                      {"rate16k": np.array(16000, I64), "decay": np.full(4, 0.5, F)}, opset=16)


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("rate, chunk", [(16000, 256), (8000, 96)])
def test_if_on_a_runtime_rate_streams_like_onnxruntime(rate, chunk, frozen):
    model = _rate_model()
    converted = onnx2flax.convert(model, constants={"sr": rate} if frozen else None)
    assert converted.specialized_inputs == ([] if frozen else ["sr"])
    state = want_state = np.zeros(4, F)
    for _ in range(5):
        x = RNG.standard_normal(chunk).astype(F)
        feeds = {"x": x, "state": state} | ({} if frozen else {"sr": np.array(rate, I64)})
        out, state = converted.run(feeds)
        want, want_state = run_ort(model, {"x": x, "state": want_state, "sr": np.array(rate, I64)})
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state, want_state, rtol=1e-5, atol=1e-5)
        state = state.copy()


def test_module_of_a_specializing_model_says_what_to_freeze():
    model = _rate_model()
    converted = onnx2flax.convert(model)
    with pytest.raises(onnx2flax.errors.OnnxConversionError, match=r"\['sr'\] decide shapes, "
                       r"axes or branches: give their values with convert\(model, constants="):
        codegen.generate(converted, [np.zeros(256, F), np.zeros(4, F), np.array(16000, I64)])
    with pytest.raises(InvalidInputError, match=r"missing input\(s\) \['sr'\]"):
        converted.specialized({"x": np.zeros(256, F)})
    fixed = converted.specialized({"sr": 16000})  # what run() uses for sr=16000: a module
    assert [s.name for s in fixed.inputs] == ["x", "state"]
    x, state = RNG.standard_normal(256).astype(F), np.ones(4, F)
    out, _ = fixed.module.apply(fixed.variables, x, state)
    want, _ = run_ort(model, {"x": x, "state": state, "sr": np.array(16000, I64)})
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    assert "def __call__" in codegen.generate(fixed, [x, state])


def test_nnx_run_specializes_too():
    model = _rate_model()
    converted = onnx2flax.convert(model, api="nnx")
    assert converted.specialized_inputs == ["sr"]
    feeds = {"x": RNG.standard_normal(96).astype(F), "state": np.ones(4, F),
             "sr": np.array(8000, I64)}
    _assert_matches(converted.run(feeds), run_ort(model, feeds))


# --- codegen.save leaves nothing behind -----------------------------------------------------

def test_save_failing_in_generation_creates_nothing(tmp_path):
    with pytest.raises(onnx2flax.errors.OnnxConversionError):
        codegen.save(onnx2flax.convert(_needs_fixed_dims()), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_save_failing_in_writing_removes_what_it_wrote(tmp_path):
    (tmp_path / "weights.msgpack").write_bytes(b"theirs")
    converted = onnx2flax.convert(_pool_model(), input_shapes={"x": [1, 2, 5, 5]})
    with pytest.raises(OutputExistsError, match="weights.msgpack"):
        codegen.save(converted, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.msgpack"]
    assert (tmp_path / "weights.msgpack").read_bytes() == b"theirs"
