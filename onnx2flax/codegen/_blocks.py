"""One class per repeated PyTorch module: the lines of each module instance (a ResNet's
``Bottleneck``, a transformer's encoder layer) written once as an ``nn.Module`` class and
called under the instance's attribute name.

:func:`plan` picks the instances from the nodes' PyTorch scopes (``Node.scope``, torch
dynamo's metadata): for each written node, the outermost module whose class has two or more
instances, each written as one contiguous run of nodes with its layers inside its own level
of the weight tree. The driver then writes each instance's nodes into its own lines, layers
relative to the instance (``nn.Conv(name='conv1', ...)`` in ``params['layer1']['0']``), and
leaves a marker where the instance is called. :func:`assemble` turns the instances into
classes: an instance's lines with its variables renamed in order of appearance are its
class's body when its structure (the syntax tree with numbers set aside) is that of the
class; numbers that differ between the instances (channels, strides) become dataclass
fields. Instances of one PyTorch class whose structures differ by an optional sub-module
(a block with a ``downsample`` and one without) are one class with a boolean field
(:func:`_merge_optional`); other differences make variants: ``Block`` and ``Block2``.
"""

from __future__ import annotations

import ast
import builtins
import difflib
import io
import keyword
import re
import tokenize
from collections import Counter
from dataclasses import dataclass, field

import flax.linen as nn

from .._core.graph import Node

#: PyTorch containers: their instances differ in what they hold, they are not blocks.
_CONTAINERS = frozenset({"torch.nn.modules.container.Sequential",
                         "torch.nn.modules.container.ModuleList",
                         "torch.nn.modules.container.ModuleDict"})
#: What a class or field name must not be: Python's builtins (the source uses ``float``),
#: ``nn.Module``'s own attributes (``name``, ``parent``, ``path``...).
_BUILTINS = frozenset(dir(builtins))
_MODULE_ATTRIBUTES = frozenset(dir(nn.Module)) | {"name", "parent"}
#: Fewest written nodes for a module instance to be a class (a Conv2d is one node).
_MIN_NODES = 3
#: The comment the driver writes above a node's (or weight's) lines: its name differs
#: between instances, the class keeps the op.
_NODE_COMMENT = re.compile(r"^(\s*# [A-Za-z0-9_]+)(?: node)? '.*'$")


@dataclass(eq=False)
class Instance:
    """One module instance: its attribute path, class and level of the weight tree, the
    lines of its nodes (written relative to that level), its own ``Scope`` levels, the
    weights it creates (not a layer's: a ``MultiheadAttention``'s ``in_proj_bias``), and the
    marker of its call in the lines around it."""

    path: str
    cls: str
    weights: tuple[str, ...]
    marker: str = ""
    lines: list[str] = field(default_factory=list)
    scopes: dict[str, str] = field(default_factory=dict)
    params: list = field(default_factory=list)  # weights it creates: (name, path, value, var)


def plan(written: list[Node], layer_paths: dict[Node, tuple[str, ...]]) -> dict[Node, Instance]:
    """The instance each of the ``written`` nodes (in the order their lines were written)
    goes into; nodes in no instance stay in the model's own lines."""
    members: dict[tuple[str, str], list[int]] = {}
    for i, node in enumerate(written):
        for level in node.scope:
            if level[1] not in _CONTAINERS:
                members.setdefault(level, []).append(i)

    def fits(level: tuple[str, str], rows: list[int]) -> bool:
        weights = tuple(level[0].split("."))
        # its layers below its own level (a LayerNorm2d whose weights are its own LayerNorm
        # layer's is not a class: the layer would nest one level deeper)
        return (len(rows) >= _MIN_NODES and rows == list(range(rows[0], rows[-1] + 1))
                and all(layer_paths[written[i]][:len(weights)] == weights
                        and len(layer_paths[written[i]]) > len(weights)
                        for i in rows if written[i] in layer_paths))

    valid = {level for level, rows in members.items() if fits(level, rows)}
    repeated = Counter(cls for _, cls in valid)
    instances: dict[tuple[str, str], Instance] = {}
    chosen: dict[Node, Instance] = {}
    for node in written:
        level = next((lv for lv in node.scope if lv in valid and repeated[lv[1]] >= 2), None)
        if level is not None:
            if level not in instances:
                instances[level] = Instance(level[0], level[1], tuple(level[0].split(".")))
            chosen[node] = instances[level]
    return chosen


