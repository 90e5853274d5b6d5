"""Generated standalone Flax source: equal to the interpreter bit for bit, safe names."""

from __future__ import annotations

import ast
from pathlib import Path

import jax
import numpy as np
import onnx
import pytest
import torch
from flax import nnx
from onnx import helper

import onnx2flax
from onnx2flax._core import boundary as _boundary
from onnx2flax import codegen
from onnx2flax.errors import CodegenError, OutputExistsError

from helpers import check_generated_source, import_source, load_generated, make_model
from test_torch_state import _MLP
from test_training import _cnn, _export


class _TModel(torch.nn.Module):
    """The Flax porting guide's model: Conv2d(3, 4, 2) -> view -> Linear(100, 2)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 2)
        self.fc = torch.nn.Linear(100, 2)

    def forward(self, x):
        return self.fc(self.conv(x).view(x.shape[0], -1))


class _Block(torch.nn.Module):
    """A ResNet basic block: conv-bn-relu-conv-bn, a strided 1x1 downsample when asked."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.downsample = None if stride == 1 and cin == cout else torch.nn.Sequential(
            torch.nn.Conv2d(cin, cout, 1, stride, bias=False), torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class _ResNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.layer1 = torch.nn.Sequential(_Block(4, 4, 1), _Block(4, 4, 1))
        self.layer2 = torch.nn.Sequential(_Block(4, 8, 2), _Block(8, 8, 1))
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        y = self.layer2(self.layer1(torch.relu(self.conv1(x))))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1))


def _assert_equal(got, expected):
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 got, expected)


def _assert_same_tree(got, expected):
    """Equal trees: the same paths, shapes and dtypes."""
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        assert (a.shape, np.dtype(a.dtype)) == (b.shape, np.dtype(b.dtype))


def _generate_and_compare(tmp_path, converted, inputs, name, *, train=False, api="linen"):
    """Save ``converted``'s source, import it, and compare it (jitted) with the interpreter,
    bit for bit; with ``train``, also in training mode with the updated statistics. Its
    weight tree is ``converted.variables``: the weights file, the linen module's ``init``
    and the NNX module's state have the same paths, shapes and dtypes."""
    codegen.save(converted, tmp_path, api=api)
    source = (tmp_path / codegen.MODEL_FILE).read_text()
    assert source == codegen.generate(converted, api=api)
    check_generated_source(source)
    generated = load_generated(tmp_path, name)
    expected = jax.jit(converted.module.apply)(converted.variables, *inputs)
    _assert_same_tree(generated.load_variables(), converted.variables)
    _assert_equal(generated.load_variables(), converted.variables)
    if api == "nnx":
        model = generated.load_model()
        assert isinstance(model, nnx.Module)
        state = {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param))}
        if nnx.state(model, nnx.BatchStat):
            state["batch_stats"] = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
        _assert_same_tree(state, converted.variables)
        _assert_equal(nnx.jit(lambda m, *x: m(*x))(model, *inputs), expected)
        if train:
            got = nnx.jit(lambda m, *x: m(*x, train=True))(model, *inputs)
            expected, updates = jax.jit(lambda v, *x: converted.module.apply(
                v, *x, train=True, mutable=["batch_stats"]))(converted.variables, *inputs)
            _assert_equal(got, expected)
            stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
            _assert_equal(stats, updates["batch_stats"])
        return source
    _assert_same_tree(jax.eval_shape(generated.Model().init, jax.random.key(0), *inputs),
                      converted.variables)
    variables = generated.load_variables()
    _assert_equal(jax.jit(generated.Model().apply)(variables, *inputs), expected)
    _assert_equal(jax.jit(generated.Model().apply)(converted.variables, *inputs), expected)
    if train:
        got, new = jax.jit(lambda v, *x: generated.Model().apply(
            v, *x, train=True, mutable=["batch_stats"]))(variables, *inputs)
        expected, ref = jax.jit(lambda v, *x: converted.module.apply(
            v, *x, train=True, mutable=["batch_stats"]))(converted.variables, *inputs)
        _assert_equal(got, expected)
        _assert_equal(new["batch_stats"], ref["batch_stats"])
    return source


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_cnn_with_batch_norm(tmp_path, api):
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    converted = onnx2flax.convert(_export(_cnn(), x))
    source = _generate_and_compare(tmp_path, converted, [x.numpy().transpose(0, 2, 3, 1)],
                                   f"gen_cnn_{api}", train=True, api=api)
    assert "# Conv node " in source
    if api == "linen":
        assert "nn.Conv(name='conv'" in source and "BatchNorm(name='bn'" in source
    else:
        assert "class Model(nnx.Module)" in source and "flax.linen" not in source
        assert "self.bn['mean'].set_value(" in source and "lax.conv_general_dilated" in source


