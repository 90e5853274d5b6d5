"""Standalone Flax source for a converted model: ``generate(converted) -> str`` and
``save(converted, out_dir)`` (``model.py`` + ``weights.msgpack``), as a ``flax.linen``
module (``api="linen"``, default) or a ``flax.nnx`` module (``api="nnx"``).

The source is made by walking the graph node by node exactly as the interpreter does: a
weighted node becomes the same Flax layer constructor call with the same arguments (named
after the weight, e.g. ``nn.Conv(name='conv', ...)``); every other node becomes the
``jax.lax`` operations its handler traced to, on the node's actual input shapes. Same ops,
same order, so the generated module computes the interpreter's outputs bit for bit. Shapes
are specialized to the shapes traced (the model's static input shapes, dynamic dims as 1
unless ``inputs`` are given). Sequences (lists of tensors, static length) become one
variable per tensor. The graph's constants other than weights are module-level NumPy
arrays written into the source, so that XLA sees them as constants, as it does in the
interpreter (as jit arguments, they compile to other code: other fusions, other roundings).

NNX: the weights are ``nnx.Param`` / ``nnx.BatchStat`` attributes (``self.conv.kernel``),
filled from ``weights.msgpack`` when the module is built (no random initialization); a
layer's computation is the ``jax.lax`` operations its linen layer traces to, and BatchNorm's
``train=True`` branch writes the updated statistics back.

ONNX names never become code: identifiers are sanitized (``[A-Za-z0-9_]``, prefixed, unique,
never one of ``nnx.Module``'s attributes) and names appear only inside comments and string
literals, written with ``repr``.
"""

from __future__ import annotations

import inspect
import keyword
import re
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import flax.linen as nn
import jax
import numpy as np
from flax import nnx, serialization
from jax import lax

from . import _boundary, _layers, _layout
from ._files import output_dir, write_file
from ._module import _Env, _Interpreter
from .converter import ConvertedModel, _placeholder_hint
from .errors import OnnxConversionError, node_label

__all__ = ["generate", "save"]

MODEL_FILE = "model.py"
WEIGHTS_FILE = "weights.msgpack"

#: Call-like primitives whose body is written inline.
_INLINE = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr",
           "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr"}
#: Constants up to this many elements are written as array literals; larger ones as bytes.
_INLINE_SIZE = 16
#: Hex digits per line of a constant's bytes.
_HEX_LINE = 88
#: Attribute names an NNX model's weights must not take: ``nnx.Module``'s own.
_NNX_RESERVED = frozenset(dir(nnx.Module))


class CodegenError(OnnxConversionError):
    """The model converts, but part of it cannot be written as standalone source."""


API = Literal["linen", "nnx"]


def generate(converted: ConvertedModel, inputs: Sequence[Any] | None = None, *,
             api: API = "linen") -> str:
    """The standalone source of ``converted`` (see :func:`save` for the weights):
    a ``flax.linen`` module (``api="linen"``) or a ``flax.nnx`` module (``api="nnx"``).
    ``converted`` may also be an ``NnxConvertedModel`` (its ``linen`` model is used).
    ``inputs``: arrays or ``jax.ShapeDtypeStruct`` in the module's layout to trace with;
    by default the input specs' shapes, unknown dims as 1 (``convert(input_shapes=)``
    fixes them)."""
    return _generator(converted, inputs, api).source


def save(converted: ConvertedModel, out_dir, *, force: bool = False,
         inputs: Sequence[Any] | None = None, api: API = "linen") -> list[Path]:
    """Write ``out_dir/model.py`` and ``out_dir/weights.msgpack``; existing files are kept
    unless ``force``. ``api`` and ``inputs``: as :func:`generate` (the weights file is the
    same for both APIs). Returns the paths written. Nothing is written unless generation
    succeeds; when writing fails, the files and the folder this call created are removed."""
    gen = _generator(converted, inputs, api)
    weights = serialization.msgpack_serialize(
        jax.tree.map(np.asarray, gen.variables))
    created_folder = not Path(out_dir).exists()
    folder = output_dir(out_dir)
    written: list[Path] = []
    try:
        for name, data in ((MODEL_FILE, gen.source), (WEIGHTS_FILE, weights)):
            new = not (folder / name).exists()
            path = write_file(folder, name, data, force=force)
            if new:
                written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        if created_folder and not any(folder.iterdir()):
            folder.rmdir()
        raise
    return [folder / MODEL_FILE, folder / WEIGHTS_FILE]


