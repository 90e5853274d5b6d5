"""Stage 4: the Flax module whose ``__call__`` walks the planned graph.

Values live in an environment as ``(array, perm)``: ``array`` is a NumPy array when it is
known at trace time (constants, shapes: folded with ONNX's reference evaluator) and a JAX
array otherwise; ``perm`` is its layout relative to ONNX order (see ``_layout``). A sequence
is a Python list of tensors in ONNX order and an empty optional is ``None``; both have
``perm`` ``None``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .._core import boundary as _boundary, dims as _dims, layout as _layout, limits as _limits
from .._core.graph import Graph, Node
from .._core.guard import guarded
from .._core.registry import OpSpec, lookup
from ..errors import InvalidInputError, InvalidModelError, UnsupportedOpError, node_label
from .dims_fold import fold_dims, handles as _dims_fold_handles
from .fold import fold, foldable
from .plan import LayerPlan, Program

_REQUIRED = object()


class _Namespace(nn.Module):
    """A named level of the parameter tree (``layer1`` in ``layer1.0.conv1``)."""

    @nn.compact
    def __call__(self, fn: Callable[[nn.Module], Any]):
        return fn(self)


def _const_init(value: np.ndarray):
    def init(*_):
        return jnp.asarray(value)
    return init


class OpContext:
    """What a handler sees besides its inputs: attributes, layouts, layers, subgraphs."""

    def __init__(self, interp: _Interpreter, node: Node, spec: OpSpec, in_perms: list):
        self._interp = interp
        self.node = node
        self.spec = spec
        self.in_perms: list[_layout.Perm | None] = in_perms
        self.out_perms: list[_layout.Perm] | None = None

    @property
    def opset(self) -> int:
        return self._interp.graph.opset_of(self.node)

    @property
    def train(self) -> bool:
        return self._interp.train

    @property
    def bound(self) -> int | None:
        """The user's static bound on this node's number of results (``convert(bounds=...)``)."""
        return self._interp.program.bound_of(self.node)

    @property
    def label(self) -> str:
        return node_label(self.node.name, self.node.op_type)

    def attr(self, name: str, default: Any = _REQUIRED) -> Any:
        """Attribute ``name`` as given or defaulted by normalize (by the op's ONNX schema at
        the node's opset, else by the handler's registered ``defaults``), else ``default``
        (for defaults the spec's text derives, e.g. from the input's rank)."""
        if name in self.node.attrs:
            return self.node.attrs[name]
        if default is _REQUIRED:
            raise InvalidModelError(f"{self.label} lacks required attribute {name!r}")
        return default

    def fail(self, message: str) -> UnsupportedOpError:
        """An error naming this node, to ``raise``."""
        return UnsupportedOpError(f"{self.label}: {message}")

    def invalid(self, message: str) -> InvalidModelError:
        return InvalidModelError(f"{self.label}: {message}")

    def static(self, value, what: str) -> np.ndarray:
        """``value`` as NumPy, or an error if it is only known at run time."""
        if value is None or isinstance(value, np.ndarray):
            return value
        raise self.fail(f"{what} must be known at conversion time (a constant or computed "
                        "from shapes), but it depends on the model's inputs")

    @property
    def layer_plan(self) -> LayerPlan | None:
        return self._interp.program.layers.get(self.node) if self._interp.top else None

    def layer(self, cls: type[nn.Module], *args, call_kwargs: dict | None = None, **kwargs):
        """Create the node's planned layer ``cls(**kwargs)`` with its weights as
        initializers, and call it on ``args``."""
        return self._interp.call_layer(self.layer_plan, cls, args, kwargs, call_kwargs or {})

    def make_rng(self, name: str = "dropout"):
        return self._interp.make_rng(name)

    def run_graph(self, graph: Graph, feeds: Sequence[Any]) -> list[Any]:
        """Run subgraph ``graph`` on ``feeds`` (its inputs in order, ONNX layout); it can
        read every value of the enclosing graphs. Returns its outputs in ONNX layout."""
        return self._interp.run_subgraph(graph, list(feeds))


#: Ops that take sequences (Python lists while tracing) as inputs.
_TAKES_SEQUENCES = frozenset((
    "Identity", "Optional", "OptionalHasElement", "OptionalGetElement", "Loop", "SequenceMap",
    "SequenceAt", "SequenceInsert", "SequenceErase", "SequenceLength", "ConcatFromSequence"))


class _Env:
    def __init__(self, constants: dict[str, np.ndarray], parent: _Env | None = None):
        self.values: dict[str, tuple[Any, _layout.Perm]] = {}
        self.constants = constants
        self.parent = parent

    def get(self, name: str):
        env = self
        while env is not None:
            if name in env.values:
                return env.values[name]
            if name in env.constants:
                value = env.constants[name]
                return value, _layout.identity(value.ndim)
            env = env.parent
        raise KeyError(name)


class _Interpreter:
    def __init__(self, module: nn.Module, program: Program, train: bool):
        self.module = module
        self.program = program
        self.graph = program.graph
        self.train = train
        self.top = True
        # apply(..., mutable=['intermediates']) records every node output in ONNX layout.
        self.record = module.is_mutable_collection("intermediates")
        self._roots: dict[str, _Namespace] = {}
        self.budget = _limits.budget()

    def call_layer(self, plan: LayerPlan, cls: type[nn.Module], args: tuple, kwargs: dict,
                   call_kwargs: dict):
        inits = {f"{leaf}_init": _const_init(value)
                 for leaf, value in {**plan.params, **plan.batch_stats}.items()}

        def make(scope: nn.Module):
            return cls(name=plan.path[-1], **inits, **kwargs)(*args, **call_kwargs)

        return self.in_scope(plan.path[:-1], make)

    def make_rng(self, name: str):
        return self.module.make_rng(name)

    def in_scope(self, prefix: tuple[str, ...], fn: Callable[[nn.Module], Any]):
        if not prefix:
            return fn(self.module)
        root = self._roots.get(prefix[0])
        if root is None:
            root = self._roots[prefix[0]] = _Namespace(name=prefix[0])

        def nested(rest):
            if not rest:
                return fn
            return lambda scope: _Namespace(name=rest[0])(nested(rest[1:]))

        return root(nested(prefix[1:]))

    def run(self, env: _Env, graph: Graph) -> None:
        for node in graph.nodes:
            self._run_node(env, graph, node)

    def _run_node(self, env: _Env, graph: Graph, node: Node) -> None:
        self.budget.step(node_label(node.name, node.op_type))
        spec = lookup(node, graph.opsets)
        if spec is None:
            raise UnsupportedOpError(f"{node_label(node.name, node.op_type)} has no handler "
                                     f"for opset {graph.opset_of(node)}")
        held = []
        for name in node.inputs:
            if not name:
                held.append((None, None))
                continue
            try:
                held.append(env.get(name))
            except KeyError:
                raise InvalidModelError(f"{node_label(node.name, node.op_type)} reads {name!r}"
                                        ", which is not defined") from None
        arrays = [a for a, _ in held]
        takes_sequences = node.domain == "" and node.op_type in _TAKES_SEQUENCES
        if not takes_sequences and any(isinstance(a, list) for a in arrays):
            k = next(k for k, a in enumerate(arrays) if isinstance(a, list))
            raise InvalidModelError(f"{node_label(node.name, node.op_type)}: input {k} "
                                    f"({node.inputs[k]!r}) is a sequence; the op takes tensors")
        is_layer = self.top and node in self.program.layers
        known = (not is_layer and arrays  # absent inputs only, not empty optionals
                 and all(isinstance(a, np.ndarray) or not name
                         for a, name in zip(arrays, node.inputs)))
        symbolic = any(_dims.is_symbolic(a) for a in arrays)
        if known and (_dims_fold_handles(node, arrays) if symbolic else foldable(node)):
            outs = (fold_dims(node, arrays, graph.opset_of(node)) if symbolic
                    else fold(node, arrays, graph.opsets))
            for name, value in zip(node.outputs, outs):
                if name:
                    env.values[name] = (value, _layout.identity(value.ndim))
            return
        if symbolic:
            held = _dims_as_values(held, spec.static_inputs)
        outs, perms = self._call(spec, node, held)
        if len(outs) < len([o for o in node.outputs if o]):
            raise InvalidModelError(f"{node_label(node.name, node.op_type)} produced "
                                    f"{len(outs)} outputs, the graph expects {len(node.outputs)}")
        for name, value, perm in zip(node.outputs, outs, perms):
            if name:
                env.values[name] = (value, perm)
                if self.record and perm is not None:
                    self.module.sow("intermediates", name, jnp.asarray(_layout.to_onnx(value, perm)))

    def _call(self, spec: OpSpec, node: Node, held: list):
        arrays = [a for a, _ in held]
        perms = [p for _, p in held]
        layout = spec.layout
        out_perm = None
        if layout == "onnx":
            arrays = [a if p is None else _layout.to_onnx(a, p) for a, p in zip(arrays, perms)]
        elif layout == "elementwise":
            out_perm = _common_perm(arrays, perms)
            arrays = [a if a is None else _layout.broadcast_to_perm(a, p, out_perm)
                      for a, p in zip(arrays, perms)]
        elif layout == "channels_last":
            arrays = [a if a is None or i == 0 else _layout.to_onnx(a, p)
                      for i, (a, p) in enumerate(zip(arrays, perms))]
            if arrays and arrays[0] is not None:
                out_perm = _layout.channels_last(np.ndim(arrays[0]))
                arrays[0] = _layout.convert(arrays[0], perms[0], out_perm)
        ctx = OpContext(self, node, spec, perms)
        result = guarded(node, arrays, spec.fn, ctx, *arrays)
        outs = list(result) if isinstance(result, (list, tuple)) else [result]
        for out in outs:  # shapes are static under trace: refuse before XLA allocates
            if isinstance(out, list):
                self.budget.check_sequence(len(out), node_label(node.name, node.op_type))
            elif out is not None:
                itemsize = np.dtype(getattr(out, "dtype", float)).itemsize
                self.budget.check_tensor(_dims.concrete_size(np.shape(out)) * itemsize,
                                         node_label(node.name, node.op_type), np.shape(out))
        if ctx.out_perms is not None:
            out_perms = list(ctx.out_perms)
        elif out_perm is not None:
            out_perms = [out_perm if np.ndim(o) == len(out_perm) else _layout.identity(np.ndim(o))
                         for o in outs]
        else:
            out_perms = [_layout_of(o) for o in outs]
        # A sequence (a Python list of tensors) or an empty optional (None) has no layout.
        out_perms = [None if o is None or isinstance(o, list) else p
                     for o, p in zip(outs, out_perms)]
        return outs, out_perms

    def run_subgraph(self, graph: Graph, feeds: list[Any]) -> list[Any]:
        env = _Env(graph.constants, parent=self._current_env)
        for spec, value in zip(graph.inputs, feeds):
            env.values[spec.name] = (value, _layout_of(value))
        outer_top, self.top = self.top, False
        outer_record, self.record = self.record, False
        outer_env, self._current_env = self._current_env, env
        try:
            self.run(env, graph)
            return [_in_onnx_order(*env.get(o.name)) for o in graph.outputs]
        finally:
            self.top, self._current_env = outer_top, outer_env
            self.record = outer_record

    _current_env: _Env | None = None


def _dims_as_values(held: list, static: tuple[int, ...]) -> list:
    """Shape values holding symbolic dims that a handler takes as data (not as a static
    shape, axes...): traced int64 arrays computed from the dims."""
    return [(_dims.as_values(a), p)
            if _dims.is_symbolic(a) and k not in static else (a, p)
            for k, (a, p) in enumerate(held)]


def _layout_of(value) -> _layout.Perm | None:
    """The layout of a value given in ONNX order: ``None`` for sequences and empty optionals."""
    return None if value is None or isinstance(value, list) else _layout.identity(np.ndim(value))


def _in_onnx_order(value, perm: _layout.Perm | None):
    return value if perm is None else _layout.to_onnx(value, perm)


def _common_perm(arrays, perms) -> _layout.Perm:
    """The layout elementwise inputs meet in: that of the first highest-rank input held
    in a non-ONNX layout, else ONNX order."""
    rank = max((np.ndim(a) for a in arrays if a is not None), default=0)
    for a, p in zip(arrays, perms):
        if a is not None and np.ndim(a) == rank and not _layout.is_identity(p):
            return p
    return _layout.identity(rank)


class OnnxModule(nn.Module):
    """A converted ONNX graph as a ``flax.linen`` module.

    ``apply(variables, *inputs, train=False)`` takes the graph's inputs in order: an array
    per tensor, a list of arrays per sequence, ``None`` (or a value) per optional. With
    ``channels_last=True`` image inputs (``ConvertedModel.inputs[i].channels_last``) are
    ``[N, *spatial, C]`` like a hand-written Flax model, and image outputs come back the same
    way; other tensors are in ONNX order. Returns one output, or a tuple for several
    (a sequence output is a list of arrays, an empty optional output ``None``).
    ``train=True`` makes BatchNormalization use (and, with ``mutable=['batch_stats']``,
    update) batch statistics and Dropout drop (needs ``rngs={'dropout': key}``).
    """

    program: Program
    channels_last: bool = True

    def __repr__(self) -> str:
        graph = self.program.graph
        return (f"OnnxModule(graph={graph.name!r}, nodes={len(graph.nodes)}, "
                f"inputs={[s.name for s in graph.inputs]}, "
                f"outputs={[s.name for s in graph.outputs]}, channels_last={self.channels_last})")

    def __call__(self, *inputs, train: bool = False):
        values = [o.value for o in self._outputs(*inputs, train=train)]
        return values[0] if len(values) == 1 else tuple(values)

    @nn.compact
    def _outputs(self, *inputs, train: bool = False) -> list[_boundary.Output]:
        """As ``__call__``, each output with its spec (``channels_last`` set when it is
        returned ``[N, *spatial, C]``): ``_boundary.Output``."""
        with _limits.charging(self.program.limits, self.program.stored_bytes):
            return self._trace(inputs, train)

    def _trace(self, inputs, train: bool) -> list[_boundary.Output]:
        graph = self.program.graph
        if len(inputs) != len(graph.inputs):
            names = [s.name for s in graph.inputs]
            raise InvalidInputError(f"the model takes {len(names)} input(s) {names}, "
                                    f"got {len(inputs)}")
        interp = _Interpreter(self, self.program, train)
        env = _Env(graph.constants)
        interp._current_env = env
        specs = _boundary.input_specs(graph.inputs, self.program.spatial_inputs,
                                      self.channels_last)
        for spec, value in zip(specs, inputs):
            env.values[spec.name] = _boundary.held_input(spec, value)
        for name, path in self.program.free_params.items():
            value = graph.constants[name]
            param = interp.in_scope(path[:-1], lambda s, leaf=path[-1], v=value:
                                    s.param(leaf, _const_init(v)))
            env.values[name] = (param, _layout.identity(value.ndim))
        interp.run(env, graph)
        outputs = []
        for spec in graph.outputs:
            value, perm = env.get(spec.name)
            outputs.append(_boundary.graph_output(spec, value, perm, self.channels_last))
        return outputs


class _ConstantInterpreter(_Interpreter):
    """Runs one node's own handler on NumPy inputs outside any module: constant folding's
    fallback where ONNX's reference evaluator lacks the op's version or fails on it."""

    def __init__(self, opsets: dict[str, int]):  # no super().__init__: it needs a module
        self.graph = Graph("constant", [], [], [], {}, dict(opsets))
        self.program = Program(self.graph, {}, {}, frozenset())
        self.train = False
        self.top = False
        self.record = False
        self.budget = _limits.budget()


def evaluate_constant(node: Node, arrays: list[np.ndarray | None],
                      opsets: dict[str, int]) -> list[np.ndarray] | None:
    """``node``'s handler on constant ``arrays`` (ONNX order), results in ONNX order as
    NumPy, or ``None`` when no handler covers the node. Evaluated eagerly (even while a jit
    traces) with 64-bit JAX types, so int64 shape arithmetic stays exact."""
    spec = lookup(node, opsets)
    if spec is None:
        return None
    held = [(a, None if a is None else _layout.identity(np.ndim(a))) for a in arrays]
    with jax.ensure_compile_time_eval(), jax.enable_x64(True):
        outs, perms = _ConstantInterpreter(opsets)._call(spec, node, held)
        return [None if o is None else np.asarray(_in_onnx_order(o, p))
                for o, p in zip(outs, perms)]