@pytest.mark.parametrize("api", ["linen", "nnx"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_guide_tmodel(tmp_path, channels_last, api):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    converted = onnx2flax.convert(_export(_TModel(), x), channels_last=channels_last)
    feed = x.numpy().transpose(0, 2, 3, 1) if channels_last else x.numpy()
    _generate_and_compare(tmp_path, converted, [feed], f"gen_tmodel_{channels_last}_{api}",
                          api=api)


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_transformer_encoder_layer(tmp_path, api):
    torch.manual_seed(0)
    model = torch.nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0,
                                             batch_first=True)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0))
    converted = onnx2flax.convert(_export(model, x))
    _generate_and_compare(tmp_path, converted, [x.numpy()], f"gen_transformer_{api}", api=api)


def test_mlp(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(0))
    converted = onnx2flax.convert(_export(_MLP(), x))
    _generate_and_compare(tmp_path, converted, [x.numpy()], "gen_mlp")


_HOSTILE = [
    'x"); import os; os.system("echo pwned") #',
    "__import__('os').system('echo pwned')",
    "name\nimport os\nos.system('echo pwned')",
    '"""\nimport os\n"""',
    "'''\nimport os\n'''",
    "class\\\r\u2028 def",
]


def test_hostile_names_stay_data(tmp_path):
    rng = np.random.default_rng(0)
    weight, bias, offset = _HOSTILE[0], _HOSTILE[1], _HOSTILE[4]
    nodes = [helper.make_node("Conv", [_HOSTILE[3], weight, bias], ["c"], name=_HOSTILE[2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", offset], [_HOSTILE[5]], name=_HOSTILE[3]),
             helper.make_node("Relu", [_HOSTILE[5]], ["1 + 1"], name=_HOSTILE[1])]
    model = make_model(nodes, [(_HOSTILE[3], np.float32, [1, 3, 4, 4])],
                       [("1 + 1", np.float32, [1, 2, 4, 4])],
                       {weight: rng.standard_normal((2, 3, 3, 3)).astype(np.float32),
                        bias: rng.standard_normal(2).astype(np.float32),
                        offset: rng.standard_normal((2, 1, 1)).astype(np.float32)})
    model.graph.name = _HOSTILE[3]
    converted = onnx2flax.convert(model)
    x = rng.standard_normal((1, 4, 4, 3)).astype(np.float32)
    source = _generate_and_compare(tmp_path, converted, [x], "gen_hostile")
    tree = check_generated_source(source)
    calls = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", None)
             for n in ast.walk(tree) if isinstance(n, ast.Call)}
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert not {"system", "__import__", "eval", "exec"} & (calls | names)
    assert "os" not in names
    for node in ast.walk(tree):  # every identifier is plain
        if isinstance(node, (ast.Name, ast.arg)):
            assert (node.id if isinstance(node, ast.Name) else node.arg).isidentifier()


def test_save_refuses_to_overwrite(tmp_path):
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", np.float32, [2])],
                       [("y", np.float32, [2])])
    converted = onnx2flax.convert(model)
    codegen.save(converted, tmp_path)
    with pytest.raises(OutputExistsError):
        codegen.save(converted, tmp_path)
    codegen.save(converted, tmp_path, force=True)