def _generator(converted, inputs: Sequence[Any] | None, api: API) -> _Generator:
    linen = getattr(converted, "linen", converted)  # an NnxConvertedModel
    with _placeholder_hint(linen.inputs if inputs is None else [], linen.specialized_inputs):
        return _Generator(converted, inputs, api)


class _Names:
    """Python identifiers from untrusted names: ``[A-Za-z0-9_]`` only, a fixed prefix (so no
    keyword, builtin or module name can be hit), unique, none of ``reserved``. With an empty
    prefix a name that does not start with a letter gets ``w`` (no dunder, no digit)."""

    def __init__(self, reserved=()) -> None:
        self._taken: set[str] = set(reserved)

    def take(self, name: str, prefix: str) -> str:
        base = prefix + (re.sub(r"[^A-Za-z0-9_]", "_", name)[:48] or "_")
        if not base[0].isalpha():
            base = "w" + base
        candidate, n = base, 0
        while candidate in self._taken or keyword.iskeyword(candidate):
            n += 1
            candidate = f"{base}_{n}"
        self._taken.add(candidate)
        return candidate


class _LayerCall(BaseException):
    """Stops a weighted node's trace at its layer call, carrying the call's arguments.
    A control-flow signal, not an error: it must pass the handlers' error wrapping."""

    def __init__(self, plan, cls, args, kwargs, call_kwargs):
        super().__init__()
        self.plan, self.cls, self.args, self.kwargs, self.call_kwargs = (
            plan, cls, args, kwargs, call_kwargs)


class _NoModule:
    """Stands in for the linen module: nodes are traced one by one, outside any module."""

    @staticmethod
    def is_mutable_collection(name: str) -> bool:
        return False