# --- assembling the classes ---------------------------------------------------------------

@dataclass(eq=False)
class _Body:
    """An instance's lines, its variables renamed: inputs ``x``, ``x1``...; locals in order."""

    instance: Instance
    text: str
    inputs: list[str]       # the instance's own names of its inputs, in order
    outputs: list[str]      # and of its outputs
    returns: list[str]      # the outputs' names in the body
    uses_train: bool
    parameters: list[str] = field(default_factory=list)  # the inputs' names in the body
    key: tuple = ()         # structure: the syntax tree with numbers set aside
    slots: list = field(default_factory=list)  # (AST node, source text) of each number


def assemble(instances: list[Instance], parent: list[str], module_names: set[str],
             class_names: set[str], dims: set[str]) -> tuple[list[str], list[str]]:
    """``parent``'s lines with each instance's marker replaced by its call, and the source
    of the classes. ``module_names``: names defined at module level (constants, classes,
    imports); ``class_names``: those the classes must not take; ``dims``: the input sizes
    read from the inputs (``batch``), arguments of the same name."""
    stored = {id(i): _names(i.lines)[1] for i in instances}
    loaded = {id(i): _names(i.lines)[0] for i in instances}
    outside = set(_names(parent)[0])
    for inst in instances:
        outside |= set(loaded[id(inst)]) - set(stored[id(inst)])
    known = module_names | set(dir(builtins)) | {"self", "train"}
    bodies = []
    for inst in instances:
        inputs = [n for n in loaded[id(inst)] if n not in stored[id(inst)] and n not in known]
        outputs = [n for n in stored[id(inst)] if n in outside]
        bodies.append(_body(inst, inputs, outputs, "train" in loaded[id(inst)], dims))
    groups: dict[tuple, list[_Body]] = {}
    for body in bodies:
        groups.setdefault((body.instance.cls, body.key, tuple(body.returns),
                           tuple(body.parameters), body.uses_train), []).append(body)
    taken = set(class_names)
    variants: Counter = Counter()
    classes: list[str] = []
    calls: dict[str, str] = {}
    for members, flags in _merge_optional(list(groups.values())):
        base = re.sub(r"[^A-Za-z0-9_]", "_", members[0].instance.cls.rsplit(".", 1)[-1])
        base = base.lstrip("_") or "Block"
        if not base[0].isalpha():
            base = "M" + base
        variants[base] += 1
        name = base if variants[base] == 1 else f"{base}{variants[base]}"
        while name in taken or keyword.iskeyword(name) or name in _BUILTINS:
            name += "_"
        taken.add(name)
        source, fields = _class_source(name, members, flags)
        classes.append(source)
        for body in members:
            values = "".join(f", {f}={v}" for f, v in fields(body))
            args = ", ".join(body.inputs + (["train=train"] if body.uses_train else []))
            calls[body.instance.marker] = (
                f"{name}(name={body.instance.weights[-1]!r}{values})({args})",
                ", ".join(body.outputs))
    lines = []
    for line in parent:
        marker = next((m for m in calls if line.startswith(f"{m}_out = ")), None)
        if marker is not None:
            call, target = calls[marker]
            line = line.replace(f"{marker}_call", call).replace(
                f"{marker}_out = ", f"{target} = " if target else "")
        lines.append(line)
    return lines, classes


def _names(lines: list[str]) -> tuple[list[str], list[str]]:
    """Names loaded and stored (assigned, or defined as local functions and their
    arguments; a ``lambda``'s arguments are its own) by ``lines``, each in order of first
    appearance."""
    loaded: dict[str, None] = {}
    stored: dict[str, None] = {}
    bound: set[str] = set()  # lambda arguments
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.Lambda):
            bound.update(a.arg for a in node.args.args)
        elif isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else stored)[node.id] = None
        elif isinstance(node, ast.FunctionDef):  # a local function and its arguments
            stored[node.name] = None
            stored.update((a.arg, None) for a in node.args.args)
    order = _appearance(lines)
    return (sorted(set(loaded) - bound, key=order.get), sorted(stored, key=order.get))