_FIXTURES = sorted((Path(__file__).resolve().parent.parent / "fixtures").glob("*.onnx"))


@pytest.mark.parametrize("api", ["linen", "nnx"])
@pytest.mark.parametrize("path", _FIXTURES, ids=[p.stem for p in _FIXTURES])
def test_fixture_models(tmp_path, path, api):
    converted = onnx2flax.convert(path)
    inputs = [np.random.default_rng(0).standard_normal(_boundary.module_shape(s)).astype(s.dtype)
              for s in converted.inputs]
    _generate_and_compare(tmp_path, converted, inputs, f"gen_{path.stem}_{api}", api=api,
                          train=bool(converted.variables.get("batch_stats")))


def _hostile_nnx_model(names):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", names[0], names[1]], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", names[2]], ["a"]),
             helper.make_node("Mul", ["a", names[3]], ["m"]),
             helper.make_node("Sub", ["m", names[4]], ["s"]),
             helper.make_node("Conv", ["s", names[5]], ["d"]),
             helper.make_node("Div", ["d", names[6]], ["y"])]
    shapes = [(2, 3, 3, 3), (2,), (2, 1, 1), (2, 4, 4), (2, 1, 1), (2, 2, 1, 1), (2, 1, 1)]
    return make_model(nodes, [("x", np.float32, [1, 3, 4, 4])],
                      [("y", np.float32, [1, 2, 4, 4])],
                      {n: rng.standard_normal(s).astype(np.float32) + 2
                       for n, s in zip(names, shapes)})


