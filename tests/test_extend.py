"""The public extension API: ``onnx2flax.register_op`` for a custom op, its handler's
``OpContext``; checked against onnxruntime running the same op decomposed into standard ops."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from onnx import helper

import onnx2flax
from onnx2flax._core import registry as _registry
from tests.helpers import make_model, run_ort


@pytest.fixture
def registry(monkeypatch):
    """Registrations made by the test vanish after it."""
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))


def _model(swish_nodes, opset_imports=()):
    w = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"), *swish_nodes]
    model = make_model(nodes, [("x", np.float32, ["batch", 5])], [("y", np.float32, None)],
                       {"w": w})
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in opset_imports)
    return model


def test_register_custom_swish(registry, rng):
    seen = []

    @onnx2flax.register_op("Swish", domain="com.example", layout="elementwise")
    def swish(ctx: onnx2flax.OpContext, x):
        seen.append((isinstance(ctx, onnx2flax.OpContext), ctx.opset, ctx.label))
        return x * jax.nn.sigmoid(ctx.attr("alpha", 1.0) * x)

    custom = _model([helper.make_node("Swish", ["m"], ["y"], name="swish",
                                      domain="com.example", alpha=1.7)],
                    [("com.example", 1)])
    decomposed = _model([helper.make_node("Constant", [], ["a"], value_float=1.7),
                         helper.make_node("Mul", ["m", "a"], ["am"]),
                         helper.make_node("Sigmoid", ["am"], ["s"]),
                         helper.make_node("Mul", ["m", "s"], ["y"])])
    x = rng.standard_normal((4, 5)).astype(np.float32)
    (got,) = onnx2flax.convert(custom).run({"x": x})
    (want,) = run_ort(decomposed, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert seen[0] == (True, 1, "Swish node 'swish'")
    summary = onnx2flax.summarize(custom)
    assert summary.ops[("com.example", "Swish")] == (1, True)


def test_register_op_versions_and_errors(registry):
    @onnx2flax.register_op("Twice", domain="com.example")
    def twice(ctx, x):
        return x * 2

    @onnx2flax.register_op("Twice", domain="com.example", since=2)
    def twice_v2(ctx, x):
        return x * jnp.asarray(ctx.attr("factor"), x.dtype)

    def model(version, **attrs):
        return _model([helper.make_node("Twice", ["m"], ["y"], name="t", domain="com.example",
                                        **attrs)], [("com.example", version)])

    x = np.ones((1, 5), np.float32)
    (m,) = onnx2flax.convert(_model([helper.make_node("Identity", ["m"], ["y"])])).run({"x": x})
    np.testing.assert_allclose(onnx2flax.convert(model(1)).run({"x": x})[0], 2 * m, rtol=1e-6)
    np.testing.assert_allclose(onnx2flax.convert(model(3, factor=3.0)).run({"x": x})[0], 3 * m,
                               rtol=1e-6)
    with pytest.raises(onnx2flax.InvalidModelError, match="Twice node 't' lacks required "
                       "attribute 'factor'"):
        onnx2flax.convert(model(2)).run({"x": x})
    with pytest.raises(RuntimeError, match="registered twice"):
        onnx2flax.register_op("Twice", domain="com.example")(twice)
    with pytest.raises(ValueError, match="layout"):
        onnx2flax.register_op("Other", layout="custom")


@pytest.mark.parametrize("version", [1, 2])
def test_plan_and_interpreter_pick_the_same_version(registry, rng, version):
    """A custom domain's opset (not the default domain's 17) picks the version for both the
    planner (which inputs are image tensors) and the interpreter (which handler runs)."""
    ran = []

    @onnx2flax.register_op("Scale", domain="com.example", layout="onnx")
    def scale_v1(ctx, x):
        ran.append(1)
        return x * 2

    @onnx2flax.register_op("Scale", domain="com.example", since=2, layout="elementwise")
    def scale_v2(ctx, x):
        ran.append(2)
        return x * 2

    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    conv = helper.make_node("Conv", ["s", "w"], ["y"], name="conv")
    custom = make_model([helper.make_node("Scale", ["x"], ["s"], domain="com.example"), conv],
                        [("x", np.float32, [1, 3, 8, 8])], [("y", np.float32, None)], {"w": w})
    custom.opset_import.append(helper.make_opsetid("com.example", version))
    decomposed = make_model([helper.make_node("Constant", [], ["two"], value_float=2.0),
                             helper.make_node("Mul", ["x", "two"], ["s"]), conv],
                            [("x", np.float32, [1, 3, 8, 8])], [("y", np.float32, None)],
                            {"w": w})
    converted = onnx2flax.convert(custom)
    # Only the elementwise version lets the image input through to the Conv channels-last.
    assert converted.inputs[0].channels_last == (version == 2)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    (got,) = converted.run({"x": x})
    (want,) = run_ort(decomposed, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert set(ran) == {version}


def test_ai_onnx_domain_is_the_default_domain(rng):
    """A node whose domain is spelled ``"ai.onnx"`` gets the handler of the model's
    default-domain opset (Softmax-13 over one axis, not Softmax-1 over the flattened tail)."""
    model = make_model([helper.make_node("Softmax", ["x"], ["y"], domain="ai.onnx", axis=1)],
                       [("x", np.float32, [2, 3, 4])], [("y", np.float32, None)])
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    (got,) = onnx2flax.convert(model).run({"x": x})
    (want,) = run_ort(model, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
