"""Standalone Flax source for a converted model: ``generate(converted) -> str`` and
``save(converted, out_dir)`` (``model.py`` + ``weights.msgpack``), as a ``flax.linen``
module (``api="linen"``, default) or a ``flax.nnx`` module (``api="nnx"``).

The source is made by walking the graph node by node exactly as the interpreter does
(``_driver``): a weighted node becomes the same Flax layer constructor call with the same
arguments, at its path of the weight tree (``params['layer1']['0']['conv1']``, as in
``converted.variables``); every other node becomes the operations its handler traced to,
each written in public JAX (``_emit``, ``_spell``: ``a + b``, ``jax.nn.relu(x)``,
``jnp.sum(x, axis=...)``, ``lax.conv_general_dilated(...)``), every spelling checked by
tracing it again to the same operation. Same ops, same order, so the generated module
computes the interpreter's outputs bit for bit. Dims the ONNX file leaves open are traced
as ``jax.export`` symbolic dims (``_driver``) and read from the inputs in the source
(``batch = x.shape[0]``), so the source runs at any size the file allows; with ``inputs``
the source is specialized to their shapes. Where the file records the PyTorch modules its
nodes come from (torch dynamo's metadata), each module class with two or more instances
(``Bottleneck``, ``TransformerEncoderLayer``) is written once as an ``nn.Module`` class,
numbers that differ between instances and an optional sub-module (``downsample``) as its
fields, and called under the instance's attribute name (``_blocks``; linen source). Sequences
(lists of tensors, static length) become one variable per tensor. The graph's constants
other than weights are module-level NumPy arrays written into the source, so that XLA sees
them as constants, as it does in the interpreter (as jit arguments, they compile to other
code: other fusions, other roundings). The text around the lines is ``_source``'s.

NNX: the weights are ``nnx.Param`` / ``nnx.BatchStat`` leaves of ``nnx.Dict`` levels at the
same paths (``self.layer1['0']['conv1']['kernel']``), filled from ``weights.msgpack`` when
the module is built (no random initialization); a layer's computation is the operations
its linen layer traces to, and BatchNorm's ``train=True`` branch writes the updated
statistics back.

ONNX names never become code: identifiers are sanitized (``[A-Za-z0-9_]``, prefixed, unique)
and names appear only inside comments and string literals, written with ``repr``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
from flax import serialization

from .._core.files import output_dir, write_file
from ..converter import ConvertedModel, TensorSpec, _placeholder_hint, _unknown_dims
from ..errors import CodegenError, OnnxConversionError
from . import _blocks, _literals, _open
from ._driver import Generator as _Generator
from ._source import MODEL_FILE, WEIGHTS_FILE

__all__ = ["CodegenError", "generate", "save"]

API = Literal["linen", "nnx"]


def generate(converted: ConvertedModel, inputs: Sequence[Any] | None = None, *,
             api: API = "linen") -> str:
    """The standalone source of ``converted`` (see :func:`save` for the weights):
    a ``flax.linen`` module (``api="linen"``) or a ``flax.nnx`` module (``api="nnx"``).
    ``converted`` may also be an ``NnxConvertedModel`` (its ``linen`` model is used).
    ``inputs``: arrays or ``jax.ShapeDtypeStruct`` in the module's layout to specialize
    the source to; by default the input specs' shapes, their unknown dims read from the
    inputs at run time (``convert(input_shapes=)`` fixes them instead)."""
    return _generator(converted, inputs, api).source


def save(converted: ConvertedModel, out_dir, *, force: bool = False,
         inputs: Sequence[Any] | None = None, api: API = "linen") -> list[Path]:
    """Write ``out_dir/model.py`` and ``out_dir/weights.msgpack`` (``converted.variables``);
    existing files are kept unless ``force``. ``api`` and ``inputs``: as :func:`generate`
    (the weights file is the same for both APIs). Returns the paths written. Nothing is
    written unless generation succeeds; when writing fails, the files and the folder this
    call created are removed."""
    gen = _generator(converted, inputs, api)
    weights = serialization.msgpack_serialize(jax.tree.map(np.asarray, gen.variables))
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
    with _hints(linen, inputs):
        generator = _Generator(converted, inputs, api)
        if api != "linen":
            return generator
        layers = {node: p.path for node, p in linen._program.layers.items()}
        blocks = _blocks.plan(generator.written, layers)
        # again, each repeated PyTorch module's nodes into its class
        return _Generator(converted, inputs, api, blocks) if blocks else generator


@contextlib.contextmanager
def _hints(converted: ConvertedModel, inputs: Sequence[Any] | None):
    """Tracing ``converted`` as generated source is (``inputs``, or its open dims
    symbolic): an error says which inputs decide shapes and, without ``inputs``, which
    dims were open and how to fix them."""
    with _placeholder_hint([], converted.specialized_inputs), \
            _symbolic_hint(converted.inputs if inputs is None else []):
        yield


def _output_specs(converted: ConvertedModel, inputs: Sequence[Any] | None) -> list[TensorSpec]:
    """The output specs (layouts) of the generated source: traced on ``inputs`` (module
    layout), or with the open dims symbolic."""
    with _hints(converted, inputs):
        if inputs is None:
            inputs = _open.open_inputs(converted.inputs, _literals.Names())[0]
        return converted._output_specs(inputs)


@contextlib.contextmanager
def _symbolic_hint(inputs: list[TensorSpec]):
    """Generating with the inputs' unknown dims symbolic: an onnx2flax error raised inside
    says which dims were symbolic and how to fix their sizes instead."""
    try:
        yield
    except OnnxConversionError as exc:
        unknown = _unknown_dims(inputs)
        if unknown and exc.args and isinstance(exc.args[0], str):
            where, _, flags = unknown
            exc.args = (f"{exc.args[0]}\n(generated with the sizes the ONNX file leaves open "
                        f"read from the inputs at run time: {where}; if the model needs "
                        "them fixed, fix them: onnx2flax.convert(model, input_shapes=...) or "
                        f"`onnx2flax convert MODEL -o DIR {flags}`, each <...> filled in; "
                        "or generate(converted, inputs=[jax.ShapeDtypeStruct(shape, dtype), "
                        "...]) in the module's layout)", *exc.args[1:])
        raise
