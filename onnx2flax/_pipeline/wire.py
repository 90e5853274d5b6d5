"""Read an ONNX file without copying its weights: tensor payloads become external data.

Parsing a protobuf holds the file's bytes and the parsed message (which owns a second copy
of every weight) at once, and decoding the weights into NumPy makes a third. For a model
whose weights are embedded in the ``.onnx`` file that is 2-3x the weights in peak memory.

:func:`skeleton` walks the file's protobuf wire format (memory-mapped) along the message
fields that can hold a ``TensorProto`` and writes a copy of the message where every large
payload (``raw_data``, or packed ``float_data`` / ``double_data`` whose layout is the raw
little-endian one) is replaced by an external-data reference to its own bytes in the model
file (``data_location: EXTERNAL``, ``location``/``offset``/``length``). The skeleton is small;
it is parsed by protobuf as usual, and the loader reads the weights through the same lazy,
memory-mapped, folder-confined path as real external data.

Only what the wire format needs is decoded here (tags, varints, lengths); protobuf itself
still parses and validates the result. Anything unexpected (malformed or unusual encodings)
makes :func:`skeleton` return ``None`` and the caller parses the file normally, so errors
are reported by protobuf as before.
"""

from __future__ import annotations

import functools
import mmap
from pathlib import Path

import onnx
from google.protobuf.descriptor import FieldDescriptor

from .._core.graph import numpy_dtype

#: Payloads at least this large are left in the file; smaller ones stay inline.
MIN_PAYLOAD = 1 << 18
#: Files smaller than this are parsed normally (no gain worth the walk).
MIN_FILE = 1 << 24
#: Deeper nesting than this (subgraphs of subgraphs...) falls back to a normal parse.
_MAX_DEPTH = 64

_T = onnx.TensorProto
_RAW, _FLOAT, _DOUBLE = 9, 4, 10  # TensorProto field numbers
_DIMS, _DATA_TYPE, _EXTERNAL_DATA, _DATA_LOCATION = 1, 2, 13, 14
#: Element types whose raw bytes are one NumPy item per element (no sub-byte packing).
_PLAIN_TYPES = {_T.FLOAT, _T.UINT8, _T.INT8, _T.UINT16, _T.INT16, _T.INT32, _T.INT64, _T.BOOL,
                _T.FLOAT16, _T.DOUBLE, _T.UINT32, _T.UINT64, _T.BFLOAT16}
#: Packed repeated fields whose bytes equal the raw layout for the given element type.
_PACKED_AS_RAW = {_FLOAT: _T.FLOAT, _DOUBLE: _T.DOUBLE}


class _Malformed(Exception):
    pass


def skeleton(path: Path) -> bytes | None:
    """The serialized ``ModelProto`` of ``path`` with large tensor payloads turned into
    references to the same file, or ``None`` when the file should be parsed as it is."""
    size = path.stat().st_size
    if size < MIN_FILE:
        return None
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            chunks = _message(memoryview(data), 0, size, onnx.ModelProto.DESCRIPTOR,
                              path.name, 0)
            return b"".join(chunks)
        except (_Malformed, IndexError):
            return None
        finally:
            chunks = None  # views into the mapping must be gone before it closes


def _message(data: memoryview, start: int, end: int, descriptor, location: str,
             depth: int) -> list:
    """Chunks re-encoding ``data[start:end]`` (a message of type ``descriptor``)."""
    if depth > _MAX_DEPTH:
        raise _Malformed
    if descriptor.full_name == _T.DESCRIPTOR.full_name:
        return _tensor(data, start, end, location)
    nested = _tensor_fields(descriptor)
    chunks, pos, copied = [], start, start
    while pos < end:
        field_start = pos
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire != 2 or number not in nested:
            pos = _skip(data, pos, wire)
            continue
        length, body = _varint(data, pos)
        pos = body + length
        if pos > end:
            raise _Malformed
        if length < MIN_PAYLOAD:
            continue  # too small to hold a large payload: copied with its neighbours
        chunks.append(data[copied:field_start])
        inner = _message(data, body, pos, nested[number], location, depth + 1)
        chunks += [_encode_varint(key), _encode_varint(sum(len(c) for c in inner)), *inner]
        copied = pos
    if pos != end:
        raise _Malformed
    chunks.append(data[copied:end])
    return chunks


