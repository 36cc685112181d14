"""Read the access log and its rotations: every complete line once, oldest first.

Files are known by identity, not by name (failure-scenarios.md, B0-B2): ``(st_dev,
st_ino)`` confirmed by a SHA-256 fingerprint of the first bytes, or the fingerprint
alone, which finds the copy ``copytruncate`` made and the decompressed head of a
``.gz``. Offsets are always at line boundaries; a half-written last line waits.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from ..confine import NotRegularFile, OutsideAllowed, open_log
from .gzip_stream import GZIP_MAGIC, GzipChunks, gzip_head, gzip_isize
from .state import SourceState

FP_LEN = 1024
# A head shorter than this is not a fingerprint: a blank or junk first line is shared
# by unrelated files. No AI request line is this short, so waiting loses nothing.
MIN_FP_LEN = 64
TAIL_LEN = 64
CHUNK = 4 * 2**20
ORPHAN_TTL = 7 * 86400.0
_NUMERIC = re.compile(r"\.(\d+)(\.gz)?$")


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
        return len(self.head) >= n and _sha(self.head[:n]) == fp

    def could_be_copy_of(self, src: SourceState) -> bool:
        """A file of another inode with the same head is the copy (copytruncate) or the
        compressed form of ``src`` only if it holds everything read from ``src``."""
        if self.gz:
            isize = gzip_isize(self.file)
            return src.offset >= 2**32 or isize < 0 or isize >= src.offset
        if self.size < src.offset:
            return False
        return not src.tail or src.offset < TAIL_LEN or _tail_hash(self.file, src.offset) == src.tail


@dataclass
class TailEvent:
    """Something about the files the user should hear of (and that is counted)."""

    kind: str       # data_loss, truncated, rewritten, unreadable, refused, bad_gzip, oversized_line
    message: str
    amount: int = 0
    quiet: bool = False   # counted, not printed: nothing was lost and nothing is wrong


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def discover(patterns: list[str], max_rotate: int) -> list[tuple[str, bool]]:
    """Candidate paths, oldest first, each with whether it is a live log.

    Rotations are ``PATH.N`` / ``PATH.N.gz`` ordered by N as a number (never ``.10``
    before ``.2`` by string), and ``PATH-DATE[.gz]`` (dateext) ordered by their suffix.
    """
    found: list[tuple[str, bool]] = []
    seen: set[str] = set()
    for pattern in patterns:
        lives = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        for live in lives:
            for path, is_live in _with_rotations(live, max_rotate):
                if path not in seen:
                    seen.add(path)
                    found.append((path, is_live))
    return found


def _with_rotations(live: str, max_rotate: int) -> list[tuple[str, bool]]:
    directory, base = os.path.split(live)
    try:
        names = os.listdir(directory or ".")
    except OSError:
        names = []
    numeric, dated = [], []
    for name in names:
        if name.startswith(base + "."):
            m = _NUMERIC.fullmatch(name[len(base):])
            if m and 1 <= int(m.group(1)) <= max_rotate:
                numeric.append((int(m.group(1)), name))
        elif name.startswith(base + "-") and max_rotate > 0:
            dated.append(name)
    dated.sort(key=lambda n: n[:-3] if n.endswith(".gz") else n)
    ordered = dated[-max_rotate:] if max_rotate else []
    ordered += [name for _, name in sorted(numeric, key=lambda t: (-t[0], t[1]))]
    result = [(os.path.join(directory, name), False) for name in ordered]
    result.append((live, True))
    return result


class Tailer:
    """Finds the log files of one or more paths each poll and reads their new lines.

    ``poll_files()`` matches files to the known sources (mutating them and adding new
    ones); ``lines()`` yields the new complete lines of one. With ``keep_open`` (follow
    mode), files stay open between polls, so bytes written to a file after it was
    renamed away or deleted are still read until it has been quiet for ``rotate_wait``.
    """

    def __init__(self, patterns: list[str], max_rotate: int, sources: list[SourceState],
                 *, keep_open: bool = False, rotate_wait: float = 30.0,
                 max_line: int = 64 * 2**20, allowed: list[Path] | None = None) -> None:
        self.patterns = patterns
        self.allowed = allowed        # None: no allow-list (a library caller's choice)
        self._refused: set[tuple[str, str]] = set()
        self.max_rotate = max_rotate
        self.sources = sources
        self.keep_open = keep_open
        self.rotate_wait = rotate_wait
        self.max_line = max_line
        self.events: list[TailEvent] = []
        # Descriptors kept open between polls, by source (fp, dev, ino): each is owned
        # by its source alone, never shared with a file opened by path.
        self._held: dict[tuple[str, int, int], tuple[BinaryIO, int, int]] = {}
        self._quiet_since: dict[str, tuple[int, float]] = {}     # fp -> (size, monotonic)

    # -- matching ------------------------------------------------------------------

    def poll_files(self) -> list[tuple[SourceState, LogFile]]:
        """Open every candidate and pair it with its source; oldest first.

        Every file object has one owner: a path opened this poll belongs to the pair it
        is matched with (or is closed), a descriptor held from an earlier poll belongs
        to its source and is read only while no path leads to its inode any more.
        """
        self.events = []
        files, unreadable = self._open_candidates()
        matched: dict[int, tuple[SourceState, LogFile]] = {}   # index in files
        taken: set[int] = set()                                 # id() of matched sources
        known = {id(src) for src in self.sources}

        # 0. A held descriptor of an inode that a path still leads to adds nothing: the
        #    path's fresh descriptor reads the same inode (it cannot have been reused
        #    while we hold it), and if it was truncated, what it held is gone from both.
        reachable = {(lf.dev, lf.ino) for lf in files}
        for key, (_f, dev, ino) in list(self._held.items()):
            if (dev, ino) in reachable:
                self._drop_held(key)

        by_inode: dict[tuple[int, int], list[SourceState]] = {}
        for src in self.sources:
            by_inode.setdefault((src.dev, src.ino), []).append(src)

        # 1. Same inode and same head: the file we know, wherever it moved.
        for i, lf in enumerate(files):
            for src in by_inode.get((lf.dev, lf.ino), ()):
                if id(src) not in taken and src.gz == lf.gz and lf.head_matches(src):
                    matched[i] = (src, lf)
                    taken.add(id(src))
                    break
        # 2. Files held open that no path leads to any more (renamed away, deleted, a
        #    symlink swapped): drain them through the old descriptor.
        draining = self._held_orphans(taken)
        # 3. Same head, other inode: a copytruncate copy or a compressed rotation.
        for i, lf in enumerate(files):
            if i in matched:
                continue
            for src in self.sources:
                if not lf.head_matches(src):
                    continue
                if id(src) not in taken and lf.could_be_copy_of(src):
                    matched[i] = (src, lf)
                    taken.add(id(src))
                # Otherwise a second copy of a known file (.2 beside .2.gz), or one made
                # before lines we have read since (copytruncate's copy of a file we read
                # on to its truncation, a gzip of a file we drained): nothing new in it.
                break
            else:
                src = self._adopt(lf, taken)
                if src is not None:
                    matched[i] = (src, lf)
        result = []
        for i, lf in enumerate(files):
            if i in matched:
                result.append(self._check_in_place(*matched[i]))
            else:
                lf.file.close()
        result = draining + result
        if not unreadable:
            # A live log rotated out of reach left every kept rotation to files born
            # after it: as many new rotated files as --max-rotate keeps.
            rotated_in = sum(not lf.live and not lf.orphan and id(src) not in known
                             for src, lf in result)
            self._mark_missing(taken, reachable,
                               out_of_reach=0 < self.max_rotate <= rotated_in)
        return result

    def _open_candidates(self) -> tuple[list[LogFile], bool]:
        files: list[LogFile] = []
        seen_inodes: set[tuple[int, int]] = set()
        unreadable = False
        for path, live in discover(self.patterns, self.max_rotate):
            try:
                f = open_log(path, self.allowed)
            except (FileNotFoundError, NotRegularFile):
                continue
            except OutsideAllowed as e:
                self._refuse(e)
                continue
            except OSError as e:
                unreadable = True
                self.events.append(TailEvent("unreadable", f"cannot read {path}: {e.strerror}"))
                continue
            try:
                st = os.fstat(f.fileno())
                key = (st.st_dev, st.st_ino)
                if key in seen_inodes:
                    f.close()
                    continue
                seen_inodes.add(key)
                gz, head = _read_head(f)
            except OSError as e:
                f.close()
                unreadable = True
                self.events.append(TailEvent("unreadable", f"cannot read {path}: {e.strerror}"))
                continue
            files.append(LogFile(path, f, st.st_dev, st.st_ino, st.st_size, st.st_mtime,
                                 gz, head, live))
        return files, unreadable

    def _refuse(self, e: OutsideAllowed) -> None:
        """A file that leads outside the allow-list: never read; said once per name and
        destination (a follow-mode poll every second must not repeat it)."""
        if (e.path, e.real) in self._refused:
            return
        self._refused.add((e.path, e.real))
        self.events.append(TailEvent(
            "refused", f"refusing to read {e.path}: it resolves to {e.real}, outside the "
            "allowed log directories (a symlink out of them?); it is skipped"))

    def _held_orphans(self, taken: set[int]) -> list:
        """Pairs for the held descriptors no path leads to; each owns its descriptor."""
        by_key = {_held_key(src): src for src in self.sources}
        result = []
        for key, (f, dev, ino) in list(self._held.items()):
            src = by_key.get(key)
            if src is None or id(src) in taken:
                self._release(key)    # its source is gone, or matched through a path
                continue
            try:
                st = os.fstat(f.fileno())
                gz, head = _read_head(f)
            except OSError:
                self._release(key)
                continue
            lf = LogFile(src.path, f, dev, ino, st.st_size, st.st_mtime, gz, head, False,
                         orphan=True)
            if gz == src.gz and lf.head_matches(src):
                taken.add(id(src))
                src.live = False      # renamed away or deleted: no longer the live log
                result.append(self._check_in_place(src, lf))
                continue
            # Truncated (and grown again) after the last read, then renamed away or
            # deleted: the descriptor now shows another file. The old one is over (what
            # it held past our offset went with the truncation); the new one is read
            # from its start through the same descriptor, which passes to it.
            del self._held[key]
            self._quiet_since.pop(key[0], None)
            new = self._adopt(lf, taken)
            if new is None:
                f.close()
            else:
                result.append((new, lf))
        return result

    def _adopt(self, lf: LogFile, taken: set[int]) -> SourceState | None:
        """A source for a file no known source matched: a new one, unless its identity
        is our own under a head we could not confirm (a hand-edited head_fp), which
        stays one source: never a second with the same keys."""
        src = self._new_source(lf)
        if src is None:
            return None
        known = next((s for s in self.sources if _held_key(s) == _held_key(src)), None)
        if known is not None:
            if id(known) in taken:
                return None
            known.head_fp, known.head_len = src.fp, src.fp_len
            src = known
        else:
            self.sources.append(src)
        taken.add(id(src))
        return src

    def _new_source(self, lf: LogFile) -> SourceState | None:
        head = lf.head
        # Fingerprint only a head that holds a complete line or the full length (a
        # half-written first line could still change), and not a tiny one.
        if len(head) < MIN_FP_LEN or (len(head) < FP_LEN and b"\n" not in head):
            return None
        n = min(len(head), FP_LEN)
        return SourceState(fp=_sha(head[:n]), fp_len=n, dev=lf.dev, ino=lf.ino,
                           path=lf.path, gz=lf.gz)

    def _check_in_place(self, src: SourceState, lf: LogFile) -> tuple[SourceState, LogFile]:
        """Same file: was it truncated (T1/T2) or rewritten in place (T7) under us?"""
        if src.missing_since is not None:
            src.missing_since = None
            src.loss_reported = False
        src.path, src.dev, src.ino, src.gz, src.live = lf.path, lf.dev, lf.ino, lf.gz, lf.live
        if src.matching()[1] < FP_LEN and len(lf.head) > src.matching()[1]:
            n = min(len(lf.head), FP_LEN)
            src.head_fp, src.head_len = _sha(lf.head[:n]), n
        if lf.gz:
            return src, lf
        seen, src.size = src.size, lf.size   # seen: a pass cut short knows what it missed
        if lf.size < src.offset:
            # Smaller than where reading stopped, same identity: truncated (and perhaps
            # grown again), or a state saved ahead of the file. Read it again from its
            # start: lines already stored are recognised by their key and skipped, so
            # each line is counted exactly once. Only bytes seen but never read are lost.
            lost = max(seen - src.offset, 0)
            if lost:
                self.events.append(TailEvent(
                    "data_loss", f"data loss: {lf.path} was truncated with {lost:,} unread "
                    f"bytes after offset {src.offset:,}", lost))
            self.events.append(TailEvent(
                "truncated", f"{lf.path} is smaller ({lf.size:,} bytes) than where reading "
                f"stopped ({src.offset:,}): truncated; reading it again from the start "
                "(lines already stored are skipped)", quiet=True))
            src.offset = 0
            src.tail = ""
        elif src.tail and src.offset >= TAIL_LEN and _tail_hash(lf.file, src.offset) not in (
                src.tail, None):   # None: it shrank since fstat; the next poll sees it
            self.events.append(TailEvent(
                "rewritten", f"{lf.path} was rewritten in place before offset {src.offset}; "
                "re-reading it (lines already stored are recognised and skipped)"))
            src.offset = 0
        return src, lf

    def _mark_missing(self, taken: set[int], reachable: set[tuple[int, int]],
                      out_of_reach: bool) -> None:
        now = time.time()
        keep = []
        for src in self.sources:
            if id(src) in taken:
                keep.append(src)
                continue
            if src.missing_since is None:
                src.missing_since = now
            if not src.loss_reported and not src.gz_complete:
                gone = (src.dev, src.ino) not in reachable   # not truncated in place
                self._report_loss(src, out_of_reach=src.live and gone and out_of_reach)
            if now - src.missing_since < ORPHAN_TTL:
                keep.append(src)
        self.sources[:] = keep

    def _report_loss(self, src: SourceState, out_of_reach: bool) -> None:
        """A file we know is no longer found. Call it data loss only when lines really
        were lost: bytes seen but not read (their number is known), or a live log that
        rotated out of reach while we were stopped (it is gone, no path leads to its
        inode, and every kept rotation is a file we never saw; how much was written to
        it after the last read cannot be known). A live log truncated, deleted, re-created
        or swapped behind a symlink after it was read to its end lost nothing we can
        know of: that is counted (``file_events.replaced``), not cried as a loss. In
        follow mode the descriptor held open drains a deleted or renamed file to its end.
        """
        lost = max(src.size - src.offset, 0)
        if lost:
            detail = f"with {lost:,} unread bytes after offset {src.offset:,}"
        elif out_of_reach:
            detail = (f"while it was the live log, read up to offset {src.offset:,}: it "
                      f"was rotated past --max-rotate {self.max_rotate} before it could be "
                      "read to its end (how many bytes is unknown)")
        else:
            if src.live:
                self.events.append(TailEvent(
                    "replaced", f"{src.path} (fp {src.fp[:12]}) was replaced after it was "
                    f"read to its end (offset {src.offset:,})", quiet=True))
                src.loss_reported = True
            return
        self.events.append(TailEvent(
            "data_loss", f"data loss: {src.path} (fp {src.fp[:12]}) is gone {detail} "
            "(poll more often than logs rotate, or raise --max-rotate)", lost))
        src.loss_reported = True

    # -- reading -------------------------------------------------------------------

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
        fp, n = src.matching()
        fd = lf.file.fileno()
        still_ours = lambda: _sha(os.pread(fd, n, 0)) == fp   # noqa: E731
        recent = _Recent(_plain_chunks(lf.file, src.offset, end, still_ours), src.offset)
        yield from split_lines(recent, src.offset, self.max_line, final)
        self._after_read(src, lf, recent)

    def _after_read(self, src: SourceState, lf: LogFile, tail: "_Recent | None" = None) -> None:
        src.size, src.mtime = lf.size, lf.mtime
        if not lf.gz and tail is not None and tail.start != src.offset:
            # From the bytes read, not read again: the file may be another one by now.
            known = tail.hash_at(src.offset)
            src.tail = known if known is not None else (_tail_hash(lf.file, src.offset) or "")
        if self.keep_open and not lf.gz:
            key = _held_key(src)
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
                and gzip_isize(lf.file) == src.offset & 0xFFFFFFFF):
            # The trailer's length equals what was read: it holds nothing new, so
            # it is not decompressed again.
            src.gz_complete = True
            lf.file.close()
            return
        reader = GzipChunks(lf.file, src.offset)
        yield from split_lines(reader, src.offset, self.max_line, final=True,
                               complete=lambda: reader.complete)
        if reader.error:
            self.events.append(TailEvent("bad_gzip", f"{lf.path}: {reader.error}; "
                                         "kept the lines before the damage"))
        src.gz_complete = reader.complete or bool(reader.error)
        if reader.complete and reader.position < src.offset:
            # Shorter than where reading stopped: a state ahead of the file. Read it
            # again from the start on the next pass; stored lines are skipped by key.
            self.events.append(TailEvent(
                "truncated", f"{lf.path} holds {reader.position:,} bytes, less than where "
                f"reading stopped ({src.offset:,}); reading it again from the start",
                quiet=True))
            src.offset, src.gz_complete = 0, False
        src.size = max(src.size, reader.position)
        src.mtime = lf.mtime
        lf.file.close()

    def close_unheld(self, pairs: list[tuple[SourceState, LogFile]]) -> None:
        """Close this poll's files except those kept open for the next one."""
        held = {id(h[0]) for h in self._held.values()}
        for _src, lf in pairs:
            if id(lf.file) not in held and not lf.file.closed:
                lf.file.close()

    def release_all(self) -> None:
        for key in list(self._held):
            self._release(key)

    def _drop_held(self, key: tuple[str, int, int]) -> None:
        held = self._held.pop(key, None)
        if held is not None:
            held[0].close()

    def _release(self, key: tuple[str, int, int]) -> None:
        self._drop_held(key)
        self._quiet_since.pop(key[0], None)