def test_nnx_hostile_weight_names(tmp_path):
    """Below the top level, weights named like nnx.Module's methods, dunders or digits are
    keys of ``nnx.Dict`` levels, never attributes: the tree is ``converted.variables`` and
    nnx.Module's methods still work. A top-level name that would shadow one is refused."""
    names = ["blk.train.weight", "blk.train.bias", "blk.__init__", "blk.constants", "0",
             "blk2.eval.weight", _HOSTILE[0]]
    converted = onnx2flax.convert(_hostile_nnx_model(names))
    x = np.random.default_rng(1).standard_normal((1, 4, 4, 3)).astype(np.float32)
    source = _generate_and_compare(tmp_path, converted, [x], "gen_nnx_hostile", api="nnx")
    tree = check_generated_source(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "self":
            assert node.attr.isidentifier() and not hasattr(nnx.Module, node.attr), node.attr
    net = load_generated(tmp_path, "gen_nnx_hostile_again").load_model()
    net.eval()
    net.train()  # still nnx.Module's methods
    params = nnx.to_pure_dict(nnx.state(net, nnx.Param))
    assert params.keys() == converted.variables["params"].keys()

    clash = onnx2flax.convert(_hostile_nnx_model(["train.weight", *names[1:]]))
    with pytest.raises(CodegenError, match="'train' would shadow an attribute of nnx.Module"):
        codegen.generate(clash, api="nnx")
    assert "def __call__" in codegen.generate(clash)  # linen has no such attributes


def _control_flow_model():
    """If on a run-time condition (a branch reads an outer value), then a Loop with a static
    trip count carrying a value and stacking scan outputs, then an LSTM."""
    FLOAT = 1
    then = helper.make_graph([helper.make_node("Add", ["z", "z"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", FLOAT, [2, 3])])
    other = helper.make_graph([helper.make_node("Neg", ["z"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", FLOAT, [2, 3])])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Mul", ["acc_in", "half"], ["acc_out"]),
         helper.make_node("Identity", ["acc_out"], ["scan_out"])],
        "body",
        [helper.make_tensor_value_info("i", 7, []), helper.make_tensor_value_info("cond_in", 9, []),
         helper.make_tensor_value_info("acc_in", FLOAT, [2, 3])],
        [helper.make_tensor_value_info("cond_out", 9, []),
         helper.make_tensor_value_info("acc_out", FLOAT, [2, 3]),
         helper.make_tensor_value_info("scan_out", FLOAT, [2, 3])])
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Relu", ["x"], ["z"]),
        helper.make_node("If", ["c"], ["branch"], then_branch=then, else_branch=other),
        helper.make_node("Loop", ["trips", "true", "branch"], ["acc", "stacked"], body=body),
        helper.make_node("LSTM", ["stacked", "W", "R"], ["Y"], hidden_size=4),
    ]
    inits = {"trips": np.array(3, np.int64), "true": np.array(True), "half": np.float32(0.5),
             "W": rng.standard_normal((1, 16, 3)).astype(np.float32),
             "R": rng.standard_normal((1, 16, 4)).astype(np.float32)}
    return make_model(nodes, [("c", np.bool_, []), ("x", np.float32, [2, 3])],
                      [("acc", np.float32, None), ("stacked", np.float32, None),
                       ("Y", np.float32, None)], inits)


@pytest.mark.parametrize("api", ["linen", "nnx"])
@pytest.mark.parametrize("flag", [True, False])
def test_control_flow_and_recurrent_ops(tmp_path, flag, api):
    """lax.cond / scan / while become local functions with the same operations."""
    converted = onnx2flax.convert(_control_flow_model())
    inputs = [np.array(flag), np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)]
    source = _generate_and_compare(tmp_path, converted, inputs, f"gen_control_{flag}_{api}",
                                   api=api)
    assert "lax.switch(" in source and "lax.scan(" in source


def test_sequence_graph_inputs_and_outputs_are_refused_clearly():
    """A model taking or returning a sequence converts and runs, but its standalone source
    would take and return tensors only: codegen refuses it, naming the values."""
    seq = helper.make_tensor_sequence_value_info("s", onnx.TensorProto.FLOAT, [2])
    out = helper.make_tensor_sequence_value_info("t", onnx.TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Identity", ["s"], ["t"])], "g", [seq], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    converted = onnx2flax.convert(model)
    got = converted.run({"s": [np.ones(2, np.float32), np.zeros(2, np.float32)]})
    assert [g.tolist() for g in got[0]] == [[1.0, 1.0], [0.0, 0.0]]
    with pytest.raises(CodegenError, match=r"'s' \(sequence\), 't' \(sequence\)"):
        codegen.generate(converted)


def _dropout_model():
    """Relu -> Dropout(ratio 0.3, with its mask) -> MatMul (a weight) -> Dropout."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Dropout", ["r", "ratio"], ["d", "mask"]),
             helper.make_node("MatMul", ["d", "w"], ["m"]),
             helper.make_node("Dropout", ["m"], ["y"])]
    return make_model(nodes, [("x", np.float32, [4, 8])],
                      [("y", np.float32, [4, 3]), ("mask", np.bool_, [4, 8])],
                      {"ratio": np.array(0.3, np.float32),
                       "w": rng.standard_normal((8, 3)).astype(np.float32)})


def test_dropout_in_train_mode(tmp_path):
    """train=True: the linen source drops with the 'dropout' rng as the interpreter's module
    does (bit for bit, same key); the NNX source draws from its nnx.Rngs."""
    converted = onnx2flax.convert(_dropout_model())
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    source = _generate_and_compare(tmp_path, converted, [x], "gen_dropout")
    assert "self.make_rng('dropout')" in source and "jax.random.bernoulli(" in source
    generated = load_generated(tmp_path, "gen_dropout_train")
    for seed in (0, 1):
        rngs = {"dropout": jax.random.key(seed)}
        got = jax.jit(lambda v, x, r: generated.Model().apply(v, x, train=True, rngs=r))(
            converted.variables, x, rngs)
        expected = jax.jit(lambda v, x, r: converted.module.apply(v, x, train=True, rngs=r))(
            converted.variables, x, rngs)
        _assert_equal(got, expected)
        assert not np.asarray(got[1]).all()  # it dropped something

    codegen.save(converted, tmp_path / "nnx", api="nnx")
    nnx_model = load_generated(tmp_path / "nnx", "gen_dropout_nnx").load_model(
        rngs=nnx.Rngs(dropout=0))
    _assert_equal(nnx_model(x), converted.module.apply(converted.variables, x))
    first, second = nnx_model(x, train=True), nnx_model(x, train=True)
    for y, mask in (first, second):
        kept = np.asarray(mask)
        assert 0 < kept.sum() < kept.size and np.isfinite(np.asarray(y)).all()
    assert not np.array_equal(np.asarray(first[1]), np.asarray(second[1]))  # fresh keys


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_resnet_weight_tree(tmp_path, api):
    """A ResNet-style net (nested blocks, downsample branches, BatchNorm): the source's weight
    tree is converted.variables (params['layer1']['0']['conv1']['kernel']), in training too."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    converted = onnx2flax.convert(_export(_ResNet(), x))
    assert converted.variables["params"]["layer1"]["0"]["conv1"]["kernel"].shape == (3, 3, 4, 4)
    assert "downsample" in converted.variables["batch_stats"]["layer2"]["0"]
    source = _generate_and_compare(tmp_path, converted, [x.numpy().transpose(0, 2, 3, 1)],
                                   f"gen_resnet_{api}", train=True, api=api)
    if api == "linen":
        assert "s_layer1 = Scope(name='layer1')" in source
        # one class per PyTorch module class: _Block written once for its four instances,
        # channels, strides and whether it has a downsample its fields
        assert source.count("class Block(nn.Module):") == 1 and "class Block2" not in source
        assert "downsample: bool" in source and "if self.downsample:" in source
        assert "Block(name='0', features=4, conv1_strides=(1, 1), downsample=False)(" in source
        assert "Block(name='0', features=8, conv1_strides=(2, 2), downsample=True)(" in source
    else:
        assert "self.layer1['0']['conv1']['kernel']" in source


def test_generated_source_uses_public_jax_only():
    """CNN with BatchNorm, a transformer layer, a control-flow model: the AST of both APIs'
    sources holds no primitive binds, no ``*_p`` names, nothing of jax._src."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    layer = torch.nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0,
                                             batch_first=True)
    models = [onnx2flax.convert(_export(_cnn(), x)),
              onnx2flax.convert(_export(layer, torch.randn(2, 5, 16))),
              onnx2flax.convert(_control_flow_model())]
    for converted in models:
        for api in ("linen", "nnx"):
            source = codegen.generate(converted, api=api)
            check_generated_source(source)


def test_operation_without_public_spelling_is_refused(monkeypatch):
    """A handler tracing to an operation no public JAX function computes (here the seeding
    of a PRNG key, ``random_seed``): the model runs, codegen refuses it naming the node and
    the operation."""
    from onnx2flax._core import registry as _registry

    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))

    @onnx2flax.register_op("Seeded", domain="com.example", layout="elementwise")
    def seeded(ctx, x):
        return x + jax.random.uniform(jax.random.key(x.shape[0]), x.shape)

    model = make_model([helper.make_node("Seeded", ["x"], ["y"], name="noise",
                                         domain="com.example")],
                       [("x", np.float32, [3])], [("y", np.float32, [3])])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    converted = onnx2flax.convert(model)
    with pytest.raises(CodegenError, match=r"Seeded node 'noise': JAX operation 'random_seed'"):
        codegen.generate(converted)


def _scoped_chain(scopes, cls="pkg.Act"):
    """``len(scopes)`` chained ops (Relu, Neg, Exp, repeated) on ``x [2, 3]``; node ``i``
    carries torch dynamo's scope metadata for module ``scopes[i]`` (``None``: none;
    ``("raw", text)``: that text as both lists)."""
    ops = ["Relu", "Neg", "Exp"]
    nodes = []
    for i, scope in enumerate(scopes):
        node = helper.make_node(ops[i % 3], [f"v{i}" if i else "x"], [f"v{i + 1}"],
                                name=f"n{i}")
        if isinstance(scope, tuple):
            names = classes = scope[1]
        elif scope is not None:
            names = repr(["", "blocks", scope, f"op{i}"])
            classes = repr(["pkg.Net", "torch.nn.modules.container.ModuleList", cls,
                            "aten.op"])
        if scope is not None:
            helper.set_metadata_props(node, {"pkg.torch.onnx.name_scopes": names,
                                             "pkg.torch.onnx.class_hierarchy": classes})
        nodes.append(node)
    return make_model(nodes, [("x", np.float32, [2, 3])],
                      [(f"v{len(scopes)}", np.float32, [2, 3])])


@pytest.mark.parametrize("scopes, classes", [
    (["blocks.0"] * 3 + ["blocks.1"] * 3, 1),           # two instances of pkg.Act
    (["blocks.0", "blocks.1", "blocks.0"] + ["blocks.1"] * 3, 0),  # interleaved: none
    (["blocks.0"] * 3 + [None] * 3, 0),                  # one instance: none
    ([("raw", repr(["", "b" * 20000, "op"]))] * 6, 0),   # metadata too long: ignored
    ([("raw", "[1, 2")] * 6, 0),                         # malformed: ignored
    ([("raw", "__import__('os')")] * 6, 0),              # not a literal: ignored
])
def test_module_classes_from_torch_scopes(scopes, classes):
    """Repeated module instances become one class; anything else stays in ``Model``, and
    the source computes the interpreter's outputs either way."""
    converted = onnx2flax.convert(_scoped_chain(scopes))
    source = codegen.generate(converted)
    check_generated_source(source)
    assert source.count("class Act(nn.Module):") == classes
    module = import_source(source, "gen_scoped")
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(module.Model().apply({}, x)),
                                  converted.run({"x": x})[0])


@pytest.mark.parametrize("cls", ['x.float', 'x.None', 'x.Model', 'evil"""\nimport os\n#\\',
                                 "x.__init__"])
def test_module_class_names_stay_data(cls):
    """Class names from the file's metadata become identifiers or docstring text only."""
    converted = onnx2flax.convert(_scoped_chain(["b.0"] * 3 + ["b.1"] * 3, cls))
    source = codegen.generate(converted)
    check_generated_source(source)
    assert not any(line.lstrip().startswith("import os") for line in source.splitlines())
    module = import_source(source, "gen_scoped_names")
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(module.Model().apply({}, x)),
                                  converted.run({"x": x})[0])


class _LayerNorm2d(torch.nn.LayerNorm):
    """torchvision's ConvNeXt LayerNorm2d: its weights are its own, not a child layer's."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _TwoNorms(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.norm1 = torch.nn.Conv2d(3, 4, 3), _LayerNorm2d(4)
        self.conv2, self.norm2 = torch.nn.Conv2d(4, 4, 3), _LayerNorm2d(4)

    def forward(self, x):
        return self.norm2(self.conv2(self.norm1(self.conv1(x))))


def test_module_whose_weights_are_its_own_layer(tmp_path):
    """Repeated modules that are one layer (a LayerNorm subclass) stay layers of the model:
    the source's weights are still at the layer's path."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    converted = onnx2flax.convert(_export(_TwoNorms(), x))
    assert "norm1" in converted.variables["params"]
    source = _generate_and_compare(tmp_path, converted, [x.numpy().transpose(0, 2, 3, 1)],
                                   "gen_two_norms")
    assert "class LayerNorm2d" not in source
