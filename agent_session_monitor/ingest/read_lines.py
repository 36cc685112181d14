"""Reading the new lines of a log file: plain files in chunks, up to the size fstat gave,
only while the file is still the one matched; ``.gz`` rotations decompressed from where
reading stopped; and cutting the bytes into complete lines (a half-written last line
waits, an oversized one is skipped without buffering it)."""

from __future__ import annotations

import os
import time
from typing import BinaryIO, Iterator

from .gzip_stream import GzipChunks, gzip_isize
from .logfile import (
    LINE_WINDOW, TAIL_LEN, LogFile, TailEvent, has_head, held_key, line_digest, line_hash, sha,
    tail_hash,
)
from .state import SourceState

# Bytes per read. The reader keeps its last two chunks (_Recent) and a line cut by a
# chunk's end is joined to the next chunk (a copy): ~3 chunks held. 1 MB reads cost no
# more CPU than 4 MB ones and hold 9 MB less in a catch-up.
CHUNK = 2**20


class ReadLinesMixIn:
    """The reading half of :class:`~.tail.Tailer`, which mixes it in and holds what it
    uses: ``keep_open``, ``rotate_wait``, ``max_line``, ``events``, the descriptors held
    between polls (``_held``, ``_release``) and ``_quiet_since``."""

    def lines(self, src: SourceState, lf: LogFile) -> Iterator[tuple[int, int, bytes | None]]:
        """Yield ``(start, end, line)`` for each complete new line; ``line`` is None for a
        line over ``max_line`` bytes (skipped without buffering it). The caller sets
        ``src.offset = end`` once it has handled the line."""
        if lf.gz:
            yield from self._gz_lines(src, lf)
            return
        end = lf.size  # fstat once: a writer appending meanwhile is read next poll (T8)
        if end <= src.offset:
            self._after_read(src, lf)
            return
        final = not lf.live and self._is_quiet(src, lf)
        # Read as the file we matched, or not at all: a truncation (copytruncate, say)
        # landing between our fstat and our reads must not pass the new content off as
        # this file's, at this file's offsets.
        fd = lf.file.fileno()
        still_ours = lambda: has_head(fd, src)   # noqa: E731
        recent = _Recent(_plain_chunks(lf.file, src.offset, end, still_ours), src.offset)
        yield from split_lines(recent, src.offset, self.max_line, final)
        self._after_read(src, lf, recent)

    def _after_read(self, src: SourceState, lf: LogFile, tail: "_Recent | None" = None) -> None:
        src.size, src.mtime = lf.size, lf.mtime
        if not lf.gz and tail is not None and tail.start != src.offset:
            # From the bytes read, not read again: the file may be another one by now.
            known = tail.hash_at(src.offset)
            src.tail = known if known is not None else (tail_hash(lf.file, src.offset) or "")
            known = tail.line_at(src.offset)
            src.line = known if known is not None else (line_hash(lf.file, src.offset) or "")
        if self.keep_open and not lf.gz:
            key = held_key(src)
            old = self._held.get(key)
            if old is not None and old[0] is not lf.file:
                old[0].close()
            self._held[key] = (lf.file, lf.dev, lf.ino)
            if not lf.live and self._is_quiet(src, lf):
                # A rotation (or an orphan) drained and quiet: no late writes to wait
                # for, so let it go: descriptors grow with live logs, not with history.
                self._release(key)
        else:
            lf.file.close()

    def _gz_cut(self, src: SourceState, lf: LogFile, kept: int) -> None:
        """A .gz that ends before its end and has not changed for --rotate-wait: not one
        gzip is still writing, one cut for good (killed, or the disk filled). Said once
        and not decompressed again, as a damaged one; what it lost is unknown."""
        self.events.append(TailEvent(
            "bad_gzip", f"{lf.path}: the compressed data ends early (gzip killed, or the disk "
            f"filled?) and has not changed for {self.rotate_wait:g} s; kept the {kept:,} "
            "bytes of lines before the cut, the rest is lost"))
        src.gz_complete = True

    def _is_quiet(self, src: SourceState, lf: LogFile) -> bool:
        """No growth for ``rotate_wait`` seconds. A file first seen is judged by its age
        on the clock (all a one-pass cron run has); one watched since is judged on the
        monotonic clock only, so a wall-clock step (NTP, a VM resumed) cannot finish a
        rotated file whose writer is still in the middle of a line."""
        tracked = self._quiet_since.get(src.fp)
        if tracked is None and time.time() - lf.mtime >= self.rotate_wait:
            return True
        now = time.monotonic()
        size, since = tracked or (-1, now)
        if size != lf.size:
            self._quiet_since[src.fp] = (lf.size, now)
            return self.rotate_wait <= 0
        return now - since >= self.rotate_wait

    def _gz_lines(self, src: SourceState, lf: LogFile) -> Iterator[tuple[int, int, bytes | None]]:
        if ((src.gz_complete or src.size == src.offset)
                and gzip_isize(lf.file) == src.offset & 0xFFFFFFFF) or (
                src.gz_complete and src.mtime == lf.mtime):
            # The trailer's length equals what was read, or it was read to its end (or
            # to its damage, or its cut) and has not changed since: it holds nothing
            # new, so it is not decompressed again (a follower polls every second).
            src.gz_complete = True
            src.mtime = lf.mtime   # the .gz matched: step 1 need not check it again
            lf.file.close()
            return
        if lf.unchanged and src.mtime == lf.mtime:
            # The bytes read at the last poll, unchanged: nothing new. (A .gz that ends
            # early: gzip still writing it, or cut for good, said once it is quiet.)
            if self._is_quiet(src, lf):
                self._gz_cut(src, lf, src.size)
            lf.file.close()
            return
        reader = GzipChunks(lf.file, src.offset, keep=TAIL_LEN)
        recent = lf.recent = _Recent(reader, src.offset, lambda: reader.before)
        yield from split_lines(recent, src.offset, self.max_line, final=True,
                               complete=lambda: reader.complete)
        if recent.start != src.offset:
            # What was read of it, as for a plain file: a .gz is known as a copy of a
            # file by the bytes before the offset reached (logfile.GzipContent).
            known = recent.hash_at(src.offset)
            src.tail = known if known is not None else ""
            src.line = recent.line_at(src.offset) or ""
            if lf.content is not None and src.line and (src.tail or src.offset < TAIL_LEN):
                # What this very file holds there (the Tailer keeps it while the file
                # is unchanged): the next poll's check of it is not a decompression.
                lf.content.tails.setdefault(src.offset, src.tail)
                lf.content.lines.setdefault(src.offset, src.line)
        if reader.error:
            self.events.append(TailEvent("bad_gzip", f"{lf.path}: {reader.error}; "
                                         "kept the lines before the damage"))
        src.gz_complete = reader.complete or bool(reader.error)
        if not src.gz_complete and self._is_quiet(src, lf):
            self._gz_cut(src, lf, reader.position)
        if reader.complete and reader.position < src.offset:
            # Shorter than where reading stopped: a state ahead of the file. Read it
            # again from the start on the next pass; stored lines are skipped by key.
            self.events.append(TailEvent(
                "truncated", f"{lf.path} holds {reader.position:,} bytes, less than where "
                f"reading stopped ({src.offset:,}); reading it again from the start",
                quiet=True))
            src.offset, src.gz_complete, src.tail, src.line = 0, False, "", ""
        src.size = max(src.size, reader.position)
        src.mtime = lf.mtime
        lf.file.close()