def _held_key(src: SourceState) -> tuple[str, int, int]:
    return (src.fp, src.dev, src.ino)


def _tail_hash(f: BinaryIO, offset: int) -> str | None:
    """Hash of the TAIL_LEN bytes before ``offset`` ("" before TAIL_LEN; None when the
    file no longer has them: it shrank)."""
    if offset < TAIL_LEN:
        return ""
    data = os.pread(f.fileno(), TAIL_LEN, offset - TAIL_LEN)
    return _sha(data) if len(data) == TAIL_LEN else None


class _Recent:
    """The chunks read (the last two, by reference: no copy), to know the tail hash at
    the offset reached from the bytes read rather than from the file, which may be
    another one by now."""

    def __init__(self, chunks: Iterator[bytes], start: int) -> None:
        self.chunks, self.start = chunks, start
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
        data = b"".join(c for _, c in self.kept)
        first = self.kept[0][0] if self.kept else offset
        if first <= offset - TAIL_LEN and offset <= first + len(data):
            return _sha(data[offset - TAIL_LEN - first:offset - first])
        return None


def _read_head(f: BinaryIO) -> tuple[bool, bytes]:
    head = os.pread(f.fileno(), FP_LEN, 0)
    if not head.startswith(GZIP_MAGIC):   # by magic bytes, not by the name's .gz
        return False, head
    return True, gzip_head(f, FP_LEN)


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