class _Generator(_Interpreter):
    """Runs the interpreter's node walk, tracing each node on its own and writing code."""

    def __init__(self, converted: ConvertedModel, inputs: Sequence[Any] | None,
                 api: API = "linen"):
        if api not in ("linen", "nnx"):
            raise ValueError(f"api must be 'linen' or 'nnx', got {api!r}")
        converted = getattr(converted, "linen", converted)  # an NnxConvertedModel
        program = converted._program
        super().__init__(_NoModule(), program, train=False)
        self.converted = converted
        self.api = api
        self.ids = _Names()
        # Keys of the weights file; NNX attributes too, so none may shadow nnx.Module's.
        self.layer_names = _Names(_NNX_RESERVED)
        self.attrs: list[str] = []            # NNX: the lines of Model.__init__
        self.lines: list[str] = []
        self.constants: list[str] = []       # module-level lines defining the constants
        self.var_names: dict[int, str] = {}  # id(stand-in array) -> variable holding it
        self.keep: list[Any] = []             # stand-ins stay alive while their id is used
        self.params: dict = {}
        self.stats: dict = {}
        self.const_vars: dict[tuple, str] = {}  # (dtype, shape, bytes) -> variable
        self.classes: list[type] = []
        self._temp = 0
        self._layer_value: Any = None
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
            inputs = [jax.ShapeDtypeStruct(converted._module_shape(s), s.dtype)
                      for s in converted.inputs]
        args = []
        env = _Env(graph.constants)
        self._current_env = env
        for spec, value in zip(converted.inputs, inputs):
            name = self.ids.take(spec.name, "x_")
            args.append(name)
            value = self._stand_in(value, name)
            perm = (_layout.channels_last(value.ndim) if spec.channels_last
                    else _layout.identity(value.ndim))
            self._line(f"# input {ascii(spec.name)}: {_shape_text(value)}"
                       f"{' channels-last' if spec.channels_last else ''}")
            env.values[spec.name] = (value, perm)
        for name, path in self.program.free_params.items():
            value = graph.constants[name]
            var = self.ids.take("_".join(path), "p_")
            key = self.layer_names.take("_".join(path), "")
            self.params[key] = value
            self._line(f"# parameter {ascii(name)}")
            if self.api == "nnx":
                self.attrs.append(f"self.{key} = nnx.Param(jnp.asarray(params[{key!r}]))")
                self._line(f"{var} = self.{key}.get_value()")
            else:
                self._line(f"{var} = self.param({key!r}, nn.initializers.zeros, "
                           f"{tuple(value.shape)!r}, {_dtype_text(value.dtype)})")
            env.values[name] = (self._stand_in(value, var),
                                _layout.identity(value.ndim))
        self.run(env, graph)
        outs = []
        for spec in graph.outputs:
            value, perm = env.get(spec.name)
            outs.append(self._emit_fn(lambda v, p=perm: _boundary.module_output(
                v, p, converted.channels_last), [value], [f"out_{len(outs)}"],
                f"output {ascii(spec.name)}"))
        names = [self._name_of(o) for o in outs]
        result = names[0] if len(names) == 1 else "(" + ", ".join(names) + ",)"
        self._line(f"return {result}")
        self.source = self._module_source(converted, args)
        self.variables = {"params": self.params}
        if self.stats:
            self.variables["batch_stats"] = self.stats

    def _call(self, spec, node, held):
        if not self.top:  # a subgraph run inside a node's trace: nothing to write
            return super()._call(spec, node, held)
        what = _node_text(node)
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
                outs, perms = super(_Generator, self)._call(spec, node, h)
            finally:
                env.values.update(saved)
            result["outs"], result["perms"] = outs, perms
            return [o for o in outs if not isinstance(o, np.ndarray)]

        self._line(f"# {what}")
        if node in self.program.layers:
            call = self._trace_layer(run, values)
            layer_out = self._emit_layer(call, node, values)

            def post(*traced):  # the node's outputs from the layer's output
                self._layer_value = traced[-1]
                try:
                    return run(*traced[:-1])
                finally:
                    self._layer_value = None

            dyn_outs = self._emit_fn(post, values + [layer_out], None, what)
        else:
            dyn_outs = self._emit_fn(run, values, None, what)
        outs = list(result["outs"])
        it = iter(dyn_outs)
        for k, o in enumerate(outs):
            if not isinstance(o, np.ndarray):
                outs[k] = next(it)
        return outs, result["perms"]

    def call_layer(self, plan, cls, args, kwargs, call_kwargs):
        if self._layer_value is None:
            raise _LayerCall(plan, cls, args, kwargs, call_kwargs)
        return self._layer_value

    # --- layers -----------------------------------------------------------------------

    def _trace_layer(self, run, values) -> _LayerCall:
        captured = {}

        def pre(*traced):
            try:
                run(*traced)
            except _LayerCall as call:
                captured["call"] = call
                return list(call.args)
            raise CodegenError("a weighted node's handler did not call its layer")

        jaxpr, _ = jax.make_jaxpr(pre, return_shape=True)(*values)
        call = captured["call"]
        call.jaxpr = jaxpr
        return call

    def _emit_layer(self, call: _LayerCall, node, values):
        what = _node_text(node)
        arg_names = self._emit_jaxpr(call.jaxpr, self._names_of(values), None, what)
        key = self.layer_names.take("_".join(call.plan.path), "")
        if call.plan.params:
            self.params[key] = dict(call.plan.params)
        if call.plan.batch_stats:
            self.stats[key] = dict(call.plan.batch_stats)
        if self.api == "nnx":
            args = [self._stand_in(a, n) for a, n in zip(call.args, arg_names)]
            return self._emit_nnx_layer(call, key, args, what)
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
        kwargs = ", ".join(f"{k}={_literal(v)}" for k, v in call.kwargs.items())
        call_kwargs = ", ".join(f"{k}=train" if k == "train" else f"{k}={_literal(v)}"
                                for k, v in call.call_kwargs.items())
        var = self._new_temp()
        args = ", ".join(arg_names + ([call_kwargs] if call_kwargs else []))
        self._line(f"{var} = {ctor}(name={key!r}{', ' if kwargs else ''}{kwargs})({args})")
        # The layer's output, abstractly; a stand-in carries the variable name onward.
        variables = {"params": call.plan.params, "batch_stats": call.plan.batch_stats}
        shape = jax.eval_shape(lambda *a: cls(**call.kwargs).apply(variables, *a, **call.call_kwargs),
                               *call.args)
        return self._stand_in(shape, var)

    def _emit_nnx_layer(self, call: _LayerCall, key: str, args: list, what: str):
        """An NNX layer: its variables are attributes of ``self.<key>`` (``nnx.Param`` /
        ``nnx.BatchStat``), its computation the ``jax.lax`` operations the linen layer
        traces to. A layer with a ``train`` flag (BatchNorm) is traced both ways; the
        training branch writes the updated statistics back."""
        plan, cls = call.plan, call.cls
        variables: dict[str, dict] = {}
        fields = []
        for collection, kind, source, leaves in (
                ("params", "Param", "params", plan.params),
                ("batch_stats", "BatchStat", "stats", plan.batch_stats)):
            for leaf, value in leaves.items():
                var = self._new_temp()
                self._line(f"{var} = self.{key}.{leaf}.get_value()")
                variables.setdefault(collection, {})[leaf] = self._stand_in(value, var)
                fields.append(f"{leaf}=nnx.{kind}(jnp.asarray({source}[{key!r}][{leaf!r}]))")
        self.attrs.append(f"self.{key} = Weights(\n    " + ",\n    ".join(fields) + ")")

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
                self._line(f"self.{key}.{leaf}.set_value({self._name_of(value)})")
            self._line(f"{out} = {self._name_of(y)}")
            train_lines, self.lines = self.lines, []
            y = self._emit_fn(layer(False), [variables, *args], [out], what)
            eval_lines = self.lines
        finally:
            self.lines = outer
        self._line("if train:")
        self.lines += ["    " + line for line in train_lines]
        self._line("else:")
        self.lines += ["    " + line for line in eval_lines]
        return y

    # --- jaxprs -> source -------------------------------------------------------------

    def _emit_fn(self, fn, values, out_names, what):
        """Trace ``fn(*values)`` (values: stand-ins of named variables, or sequences: lists
        of them), write its equations, and return stand-ins for its outputs (named
        ``out_names`` or temporaries) in the structure ``fn`` returns. A sequence is one
        variable per tensor in the source: its length is static, so no list is written."""
        try:
            jaxpr, shapes = jax.make_jaxpr(fn, return_shape=True)(*values)
        except _LayerCall:
            raise CodegenError(f"{what}: a layer was called outside a weighted node") from None
        names = self._emit_jaxpr(jaxpr, self._names_of(values), out_names, what)
        leaves, tree = jax.tree.flatten(shapes)
        return tree.unflatten([self._stand_in(s, n) for s, n in zip(leaves, names)])

    def _emit_jaxpr(self, closed, in_names, out_names, what) -> list[str]:
        jaxpr = closed.jaxpr
        env: dict[Any, str] = dict(zip(jaxpr.invars, in_names))
        for var, value in zip(jaxpr.constvars, closed.consts):
            env[var] = self._const(np.asarray(value))
        eqns = _live(jaxpr)
        self._emit_eqns(eqns, env, what)
        outs = [self._atom(v, env) for v in jaxpr.outvars]
        if out_names is None:
            return outs
        for name, expr in zip(out_names, outs):
            self._line(f"{name} = {expr}")
        return list(out_names)

    def _emit_eqns(self, eqns, env, what) -> None:
        for eqn in eqns:
            prim = eqn.primitive.name
            ins = [self._atom(v, env) for v in eqn.invars]
            if prim in _INLINE and _INLINE[prim] in eqn.params:
                inner = eqn.params[_INLINE[prim]]
                inner_env = dict(zip(inner.jaxpr.invars, ins))
                for var, value in zip(inner.jaxpr.constvars, inner.consts):
                    inner_env[var] = self._const(np.asarray(value))
                self._emit_eqns(_live(inner.jaxpr), inner_env, what)
                for outer, inner_out in zip(eqn.outvars, inner.jaxpr.outvars):
                    env[outer] = self._atom(inner_out, inner_env)
                continue
            if prim == "reduce_window":
                self._emit_reduce_window(eqn, ins, env, what)
                continue
            if prim in ("cond", "while", "scan"):
                outs = getattr(self, f"_emit_{prim}")(eqn.params, ins, what)
                for var, name in zip(eqn.outvars, outs):
                    env[var] = name
                continue
            prim = prim.replace("-", "_")  # scatter-add is lax.scatter_add_p
            # lax.linalg: lu (Det)
            namespace = next((name for name, module in (("lax", lax), ("lax.linalg", lax.linalg))
                              if getattr(module, f"{prim}_p", None) is eqn.primitive), None)
            if namespace is None:
                raise CodegenError(f"{what}: JAX primitive {prim!r} has no public jax.lax "
                                   "or jax.lax.linalg name; it cannot be written as standalone "
                                   "source")
            # The scatter family's combiner is a jaxpr parameter: call the public function,
            # which rebuilds the same one.
            scatter = prim.startswith("scatter") and callable(getattr(lax, prim, None))
            try:
                params = [f"{k}={_literal(v)}" for k, v in eqn.params.items()
                          if not (scatter and k in ("update_jaxpr", "update_consts"))]
            except TypeError as exc:
                raise CodegenError(f"{what}: parameter of {prim!r}: {exc}") from None
            outs = [self._new_temp() for _ in eqn.outvars]
            # The public wrapper of a multiple-results primitive may unwrap a single result
            # (lax.optimization_barrier): bind those, which always returns a list.
            if (namespace == "lax" and not eqn.primitive.multiple_results
                    and callable(getattr(lax, prim, None))
                    and all(v is None for v in eqn.params.values())):
                expr = f"lax.{prim}({', '.join(ins)})"
            elif scatter:
                expr = f"lax.{prim}({', '.join(ins + params)})"
            else:
                expr = f"{namespace}.{prim}_p.bind({', '.join(ins + params)})"
            target = ", ".join(outs) if eqn.primitive.multiple_results else outs[0]
            if eqn.primitive.multiple_results:
                target = (target + ",") if len(outs) == 1 else target
            self._line(f"{target} = {expr}")
            for var, name in zip(eqn.outvars, outs):
                env[var] = name

    def _emit_reduce_window(self, eqn, ins, env, what) -> None:
        """``lax.reduce_window`` with a reducer other than plain add / max / min: the
        reducer's jaxpr becomes a local function. Variadic (several operands, as MaxPool's
        Indices): tuples of operands and initial values, the reducer called on flat args."""
        params = eqn.params
        n = len(ins) // 2
        fn = self._emit_function(params["jaxpr"], what, params["consts"], as_tuple=n > 1)
        keys = ("window_dimensions", "window_strides", "padding", "base_dilation",
                "window_dilation")
        args = ", ".join(f"{k}={_literal(params[k])}" for k in keys)
        if n == 1:
            out = self._new_temp()
            self._line(f"{out} = lax.reduce_window({ins[0]}, {ins[1]}, {fn}, {args})")
            env[eqn.outvars[0]] = out
            return
        operands, inits = _literal_names(ins[:n]), _literal_names(ins[n:])
        call = f"lax.reduce_window({operands}, {inits}, lambda a, b: {fn}(*a, *b), {args})"
        for var, name in zip(eqn.outvars, self._unpack(call, n)):
            env[var] = name

    def _emit_function(self, jaxpr, what, consts=(), as_tuple=False) -> str:
        """A local ``def`` computing ``jaxpr`` (its constvars bound to ``consts``); returns
        its name. With ``as_tuple`` it always returns a tuple."""
        name = f"fn{self._new_temp()}"
        args = [self._new_temp() for _ in jaxpr.invars]
        env = {var: self._const(np.asarray(value)) for var, value in zip(jaxpr.constvars, consts)}
        outer, self.lines = self.lines, []
        try:
            env.update(zip(jaxpr.invars, args))
            self._emit_eqns(_live(jaxpr), env, what)
            outs = [self._atom(v, env) for v in jaxpr.outvars]
            body = self.lines
        finally:
            self.lines = outer
        self._line(f"def {name}({', '.join(args)}):")
        for line in body:
            self._line("    " + line)
        single = len(outs) == 1 and not as_tuple
        self._line(f"    return {outs[0] if single else '(' + ', '.join(outs) + ',)'}")
        return name

    def _closed(self, closed, what, as_tuple=True) -> str:
        return self._emit_function(closed.jaxpr, what, closed.consts, as_tuple)

    def _unpack(self, expr: str, count: int) -> list[str]:
        outs = [self._new_temp() for _ in range(count)]
        if outs:
            self._line(f"{', '.join(outs)}, = {expr}")
        return outs

    def _emit_cond(self, params, ins, what) -> list[str]:
        """``lax.cond`` / ``lax.switch``: one local function per branch."""
        branches = [self._closed(b, what) for b in params["branches"]]
        n_out = len(params["branches"][0].jaxpr.outvars)
        call = f"lax.switch({ins[0]}, [{', '.join(branches)}], {', '.join(ins[1:])})"
        return self._unpack(call, n_out)

    def _emit_while(self, params, ins, what) -> list[str]:
        """``lax.while_loop``: the constants of both functions are closed over."""
        nc, nb = params["cond_nconsts"], params["body_nconsts"]
        cond_consts, body_consts, init = ins[:nc], ins[nc:nc + nb], ins[nc + nb:]
        cond = self._closed(params["cond_jaxpr"], what, as_tuple=False)
        body = self._closed(params["body_jaxpr"], what)
        lead_c = "".join(f"{c}, " for c in cond_consts)
        lead_b = "".join(f"{c}, " for c in body_consts)
        call = (f"lax.while_loop(lambda c: {cond}({lead_c}*c), lambda c: {body}({lead_b}*c), "
                f"({', '.join(init)},))")
        return self._unpack(call, len(init))

    def _emit_scan(self, params, ins, what) -> list[str]:
        """``lax.scan`` over the body function; carries and stacked outputs unpacked."""
        n_consts, n_carry = params["num_consts"], params["num_carry"]
        consts, init, xs = ins[:n_consts], ins[n_consts:n_consts + n_carry], ins[n_consts + n_carry:]
        body = self._closed(params["jaxpr"], what)
        n_ys = len(params["jaxpr"].jaxpr.outvars) - n_carry
        lead = "".join(f"{c}, " for c in consts)
        step = (f"lambda c, x: (lambda r: (r[:{n_carry}], r[{n_carry}:]))"
                f"({body}({lead}*c, *x))")
        result = self._new_temp()
        self._line(f"{result} = lax.scan({step}, ({''.join(f'{v}, ' for v in init)}), "
                   f"({''.join(f'{v}, ' for v in xs)}), length={params['length']}, "
                   f"reverse={params['reverse']}, unroll={_literal(params['unroll'])})")
        return [*self._unpack(f"{result}[0]", n_carry), *self._unpack(f"{result}[1]", n_ys)]

    def _atom(self, v, env) -> str:
        if hasattr(v, "val") and not hasattr(v, "count"):  # a Literal
            return _scalar(np.asarray(v.val, dtype=v.aval.dtype))
        return env[v]

    def _const(self, value: np.ndarray) -> str:
        if value.size <= _INLINE_SIZE:
            if value.ndim == 0:
                return _scalar(value)
            text = f"np.array({_literal(value.tolist())}, dtype={_dtype_text(value.dtype)})"
            # tolist() keeps the shape except where a dim is 0 ([0, 3] -> [])
            return text if value.size else f"{text}.reshape({tuple(value.shape)!r})"
        # A module-level NumPy array, as the interpreter's constants are: XLA sees a
        # literal it may fold (a jit argument would compile to other code, other roundings).
        # One per distinct value, as XLA merges equal constants (its fusions depend on it).
        fingerprint = (value.dtype.str, value.shape, value.tobytes())
        if fingerprint in self.const_vars:
            return self.const_vars[fingerprint]
        var = self.const_vars[fingerprint] = f"C{len(self.const_vars)}"
        data = value.tobytes().hex()
        chunks = "".join(f'\n    "{data[i:i + _HEX_LINE]}"' for i in range(0, len(data), _HEX_LINE))
        self.constants.append(f"{var} = np.frombuffer(bytes.fromhex({chunks}),\n"
                              f"    {_dtype_text(value.dtype)}).reshape({tuple(value.shape)!r})")
        return var

    # --- bookkeeping ------------------------------------------------------------------

    def _stand_in(self, like, name: str) -> jax.ShapeDtypeStruct:
        """An abstract value with ``like``'s shape and dtype, standing for variable ``name``
        in the traces (abstract: tracing a node allocates nothing and runs nothing)."""
        dtype = jax.dtypes.canonicalize_dtype(like.dtype)  # int64 -> int32 as jnp.asarray
        value = jax.ShapeDtypeStruct(tuple(np.shape(like)), dtype)
        self.var_names[id(value)] = name
        self.keep.append(value)
        return value

    def _name_of(self, value) -> str:
        if id(value) not in self.var_names and isinstance(value, np.ndarray):
            return self._const(value)  # known at conversion time (e.g. a Shape output)
        return self.var_names[id(value)]

    def _names_of(self, values) -> list[str]:
        """The variables holding ``values``' arrays, in ``jax.tree.leaves`` order."""
        return [self._name_of(v) for v in jax.tree.leaves(values)]

    def _new_temp(self) -> str:
        self._temp += 1
        return f"t{self._temp}"

    def _line(self, text: str) -> None:
        self.lines.append(text)

    def _module_source(self, converted, args) -> str:
        graph = self.graph
        shapes = ", ".join(f"{_doc(s.name)}: {list(converted._module_shape(s))}"
                           for s in converted.inputs)
        nnx_api = self.api == "nnx"
        if nnx_api:
            usage = f"""Weights are in ``{WEIGHTS_FILE}`` beside this file (Flax msgpack); the
module is built holding them (``nnx.Param``, ``nnx.BatchStat``): no random init::

    import model
    net = model.load_model()              # == model.Model(model.load_variables())
    y = net(*inputs)                      # nnx.jit(lambda m, *x: m(*x)) to compile
    y = net(*inputs, train=True)          # BatchNorm: batch statistics, updated in place"""
        else:
            usage = f"""Weights are in ``{WEIGHTS_FILE}`` beside this file (Flax msgpack)::

    import model
    variables = model.load_variables()          # {{'params': ..., 'batch_stats': ...}}
    y = model.Model().apply(variables, *inputs)  # train=True: BatchNorm uses batch stats
                                                  # (pass mutable=['batch_stats'])"""
        kind = "NNX" if nnx_api else "linen"
        header = f'''"""Flax {kind} model generated by onnx2flax from ONNX graph {_doc(graph.name)}.

Standalone: imports only jax, flax and numpy.
{usage}

Shapes are specialized to the traced input shapes {{{shapes}}}
({'channels-last' if converted.channels_last else 'ONNX'} layout for image tensors).
Traced in inference mode: Dropout is an identity here. Each block is commented with the
ONNX node it comes from.
"""
'''
        body = "\n".join("        " + line for line in self.lines)
        signature = ", ".join(["self", *args, "train: bool = False"])
        if nnx_api:
            init = "\n".join("        " + line for line in "\n".join([
                'params = variables["params"]',
                'stats = variables.get("batch_stats", {})',
                *self.attrs]).splitlines())
            model = f'''class Weights(nnx.Module):
    """A layer's variables (``nnx.Param`` / ``nnx.BatchStat``) as attributes."""

    def __init__(self, **variables):
        for name, variable in variables.items():
            setattr(self, name, variable)


class Model(nnx.Module):
    def __init__(self, variables):
        """``variables``: ``load_variables()``, the converted weights."""
{init}

    def __call__({signature}):
{body}


def load_model(path=None) -> Model:
    """The model holding the weights saved beside this file (or at ``path``)."""
    return Model(load_variables(path))
'''
        else:
            classes = "".join(inspect.getsource(c) + "\n\n" for c in self.classes)
            model = f'''{classes}class Model(nn.Module):
    @nn.compact
    def __call__({signature}):
{body}
'''
        constants = "\n\n".join(self.constants)
        if constants:
            constants = ("\n# The graph's constants (tensors it computes with that are not "
                         "weights, such as index\n# tables): raw bytes in native (little-endian) "
                         "order.\n" + constants + "\n\n")
        imports = ("import jax\nimport jax.numpy as jnp\nimport numpy as np\n"
                   "from flax import nnx, serialization" if nnx_api else
                   "import flax.linen as nn\nimport jax\nimport jax.numpy as jnp\n"
                   "import numpy as np\nfrom flax import serialization")
        return f'''{header}
from __future__ import annotations

{imports}
from jax import lax

{constants}
{model}

def load_variables(path=None):
    """The weights saved beside this file, as ``{{'params': ..., ...}}``."""
    if path is None:
        path = __file__.replace("\\\\", "/").rsplit("/", 1)[0] + "/" + {WEIGHTS_FILE!r}
    with open(path, "rb") as fh:
        return serialization.msgpack_restore(fh.read())
'''