class _Recent:
    """The chunks read (the last two, by reference: no copy), to know the tail hash at
    the offset reached from the bytes read rather than from the file, which may be
    another one by now."""

    def __init__(self, chunks: Iterator[bytes], start: int, before=lambda: b"") -> None:
        self.chunks, self.start = chunks, start
        self.before = before   # the bytes just before ``start`` (a .gz's: GzipChunks)
        self.kept: list[tuple[int, bytes]] = []

    def __iter__(self) -> Iterator[bytes]:
        pos = self.start
        for chunk in self.chunks:
            self.kept = self.kept[-1:] + [(pos, chunk)]
            pos += len(chunk)
            yield chunk

    def hash_at(self, offset: int) -> str | None:
        if offset < TAIL_LEN:
            return ""
        kept = self.kept
        before = self.before() if kept and kept[0][0] == self.start else b""
        if before:
            kept = [(self.start - len(before), before)] + kept
        data = b"".join(c for _, c in kept)
        first = kept[0][0] if kept else offset
        if first <= offset - TAIL_LEN and offset <= first + len(data):
            return sha(data[offset - TAIL_LEN - first:offset - first])
        return None

    def line_at(self, offset: int) -> str | None:
        """line_hash at ``offset`` from the chunks read, if they hold that line (it began
        at or after where this read began: offsets are at line ends) or its last
        LINE_WINDOW bytes."""
        if not offset:
            return ""
        kept = self.kept
        data = b"".join(c for _, c in kept)
        first = kept[0][0] if kept else offset
        end = offset - first
        if not 0 < end <= len(data):
            return None
        if end > LINE_WINDOW or first == self.start or data.rfind(b"\n", 0, end - 1) >= 0:
            return line_digest(data, end)
        return None


def _plain_chunks(f: BinaryIO, start: int, end: int, still_ours=lambda: True) -> Iterator[bytes]:
    """The bytes from ``start`` to ``end``; stops early (the rest is read next poll) when
    ``still_ours()`` says, after a read, that the file is no longer the one we know."""
    pos = start
    fd = f.fileno()
    while pos < end:
        chunk = os.pread(fd, min(CHUNK, end - pos), pos)
        if not chunk or not still_ours():
            return
        pos += len(chunk)
        yield chunk


def split_lines(chunks, start: int, max_line: int, final: bool,
                complete=lambda: True) -> Iterator[tuple[int, int, bytes | None]]:
    """Cut a byte stream beginning at offset ``start`` into ``(start, end, line)``.

    Only lines ending in ``\\n`` are yielded, except that when ``final`` (the file will
    never grow: an old rotation, a finished gzip) a last fragment is yielded too, so it
    is parsed or counted rather than glued onto another file's first line (T4).
    """
    carry = b""
    carry_start = start
    skipping = False
    pos = start
    for chunk in chunks:
        if skipping:
            nl = chunk.find(b"\n")
            if nl < 0:
                pos += len(chunk)
                continue
            pos += nl + 1
            yield carry_start, pos, None
            skipping = False
            chunk = chunk[nl + 1:]
            carry, carry_start = b"", pos
        buf = carry + chunk if carry else chunk
        base = carry_start
        i = 0
        find = buf.find
        while True:
            nl = find(b"\n", i)
            if nl < 0:
                break
            yield base + i, base + nl + 1, (buf[i:nl] if nl - i <= max_line else None)
            i = nl + 1
        carry = buf[i:]
        carry_start = base + i
        pos = base + len(buf)
        if len(carry) > max_line:
            skipping, carry = True, b""
    if skipping:
        return   # the oversized line has no end yet: wait for it
    if carry and final and complete():
        yield carry_start, carry_start + len(carry), carry
