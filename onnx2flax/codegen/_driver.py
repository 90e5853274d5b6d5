"""The walk: the interpreter's node loop, each node traced on its own and written as source.

A weighted node is traced twice: once up to its layer call (``call_layer`` records the call
and hands the handler a stand-in result), which gives the layer's inputs and constructor
arguments, and once from the layer's output (``call_layer`` returns it), which gives the
node's outputs. The layer is written as the same Flax layer, at its path of the weight tree.
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .._core import boundary as _boundary, layout as _layout
from .._core.dims import as_values, is_symbolic
from .._pipeline import layers as _layers
from .._pipeline.module import _Env, _Interpreter
from ..converter import ConvertedModel
from ..errors import CodegenError, node_label
from ._blocks import Instance, assemble
from ._emit import JaxprWriter
from ._literals import Names, dtype_text, literal, node_text, shape_text
from ._open import open_inputs
from ._source import module_source

#: Names the source uses for itself: input dims (named without a prefix) must not take them.
_RESERVED = frozenset(dir(builtins)) | {
    "jax", "jnp", "np", "nn", "nnx", "lax", "serialization", "annotations", "Scope",
    "Model", "self", "train", "weight_tree", "load_variables", "load_model",
    "floordiv", "mod", "non_negative"}  # and what JAX prints in symbolic dims

#: Attribute names the NNX model's top-level weights must not take: ``nnx.Module``'s own.
_NNX_RESERVED = frozenset(dir(nnx.Module)) | {"rngs"}


class _NoModule:
    """Stands in for the linen module: nodes are traced one by one, outside any module."""

    @staticmethod
    def is_mutable_collection(name: str) -> bool:
        return False


class _Recorded:
    """A weighted node's layer call, as its handler made it."""

    def __init__(self, plan, cls, args, kwargs, call_kwargs):
        self.plan, self.cls, self.args, self.kwargs, self.call_kwargs = (
            plan, cls, args, kwargs, call_kwargs)
        self.jaxpr = None

    def output_shape(self):
        variables = {"params": self.plan.params, "batch_stats": self.plan.batch_stats}
        return jax.eval_shape(lambda *a: self.cls(**self.kwargs).apply(
            variables, *a, **self.call_kwargs), *self.args)