def _node_text(node) -> str:
    """``Conv node 'name'`` for comments and messages: ASCII only, quotes escaped."""
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', node.op_type)} node {ascii(node.name)}"


def _doc(name: str) -> str:
    """``name`` for a docstring: an ASCII literal with every double quote escaped."""
    return ascii(name).replace('"', '\\"')


def _live(jaxpr) -> list:
    """Equations whose results are used (dead ones come from traces of layer nodes)."""
    used = {v for v in jaxpr.outvars if not hasattr(v, "val")}
    live = []
    for eqn in reversed(jaxpr.eqns):
        if eqn.effects or any(v in used for v in eqn.outvars):
            live.append(eqn)
            used.update(v for v in eqn.invars if not hasattr(v, "val"))
    return live[::-1]


def _literal_names(names: Sequence[str]) -> str:
    """A tuple display of variable names: ``(a, b,)``."""
    return "(" + "".join(f"{n}, " for n in names) + ")"


def _shape_text(value) -> str:
    return f"{np.dtype(value.dtype).name}{list(value.shape)}"


def _dtype_text(dtype) -> str:
    """Source for a NumPy scalar type: ``np.float32``, or for the types ``ml_dtypes`` adds
    (registered by importing jax) ``np.dtype('bfloat16').type``."""
    dtype = np.dtype(dtype)
    if getattr(np, dtype.name, None) is dtype.type:
        return f"np.{dtype.name}"
    return f"np.dtype({dtype.name!r}).type"


