"""The OTLP/HTTP protobuf wire format, written by hand: a ``Span`` -> its ``Span`` message,
encoded spans -> one ``ExportTraceServiceRequest``, and the collector's answer read back.

Several backends (Phoenix among them) accept only ``application/x-protobuf``, and the
monitor depends on nothing outside the standard library, so the few messages of
``opentelemetry/proto/{collector/trace,trace,common,resource}/v1`` that an export needs
are written here with the four wire types they use. tests/test_otlp.py decodes the bytes
with the official ``opentelemetry-proto`` classes.
"""

from __future__ import annotations

import struct
from functools import lru_cache

from .. import __version__
from .spans import SCOPE_NAME, Span

KIND_CLIENT = 3                  # Span.SpanKind.SPAN_KIND_CLIENT
STATUS_ERROR = 2                 # Status.StatusCode.STATUS_CODE_ERROR


# -- protobuf wire format ---------------------------------------------------------------

_ONE_BYTE = [bytes((i,)) for i in range(128)]   # most varints: tags, small lengths


def _varint(n: int) -> bytes:
    if 0 <= n < 128:
        return _ONE_BYTE[n]
    n &= 0xFFFFFFFFFFFFFFFF   # int64 negatives are ten-byte two's complement
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _ONE_BYTE[number << 3 | 2] + _varint(len(payload)) + payload


def _str_field(number: int, text: str) -> bytes:
    # "replace": a lone surrogate from a hostile log becomes "?", not invalid UTF-8.
    return _len_field(number, text.encode("utf-8", "replace"))


def _any_value(value: object) -> bytes:
    if isinstance(value, bool):             # before int: True is an int
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)
    if isinstance(value, (list, tuple)):
        return _len_field(5, b"".join(_len_field(1, _any_value(v)) for v in value))
    return _str_field(1, str(value))


@lru_cache(maxsize=4096)
def _key(key: str) -> bytes:
    """A KeyValue's key field: the same few dozen names in every span."""
    return _str_field(1, key)


def _key_value(key: str, value: object) -> bytes:
    return _key(key) + _len_field(2, _any_value(value))


def encode_span(span: Span) -> bytes:
    """The ``Span`` message (opentelemetry/proto/trace/v1/trace.proto)."""
    out = [_len_field(1, span.trace_id), _len_field(2, span.span_id),
           _str_field(5, span.name), b"\x30" + _varint(KIND_CLIENT),
           b"\x39" + struct.pack("<Q", span.start_ns),     # field 7, fixed64
           b"\x41" + struct.pack("<Q", span.end_ns)]       # field 8, fixed64
    out += [_len_field(9, _key_value(k, v)) for k, v in span.attributes.items()]
    if span.error is not None:
        out.append(_len_field(15, _str_field(2, span.error) + b"\x18" + _varint(STATUS_ERROR)))
    return b"".join(out)


def encode_request(encoded_spans: list[bytes], resource: dict) -> bytes:
    """An ``ExportTraceServiceRequest`` of already encoded spans, one resource and one
    instrumentation scope (the outbox stores spans encoded, so a batch is a join)."""
    scope = _str_field(1, SCOPE_NAME) + _str_field(2, __version__)
    scope_spans = _len_field(1, scope) + b"".join(_len_field(2, s) for s in encoded_spans)
    res = b"".join(_len_field(1, _key_value(k, v)) for k, v in resource.items())
    resource_spans = _len_field(1, res) + _len_field(2, scope_spans)
    return _len_field(1, resource_spans)


def decode_partial_success(body: bytes) -> tuple[int, str]:
    """(rejected spans, message) of an ``ExportTraceServiceResponse``; (0, "") when the
    body is empty or not one (a proxy's HTML page)."""
    try:
        fields = _fields(body)
        partial = next((v for n, v in fields if n == 1 and isinstance(v, bytes)), None)
        if partial is None:
            return 0, ""
        inner = _fields(partial)
        rejected = next((v for n, v in inner if n == 1 and isinstance(v, int)), 0)
        message = next((v for n, v in inner if n == 2 and isinstance(v, bytes)), b"")
        return rejected, message.decode("utf-8", "replace")
    except (IndexError, ValueError):
        return 0, ""


def _fields(data: bytes) -> list[tuple[int, object]]:
    """Top-level (field number, value) pairs of a message: varints and byte strings."""
    out, i = [], 0
    while i < len(data):
        tag, i = _read_varint(data, i)
        wire = tag & 7
        if wire == 0:
            value, i = _read_varint(data, i)
        elif wire == 2:
            size, i = _read_varint(data, i)
            value, i = data[i:i + size], i + size
            if i > len(data):
                raise ValueError("truncated")
        elif wire in (1, 5):
            value, i = None, i + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"wire type {wire}")
        out.append((tag >> 3, value))
    return out


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")
