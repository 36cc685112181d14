"""What a log file is, whatever its name: the file found this poll (``LogFile``), its
identity (a SHA-256 fingerprint of its first bytes, a hash of the bytes before the offset
reached), and what the user hears about files (``TailEvent``)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import BinaryIO, Iterable

from .gzip_stream import GZIP_MAGIC, GzipChunks, gzip_head, gzip_isize
from .state import SourceState

FP_LEN = 1024
# A head shorter than this is not a fingerprint: a blank or junk first line is shared
# by unrelated files. No AI request line is this short, so waiting loses nothing.
MIN_FP_LEN = 64
TAIL_LEN = 64
# At most this much of the last line before an offset is hashed (line_hash): a line's
# end is the client's (user agent, forwarded-for: up to Envoy's header limit, 60 KiB by
# default); the gateway's fields before them must be in it.
LINE_WINDOW = 2**20


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
    # A .gz's decompressed bytes as far as they were needed (the Tailer keeps it while
    # the file is unchanged, so a file re-checked every poll is decompressed once).
    content: "GzipContent | None" = None
    growing: bool = False   # a .gz that changed since the last poll: still being written
    unchanged: bool = False   # a .gz of the same size and mtime as at the last poll
    # The bytes last read (read_lines), to hash the bytes before a checkpoint's offset.
    recent: object = None

    def head_matches(self, src: SourceState) -> bool:
        fp, n = src.matching()
        return len(self.head) >= n and sha(self.head[:n]) == fp

    def could_be_copy_of(self, src: SourceState) -> bool:
        """A file of another inode with the same head is the copy (copytruncate) or the
        compressed form of ``src`` only if it holds everything read from ``src``: it
        reaches ``src.offset`` and the bytes before it are those read (for a .gz, its
        decompressed bytes: its length alone matched a file that merely began alike)."""
        if self.gz:
            return self.gz_content().holds(self.file, src)
        if self.size < src.offset:
            return False
        if src.tail and src.offset >= TAIL_LEN and tail_hash(self.file, src.offset) != src.tail:
            return False
        return not src.line or not src.offset or line_hash(self.file, src.offset) == src.line

    def read_whole(self, src: SourceState) -> bool:
        """Whether this .gz is the one ``src`` read to its end, known without
        decompressing it: same mtime and its trailer's length what was read. (An mtime
        alone is not enough: gzip gives the .gz its source's, and a deleted rotation's
        inode goes to the next file at once.)"""
        return (self.mtime == src.mtime and src.gz_complete
                and gzip_isize(self.file) == src.offset & 0xFFFFFFFF)

    def bytes_at(self, offset: int) -> tuple[str | None, str | None]:
        """tail_hash and line_hash of this file's (decompressed) bytes at ``offset``:
        whether two files are alike there."""
        if self.gz:
            return self.gz_content().bytes_at(self.file, offset)
        return tail_hash(self.file, offset), line_hash(self.file, offset)

    def gz_content(self) -> "GzipContent":
        if self.content is None:
            self.content = GzipContent()
        return self.content


@dataclass
class GzipContent:
    """What a .gz file decompresses to, as far as it was needed to tell which file it
    is a copy of: the hash of the TAIL_LEN bytes before given offsets (as tail_hash),
    and its length once decompressed to its end (or to the damage that ends it: the
    bytes before it are what the file holds, R9). Inflating is the costly part: one scan
    answers every offset asked at once, and the Tailer keeps this while the file is
    unchanged, so a .gz left unmatched (.2.gz beside .2) is not inflated every poll."""

    tails: dict = field(default_factory=dict)     # offset -> hash, or None: beyond the end
    lines: dict = field(default_factory=dict)     # offset -> line_hash there (as tails)
    length: int | None = None
    lines_end: int = 0      # the end of its last complete line (known with ``length``)

    def holds(self, f: BinaryIO, src: SourceState) -> bool:
        """Whether it holds what was read of ``src``: the bytes up to its offset."""
        tail = self.tail_at(f, src.offset)
        if tail is None or src.tail and src.offset >= TAIL_LEN and tail != src.tail:
            return False
        return not src.line or not src.offset or self.lines.get(src.offset) == src.line

    def tail_at(self, f: BinaryIO, offset: int) -> str | None:
        if offset not in self.tails:
            self.scan(f, [offset])
        return self.tails[offset]

    def bytes_at(self, f: BinaryIO, offset: int) -> tuple[str | None, str | None]:
        return self.tail_at(f, offset), self.lines.get(offset)

    def end_of_lines(self, f: BinaryIO) -> int:
        """The end of its last complete line, all of it decompressed once if not yet:
        where a cut or damaged .gz is compared with another file (at a line's end the
        bytes before it are that line's own: its request id and time, not a stretch of
        messages that lines of other files share)."""
        if self.length is None:
            self.scan(f, [], to_end=True)
        return self.lines_end

    def scan(self, f: BinaryIO, offsets: Iterable[int], to_end: bool = False) -> None:
        """Decompress from the start as far as the furthest offset not yet known (to the
        end with ``to_end``), hashing the bytes before each on the way."""
        want = sorted({o for o in offsets if o not in self.tails})
        if self.length is not None:
            for o in want:
                if o > self.length:
                    self.tails[o] = self.lines[o] = None
            want = [o for o in want if o <= self.length]
        if not want and (not to_end or self.length is not None):
            return
        reader = GzipChunks(f, 0)
        # ``last``: the bytes since the last newline but one (a line being cut by the
        # chunks), at most LINE_WINDOW and at least TAIL_LEN.
        last, pos, j = b"", 0, 0
        lines_end, lines_at_end = 0, ("", "")
        for chunk in reader:
            buf, base = last + chunk, pos - len(last)
            pos += len(chunk)
            nl = buf.rfind(b"\n") + 1
            if nl > len(last):
                lines_end = base + nl
                lines_at_end = self._hashes(buf, nl, lines_end)
            while j < len(want) and want[j] <= pos:
                o = want[j]
                self.tails[o], self.lines[o] = self._hashes(buf, o - base, o)
                j += 1
            keep = max(len(buf) - buf.rfind(b"\n", 0, max(len(buf) - 1, 0)) - 1, TAIL_LEN)
            last = buf[-min(keep, LINE_WINDOW):]
            if j == len(want) and not to_end:
                return
        # The end of the data (or the damage that ends it).
        self.length, self.lines_end = pos, lines_end
        if pos not in self.tails:
            self.tails[pos], self.lines[pos] = self._hashes(last, len(last), pos)
        if lines_end not in self.tails:
            self.tails[lines_end], self.lines[lines_end] = lines_at_end
        for o in want[j:]:
            self.tails[o] = self.lines[o] = None

    @staticmethod
    def _hashes(buf: bytes, i: int, offset: int) -> tuple[str, str]:
        """tail_hash and line_hash at ``offset``, which is at ``buf[i]``."""
        tail = sha(buf[i - TAIL_LEN:i]) if offset >= TAIL_LEN else ""
        return tail, line_digest(buf, i) if offset else ""


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


def line_digest(data: bytes, end: int) -> str:
    """Hash of the line that ends at ``data[end]`` (from the byte after the newline
    before it, at most LINE_WINDOW): the bytes ``data`` holds of it; the caller makes
    sure it holds the whole line or the window."""
    start = data.rfind(b"\n", max(end - 1 - LINE_WINDOW, 0), max(end - 1, 0)) + 1
    return sha(data[max(start, end - LINE_WINDOW):end])


def line_hash(f: BinaryIO | int, offset: int) -> str | None:
    """Hash of the last line before ``offset`` in a file or descriptor ("" at 0, None
    when the file no longer reaches ``offset``), read backwards as far as its start."""
    if offset <= 0:
        return ""
    fd = f if isinstance(f, int) else f.fileno()
    want = 4096
    while True:
        start = max(offset - want, 0)
        data = os.pread(fd, offset - start, start)
        if len(data) < offset - start:
            return None
        if start == 0 or data.rfind(b"\n", 0, len(data) - 1) >= 0 or want > LINE_WINDOW:
            return line_digest(data, len(data))   # (past the window: its last bytes)
        want *= 8


def read_head(f: BinaryIO) -> tuple[bool, bytes]:
    head = os.pread(f.fileno(), FP_LEN, 0)
    if not head.startswith(GZIP_MAGIC):   # by magic bytes, not by the name's .gz
        return False, head
    return True, gzip_head(f, FP_LEN)