def _appearance(lines: list[str]) -> dict[str, int]:
    """Each identifier's position of first appearance in ``lines``."""
    found: dict[str, int] = {}
    for tok in tokenize.generate_tokens(io.StringIO("\n".join(lines) + "\n").readline):
        if tok.type == tokenize.NAME and tok.string not in found:
            found[tok.string] = len(found)
    return found


def _body(inst: Instance, inputs: list[str], outputs: list[str], uses_train: bool,
          dims: set[str]) -> _Body:
    arrays = iter(range(len(inputs)))
    own = {n: n if n in dims else ("x" if k == 0 else f"x{k}")
           for n, k in ((n, 0 if n in dims else next(arrays)) for n in inputs)}
    locals_ = [n for n in _names(inst.lines)[1] if n not in own]
    temps = iter(range(1, len(locals_) + 1))
    for name in locals_:
        own[name] = name if name.startswith("s_") else f"t{next(temps)}"  # Scope levels keep
    lines = [_NODE_COMMENT.sub(r"\1", line) for line in inst.lines]
    text = _rename("\n".join(lines), own)
    body = _Body(inst, text, inputs, outputs, [own[n] for n in outputs], uses_train,
                 [own[n] for n in inputs])
    body.key, body.slots = _structure(text)
    return body


def _rename(text: str, names: dict[str, str]) -> str:
    """``text`` with its identifiers renamed (comments and strings untouched)."""
    out, last = [], (1, 0)
    lines = text.split("\n")
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line) + 1)
    for tok in tokenize.generate_tokens(io.StringIO(text + "\n").readline):
        if tok.type == tokenize.NAME and tok.string in names:
            start = offsets[tok.start[0] - 1] + tok.start[1]
            out.append(text[offsets[last[0] - 1] + last[1]:start])
            out.append(names[tok.string])
            last = tok.end
    out.append(text[offsets[last[0] - 1] + last[1]:])
    return "".join(out)


def _is_number(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return type(node.value) in (int, float)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return _is_number(node.operand)
    if isinstance(node, (ast.Tuple, ast.List)):
        return bool(node.elts) and all(_is_number(e) for e in node.elts)
    return False


def _structure(text: str) -> tuple[str, list]:
    """The syntax tree of ``text`` with its numbers (and tuples of numbers) set aside, and
    those numbers as ``(node, source text)``, in the tree's order."""
    slots = []

    class SetAside(ast.NodeTransformer):
        def visit(self, node):
            if isinstance(node, ast.expr) and _is_number(node):
                slots.append((node, ast.get_source_segment(text, node)))
                return ast.Name("_", ast.Load())
            return self.generic_visit(node)

    return ast.dump(SetAside().visit(ast.parse(text))), slots


def _class_source(name: str, members: list[_Body], flags: dict[str, dict[int, bool]]):
    """The class written from ``members`` (instances of one structure) and a function
    giving each member's field values as source. ``flags``: boolean fields (an optional
    sub-module's), each member's value by ``id``."""
    first = members[0]
    varying = [k for k in range(len(first.slots))
               if len({m.slots[k][1] for m in members}) > 1]
    # numbers that vary together (conv1 and conv2 features = planes) are one field
    together: dict[tuple, list[int]] = {}
    for k in varying:
        together.setdefault(tuple(m.slots[k][1] for m in members), []).append(k)
    names: dict[int, str] = {}
    taken: set[str] = set(flags)
    for ks in together.values():
        found = [_field_name(first.text, first.slots[k][0]) for k in ks]
        kinds = {f.rsplit("_", 1)[-1] for f in found}
        base = kinds.pop() if len(ks) > 1 and len(kinds) == 1 else found[0]
        candidate, n = base, 1
        while candidate in taken or candidate in _MODULE_ATTRIBUTES:
            n += 1
            candidate = f"{base}{n}"
        taken.add(candidate)
        names.update(dict.fromkeys(ks, candidate))
    text = first.text
    offsets = [0]
    for line in text.split("\n"):
        offsets.append(offsets[-1] + len(line) + 1)
    for k in sorted(varying, key=lambda k: -_start(first.slots[k][0], offsets)):
        node = first.slots[k][0]
        start, end = _start(node, offsets), offsets[node.end_lineno - 1] + node.end_col_offset
        text = text[:start] + f"self.{names[k]}" + text[end:]
    fields = "".join(f"    {names[ks[0]]}: {_annotation(first.slots[ks[0]][0])}\n"
                     for ks in together.values()) + "".join(f"    {f}: bool\n" for f in flags)
    args = ", ".join(["self", *first.parameters,
                      *(["train: bool = False"] if first.uses_train else [])])
    returns = ", ".join(first.returns)
    body = "\n".join("        " + line if line else "" for line in text.split("\n"))
    where = ", ".join(m.instance.path for m in members)
    source = (f"class {name}(nn.Module):\n"
              f'    """PyTorch module ``{_doc(first.instance.cls)}``: {_doc(where)}."""\n\n'
              f"{fields}{chr(10) if fields else ''}"
              f"    @nn.compact\n    def __call__({args}):\n{body}\n"
              + (f"        return {returns}\n" if returns else ""))

    def values(body: _Body):
        return [(names[ks[0]], body.slots[ks[0]][1]) for ks in together.values()] + [
            (f, repr(by_member[id(body)])) for f, by_member in flags.items()]

    return source, values


def _start(node: ast.expr, offsets: list[int]) -> int:
    return offsets[node.lineno - 1] + node.col_offset


def _field_name(text: str, node: ast.expr) -> str:
    """A field's name from where its number is: the keyword it is given as (``features``),
    after the name of the layer it configures (``conv1_features``); else ``size``."""
    tree = ast.parse(text)
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call):
            continue
        for kw in call.keywords:
            if (kw.value.lineno, kw.value.col_offset) == (node.lineno, node.col_offset):
                layer = next((k.value.value for k in call.keywords if k.arg == "name"
                              and isinstance(k.value, ast.Constant)), "")
                base = f"{layer}_{kw.arg}" if layer else kw.arg
                return re.sub(r"[^A-Za-z0-9_]", "_", base if base[0].isalpha() else "f" + base)
    return "size"