def _scalar(value: np.ndarray) -> str:
    v = value.item()
    if isinstance(v, float) and not np.isfinite(v):
        v = f"float({repr(v)!r})"
    else:
        v = repr(v)
    return f"{_dtype_text(value.dtype)}({v})"


def _literal(value) -> str:
    """Python source for a parameter value; ``TypeError`` for anything else."""
    if isinstance(value, Enum):  # before int: lax.FftType, lax.RoundingMethod are IntEnums
        owner = type(value).__name__
        if getattr(lax, owner, None) is type(value):
            return f"lax.{owner}.{value.name}"
        raise TypeError(f"enum {type(value).__qualname__} is not in jax.lax")
    if value is None or isinstance(value, (bool, int, str)):
        return repr(value)
    if isinstance(value, float):
        return repr(value) if np.isfinite(value) else f"float({repr(value)!r})"
    if isinstance(value, complex):
        return f"complex({_literal(value.real)}, {_literal(value.imag)})"
    if isinstance(value, np.generic):
        return _scalar(np.asarray(value))
    if isinstance(value, np.dtype):
        return f"np.dtype({value.name!r})"
    if isinstance(value, type) and issubclass(value, np.generic):
        return _dtype_text(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        owner = type(value).__name__
        if getattr(lax, owner, None) is not type(value):
            raise TypeError(f"{type(value).__qualname__} is not in jax.lax")
        fields = ", ".join(f"{f}={_literal(getattr(value, f))}" for f in value._fields)
        return f"lax.{owner}({fields})"
    if isinstance(value, tuple):
        items = [_literal(v) for v in value]
        return f"({items[0]},)" if len(items) == 1 else "(" + ", ".join(items) + ")"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    raise TypeError(f"cannot write a {type(value).__qualname__} as source")
