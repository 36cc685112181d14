"""Gzip rotations read in place: the decompressed bytes from any offset, the head for a
fingerprint, and the size the trailer records.

Members are inflated as raw deflate with the header and CRC handled here: zlib's own gzip
mode raises on a bad CRC *before* returning the data it decompressed, and the lines before
the damage must be kept (failure-scenarios.md, R9).
"""

from __future__ import annotations

import os
import zlib
from typing import BinaryIO, Iterator

GZIP_MAGIC = b"\x1f\x8b"


def gzip_head(f: BinaryIO, length: int) -> bytes:
    """Up to ``length`` decompressed bytes from the start (fewer if the file is short or
    damaged: a head is a fingerprint, not data)."""
    d = zlib.decompressobj(wbits=31)
    out, pos = b"", 0
    try:
        while len(out) < length and not d.eof:
            chunk = os.pread(f.fileno(), 65536, pos)
            if not chunk:
                break
            pos += len(chunk)
            out += d.decompress(chunk, length - len(out))
            while d.unconsumed_tail and len(out) < length:
                out += d.decompress(d.unconsumed_tail, length - len(out))
    except zlib.error:
        pass
    return out[:length]


def gzip_isize(f: BinaryIO) -> int:
    """The uncompressed size modulo 2**32 from the last member's trailer, -1 if none."""
    size = os.fstat(f.fileno()).st_size
    if size < 18:
        return -1
    return int.from_bytes(os.pread(f.fileno(), 4, size - 4), "little")


class GzipChunks:
    """Decompressed bytes of a gzip file from ``offset`` on (gzip keeps the original
    byte offsets, so a saved plain offset is valid inside the ``.gz``). ``error`` says
    why it stopped early, ``complete`` that it reached the end of the last member;
    ``before`` holds the last ``keep`` bytes before ``offset`` once it is passed."""

    def __init__(self, f: BinaryIO, offset: int, keep: int = 0) -> None:
        self.f, self.offset, self.keep = f, offset, keep
        self.position = 0        # decompressed bytes produced so far
        self.complete = False    # reached the end of the last gzip member
        self.error: str | None = None
        self.before = b""

    def __iter__(self) -> Iterator[bytes]:
        fd = self.f.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            header = _gzip_header_length(os.pread(fd, 65536, pos))
            if header is None:
                if pos == 0:
                    self.error = "not a gzip file"
                return   # a member still being written, or trailing padding
            pos += header
            d = zlib.decompressobj(wbits=-15)
            crc = 0
            while not d.eof:
                raw = os.pread(fd, 256 * 1024, pos)
                if not raw:
                    return   # the stream ended early: still being written; retry next poll
                pos += len(raw)
                buf = raw
                while buf and not d.eof:
                    try:
                        data = d.decompress(buf, 1024 * 1024)
                    except zlib.error as e:
                        self.error = f"corrupt gzip data ({e})"
                        return
                    buf = d.unconsumed_tail
                    crc = zlib.crc32(data, crc)
                    if data:
                        yield from self._emit(data)
            pos -= len(d.unused_data)
            trailer = os.pread(fd, 8, pos)
            if len(trailer) < 8:
                return
            pos += 8
            if int.from_bytes(trailer[:4], "little") != crc:
                self.error = "corrupt gzip data (CRC check failed)"
                return
        self.complete = True

    def _emit(self, data: bytes) -> Iterator[bytes]:
        start = self.position
        self.position += len(data)
        if self.position <= self.offset:
            if self.keep:
                self.before = (self.before + data[-self.keep:])[-self.keep:]
            return
        if start < self.offset:
            if self.keep:
                self.before = (self.before + data[:self.offset - start])[-self.keep:]
            data = data[self.offset - start:]
        yield data


def _gzip_header_length(data: bytes) -> int | None:
    """Length of the gzip member header at the start of ``data`` (RFC 1952), or None."""
    if len(data) < 10 or not data.startswith(GZIP_MAGIC) or data[2] != 8:
        return None
    flags, pos = data[3], 10
    if flags & 4:                       # FEXTRA
        if len(data) < pos + 2:
            return None
        pos += 2 + int.from_bytes(data[pos:pos + 2], "little")
    for bit in (8, 16):                 # FNAME, FCOMMENT: zero-terminated
        if flags & bit:
            end = data.find(b"\0", pos)
            if end < 0:
                return None
            pos = end + 1
    if flags & 2:                       # FHCRC
        pos += 2
    return pos if pos <= len(data) else None