def _annotation(node: ast.expr) -> str:
    if isinstance(node, ast.Tuple):
        return "tuple"
    if isinstance(node, ast.List):
        return "list"
    value = ast.literal_eval(node)
    return type(value).__name__


def _doc(text: str) -> str:
    """``text`` for a one-line docstring: printable ASCII, no double quote, no backslash."""
    return re.sub(r"[^ -~]", "?", text).replace('"', "'").replace("\\", "/")


# --- optional sub-modules -----------------------------------------------------------------

def _merge_optional(groups: list[list[_Body]]) -> list[tuple[list[_Body], dict]]:
    """Groups of one PyTorch class whose structures differ only by an optional sub-module
    (a ``Bottleneck`` with a ``downsample`` and one without) as one group: each member's
    body is rewritten to the merged form (``if self.downsample: ... else: t3 = x``) and the
    sub-module's presence is a boolean field. Returns ``(members, flags)`` per class."""
    merged: list[tuple[list[_Body], dict]] = [(g, {}) for g in groups]
    changed = True
    while changed:
        changed = False
        for i, (with_, flags_i) in enumerate(merged):
            for j, (without, flags_j) in enumerate(merged):
                if i == j or flags_i or flags_j or with_[0].instance.cls != without[0].instance.cls:
                    continue
                found = _merged_group(without, with_)
                if found is not None:
                    merged = [g for k, g in enumerate(merged) if k not in (i, j)] + [found]
                    changed = True
                    break
            if changed:
                break
    return merged


def _merged_group(without: list[_Body], with_: list[_Body]):
    first = _merge_pair(without[0], with_[0])
    if first is None:
        return None
    sub = first[1]
    versions, flags = [], {}
    for a, b, member in [(m, with_[0], m) for m in without] + [(without[0], m, m)
                                                                 for m in with_]:
        found = _merge_pair(a, b)
        if found is None or found[1] != sub:
            return None
        text = found[0] if member is b else found[2]
        version = _Body(member.instance, text, member.inputs, member.outputs,
                        b.returns, member.uses_train, b.parameters)
        version.key, version.slots = _structure(text)
        if versions and version.key != versions[0].key:
            return None
        versions.append(version)
        flags[id(version)] = member is b
    versions.sort(key=lambda v: int(v.instance.marker.removeprefix("_block")))  # call order
    return versions, {sub: flags}