def _tensor(data: memoryview, start: int, end: int, location: str) -> list:
    """A TensorProto whose payload, if large and plainly laid out, becomes external data."""
    fields: dict[int, list[tuple[int, int, int, int]]] = {}  # number -> (start, body, end, wire)
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        body = pos
        if wire == 2:
            length, body = _varint(data, pos)
            pos = body + length
        else:
            pos = _skip(data, pos, wire)
        fields.setdefault(number, []).append((field_start, body, pos, wire))
    if pos != end:
        raise _Malformed
    payload = _payload(data, fields)
    if payload is None:
        return [data[start:end]]
    field_start, body, field_end, _ = payload
    reference = [(b"location", location.encode()), (b"offset", str(body).encode()),
                 (b"length", str(field_end - body).encode())]
    chunks = [data[start:field_start], data[field_end:end],
              _field(_DATA_LOCATION, 0, _encode_varint(_T.EXTERNAL))]
    for key, value in reference:
        entry = _field(1, 2, key) + _field(2, 2, value)
        chunks.append(_field(_EXTERNAL_DATA, 2, entry))
    return chunks


def _payload(data: memoryview, fields: dict):
    """The one field holding a large payload that can be read back as raw bytes, or None."""
    if _EXTERNAL_DATA in fields or _DATA_LOCATION in fields:
        return None
    types = fields.get(_DATA_TYPE, [])
    if len(types) != 1 or types[0][3] != 0:
        return None
    data_type = _varint(data, types[0][1])[0]
    holders = [(n, f) for n, f in fields.items() if n in (_RAW, *_PACKED_AS_RAW)]
    if len(holders) != 1 or len(holders[0][1]) != 1:
        return None
    number, (field,) = holders[0]
    if field[3] != 2 or data_type not in _PLAIN_TYPES:
        return None
    if number != _RAW and _PACKED_AS_RAW[number] != data_type:
        return None
    count = 1
    for dim in _dims(data, fields.get(_DIMS, [])):
        count *= dim
    itemsize = numpy_dtype(data_type).itemsize
    length = field[2] - field[1]
    # A payload not matching its shape stays inline: the loader reports it precisely.
    return field if length >= MIN_PAYLOAD and length == count * itemsize else None


def _dims(data: memoryview, fields) -> list[int]:
    dims = []
    for _, body, end, wire in fields:
        if wire == 0:
            dims.append(_varint(data, body)[0])
            continue
        pos = body
        while pos < end:  # packed
            value, pos = _varint(data, pos)
            dims.append(value)
    if any(d >= 1 << 63 for d in dims):
        raise _Malformed  # negative dims: let the loader report them
    return dims


@functools.cache
def _tensor_fields(descriptor) -> dict:
    """Field number -> message type, for this message's fields that can hold a tensor."""
    holders = _tensor_holders()
    return {f.number: f.message_type for f in descriptor.fields
            if f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.full_name in holders}


@functools.cache
def _tensor_holders() -> frozenset[str]:
    """Names of the ONNX message types that can contain a TensorProto, at any depth."""
    types = {m.full_name: m for m in _message_types(onnx.ModelProto.DESCRIPTOR, {})}
    holders = {_T.DESCRIPTOR.full_name}
    while True:
        more = {name for name, m in types.items() if any(
            f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.full_name in holders
            for f in m.fields)}
        if more <= holders:
            return frozenset(holders)
        holders |= more


def _message_types(descriptor, found: dict) -> list:
    if descriptor.full_name not in found:
        found[descriptor.full_name] = descriptor
        for f in descriptor.fields:
            if f.type == FieldDescriptor.TYPE_MESSAGE:
                _message_types(f.message_type, found)
    return list(found.values())


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise _Malformed


def _skip(data: memoryview, pos: int, wire: int) -> int:
    if wire == 0:
        return _varint(data, pos)[1]
    if wire == 1:
        return pos + 8
    if wire == 5:
        return pos + 4
    if wire == 2:
        length, pos = _varint(data, pos)
        return pos + length
    raise _Malformed  # groups (3, 4) do not occur in ONNX files


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, wire: int, body: bytes) -> bytes:
    key = _encode_varint(number << 3 | wire)
    return key + (_encode_varint(len(body)) + body if wire == 2 else body)
