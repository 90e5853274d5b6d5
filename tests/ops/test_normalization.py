"""Batch / Layer / Instance / Group normalization and LRN against onnxruntime: Flax layers
when the scale and bias are constants (params ``scale`` / ``bias``), direct computation
otherwise."""

from __future__ import annotations

import jax
import numpy as np
import onnx
import pytest
from helpers import after_conv, check_graph, check_node, make_model, node_model, sandwich
from onnx import helper

import onnx2flax

RNG = np.random.default_rng(0)


def _vec(*shape, offset=0.0):
    return (RNG.standard_normal(shape) * 0.5 + offset).astype(np.float32)


def _layer_norm_model(x_shape, scale_shape, *, axis=None, epsilon=None, bias=True, outputs=1,
                      opset=17, const_scale=True):
    attrs = {k: v for k, v in (("axis", axis), ("epsilon", epsilon)) if v is not None}
    feeds = {"x": (RNG.standard_normal(x_shape) * 2 + 1).astype(np.float32)}
    scale = _vec(*scale_shape, offset=1.0)
    consts = {}
    (consts if const_scale else feeds)["ln.weight"] = scale
    if bias:
        consts["ln.bias"] = _vec(*scale_shape)
    names = ["y", "mean", "inv_std"][:outputs]
    inputs = ["x", "ln.weight"] + (["ln.bias"] if bias else [])
    node = helper.make_node("LayerNormalization", inputs, names, **attrs)
    model = make_model([node], [(k, np.float32, v.shape) for k, v in feeds.items()],
                       [(n, np.float32, None) for n in names], consts, opset=opset)
    return model, feeds


@pytest.mark.parametrize("case", [
    dict(x_shape=(2, 3, 8), scale_shape=(8,)),
    dict(x_shape=(2, 3, 8), scale_shape=(8,), axis=2, epsilon=1e-3, bias=False),
    dict(x_shape=(2, 3, 8), scale_shape=(8,), outputs=3),
    dict(x_shape=(2, 3, 8), scale_shape=(8,), axis=1, outputs=2),
    dict(x_shape=(2, 3, 8), scale_shape=(8,), opset=13),
])
def test_layer_norm_layer(case):
    """A constant [D] scale (and bias) makes an nn.LayerNorm with the model's epsilon."""
    model, feeds = _layer_norm_model(**case)
    converted, _, _ = check_graph(model, feeds, rtol=1e-5, atol=1e-5)
    ln = converted.variables["params"]["ln"]
    assert sorted(ln) == (["bias", "scale"] if case.get("bias", True) else ["scale"])
    assert ln["scale"].shape == case["scale_shape"]


@pytest.mark.parametrize("case", [
    dict(x_shape=(2, 3, 8), scale_shape=(3, 8), axis=1, outputs=3),
    dict(x_shape=(2, 3, 8), scale_shape=(1,), epsilon=0.5),
    dict(x_shape=(2, 3, 8), scale_shape=(8,), const_scale=False, outputs=3),
])
def test_layer_norm_direct(case):
    """Multi-dim or size-1 scales, or a scale that is an input: computed directly."""
    model, feeds = _layer_norm_model(**case)
    check_graph(model, feeds, rtol=1e-5, atol=1e-5)


def test_layer_norm_channels_last():
    """On a channels-last NCHW value (ONNX axis -1 = W is held third): over W and over H, W
    with a [W] scale (nn.LayerNorm), over C, H, W and H, W with a full-shape scale (direct)."""
    consts = {"lnw.weight": _vec(5, offset=1.0), "lnw.bias": _vec(5),
              "chw": _vec(3, 4, 5, offset=1.0), "hw": _vec(4, 5, offset=1.0)}
    specs = [("LayerNormalization", ["lnw.weight", "lnw.bias"], None, np.float32),
             ("LayerNormalization", ["lnw.weight", "lnw.bias"], {"axis": 2}, np.float32),
             ("LayerNormalization", ["chw"], {"axis": 1, "epsilon": 1e-3}, np.float32),
             ("LayerNormalization", ["hw"], {"axis": -2}, np.float32)]
    model, feeds = after_conv(specs, consts=consts)
    converted, _, _ = check_graph(model, feeds, rtol=1e-5, atol=1e-5)
    assert set(converted.variables["params"]["lnw"]) == {"scale", "bias"}