class Generator(JaxprWriter, _Interpreter):
    """Runs the interpreter's node walk, tracing each node on its own and writing code."""

    def __init__(self, converted: ConvertedModel, inputs: Sequence[Any] | None,
                 api: str = "linen", blocks: dict | None = None):
        """``blocks``: the module instance of each node whose lines go into one
        (``_blocks.plan``, from the nodes this generator wrote without)."""
        if api not in ("linen", "nnx"):
            raise ValueError(f"api must be 'linen' or 'nnx', got {api!r}")
        converted = getattr(converted, "linen", converted)  # an NnxConvertedModel
        JaxprWriter.__init__(self)
        _Interpreter.__init__(self, _NoModule(), converted._program, train=False)
        self.api = api
        self.flax = "nnx" if api == "nnx" else "nn"
        self.ids = Names(_RESERVED)
        self.scopes: dict[str, str] = {}      # linen: top-level name -> its Scope variable
        self.classes: list[type] = []
        self.variables = converted.variables  # the weight tree, as converted
        self._recording: list[_Recorded] | None = None
        self._layer_value: Any = None
        self._train_read = False
        self._reads: dict[str, dict[int, tuple[str, int, int]]] = {}  # input -> ONNX axis
        self.written: list = []                 # top-level nodes, in the order written
        self._blocks: dict = blocks or {}
        self.instances: list[Instance] = []     # module instances, in the order called
        self.block_classes: list[str] = []      # their classes' source
        self._block: Instance | None = None     # the one being written
        self._outer_lines: list[str] = []
        self._block_ids = Names(_RESERVED)
        self._rngs: list[str] | None = None     # rng names a train-mode trace asked for
        self._keys: list[Any] | None = None     # and the keys it gets, in that order
        if api == "nnx":
            _check_nnx_names(self.variables)
        self._write(converted, inputs)

    # --- the walk ---------------------------------------------------------------------

    def _write(self, converted: ConvertedModel, inputs) -> None:
        graph = self.graph
        boundary = [s for s in converted.inputs + list(graph.outputs)
                    if s.sequence or s.optional]
        if boundary:
            raise CodegenError(
                "graph inputs and outputs that are sequences or optionals cannot be written as "
                "standalone source (the source takes and returns tensors); found "
                + ", ".join(f"{s.name!r} ({s.kind})" for s in boundary)
                + ". Sequences inside the graph are supported.")
        if inputs is None:
            inputs, self.dims, self._reads = open_inputs(converted.inputs, self.ids)
        self.input_shapes = [tuple(np.shape(v)) for v in inputs]
        args = []
        env = _Env(graph.constants)
        self._current_env = env
        read: set[str] = set()
        for spec, value in zip(converted.inputs, inputs):
            name = self.ids.take(spec.name, "x_")
            args.append(name)
            value = self._stand_in(value, name)
            perm = _boundary.held_perm(spec, value.ndim)
            self._line(f"# input {ascii(spec.name)}: {shape_text(value)}"
                       f"{' channels-last' if spec.channels_last else ''}")
            self._read_dims(spec, name, read)
            env.values[spec.name] = (value, perm)
        owners = self._param_owners()
        for name, path in self.program.free_params.items():
            value = graph.constants[name]
            var = self.ids.take("_".join(path), "p_")
            if name in owners:  # created where its module instance is written
                owners[name].params.append((name, path, value, var))
            else:
                self._write_param(name, path, value, var)
            env.values[name] = (self._stand_in(value, var), _layout.identity(value.ndim))
        self.run(env, graph)
        self._enter(None)  # out of the last module instance
        outs = []
        for spec in graph.outputs:
            value, perm = env.get(spec.name)
            name, what = f"out_{len(outs)}", f"output {ascii(spec.name)}"
            if is_symbolic(value):  # a shape holding run-time sizes, as an array
                outs.append(self._emit_fn(lambda v=value: as_values(v), [], [name], what))
                continue
            outs.append(self._emit_fn(
                lambda v, p=perm: _boundary.module_output(v, p, converted.channels_last),
                [value], [name], what))
        names = [self._name_of(o) for o in outs]
        result = names[0] if len(names) == 1 else "(" + ", ".join(names) + ",)"
        self._line(f"return {result}")
        if self.instances:
            module_names = ({"jax", "jnp", "np", "nn", "lax", "Scope", "Model"}
                            | set(self.const_vars.values()) | {c.__name__ for c in self.classes})
            self.lines, self.block_classes = assemble(self.instances, self.lines, module_names,
                                                      module_names, set(self.dims))
        self.source = module_source(self, converted, args)

    def _read_dims(self, spec, var: str, read: set[str]) -> None:
        """Lines reading input ``spec``'s symbolic dims (not read before) from ``var``."""
        perm = _boundary.held_perm(spec, len(spec.shape or ()))
        for axis, (name, a, b) in sorted(self._reads.get(spec.name, {}).items()):
            if name in read:
                continue
            read.add(name)
            size = f"{var}.shape[{perm.index(axis)}]" + (
                f" - {b}" if b > 0 else f" + {-b}" if b < 0 else "")
            if a != 1:
                size = f"({size}) // {a}" if b else f"{size} // {a}"
            self._line(f"{name} = {size}")

    def _in_scope(self, prefix: tuple[str, ...], make: Callable[[str], str]) -> str:
        """Linen: the expression ``make(module)`` evaluated at ``prefix`` of the weight tree
        (``module``: the source of the module it is evaluated in). Inside a module
        instance's lines, ``prefix`` is taken relative to the instance's own level."""
        scopes, ids = self.scopes, self.ids
        if self._block is not None:
            prefix = prefix[len(self._block.weights):]
            scopes, ids = self._block.scopes, self._block_ids
        if not prefix:
            return make("self")
        root = scopes.get(prefix[0])
        if root is None:
            root = scopes[prefix[0]] = ids.take(prefix[0], "s_")
            self._line(f"{root} = Scope(name={prefix[0]!r})")
        return f"{root}({literal(tuple(prefix[1:]))}, lambda s: {make('s')})"

    def _write_param(self, name: str, path: tuple[str, ...], value, var: str) -> None:
        """The line making weight ``name`` (not a layer's) variable ``var``."""
        self._line(f"# parameter {ascii(name)}")
        if self.api == "nnx":
            self._line(f"{var} = {_nnx_path(path)}.get_value()")
            return
        param = (f".param({path[-1]!r}, nn.initializers.zeros, {tuple(value.shape)!r}, "
                 f"{dtype_text(value.dtype)})")
        self._line(f"{var} = {self._in_scope(path[:-1], lambda m: m + param)}")

    def _param_owners(self) -> dict[str, Instance]:
        """The weights (not a layer's) that only one module instance reads, within its
        level of the weight tree: that instance creates them (``in_proj_bias``)."""
        readers: dict[str, set] = {}
        for node in self.graph.nodes:
            for name in node.reads():
                if name in self.program.free_params:
                    readers.setdefault(name, set()).add(self._blocks.get(node))
        owners = {}
        for name, found in readers.items():
            inst = next(iter(found))
            path = self.program.free_params[name]
            if len(found) == 1 and inst is not None and path[:len(inst.weights)] == inst.weights:
                owners[name] = inst
        return owners

    def _enter(self, node) -> None:
        """Write ``node``'s lines into its module instance's (``_blocks``), if it has one:
        on entering an instance, its call's marker goes into the lines around it."""
        inst = self._blocks.get(node)
        if inst is self._block:
            return
        if self._block is not None:  # leaving one
            self.lines, self._block = self._outer_lines, None
        if inst is None:
            return
        if inst.marker:
            raise CodegenError(f"module instance {inst.path!r} is written in two runs")
        inst.marker = f"_block{len(self.instances)}"
        self.instances.append(inst)
        call = self._in_scope(inst.weights[:-1], lambda _: f"{inst.marker}_call")
        self._line(f"{inst.marker}_out = {call}")
        self._outer_lines, self.lines, self._block = self.lines, inst.lines, inst
        self._block_ids = Names(_RESERVED)
        for param in inst.params:
            self._write_param(*param)

    def _call(self, spec, node, held):
        if not self.top:  # a subgraph run inside a node's trace: nothing to write
            return super()._call(spec, node, held)
        what = node_text(node)
        dynamic = [i for i, (a, _) in enumerate(held)
                   if a is not None and not isinstance(a, np.ndarray)]
        # Values the node's subgraphs read from this graph are arguments of the trace too,
        # or they would be captured as constants.
        env = self._current_env
        outer = [n for n in dict.fromkeys(n for sub in node.subgraphs() for n in sub.outer)
                 if n in env.values and not isinstance(env.values[n][0], np.ndarray)]
        values = [held[i][0] for i in dynamic] + [env.values[n][0] for n in outer]
        result: dict[str, Any] = {}

        def run(*traced):
            h = list(held)
            for i, v in zip(dynamic, traced):
                h[i] = (v, held[i][1])
            saved = {n: env.values[n] for n in outer}
            env.values.update({n: (v, saved[n][1]) for n, v in zip(outer, traced[len(dynamic):])})
            try:
                outs, perms = super(Generator, self)._call(spec, node, h)
            finally:
                env.values.update(saved)
            result["outs"], result["perms"] = outs, perms
            return [o for o in outs if not isinstance(o, np.ndarray)]

        self.written.append(node)
        self._enter(node)
        self._line(f"# {what}")
        if node in self.program.layers:
            call = self._record_layer(run, values, node)
            layer_out = self._emit_layer(call, node, values)

            def post(*traced):  # the node's outputs from the layer's output
                self._layer_value = traced[-1]
                try:
                    return run(*traced[:-1])
                finally:
                    self._layer_value = None

            dyn_outs = self._emit_fn(post, values + [layer_out], None, what)
        else:
            dyn_outs = self._emit_node(run, values, what)
        outs = list(result["outs"])
        it = iter(dyn_outs)
        for k, o in enumerate(outs):
            if not isinstance(o, np.ndarray):
                outs[k] = next(it)
        return outs, result["perms"]

    # --- train mode -------------------------------------------------------------------

    @property
    def train(self) -> bool:  # what a handler reads as ctx.train
        self._train_read = True
        return self._train

    @train.setter
    def train(self, value: bool) -> None:
        self._train = value

    def make_rng(self, name: str):
        if self._keys is not None:
            return self._keys.pop(0)
        if self._rngs is None:
            raise CodegenError(f"an rng ({name!r}) was asked for outside train mode")
        self._rngs.append(name)
        return jax.random.key(0)  # finding out which rngs the node asks for

    def _emit_node(self, run, values, what):
        """A node whose handler reads ``train`` (Dropout) is written for both modes,
        ``if train: ... else: ...``, the training branch taking the rngs it asks for
        (``self.make_rng('dropout')``) as the interpreter's module does."""
        self._train_read = False
        start = len(self.lines)
        outs = self._emit_fn(run, values, None, what)
        if not self._train_read:
            return outs
        del self.lines[start:]
        names = [self._new_temp() for _ in jax.tree.leaves(outs)]
        outer, self.lines = self.lines, []
        self._train, self._rngs = True, []
        try:
            jax.make_jaxpr(lambda *a: run(*a))(*values)  # a new function: jit caches traces
            keys = []
            for name in self._rngs:
                key = self._new_temp()
                self._line(f"{key} = {self._rng_source(name)}")
                keys.append(self._stand_in(jax.eval_shape(lambda: jax.random.key(0)), key))

            def with_keys(*traced):
                self._keys = list(traced[len(values):])
                try:
                    return run(*traced[:len(values)])
                finally:
                    self._keys = None

            self._emit_fn(with_keys, [*values, *keys], names, what)
            train_lines, self.lines = self.lines, []
            self._train, self._rngs = False, None
            outs = self._emit_fn(lambda *a: run(*a), values, names, what)
            eval_lines = self.lines
        finally:
            self.lines = outer
            self._train, self._rngs = False, None
        self._both_modes(train_lines, eval_lines)
        return outs

    def _both_modes(self, train_lines: list[str], eval_lines: list[str]) -> None:
        self._line("if train:")
        self.lines += ["    " + line for line in train_lines]
        self._line("else:")
        self.lines += ["    " + line for line in eval_lines]

    def _rng_source(self, name: str) -> str:
        return f"self.rngs[{name!r}]()" if self.api == "nnx" else f"self.make_rng({name!r})"

    def call_layer(self, plan, cls, args, kwargs, call_kwargs):
        if self._layer_value is not None:
            return self._layer_value
        if self._recording is None:
            raise CodegenError(f"layer {cls.__name__} was called outside a weighted node")
        call = _Recorded(plan, cls, args, kwargs, call_kwargs)
        self._recording.append(call)
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), call.output_shape())

    # --- layers -----------------------------------------------------------------------

    def _record_layer(self, run, values, node) -> _Recorded:
        """The node's layer call, with the jaxpr computing its arguments from ``values``."""
        calls: list[_Recorded] = []

        def pre(*traced):
            self._recording = calls
            try:
                run(*traced)
            finally:
                self._recording = None
            return list(calls[0].args) if calls else []

        jaxpr = jax.make_jaxpr(pre)(*values)
        if len(calls) != 1:
            raise CodegenError(f"{node_label(node.name, node.op_type)}: its handler called "
                               f"{len(calls)} layers; a weighted node calls one")
        calls[0].jaxpr = jaxpr
        return calls[0]

    def _emit_layer(self, call: _Recorded, node, values):
        what = node_text(node)
        arg_names = self._emit_jaxpr(call.jaxpr, self._names_of(values), None, what)
        if self.api == "nnx":
            args = [self._stand_in(a, n) for a, n in zip(call.args, arg_names)]
            return self._emit_nnx_layer(call, args, what)
        cls = call.cls
        if getattr(nn, cls.__name__, None) is cls:
            ctor = f"nn.{cls.__name__}"
        elif getattr(_layers, cls.__name__, None) is cls:
            ctor = cls.__name__
            if cls not in self.classes:
                self.classes.append(cls)
        else:
            raise CodegenError(f"{node_label(node.name, node.op_type)}: layer class "
                               f"{cls.__qualname__} cannot be written as standalone source")
        path = call.plan.path
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        kwargs = "".join(f", {k}={literal(v)}" for k, v in call.kwargs.items()
                         if not _is_default(v, defaults.get(k, dataclasses.MISSING), k))
        call_kwargs = ", ".join(f"{k}=train" if k == "train" else f"{k}={literal(v)}"
                                for k, v in call.call_kwargs.items())
        layer_args = ", ".join(arg_names + ([call_kwargs] if call_kwargs else []))
        var = self._new_temp()
        layer = f"{ctor}(name={path[-1]!r}{kwargs})({layer_args})"
        self._line(f"{var} = {self._in_scope(path[:-1], lambda _: layer)}")
        # The layer's output, abstractly; a stand-in carries the variable name onward.
        return self._stand_in(call.output_shape(), var)

    def _emit_nnx_layer(self, call: _Recorded, args: list, what: str):
        """An NNX layer: its variables are ``nnx.Param`` / ``nnx.BatchStat`` leaves at its
        path of the model, its computation the operations the linen layer traces to. A layer
        with a ``train`` flag (BatchNorm) is traced both ways; the training branch writes the
        updated statistics back."""
        plan, cls = call.plan, call.cls
        variables: dict[str, dict] = {}
        where = _nnx_path(plan.path)
        for collection, leaves in (("params", plan.params), ("batch_stats", plan.batch_stats)):
            for leaf, value in leaves.items():
                var = self._new_temp()
                self._line(f"{var} = {where}[{leaf!r}].get_value()")
                variables.setdefault(collection, {})[leaf] = self._stand_in(value, var)

        def layer(train: bool | None):
            kwargs = dict(call.call_kwargs) if train is None else {**call.call_kwargs,
                                                                    "train": train}
            mutable = ["batch_stats"] if train else False
            return lambda v, *a: cls(**call.kwargs).apply(v, *a, **kwargs, mutable=mutable)

        out = self._new_temp()
        if "train" not in call.call_kwargs:
            return self._emit_fn(layer(None), [variables, *args], [out], what)
        outer, self.lines = self.lines, []
        try:
            y, updates = self._emit_fn(layer(True), [variables, *args], None, what)
            for leaf, value in updates.get("batch_stats", {}).items():
                self._line(f"{where}[{leaf!r}].set_value({self._name_of(value)})")
            self._line(f"{out} = {self._name_of(y)}")
            train_lines, self.lines = self.lines, []
            y = self._emit_fn(layer(False), [variables, *args], [out], what)
            eval_lines = self.lines
        finally:
            self.lines = outer
        self._both_modes(train_lines, eval_lines)
        return y


