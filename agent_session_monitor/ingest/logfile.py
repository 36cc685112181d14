"""What a log file is, whatever its name: the file found this poll (``LogFile``), its
identity (a SHA-256 fingerprint of its first bytes, a hash of the bytes before the offset
reached), and what the user hears about files (``TailEvent``)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import BinaryIO

from .gzip_stream import GZIP_MAGIC, gzip_head, gzip_isize
from .state import SourceState

FP_LEN = 1024
# A head shorter than this is not a fingerprint: a blank or junk first line is shared
# by unrelated files. No AI request line is this short, so waiting loses nothing.
MIN_FP_LEN = 64
TAIL_LEN = 64


@dataclass
class LogFile:
    """A file found this poll, open, with its head read (decompressed for gzip)."""

    path: str
    file: BinaryIO
    dev: int
    ino: int
    size: int
    mtime: float
    gz: bool
    head: bytes
    live: bool
    orphan: bool = False   # read through a descriptor held open, no path leads to it

    def head_matches(self, src: SourceState) -> bool:
        fp, n = src.matching()
        return len(self.head) >= n and sha(self.head[:n]) == fp

    def could_be_copy_of(self, src: SourceState) -> bool:
        """A file of another inode with the same head is the copy (copytruncate) or the
        compressed form of ``src`` only if it holds everything read from ``src``."""
        if self.gz:
            isize = gzip_isize(self.file)
            return src.offset >= 2**32 or isize < 0 or isize >= src.offset
        if self.size < src.offset:
            return False
        return not src.tail or src.offset < TAIL_LEN or tail_hash(self.file, src.offset) == src.tail



@dataclass
class TailEvent:
    """Something about the files the user should hear of (and that is counted)."""

    kind: str       # data_loss, truncated, rewritten, unreadable, refused, bad_gzip, oversized_line
    message: str
    amount: int = 0
    quiet: bool = False   # counted, not printed: nothing was lost and nothing is wrong


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def held_key(src: SourceState) -> tuple[str, int, int]:
    return (src.fp, src.dev, src.ino)


def has_head(fd: int, src: SourceState) -> bool:
    """Whether the file open at ``fd`` still begins as ``src`` did (not truncated and
    written again since it was matched)."""
    fp, n = src.matching()
    return sha(os.pread(fd, n, 0)) == fp


def tail_hash(f: BinaryIO | int, offset: int) -> str | None:
    """Hash of the TAIL_LEN bytes before ``offset`` in a file or descriptor ("" before
    TAIL_LEN; None when the file no longer has them: it shrank)."""
    if offset < TAIL_LEN:
        return ""
    data = os.pread(f if isinstance(f, int) else f.fileno(), TAIL_LEN, offset - TAIL_LEN)
    return sha(data) if len(data) == TAIL_LEN else None


def read_head(f: BinaryIO) -> tuple[bool, bytes]:
    head = os.pread(f.fileno(), FP_LEN, 0)
    if not head.startswith(GZIP_MAGIC):   # by magic bytes, not by the name's .gz
        return False, head
    return True, gzip_head(f, FP_LEN)