def test_rms_norm():
    """Opset 23: nn.RMSNorm for a constant [D] scale (on a channels-last value too), direct
    for a full-shape scale."""
    consts = {"rms.weight": _vec(5, offset=1.0), "hw": _vec(4, 5, offset=1.0)}
    specs = [("RMSNormalization", ["rms.weight"], None, np.float32),
             ("RMSNormalization", ["rms.weight"], {"axis": 1, "epsilon": 0.1}, np.float32),
             ("RMSNormalization", ["hw"], {"axis": 2}, np.float32)]
    model, feeds = after_conv(specs, consts=consts, opset=23)
    converted, _, _ = check_graph(model, feeds, rtol=1e-5, atol=1e-5)
    assert set(converted.variables["params"]["rms"]) == {"scale"}


@pytest.mark.parametrize("opset", [9, 13])
def test_mean_variance_and_lp_norm(opset):
    """On a channels-last value: MVN over its default axes and others, Lp norms."""
    specs = [("MeanVarianceNormalization", [], attrs, np.float32)
             for attrs in (None, {"axes": [1]}, {"axes": [0, -1]})]
    specs += [("LpNormalization", [], attrs, np.float32)
              for attrs in (None, {"axis": 1, "p": 1}, {"axis": 2})]
    model, feeds = after_conv(specs, opset=opset)
    check_graph(model, feeds, rtol=1e-5, atol=1e-5)


def test_instance_norm():
    """nn.InstanceNorm on channels-last values (2-D and 1-D spatial), and direct when the
    scale is an input."""
    consts = {"inorm.weight": _vec(3, offset=1.0), "inorm.bias": _vec(3)}
    weights = ["inorm.weight", "inorm.bias"]
    specs = [("InstanceNormalization", weights, None, np.float32),
             ("InstanceNormalization", weights, {"epsilon": 0.1}, np.float32)]
    model, feeds = after_conv(specs, consts=consts, opset=6)
    converted, _, _ = check_graph(model, feeds, rtol=1e-5, atol=1e-5)
    assert set(converted.variables["params"]["inorm"]) == {"scale", "bias"}
    feeds = {"x": _vec(2, 3, 7), "s": _vec(3, offset=1.0), "b": _vec(3)}
    check_graph(node_model("InstanceNormalization", feeds, opset=22), feeds, rtol=1e-5, atol=1e-5)


def test_instance_norm_onnx_order_no_transpose():
    """On an ONNX-order ``[N, C, L]`` value (how exporters write GroupNorm: Reshape ->
    InstanceNormalization -> Reshape) the layer normalizes in place, without transposes."""
    feeds = {"x": _vec(2, 4, 6)}
    model = node_model("InstanceNormalization", feeds, opset=6,
                       consts={"gn.weight": _vec(4, offset=1.0), "gn.bias": _vec(4)})
    converted, _, _ = check_graph(model, feeds, rtol=1e-5, atol=1e-5)
    jaxpr = str(jax.make_jaxpr(converted.module.apply)(converted.variables, feeds["x"]))
    assert "transpose" not in jaxpr


@pytest.mark.parametrize("opset", [18, 21])
def test_group_norm(opset):
    """Opset 18: scale/bias per group (computed directly, scale a free param); 21: per
    channel (nn.GroupNorm). Channels-last input, 2 groups of 2 channels, and 1 group."""
    per = 2 if opset == 18 else 4
    consts = {"gn.weight": _vec(per, offset=1.0), "gn.bias": _vec(per),
              "one.weight": _vec(1 if opset == 18 else 4, offset=1.0),
              "one.bias": _vec(1 if opset == 18 else 4)}
    specs = [("GroupNormalization", ["gn.weight", "gn.bias"], {"num_groups": 2}, np.float32),
             ("GroupNormalization", ["one.weight", "one.bias"], {"num_groups": 1, "epsilon": 0.1},
              np.float32)]
    model, feeds = after_conv(specs, consts=consts, opset=opset, shape=(2, 4, 3, 5))
    converted, _, _ = check_graph(model, feeds, rtol=1e-5, atol=1e-5)
    if opset == 21:
        assert converted.variables["params"]["gn"]["scale"].shape == (4,)