#: Layer fields whose int default means that value on every spatial axis (``nn.Conv``'s
#: ``kernel_dilation=1`` is ``(1, 1)``). Not ``strides``: written always, they do not make
#: two instances of a module look different when one has the default.
_PER_AXIS = frozenset({"kernel_dilation", "input_dilation"})


def _is_default(value, default, name: str = "") -> bool:
    """Whether a layer's argument is its field's default (left out of the source)."""
    if name in _PER_AXIS and type(default) is int and isinstance(value, tuple):
        return all(type(v) is int and v == default for v in value)
    try:
        return type(value) is type(default) and bool(value == default)
    except Exception:  # noqa: BLE001  (uncomparable: written out)
        return False


def _nnx_path(path: tuple[str, ...]) -> str:
    """Where the NNX model holds the level or leaf ``path``: ``self.layer1['0']['conv1']``."""
    head = f"self.{path[0]}" if path[0].isidentifier() else f"getattr(self, {path[0]!r})"
    return head + "".join(f"[{p!r}]" for p in path[1:])


def _check_nnx_names(variables) -> None:
    """The NNX model holds its top-level weights as attributes: none may be one of
    ``nnx.Module``'s own (a method, ``_object__state``) or ``rngs`` (the model's)."""
    for collection in variables.values():
        for name in collection:
            if name in _NNX_RESERVED or name.startswith("_"):
                raise CodegenError(
                    f"the model's top-level weight {name!r} would shadow an attribute of "
                    "nnx.Module in NNX source; rename it in the ONNX file or generate with "
                    "api='linen'")
