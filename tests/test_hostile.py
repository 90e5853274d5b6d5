"""Hostile and broken input: every failure is an ``OnnxConversionError`` subclass whose
message names the node (name and op type), the input or attribute, and what was expected."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx2flax
from onnx2flax._core import files as _files, registry as _registry
from onnx2flax import errors
from onnx2flax.errors import (InvalidInputError, InvalidModelError, OnnxConversionError,
                              OutputExistsError, ResourceLimitError, UnsafePathError,
                              UnsupportedOpError)

from fuzz_corpus import conv_bn_relu_gemm, residual_two_outputs
from helpers import make_model

F = np.float32


def _convert_error(model, cls, *fragments):
    """Convert (and run on zeros) ``model``; the error must be ``cls`` and mention every
    fragment."""
    with pytest.raises(cls) as info:
        converted = onnx2flax.convert(model)
        converted.run({s.name: np.zeros([d if isinstance(d, int) else 1 for d in s.shape],
                                        s.dtype) for s in converted.inputs})
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    return info.value


def _add_model(**kwargs):
    return make_model([helper.make_node("Add", ["x", "w"], ["y"], name="add")],
                      [("x", F, [2])], [("y", F, [2])], **kwargs)


# ------------------------------------------------------------------ the hierarchy

def test_every_error_is_exported_and_in_one_hierarchy():
    for name in ("InvalidModelError", "UnsupportedOpError", "InvalidInputError",
                 "ResourceLimitError", "OutputExistsError", "UnsafePathError", "InternalError"):
        cls = getattr(onnx2flax, name)
        assert cls is getattr(errors, name) and issubclass(cls, OnnxConversionError)
    assert _files.OutputExistsError is OutputExistsError


# ------------------------------------------------------------------ unreadable input

@pytest.mark.parametrize("data", [b"", b"\x00" * 7, b"not an onnx file at all",
                                  conv_bn_relu_gemm().SerializeToString()[:100]])
def test_garbage_bytes(data):
    with pytest.raises(InvalidModelError):
        onnx2flax.convert(data)


def test_missing_file_folder_and_wrong_type(tmp_path):
    with pytest.raises(InvalidModelError, match="does not exist"):
        onnx2flax.convert(tmp_path / "nope.onnx")
    with pytest.raises(InvalidModelError, match="does not exist or is not a file"):
        onnx2flax.convert(tmp_path)
    with pytest.raises(InvalidModelError, match="expected a path, bytes or onnx.ModelProto"):
        onnx2flax.convert(42)


def test_invalid_utf8_in_a_name():
    data = conv_bn_relu_gemm().SerializeToString().replace(b"Relu", b"R\xffl\xfe")
    _convert_error(data, InvalidModelError, "onnx.NodeProto.op_type", "invalid UTF-8")


# ------------------------------------------------------------------ graph structure

def test_dangling_input_names_node_and_tensor():
    model = make_model([helper.make_node("Relu", ["ghost"], ["y"], name="r")],
                       [("x", F, [2])], [("y", F, [2])])
    _convert_error(model, InvalidModelError, "Relu node 'r'", "'ghost'", "no node")


def test_missing_initializer():
    _convert_error(_add_model(), InvalidModelError, "Add node 'add'", "'w'")


def test_duplicated_output_name():
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="a"),
                        helper.make_node("Neg", ["x"], ["y"], name="b")],
                       [("x", F, [2])], [("y", F, [2])])
    _convert_error(model, InvalidModelError, "Neg node 'b'", "'y'", "already defined")


def test_output_overwriting_an_input():
    model = make_model([helper.make_node("Relu", ["x"], ["x"], name="a")],
                       [("x", F, [2])], [("x", F, [2])])
    _convert_error(model, InvalidModelError, "Relu node 'a'", "'x'")


def test_cycle():
    model = make_model([helper.make_node("Add", ["x", "b"], ["a"], name="first"),
                        helper.make_node("Relu", ["a"], ["b"], name="second")],
                       [("x", F, [2])], [("b", F, [2])])
    _convert_error(model, InvalidModelError, "cycle", "'first'", "'second'")


def test_self_loop():
    model = make_model([helper.make_node("Add", ["x", "y"], ["y"], name="loop")],
                       [("x", F, [2])], [("y", F, [2])])
    _convert_error(model, InvalidModelError, "Add node 'loop'")


def test_graph_output_produced_by_nothing():
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="r")],
                       [("x", F, [2])], [("z", F, [2])])
    _convert_error(model, InvalidModelError, "graph output 'z'")


def test_duplicate_initializers_and_inputs():
    model = _add_model(initializers={"w": np.ones(2, F)})
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(2, F), "w"))
    _convert_error(model, InvalidModelError, "initializer 'w' is defined twice")
    model = _add_model(initializers={"w": np.ones(2, F)})
    model.graph.input.append(model.graph.input[0])
    _convert_error(model, InvalidModelError, "distinct", "'x'")


@pytest.mark.parametrize("version", [10**6, 0, -3])
def test_opset_out_of_range(version):
    model = _add_model(initializers={"w": np.ones(2, F)})
    model.opset_import[0].version = version
    _convert_error(model, UnsupportedOpError, f"opset {version}")


def test_unknown_op_and_domain_reported_together():
    model = make_model([helper.make_node("Frobnicate", ["x"], ["a"], name="f1"),
                        helper.make_node("Frobnicate", ["a"], ["b"], name="f2"),
                        helper.make_node("Thing", ["b"], ["y"], name="t", domain="com.acme")],
                       [("x", F, [2])], [("y", F, [2])])
    model.opset_import.append(helper.make_opsetid("com.acme", 1))
    model.graph.node.insert(0, _const("k", np.ones(2, F)))  # a constant-only unknown op
    model.graph.node.insert(1, helper.make_node("Frobnicate", ["k"], ["unused"], name="f0"))
    err = _convert_error(model, UnsupportedOpError, "Frobnicate: 3 node(s), first 'f0'",
                         "com.acme::Thing: 1 node(s), first 't'")
    assert set(err.missing) == {("", "Frobnicate"), ("com.acme", "Thing")}


# ------------------------------------------------------------------ types

def test_string_initializer():
    model = _add_model()
    model.graph.initializer.append(helper.make_tensor("w", TensorProto.STRING, [2], [b"a", b"b"]))
    _convert_error(model, InvalidModelError, "initializer 'w'", "string tensor")


def test_string_constant():
    model = make_model([helper.make_node("Constant", [], ["w"], name="c", value_strings=["a"]),
                        helper.make_node("Add", ["x", "w"], ["y"], name="add")],
                       [("x", F, [2])], [("y", F, [2])])
    _convert_error(model, UnsupportedOpError, "Constant node 'c'", "value_strings")


def test_map_inputs():
    model = _add_model(initializers={"w": np.ones(2, F)})
    model.graph.input[0].type.CopyFrom(
        helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(1, [2])))
    _convert_error(model, UnsupportedOpError, "graph input 'x'", "map_type", "sequences")


def test_sequence_fed_to_a_tensor_op():
    model = _add_model(initializers={"w": np.ones(2, F)})
    model.graph.input[0].type.CopyFrom(
        helper.make_sequence_type_proto(helper.make_tensor_type_proto(1, [2])))
    converted = onnx2flax.convert(model)
    with pytest.raises(InvalidModelError, match="Add node .*input 0 .'x'. is a sequence"):
        converted.run({"x": [np.ones(2, F), np.ones(2, F)]})


@pytest.mark.parametrize("untyped", ["no type", "element type 0"])
def test_untyped_input_takes_what_is_fed(untyped):
    """ONNX allows inputs without a type (or element type): they take the fed array."""
    model = _add_model(initializers={"w": np.ones(2, F)})
    if untyped == "no type":
        model.graph.input[0].type.CopyFrom(onnx.TypeProto())
    else:
        model.graph.input[0].type.tensor_type.elem_type = 0
    out = onnx2flax.convert(model).run({"x": np.array([1, 2], F)})[0]
    np.testing.assert_array_equal(out, [2, 3])


@pytest.mark.parametrize("elem_type", [0, 999])
def test_unknown_element_types(elem_type):
    if elem_type:
        model = _add_model(initializers={"w": np.ones(2, F)})
        model.graph.input[0].type.tensor_type.elem_type = elem_type
        _convert_error(model, InvalidModelError, "graph input 'x'", f"element type {elem_type}")
    model = _add_model(initializers={"w": np.ones(2, F)})
    model.graph.initializer[0].data_type = elem_type
    _convert_error(model, InvalidModelError, "initializer 'w'", f"element type {elem_type}")


# ------------------------------------------------------------------ node arity and attributes

def test_wrong_input_count():
    model = make_model([helper.make_node("Relu", ["x", "x"], ["y"], name="r")],
                       [("x", F, [2])], [("y", F, [2])])
    _convert_error(model, InvalidModelError, "Relu node 'r'", "2 inputs", "takes 1")


def test_required_input_left_empty():
    model = make_model([helper.make_node("Conv", ["x", ""], ["y"], name="conv")],
                       [("x", F, [1, 1, 3, 3])], [("y", F, None)])
    _convert_error(model, InvalidModelError, "Conv node 'conv'", "input 1 (W)", "required")


def test_unknown_and_mistyped_attributes():
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="r", alpha=1.0)],
                       [("x", F, [2])], [("y", F, [2])])
    _convert_error(model, InvalidModelError, "Relu node 'r'", "attribute 'alpha'")
    model = make_model([helper.make_node("Flatten", ["x"], ["y"], name="f", axis=1.5)],
                       [("x", F, [2, 2])], [("y", F, [2, 2])])
    _convert_error(model, InvalidModelError, "attribute 'axis' of Flatten node 'f'", "INT",
                   "FLOAT")


def test_missing_required_attribute():
    model = make_model([helper.make_node("Cast", ["x"], ["y"], name="cast")],
                       [("x", F, [2])], [("y", F, [2])])
    _convert_error(model, InvalidModelError, "Cast node 'cast'", "required attribute", "'to'")


def _conv(x_shape, w_shape, **attrs):
    w = np.random.default_rng(0).standard_normal(w_shape).astype(F)
    return make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv1", **attrs)],
                      [("x", F, x_shape)], [("y", F, None)], initializers={"w": w})


@pytest.mark.parametrize("attrs, fragments", [
    ({"strides": [-1, 1]}, ["strides", "[-1, 1]"]),
    ({"strides": [0, 1]}, ["strides", ">= 1"]),
    ({"dilations": [1, 0]}, ["dilations", "[1, 0]"]),
    ({"pads": [-2, 0, 0, 0]}, ["pads", "[-2, 0, 0, 0]"]),
    ({"pads": [1, 1]}, ["pads", "4"]),
    ({"group": 0}, ["group 0"]),
    ({"group": 3}, ["group 3"]),
    ({"kernel_shape": [5, 5]}, ["kernel_shape [5, 5]"]),
    ({"auto_pad": "BOGUS"}, ["auto_pad", "BOGUS"]),
])
def test_conv_attributes_out_of_range(attrs, fragments):
    _convert_error(_conv([1, 2, 4, 4], [2, 2, 3, 3], **attrs), InvalidModelError,
                   "Conv node 'conv1'", *fragments)


def test_conv_kernel_larger_than_input():
    _convert_error(_conv([1, 2, 2, 2], [2, 2, 3, 3]), InvalidModelError, "Conv node 'conv1'")


@pytest.mark.parametrize("attrs, fragments", [
    ({"kernel_shape": [0, 0]}, ["kernel_shape [0, 0]", "positive"]),
    ({"kernel_shape": [2, 2], "pads": [9, 9, 9, 9]}, []),  # pads larger than the input
    ({"kernel_shape": [9, 9]}, ["larger than the padded input"]),
    ({"kernel_shape": [2, 2], "strides": [0, 0]}, ["strides"]),
    ({"kernel_shape": [2]}, ["rank 3"]),
])
def test_pool_attributes_out_of_range(attrs, fragments):
    model = make_model([helper.make_node("MaxPool", ["x"], ["y"], name="pool", **attrs)],
                       [("x", F, [1, 1, 4, 4])], [("y", F, None)])
    _convert_error(model, InvalidModelError, "MaxPool node 'pool'", *fragments)


# ------------------------------------------------------------------ resources

def _const(name, value):
    return helper.make_node("Constant", [], [name], name=f"{name}_const",
                            value=numpy_helper.from_array(np.asarray(value)))


HUGE = [10**6, 10**6]  # 10^12 elements


@pytest.mark.parametrize("nodes", [
    [_const("s", np.array(HUGE, np.int64)),
     helper.make_node("ConstantOfShape", ["s"], ["big"], name="big")],
    [_const("v", np.ones((1, 1), F)), _const("s", np.array(HUGE, np.int64)),
     helper.make_node("Expand", ["v", "s"], ["big"], name="big")],
    [_const("v", np.ones((2, 2), F)), _const("r", np.array([5 * 10**5] * 2, np.int64)),
     helper.make_node("Tile", ["v", "r"], ["big"], name="big")],
    [_const("a", np.array(0, np.int64)), _const("b", np.array(10**12, np.int64)),
     _const("d", np.array(1, np.int64)), helper.make_node("Range", ["a", "b", "d"], ["big"],
                                                          name="big")],
    [_const("v", np.ones((2, 2), F)), _const("p", np.array([0, 0, 10**6, 10**6], np.int64)),
     helper.make_node("Pad", ["v", "p"], ["big"], name="big")],
    [_const("v", np.ones((1, 1, 2, 2), F)), _const("sc", np.array([1, 1, 5e5, 5e5], F)),
     helper.make_node("Resize", ["v", "", "sc"], ["big"], name="big")],
    [_const("v", np.ones((10**5, 1), F)), _const("w", np.ones((1, 10**5), F)),
     helper.make_node("Mul", ["v", "w"], ["big"], name="big")],
])
def test_huge_constant_outputs_refused_before_allocating(nodes):
    op = nodes[-1].op_type
    model = make_model(nodes + [helper.make_node("Shape", ["big"], ["y"], name="shape")],
                       [], [("y", np.int64, [None])])
    _convert_error(model, ResourceLimitError, f"{op} node 'big'", "limit")


@pytest.mark.parametrize("mode", ["reflect", "wrap"])
def test_pad_reflect_beyond_the_input(mode):
    """onnxruntime refuses these; jnp.pad would unroll one slice per reflection (a hang)."""
    model = make_model([helper.make_node("Pad", ["x", "p"], ["y"], name="pad", mode=mode)],
                       [("x", F, [1, 3])], [("y", F, None)],
                       initializers={"p": np.array([0, 0, 0, 2**40], np.int64)}, opset=19)
    _convert_error(model, InvalidModelError, "Pad node 'pad'", f"{mode} pads")


@pytest.mark.parametrize("delta", [0, 1e-30, float("nan")])
def test_range_without_a_finite_size(delta):
    model = make_model([_const("a", np.array(0.0, F)), _const("b", np.array(10.0, F)),
                        _const("d", np.array(delta, F)),
                        helper.make_node("Range", ["a", "b", "d"], ["y"], name="range")],
                       [], [("y", F, [None])])
    _convert_error(model, OnnxConversionError, "Range node 'range'")


@pytest.mark.parametrize("shape", [[-1, 2], [2**62, 2**62]])
def test_constant_of_shape_bad_sizes(shape):
    model = make_model([_const("s", np.array(shape, np.int64)),
                        helper.make_node("ConstantOfShape", ["s"], ["y"], name="cos")],
                       [], [("y", F, None)])
    _convert_error(model, (InvalidModelError, ResourceLimitError), "ConstantOfShape node 'cos'")


def test_huge_run_time_output_refused_at_trace():
    """A run-time value (the model's input) padded to 10^12 elements: refused when traced,
    before XLA allocates anything."""
    _convert_error(_conv([1, 2, 2, 2], [2, 2, 1, 1], pads=[10**6] * 4), ResourceLimitError,
                   "Conv node 'conv1'", "limit")


def test_initializer_declared_size_disagrees_with_data():
    short = numpy_helper.from_array(np.ones(2, F), "w")
    short.dims[:] = [3]
    model = _add_model()
    model.graph.initializer.append(short)
    _convert_error(model, InvalidModelError, "initializer 'w'", "[3]")
    huge = numpy_helper.from_array(np.ones(2, F), "w")
    huge.dims[:] = [10**6, 10**6]
    model = _add_model()
    model.graph.initializer.append(huge)
    _convert_error(model, ResourceLimitError, "initializer 'w'", "limit")
    negative = numpy_helper.from_array(np.ones(2, F), "w")
    negative.dims[:] = [-2]
    model = _add_model()
    model.graph.initializer.append(negative)
    _convert_error(model, InvalidModelError, "initializer 'w'", "negative dims")


class _Timeout(Exception):
    pass


@pytest.mark.parametrize("trip_count", [2**63 - 1, None])
def test_unbounded_loop_is_bounded_or_refused(trip_count):
    """``Loop`` with trip count INT64_MAX (or none) and a condition that stays true."""
    if _registry.supported_ops().get(("", "Loop")) is None:
        pytest.skip("Loop is not implemented on this branch")
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
         helper.make_node("Add", ["v_in", "one"], ["v_out"], name="inc")],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.ones(1, F), "one")])
    nodes = [_const("c", np.array(True)),
             helper.make_node("Loop", ["m" if trip_count else "", "c", "x"], ["y"],
                              name="forever", body=body)]
    if trip_count:
        nodes.insert(0, _const("m", np.array(trip_count, np.int64)))
    model = make_model(nodes, [("x", F, [1])], [("y", F, [1])])

    def alarm(*_):
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(60)
    try:
        _convert_error(model, (ResourceLimitError, UnsupportedOpError), "Loop node 'forever'")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------------ external data

def _external_model(folder: Path, location: str, *, offset=None, length=None, data=None):
    """A model whose initializer 'w' (2 float32) lives in ``location``; ``data`` (bytes) is
    written to ``folder/w.bin`` when given."""
    if data is not None:
        (folder / "w.bin").write_bytes(data)
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2])
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        if value is not None:
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
    model = _add_model()
    model.graph.initializer.append(tensor)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_inside_the_folder_loads(tmp_path):
    data = np.array([1.5, -2.0], F).tobytes()
    path = _external_model(tmp_path, "w.bin", data=b"\0" * 8 + data, offset=8, length=8)
    out = onnx2flax.convert(path).run({"x": np.ones(2, F)})[0]
    np.testing.assert_array_equal(out, [2.5, -1.0])


@pytest.mark.parametrize("location, fragment", [
    ("../secret.bin", "leaves the model's folder"),
    ("sub/../../secret.bin", "leaves the model's folder"),
    ("/etc/passwd", "must be a relative path"),
    ("", "must be a relative path"),
    ("missing.bin", "is missing"),
])
def test_external_data_locations_refused(tmp_path, location, fragment):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\1" * 8)
    _convert_error(_external_model(folder, location), InvalidModelError, "initializer 'w'",
                   fragment)


def test_external_data_symlink_leaving_the_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\1" * 8)
    os.symlink(tmp_path / "secret.bin", folder / "link.bin")
    _convert_error(_external_model(folder, "link.bin"), InvalidModelError, "initializer 'w'",
                   "leaves the model's folder")


def test_external_data_symlinked_folder_leaving(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "w.bin").write_bytes(b"\1" * 8)
    os.symlink(tmp_path / "outside", folder / "sub")
    _convert_error(_external_model(folder, "sub/w.bin"), InvalidModelError,
                   "leaves the model's folder")


@pytest.mark.parametrize("offset, length, size, fragment", [
    (None, None, 4, "needs 8 bytes"),          # short file
    (4, None, 8, "needs 8 bytes at offset 4"),  # offset leaves too few bytes
    (-1, None, 8, "offset -1"),
    (0, 4, 8, "declared length 4"),             # length disagrees with dims
    (2**62, None, 8, "offset"),
    ("x", None, 8, "not integers"),
])
def test_external_data_ranges(tmp_path, offset, length, size, fragment):
    path = _external_model(tmp_path, "w.bin", offset=offset, length=length, data=b"\0" * size)
    _convert_error(path, InvalidModelError, "initializer 'w'", fragment)


def test_external_data_without_a_folder(tmp_path):
    data = _external_model(tmp_path, "w.bin", data=b"\0" * 8).read_bytes()
    _convert_error(data, InvalidModelError, "initializer 'w'", "load the model from a path")


# ------------------------------------------------------------------ output files

@pytest.mark.parametrize("name", ["../x", "/tmp/abs", "a/b", ".", "..", "", "x\0y",
                                  "..\\x" if os.sep == "\\" else "sub/../x"])
def test_write_file_refuses_names_leaving_the_folder(tmp_path, name):
    folder = _files.output_dir(tmp_path / "out")
    with pytest.raises(UnsafePathError):
        _files.write_file(folder, name, "data")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out"]


def test_write_file_refuses_symlinks_and_overwrites(tmp_path):
    folder = _files.output_dir(tmp_path / "out")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    os.symlink(victim, folder / "link.txt")
    with pytest.raises(UnsafePathError):
        _files.write_file(folder, "link.txt", "evil", force=True)
    os.symlink(tmp_path / "nowhere", folder / "dangling.txt")
    with pytest.raises(UnsafePathError):
        _files.write_file(folder, "dangling.txt", "evil", force=True)
    assert victim.read_text() == "keep" and not (tmp_path / "nowhere").exists()
    _files.write_file(folder, "a.txt", "one")
    with pytest.raises(OutputExistsError, match="--force"):
        _files.write_file(folder, "a.txt", "two")
    assert (folder / "a.txt").read_text() == "one"
    _files.write_file(folder, "a.txt", "two", force=True)
    assert (folder / "a.txt").read_text() == "two"
    (folder / "d").mkdir()
    with pytest.raises(OutputExistsError, match="not a file"):
        _files.write_file(folder, "d", "x", force=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputExistsError, match="not a folder"):
        _files.output_dir(tmp_path / "file")


# ------------------------------------------------------------------ feeds

@pytest.fixture(scope="module")
def two_inputs():
    return onnx2flax.convert(residual_two_outputs())


def _feeds(**over):
    feeds = {"x": np.zeros((1, 2, 3, 3), F), "skip": np.zeros((1, 2, 3, 3), F)}
    feeds.update(over)
    return {k: v for k, v in feeds.items() if v is not None}


@pytest.mark.parametrize("feeds, fragments", [
    (_feeds(bogus=np.zeros(1, F)), ["unknown input name(s) ['bogus']", "'skip'"]),
    (_feeds(skip=None), ["missing input(s) ['skip']"]),
    (_feeds(x=np.zeros((2, 3, 3), F)), ["input 'x'", "rank 4", "[2, 3, 3]"]),
    (_feeds(x=np.zeros((1, 5, 3, 3), F)), ["input 'x'", "dim 1 must be 2"]),
    (_feeds(skip=np.zeros((1, 2, 3, 3), np.int32)), ["input 'skip'", "float32", "int32"]),
    (_feeds(skip=np.array([["a"]])), ["input 'skip'"]),
    ([np.zeros((1, 2, 3, 3), F)] * 2, ["dict of input name"]),
])
def test_run_checks_feeds(two_inputs, feeds, fragments):
    with pytest.raises(InvalidInputError) as info:
        two_inputs.run(feeds)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_apply_checks_feeds(two_inputs):
    module, variables = two_inputs.module, two_inputs.variables
    x = np.zeros((1, 3, 3, 2), F)  # channels-last
    with pytest.raises(InvalidInputError, match=r"takes 2 input\(s\) \['x', 'skip'\], got 1"):
        module.apply(variables, x)
    with pytest.raises(InvalidInputError, match="input 'x' has shape .* dim 1 must be 2"):
        module.apply(variables, np.zeros((1, 2, 3, 3), F), x)  # ONNX layout given
    with pytest.raises(InvalidInputError, match="input 'skip' must have rank 4"):
        module.apply(variables, x, np.zeros((3, 3, 2), F))
    with pytest.raises(InvalidInputError, match="input 'skip' must be float32, got bool"):
        module.apply(variables, x, np.zeros((1, 3, 3, 2), bool))
    with pytest.raises(InvalidInputError, match="input 'x' is a tensor, not a sequence"):
        module.apply(variables, [[1.0]], x)
    with pytest.raises(InvalidInputError, match="input 'x' must be an array, got float"):
        module.apply(variables, 1.0, x)


# ------------------------------------------------------------------ no code from the model

def test_package_never_evaluates_model_content():
    # np.load(..., allow_pickle=False) (the CLI's --feeds) is the safe form, not a use.
    pattern = re.compile(r"(?<![\w.])(eval|exec|compile|__import__)\(|(import|from) pickle\b"
                         r"|pickle\.\w|allow_pickle\s*=\s*True")
    root = Path(onnx2flax.__file__).parent
    offending = [f"{p.relative_to(root)}:{n}" for p in root.rglob("*.py")
                 for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offending, offending


# ------------------------------------------------------------------ local functions

def _function_model(body_op: str):
    f = helper.make_function("local", "Fn", ["a"], ["b"],
                             [helper.make_node(body_op, ["a"], ["b"], domain="" if body_op !=
                                               "Fn" else "local")],
                             [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    model = make_model([helper.make_node("Fn", ["x"], ["y"], name="fn", domain="local")],
                       [("x", F, [2])], [("y", F, [2])])
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.functions.append(f)
    return model


def test_local_function_is_inlined():
    out = onnx2flax.convert(_function_model("Relu")).run({"x": np.array([-1, 2], F)})[0]
    np.testing.assert_array_equal(out, [0, 2])


def test_recursive_local_function():
    _convert_error(_function_model("Fn"), InvalidModelError, "local functions", "local::Fn")


def test_cli_convert_never_overwrites_without_force(tmp_path, capsys):
    from onnx2flax import cli

    path = tmp_path / "model.onnx"
    path.write_bytes(conv_bn_relu_gemm().SerializeToString())
    out = tmp_path / "out"
    assert cli.main(["convert", str(path), "-o", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "summary.txt").write_text("mine")
    assert cli.main(["convert", str(path), "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "summary.txt").read_text() == "mine"
    assert (out / "weights.msgpack").read_bytes() == before["weights.msgpack"]
    assert cli.main(["convert", str(path), "-o", str(out), "--force"]) == 0
    assert (out / "summary.txt").read_bytes() == before["summary.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "out"]