def _merge_pair(a: _Body, b: _Body):
    """``b``'s body as ``a``'s plus the statements of one sub-module ``s_<sub>`` that read
    no result of the others: ``(the merged text with b's statements, the field's name,
    the merged text with a's statements)`` (the sub-module's statements under
    ``if self.<sub>:``; their result, where ``a`` reads an input instead, that input
    otherwise), or ``None``."""
    if a.parameters != b.parameters or a.uses_train != b.uses_train:
        return None
    a_chunks, b_chunks = _chunks(a.text), _chunks(b.text)
    match = difflib.SequenceMatcher(None, [c[2] for c in a_chunks], [c[2] for c in b_chunks],
                                    autojunk=False)
    extras, pairs = [], []
    for tag, i1, i2, j1, j2 in match.get_opcodes():
        if tag == "equal":
            pairs += zip(a_chunks[i1:i2], b_chunks[j1:j2])
        elif tag == "insert":
            extras += b_chunks[j1:j2]
        else:
            return None
    subs = {n for chunk in extras for n in chunk[3] if n.startswith("s_")}
    if not extras or len(subs) != 1:
        return None
    sub = subs.pop()
    made = {n for chunk in extras for n in chunk[4]}
    main = {n for _, chunk in pairs for n in chunk[4]}  # what the common statements make
    if any(sub not in chunk[3] | chunk[4] or chunk[5] & main for chunk in extras):
        return None  # each extra is the sub-module's and reads no result of the others
    rename: dict[str, str] = {}
    instead: dict[str, str] = {}  # an extra's result -> the input a reads in its place
    edits = []  # where a's common statements get b's names: (line, start, end, name)
    for (_, a_stmt, *_), (_, b_stmt, *_) in pairs:
        for x, y in zip(ast.walk(a_stmt), ast.walk(b_stmt)):
            if not isinstance(x, ast.Name):
                continue
            if y.id in made:
                if x.id not in a.parameters or instead.setdefault(y.id, x.id) != x.id:
                    return None
            elif rename.setdefault(x.id, y.id) != y.id:
                return None
            edits.append((x.lineno, x.col_offset, x.end_col_offset, y.id))
    if [rename.get(n, n) for n in a.returns] != b.returns or not instead:
        return None
    a_lines = a.text.split("\n")
    for line, start, end, name in sorted(edits, reverse=True):
        a_lines[line - 1] = a_lines[line - 1][:start] + name + a_lines[line - 1][end:]
    a_common = "\n".join("\n".join(a_lines[chunk[6]:chunk[7]]) for chunk, _ in pairs)
    field = sub[2:] if sub[2:].isidentifier() else "has_" + sub
    present = "\n".join(chunk[0] for chunk in extras)
    absent = "\n".join(f"{y} = {x}" for y, x in instead.items())
    indent = lambda text: "\n".join("    " + line if line else line  # noqa: E731
                                     for line in text.split("\n"))
    head = f"if self.{field}:\n{indent(present)}\nelse:\n{indent(absent)}\n"
    return head + "\n".join(chunk[0] for _, chunk in pairs), field, head + a_common


def _chunks(text: str):
    """The top-level statements of ``text``, each as ``(its lines with the comments above
    it, its AST, its shape (names and numbers set aside), names it loads or stores that
    are Scope levels, names it stores, names it loads, its first and past-last line)``."""
    lines = text.split("\n")
    tree = ast.parse(text)
    chunks, start = [], 0
    for stmt in tree.body:
        end = stmt.end_lineno
        loaded, stored = _names(lines[stmt.lineno - 1:end])
        shape = ast.dump(_Anonymous().visit(ast.parse(ast.unparse(stmt))))
        chunks.append(("\n".join(lines[start:end]), stmt, shape,
                       {n for n in loaded + stored if n.startswith("s_")}, set(stored),
                       set(loaded), start, end))
        start = end
    return chunks


class _Anonymous(ast.NodeTransformer):
    """A statement's shape: variable names and numbers set aside."""

    def visit_Name(self, node):
        return ast.Name("_", node.ctx)

    def visit(self, node):
        if isinstance(node, ast.expr) and _is_number(node):
            return ast.Constant(0)
        return super().visit(node)