def test_group_norm_bad_groups():
    feeds = {"x": _vec(2, 4, 3)}
    model = node_model("GroupNormalization", feeds, opset=21, attrs={"num_groups": 3},
                       consts={"s": _vec(4), "b": _vec(4)})
    with pytest.raises(onnx2flax.errors.InvalidModelError, match="groups"):
        onnx2flax.convert(model).run(feeds)


@pytest.mark.parametrize("opset", [7, 13])
def test_lrn(opset):
    """Windows over channels, on a channels-last value."""
    specs = [("LRN", [], {"size": 3}, np.float32),
             ("LRN", [], {"size": 5, "alpha": 0.01, "beta": 0.5, "bias": 2.0}, np.float32),
             ("LRN", [], {"size": 1}, np.float32)]
    model, feeds = after_conv(specs, opset=opset, shape=(2, 5, 3, 4))
    check_graph(model, feeds, rtol=1e-5, atol=1e-6)



_BN_NAMES = ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")


def _bn_stats(c):
    return {"bn.weight": _vec(c, offset=1.0), "bn.bias": _vec(c), "bn.running_mean": _vec(c),
            "bn.running_var": (RNG.random(c) + 0.5).astype(np.float32)}


@pytest.mark.parametrize("opset", [14, 15])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (4, 3)])
def test_batch_norm_training_mode(opset, shape):
    """Normalized with the batch statistics; outputs the updated running statistics."""
    feeds = {"x": (RNG.standard_normal(shape) * 2 + 1).astype(np.float32),
             **_bn_stats(shape[1])}
    model = node_model("BatchNormalization", feeds, outputs=3, opset=opset,
                       attrs={"training_mode": 1, "momentum": 0.7, "epsilon": 1e-3})
    check_graph(model, feeds, rtol=1e-4, atol=1e-5)


def test_batch_norm_training_mode_with_constant_statistics_channels_last():
    """Conv -> BatchNormalization with constant weights: X arrives channels-last and the
    node is computed directly (no Flax layer, no ``batch_stats``)."""
    model, feeds = sandwich("Identity", tail=False)
    model.graph.node[-1].output[0] = "h2"
    model.graph.node.append(helper.make_node(
        "BatchNormalization", ["h2", *_BN_NAMES], ["y", "mean", "var"], training_mode=1))
    model.graph.initializer.extend(onnx.numpy_helper.from_array(v, k)
                                   for k, v in _bn_stats(3).items())
    model.graph.output.extend([helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [3])
                               for n in ("mean", "var")])
    model.opset_import[0].version = 15
    converted, _, _ = check_graph(model, feeds, rtol=1e-4, atol=1e-5)
    assert "batch_stats" not in converted.variables


def test_batch_norm_statistics_outputs_before_opset_14_are_refused():
    feeds = {"x": RNG.standard_normal((2, 3, 4)).astype(np.float32), **_bn_stats(3)}
    model = node_model("BatchNormalization", feeds, outputs=3, opset=9)
    with pytest.raises(onnx2flax.errors.UnsupportedOpError,
                       match="BatchNormalization node .*running-statistics outputs"):
        onnx2flax.convert(model).run(feeds)


@pytest.mark.parametrize("opset", [7, 9, 15])
def test_batchnorm_epsilon_and_opsets(rng, opset):
    c = 5
    weights = {"s": _vec(c), "b": _vec(c), "m": _vec(c), "v": np.abs(_vec(c)) + 0.1}
    converted, _, _ = check_node("BatchNormalization",
                                 {"x": rng.standard_normal((2, c, 4, 3)).astype(np.float32)},
                                 weights, opset=opset, attrs=dict(epsilon=1e-2))
    assert set(converted.variables["batch_stats"]) == set(converted.variables["params"])
