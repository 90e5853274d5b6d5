"""Traced jaxprs -> lines of source, in public JAX (see ``_spell``).

:class:`JaxprWriter` holds what the source is made of: its lines, the module-level constants
and the variable behind each stand-in value. ``_emit_fn`` traces a function on stand-ins and
writes its equations, one public expression each; control flow becomes ``lax.switch`` /
``lax.while_loop`` / ``lax.scan`` over local functions.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax import lax

from ..errors import CodegenError
from ._literals import dtype_text, literal, literal_names, python_number, scalar
from ._spell import (INLINE, NAMESPACE, candidates, evaluate, is_literal, live,
                     same_operation)

#: Constants up to this many elements are written as array literals; larger ones as bytes.
_INLINE_SIZE = 16
#: Hex digits per line of a constant's bytes.
_HEX_LINE = 88


class JaxprWriter:
    """The source being written: lines, constants, and the variables behind stand-ins."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: list[str] = []        # module-level lines defining the constants
        self.const_vars: dict[tuple, str] = {}  # (dtype, shape, bytes) -> variable
        self.const_values: dict[str, np.ndarray] = {}  # variable -> its value
        self.var_names: dict[int, str] = {}   # id(stand-in array) -> variable holding it
        self.keep: list[Any] = []             # stand-ins stay alive while their id is used
        self._spelled: dict[tuple, int | None] = {}  # equation's signature -> candidate
        self.dims: dict[str, Any] = {}        # variable -> the symbolic input dim it holds
        self.flax = "nn"                      # what the source imports Flax as (nn, nnx)
        self._temp = 0

    def _emit_fn(self, fn, values, out_names, what):
        """Trace ``fn(*values)`` (values: stand-ins of named variables, or sequences: lists
        of them), write its equations, and return stand-ins for its outputs (named
        ``out_names`` or temporaries) in the structure ``fn`` returns. A sequence is one
        variable per tensor in the source: its length is static, so no list is written."""
        jaxpr, shapes = jax.make_jaxpr(fn, return_shape=True)(*values)
        names = self._emit_jaxpr(jaxpr, self._names_of(values), out_names, what)
        leaves, tree = jax.tree.flatten(shapes)
        return tree.unflatten([self._stand_in(s, n) for s, n in zip(leaves, names)])

    def _emit_jaxpr(self, closed, in_names, out_names, what) -> list[str]:
        jaxpr = closed.jaxpr
        env: dict[Any, str] = dict(zip(jaxpr.invars, in_names))
        for var, value in zip(jaxpr.constvars, closed.consts):
            env[var] = self._const(np.asarray(value))
        self._emit_eqns(live(jaxpr), env, what)
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
            expr = None
            if prim in INLINE and INLINE[prim] in eqn.params:
                expr = self._spell(eqn, ins, what, required=False)  # jax.random.bernoulli
                if expr is None:
                    self._emit_inline(eqn, ins, env, what)
                    continue
            if prim == "reduce_window":
                outs = self._emit_reduce_window(eqn, ins, what)
            elif prim == "convert_element_type" and not eqn.invars[0].aval.ndim and (
                    self._constant(ins[0], eqn.invars[0]) is not None):
                # JAX folds a constant scalar's conversion when tracing: the source writes
                # the value it folds to
                with jax.ensure_compile_time_eval():
                    value = lax.convert_element_type(self._constant(ins[0], eqn.invars[0]),
                                                     eqn.params["new_dtype"])
                outs = [self._const(np.asarray(value))]
            elif prim == "dim_as_value":  # a size known at run time, as an array
                outs = self._assign(f"{dtype_text(eqn.outvars[0].aval.dtype)}"
                                    f"({literal(eqn.params['dim'])})", 1, False)
            elif prim in ("cond", "while", "scan"):
                outs = getattr(self, f"_emit_{prim}")(eqn.params, ins, what)
            elif expr is not None:  # a public function returning its results as they are
                outs = self._assign(expr, len(eqn.outvars), len(eqn.outvars) > 1)
            else:
                outs = self._assign(self._spell(eqn, ins, what), len(eqn.outvars),
                                    eqn.primitive.multiple_results)
            for var, name in zip(eqn.outvars, outs):
                env[var] = name

    def _emit_inline(self, eqn, ins, env, what) -> None:
        inner = eqn.params[INLINE[eqn.primitive.name]]
        inner_env = dict(zip(inner.jaxpr.invars, ins))
        for var, value in zip(inner.jaxpr.constvars, inner.consts):
            inner_env[var] = self._const(np.asarray(value))
        self._emit_eqns(live(inner.jaxpr), inner_env, what)
        for outer, inner_out in zip(eqn.outvars, inner.jaxpr.outvars):
            env[outer] = self._atom(inner_out, inner_env)

    def _spell(self, eqn, ins, what, required=True) -> str | None:
        """The first public spelling of ``eqn`` that traces to the same operation (plain
        Python numbers for its weakly typed scalars, else NumPy scalars of their dtypes)."""
        typed = [t if t.isidentifier() or v.aval.ndim or self._constant(t, v) is None
                 else scalar(self._constant(t, v)) for t, v in zip(ins, eqn.invars)]
        found = candidates(eqn, ins, self.flax) + (
            candidates(eqn, typed, self.flax) if typed != ins else [])
        key = self._signature(eqn, ins)
        if key not in self._spelled:
            self._spelled[key] = next(
                (k for k, expr in enumerate(found)
                 if same_operation(expr, eqn, ins, self.const_values, self.dims)), None)
        k = self._spelled[key]
        if k is not None:
            return found[k]
        if not required:
            return None
        raise CodegenError(f"{what}: JAX operation {eqn.primitive.name!r} has no public JAX "
                           "function that computes it; it cannot be written as standalone "
                           "source")

    def _constant(self, text: str, var) -> np.ndarray | None:
        """The value of operand ``text`` (of ``var``'s dtype) when it is a constant."""
        if text in self.const_values:
            return self.const_values[text]
        if text.isidentifier():
            return None
        return np.asarray(evaluate(text, NAMESPACE), var.aval.dtype)

    def _signature(self, eqn, ins) -> tuple:
        """What decides an equation's spelling: primitive, parameters, operand types and
        which operands are the same variable or which constant."""
        args = list(dict.fromkeys(ins))
        pattern = tuple(
            ("const", self.const_values[t].tobytes()) if t in self.const_values else
            ("var", args.index(t), str(v.aval), v.aval.weak_type) if t.isidentifier() else t
            for t, v in zip(ins, eqn.invars))
        return eqn.primitive.name, str(sorted(eqn.params.items(), key=lambda kv: kv[0])), pattern

    def _assign(self, expr: str, count: int, multiple: bool) -> list[str]:
        if not count:
            return []
        outs = [self._new_temp() for _ in range(count)]
        target = ", ".join(outs)
        if multiple and count == 1:
            target += ","
        self._line(f"{target} = {expr}")
        return outs

    def _emit_reduce_window(self, eqn, ins, what) -> list[str]:
        """``lax.reduce_window`` with a reducer other than plain add / max / min: the
        reducer's jaxpr becomes a local function. Variadic (several operands, as MaxPool's
        Indices): tuples of operands and initial values, the reducer called on flat args."""
        params = eqn.params
        n = len(ins) // 2
        fn = self._emit_function(params["jaxpr"], what, params["consts"], as_tuple=n > 1)
        keys = ("window_dimensions", "window_strides", "padding", "base_dilation",
                "window_dilation")
        args = ", ".join(f"{k}={literal(params[k])}" for k in keys)
        if n == 1:
            return self._assign(f"lax.reduce_window({ins[0]}, {ins[1]}, {fn}, {args})", 1, False)
        operands, inits = literal_names(ins[:n]), literal_names(ins[n:])
        call = f"lax.reduce_window({operands}, {inits}, lambda a, b: {fn}(*a, *b), {args})"
        return self._assign(call, n, True)

    def _emit_function(self, jaxpr, what, consts=(), as_tuple=False) -> str:
        """A local ``def`` computing ``jaxpr`` (its constvars bound to ``consts``); returns
        its name. With ``as_tuple`` it always returns a tuple."""
        name = f"fn{self._new_temp()}"
        args = [self._new_temp() for _ in jaxpr.invars]
        env = {var: self._const(np.asarray(value)) for var, value in zip(jaxpr.constvars, consts)}
        outer, self.lines = self.lines, []
        try:
            env.update(zip(jaxpr.invars, args))
            self._emit_eqns(live(jaxpr), env, what)
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

    def _emit_cond(self, params, ins, what) -> list[str]:
        """``lax.cond`` / ``lax.switch``: one local function per branch."""
        branches = [self._closed(b, what) for b in params["branches"]]
        n_out = len(params["branches"][0].jaxpr.outvars)
        call = f"lax.switch({ins[0]}, [{', '.join(branches)}], {', '.join(ins[1:])})"
        return self._assign(call, n_out, True)

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
        return self._assign(call, len(init), True)

    def _emit_scan(self, params, ins, what) -> list[str]:
        """``lax.scan`` over the body function; carries and stacked outputs unpacked."""
        n_consts, n_carry = params["num_consts"], params["num_carry"]
        consts, init = ins[:n_consts], ins[n_consts:n_consts + n_carry]
        xs = ins[n_consts + n_carry:]
        body = self._closed(params["jaxpr"], what)
        n_ys = len(params["jaxpr"].jaxpr.outvars) - n_carry
        lead = "".join(f"{c}, " for c in consts)
        step = (f"lambda c, x: (lambda r: (r[:{n_carry}], r[{n_carry}:]))"
                f"({body}({lead}*c, *x))")
        result = self._new_temp()
        self._line(f"{result} = lax.scan({step}, ({''.join(f'{v}, ' for v in init)}), "
                   f"({''.join(f'{v}, ' for v in xs)}), length={params['length']}, "
                   f"reverse={params['reverse']}, unroll={literal(params['unroll'])})")
        return [*self._assign(f"{result}[0]", n_carry, True),
                *self._assign(f"{result}[1]", n_ys, True)]

    def _atom(self, v, env) -> str:
        if is_literal(v):
            value = np.asarray(v.val, dtype=v.aval.dtype)
            plain = python_number(value) if v.aval.weak_type else None
            return plain or scalar(value)
        return env[v]

    def _const(self, value: np.ndarray) -> str:
        if value.size <= _INLINE_SIZE:
            if value.ndim == 0:
                return scalar(value)
            text = f"np.array({literal(value.tolist())}, dtype={dtype_text(value.dtype)})"
            # tolist() keeps the shape except where a dim is 0 ([0, 3] -> [])
            return text if value.size else f"{text}.reshape({tuple(value.shape)!r})"
        # A module-level NumPy array, as the interpreter's constants are: XLA sees a
        # literal it may fold (a jit argument would compile to other code, other roundings).
        # One per distinct value, as XLA merges equal constants (its fusions depend on it).
        fingerprint = (value.dtype.str, value.shape, value.tobytes())
        if fingerprint in self.const_vars:
            return self.const_vars[fingerprint]
        var = self.const_vars[fingerprint] = f"C{len(self.const_vars)}"
        self.const_values[var] = value
        data = value.tobytes().hex()
        chunks = "".join(f'\n    "{data[i:i + _HEX_LINE]}"' for i in range(0, len(data), _HEX_LINE))
        self.constants.append(f"{var} = np.frombuffer(bytes.fromhex({chunks}),\n"
                              f"    {dtype_text(value.dtype)}).reshape({tuple(value.shape)!r})")
        return var

    def _stand_in(self, like, name: str) -> jax.ShapeDtypeStruct:
        """An abstract value with ``like``'s shape and dtype, standing for variable ``name``
        in the traces (abstract: tracing a node allocates nothing and runs nothing)."""
        dtype = like.dtype
        if not jax.dtypes.issubdtype(dtype, jax.dtypes.extended):
            dtype = jax.dtypes.canonicalize_dtype(dtype)  # int64 -> int32 as jnp.asarray
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

