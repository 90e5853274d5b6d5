"""Stage 1: read a model from a path, bytes or ModelProto; decode tensors.

External data is read lazily through ``numpy.memmap`` and confined to the model's
folder: absolute locations, ``..`` and links that leave the folder are refused.
"""

from __future__ import annotations

import mmap
import functools
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from . import wire as _wire
from .._core.graph import numpy_dtype
from .._core.limits import budget
from ..errors import InvalidModelError

#: Bits per element of the element types ONNX packs several to a byte (low bits first);
#: those the installed onnx knows (INT2 / UINT2 came in onnx 1.20, the minimum is 1.19).
_PACKED_BITS = {getattr(onnx.TensorProto, name): bits
                for name, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2),
                                   ("UINT2", 2))
                if hasattr(onnx.TensorProto, name)}

ModelLike = str | os.PathLike | bytes | onnx.ModelProto


def load_model(model: ModelLike) -> tuple[onnx.ModelProto, Path | None]:
    """Return the ModelProto and the folder external data may be read from."""
    if isinstance(model, onnx.ModelProto):
        return model, None
    if isinstance(model, (bytes, bytearray, memoryview)):
        return _parse(bytes(model), "<bytes>"), None
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise InvalidModelError(f"model file {str(path)!r} does not exist or is not a file")
        real = path.resolve()
        # Large embedded weights stay in the file and are read like external data.
        data = _wire.skeleton(real)
        return _parse(path.read_bytes() if data is None else data, str(path)), real.parent
    raise InvalidModelError(
        f"expected a path, bytes or onnx.ModelProto, got {type(model).__name__}")


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InvalidModelError(f"{where} is not a valid ONNX protobuf: {exc}") from None
    if not proto.HasField("graph"):
        raise InvalidModelError(f"{where} holds no graph (is it an ONNX model file?)")
    _check_text(proto, where)
    return proto


def _check_text(message, where: str) -> None:
    """Refuse string fields that are not UTF-8 (the parser hands them back as bytes).
    Only string and message fields are read: tensors' raw data is never copied."""
    for field, repeated in _text_fields(message.DESCRIPTOR):
        value = getattr(message, field.name)
        if field.type == field.TYPE_STRING:
            bad = next((v for v in (value if repeated else [value]) if not isinstance(v, str)),
                       None)
            if bad is not None:
                raise InvalidModelError(f"{where}: field {field.full_name!r} holds invalid "
                                        f"UTF-8 text {bytes(bad)[:40]!r}")
        elif repeated:
            for item in value:
                _check_text(item, where)
        elif message.HasField(field.name):
            _check_text(value, where)


@functools.cache
def _text_fields(descriptor) -> tuple:
    """The string and message fields of a message type, with whether each is repeated."""
    return tuple((f, f.is_repeated if hasattr(f, "is_repeated")  # protobuf >= 5
                  else f.label == f.LABEL_REPEATED)
                 for f in descriptor.fields if f.type in (f.TYPE_STRING, f.TYPE_MESSAGE))


def tensor_to_array(tensor: onnx.TensorProto, base_dir: Path | None, what: str) -> np.ndarray:
    """Decode a TensorProto; ``what`` names it in errors (e.g. "initializer 'fc.weight'").
    Its size is checked against the budget's ``tensor_bytes`` before anything is read, and
    counted as bytes the model stores (see ``Limits.folded_bytes``)."""
    dims = [int(d) for d in tensor.dims]
    if any(d < 0 for d in dims):
        raise InvalidModelError(f"{what} has negative dims {dims}")
    dtype = numpy_dtype(tensor.data_type, what)
    if dtype.kind in "OSU":  # never mapped nor decoded: file bytes would become pointers
        raise InvalidModelError(f"{what} is a string tensor; onnx2flax handles numeric tensors only")
    count = float(np.prod(dims, dtype=np.float64)) if dims else 1.0
    current = budget()
    current.check_tensor(count * dtype.itemsize, what, dims)
    current.stored_bytes += int(count) * dtype.itemsize
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return _read_external(tensor, dims, dtype, base_dir, what)
    try:
        return numpy_helper.to_array(tensor)
    except Exception as exc:  # onnx raises ValueError/TypeError/IndexError on inconsistent data
        raise InvalidModelError(
            f"{what}: its data does not match its declared shape {dims} and type "
            f"{np.dtype(dtype).name} ({type(exc).__name__}: {exc})") from None


