"""Data-parallel / FSDP runs on 8 CPU devices (forced in a subprocess) equal one device."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent("""
    import jax, numpy as np, onnx
    from onnx import helper, numpy_helper
    import onnx2flax
    from onnx2flax.sharding import data_parallel_apply, shard_variables

    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)
    inits = {"conv1.weight": f32(16, 3, 3, 3) * 0.3, "conv1.bias": f32(16),
             "bn.weight": f32(16), "bn.bias": f32(16), "bn.running_mean": f32(16),
             "bn.running_var": rng.uniform(0.5, 2, 16).astype(np.float32),
             "conv2.weight": f32(32, 16, 3, 3) * 0.1, "conv2.bias": f32(32),
             "fc.weight": f32(10, 32) * 0.3, "fc.bias": f32(10)}
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn.weight", "bn.bias", "bn.running_mean",
                                                "bn.running_var"], ["b1"]),
        helper.make_node("Relu", ["b1"], ["r1"]),
        helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    converted = onnx2flax.convert(model)
    x = rng.standard_normal((16, 16, 16, 3)).astype(np.float32)  # channels-last
    one_device = np.asarray(jax.jit(converted.module.apply)(converted.variables, x))
    assert np.abs(one_device).max() > 0.1

    meshes = [jax.make_mesh((8,), ("data",)),  # explicit axes (jax's default)
              jax.sharding.Mesh(np.array(jax.devices()), ("data",))]  # auto axes
    for mesh, mode in [(meshes[0], "replicate"), (meshes[0], "fsdp"), (meshes[1], "fsdp")]:
        variables = shard_variables(converted.variables, mesh, mode)
        kernel = variables["params"]["conv2"]["kernel"]  # (3, 3, 16, 32)
        assert len(kernel.sharding.device_set) == 8
        if mode == "fsdp":
            assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, None, "data")
            assert kernel.addressable_shards[0].data.shape == (3, 3, 16, 4)
            # a kernel dim the mesh divides nowhere stays replicated
            assert variables["params"]["fc"]["bias"].sharding.is_fully_replicated
        else:
            assert kernel.sharding.is_fully_replicated
        y = data_parallel_apply(converted, mesh, variables)(x)
        assert y.sharding.spec == jax.sharding.PartitionSpec("data"), y.sharding
        assert y.addressable_shards[0].data.shape == (2, 10)
        np.testing.assert_allclose(np.asarray(y), one_device, rtol=1e-6, atol=1e-6)
    print("OK")
""")


def test_eight_devices_match_one():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("OK")