def _read_external(tensor: onnx.TensorProto, dims: list[int], dtype: np.dtype,
                   base_dir: Path | None, what: str) -> np.ndarray:
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    if base_dir is None:
        raise InvalidModelError(
            f"{what} stores its data in external file {location!r}; load the model from a "
            "path so the file can be found next to it")
    if not location or os.path.isabs(location) or location.startswith(("/", "\\")) \
            or "\0" in location:
        raise InvalidModelError(f"{what}: external data location {location!r} must be a "
                                "relative path inside the model's folder")
    target = (base_dir / location).resolve()
    if base_dir != target and base_dir not in target.parents:
        raise InvalidModelError(f"{what}: external data location {location!r} leaves the "
                                f"model's folder {str(base_dir)!r}")
    if not target.is_file():
        raise InvalidModelError(f"{what}: external data file {location!r} is missing")
    count = int(np.prod(dims)) if dims else 1
    bits = _PACKED_BITS.get(tensor.data_type)
    needed = count * dtype.itemsize if bits is None else -(-count * bits // 8)
    try:
        offset = int(info.get("offset", 0))
        length = int(info.get("length", needed))
    except ValueError:
        raise InvalidModelError(f"{what}: external data offset/length are not integers") from None
    size = target.stat().st_size
    if offset < 0 or length != needed or offset + length > size:
        raise InvalidModelError(
            f"{what}: external data needs {needed} bytes at offset {offset} of "
            f"{location!r}, which holds {size} bytes (declared length {length})")
    if count == 0:
        return np.zeros(dims, dtype)
    if bits is not None:
        packed = np.fromfile(target, np.uint8, count=needed, offset=offset)
        return _unpack(packed, bits, count, dtype).reshape(dims)
    return np.memmap(target, dtype=dtype, mode="r", offset=offset, shape=tuple(dims))


def _unpack(packed: np.ndarray, bits: int, count: int, dtype: np.dtype) -> np.ndarray:
    """``count`` elements of ``bits`` bits each, packed low bits first into ``packed``."""
    shifts = np.arange(0, 8, bits, dtype=np.uint8)
    codes = ((packed[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1)[:count]
    if dtype.kind == "f":  # float4: the code is the value's bit pattern
        return codes.view(dtype)
    if dtype.kind == "i":  # two's complement in ``bits`` bits
        codes = codes.astype(np.int8) - ((codes >> (bits - 1)) << bits).astype(np.int8)
    return codes.astype(dtype)


def owned(array: np.ndarray) -> np.ndarray:
    """``array`` with its own bytes: a memory-mapped file (external data, or weights left
    in the model file) could change or shrink after ``convert`` and kill the process when
    read (SIGBUS), so values read after conversion are copied out of it."""
    return np.array(array) if _mapping(array) is not None else array


def _mapping(array: np.ndarray) -> mmap.mmap | None:
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    return base if isinstance(base, mmap.mmap) else None


def to_device(array: np.ndarray) -> jax.Array:
    """``array`` as a device array, copied at most once.

    A C-ordered NumPy array is handed to JAX as is (the CPU backend may adopt its buffer).
    A transposed view (a kernel in Flax's layout) or an array of external data is copied,
    transposing on the way, into a 64-byte aligned buffer that the CPU backend then adopts
    without another copy: no XLA program is compiled per kernel shape, and external data is
    never aliased (a donated buffer must never be the model file). Afterwards a mapped
    file's pages are released so they do not stay counted in the process's memory next to
    the copy (a later read of ``array`` pages them in again).
    """
    mapping = _mapping(array)
    if mapping is None and array.flags.c_contiguous:
        return jnp.asarray(array)
    out = jax.device_put(_aligned_copy(array))
    out.block_until_ready()  # the transfer is asynchronous: finish it before dropping pages
    if mapping is not None and hasattr(mmap, "MADV_DONTNEED") and not mapping.closed:
        mapping.madvise(mmap.MADV_DONTNEED)
    return out


def _aligned_copy(array: np.ndarray, alignment: int = 64) -> np.ndarray:
    buffer = np.empty(array.nbytes + alignment, np.uint8)
    start = -buffer.ctypes.data % alignment
    out = buffer[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    np.copyto(out, array)
    return out
