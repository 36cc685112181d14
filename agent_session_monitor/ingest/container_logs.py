"""Kubernetes node logs: the gateway's stdout as the container runtime wrote it, unwrapped.

On a node, ``/var/log/containers/*.log`` (links into ``/var/log/pods/...``) hold each line
of the container wrapped by its runtime:

- CRI (containerd, CRI-O): ``<RFC3339Nano time> <stdout|stderr> <P|F>[:flags] <line>``;
  a long line is split into ``P`` (partial) pieces ended by one ``F`` piece;
- Docker's json-file: ``{"log":"<line>\\n","stream":"stdout","time":"..."}``; a long line
  is split into pieces whose ``log`` lacks the final ``\\n``.

The format is decided once per file from its first bytes (a file's head, which no client
controls: the runtime writes it), never per line: a plain access log stays plain, and in
a wrapped file exactly one wrapper is removed, so a payload that forges a CRI prefix or a
JSON wrapper stays payload. Pieces are joined per stream (stdout and stderr interleave),
byte for byte, and the joined line is known by its **first** piece's position: that is
its idempotency key, however the pieces fall across polls, restarts or a rotation.

Exactly once, with the reader's one rule (an offset is committed after the line it ends
is handled): a line is released only when no earlier run of pieces is still open, so a
committed offset never falls inside an unfinished line. A run still open at the end of a
rotated file continues at the head of its successor (the next rotation, or the live
file): the rotated file completes the line by reading the successor's leading pieces, and
the successor skips them; both decisions are made from the files alone, in any order.

Bounded: a run over ``max_line`` bytes keeps no data and is reported as an oversized
line; other lines held behind an open run are bounded too (``HOLD_LIMIT``): past it the
open run is given up and counted (``partial_abandoned``).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

from .request import BadLine

PLAIN, CRI, DOCKER = "plain", "cri", "docker"
_CRI = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)) "
                  rb"(stdout|stderr) ([PF])((?::[^ ]*)?) ")
_DOCKER_HEAD = re.compile(rb'^\{\s*"log"\s*:\s*"')
HOLD_LIMIT = 16 * 2**20      # bytes of complete lines held behind an open run
PEEK_LIMIT = 4 * 2**20       # bytes read back from a predecessor's tail
# Rotation names: the kubelet's  0.log.20240601-101010[.gz], Docker's  x-json.log.1[.gz].
_ROTATED = re.compile(r"^(?P<base>.+?\.log)\.(?P<suffix>\d{8}-\d{6}|\d+)(?:\.gz)?$")


def detect(head: bytes) -> str | None:
    """The wrapping of a file from its first bytes; None while it is empty."""
    if not head:
        return None
    if _CRI.match(head):
        return CRI
    if _DOCKER_HEAD.match(head):
        return DOCKER
    return PLAIN


@dataclass
class Piece:
    stream: bytes
    final: bool           # the piece ends the line (CRI F, or json-file log ending in \n)
    data: bytes


def parse_piece(kind: str, raw: bytes) -> Piece | BadLine:
    """One physical line of a wrapped file as a piece of a container line."""
    if kind == CRI:
        m = _CRI.match(raw)
        if not m:
            return BadLine("bad_cri_line", "not a CRI log line (time stream P|F line)")
        return Piece(m.group(2), m.group(3) == b"F", raw[m.end():])
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return BadLine("bad_docker_line", "not a Docker json-file record (invalid JSON)")
    log = obj.get("log") if isinstance(obj, dict) else None
    if not isinstance(log, str):
        return BadLine("bad_docker_line", 'a Docker json-file record without a "log" string')
    stream = obj.get("stream")
    data = log.encode("utf-8", "surrogatepass")
    final = data.endswith(b"\n")
    return Piece(stream.encode("utf-8", "replace") if isinstance(stream, str) else b"",
                 final, data[:-1] if final else data)


@dataclass
class _Run:
    start: int                      # the first piece's offset: the line's identity
    size: int = 0
    chunks: list | None = field(default_factory=list)   # None once over max_line


class Unwrapper:
    """Per-monitor: the format of each file (by fingerprint) and the unwrapping of its
    lines. Plain files pass through untouched."""

    def __init__(self, max_line: int, rotate_wait: float = 30.0) -> None:
        self.max_line = max_line
        self.rotate_wait = rotate_wait
        self.formats: dict[str, str] = {}
        self.counts: Counter = Counter()   # files by format, for the pass summary

    def format_of(self, src, lf) -> str | None:
        kind = self.formats.get(src.fp)
        if kind is None:
            kind = detect(lf.head)
            if kind is not None:
                self.formats[src.fp] = kind
        return kind

    def lines(self, src, lf, raw: Iterator) -> Iterator:
        """``raw`` (the reader's ``(start, end, line)``) unwrapped: the same shape, where
        ``start`` is the first piece's offset, ``end`` the offset safe to commit after
        handling the item (never inside an unfinished line), and ``line`` the payload,
        None (oversized) or a :class:`BadLine` (a malformed wrapper, counted)."""
        kind = self.format_of(src, lf)
        if kind in (None, PLAIN):
            return raw
        self.counts[kind] += 1
        return self._unwrap(kind, src, lf, raw)

    def _quiet(self, path: str) -> bool:
        try:
            return time.time() - os.stat(path).st_mtime >= self.rotate_wait
        except OSError:
            return True

    def _unwrap(self, kind: str, src, lf, raw: Iterator) -> Iterator:
        skip, wait = _leading_continuations(kind, lf.path, src.offset, self._quiet)
        if wait:
            return   # the previous rotation may still grow: decide once it is quiet
        open_runs: dict[bytes, _Run] = {}
        held: list[tuple[int, int, object]] = []   # produced, not yet safe to release
        held_bytes = 0
        last_end = src.offset
        for start, end, line in raw:
            last_end = end
            if line is None:   # a physical line over max_line: never a valid piece
                item = (start, end, None)
            else:
                piece = parse_piece(kind, line)
                if isinstance(piece, BadLine):
                    item = (start, end, piece)
                elif piece.stream in skip:
                    # Continuation of a line begun in the previous rotation, which
                    # completes and counts it (by its first piece there).
                    if piece.final:
                        skip.discard(piece.stream)
                    item = None
                else:
                    item = self._add(open_runs, piece, start, end)
            if not open_runs and not held and not skip:
                if item is not None:
                    yield item
                continue
            if item is not None:
                held.append(item)
                held_bytes += len(item[2]) if isinstance(item[2], bytes) else 0
            if held_bytes > HOLD_LIMIT or len(held) > HOLD_LIMIT // 64:
                held += self._abandon(open_runs)
                if skip:   # a continuation that never ends: stop waiting for it too
                    held.append((src.offset, src.offset, BadLine(
                        "partial_abandoned", "the rest of a line from the previous rotation "
                        "never ended")))
                    skip.clear()
                held_bytes = 0
            held.sort(key=lambda i: i[0])
            # Nothing is committed while a continuation is still being skipped: the
            # decision to skip holds only for a read from the file's start.
            safe = (src.offset if skip else
                    min(r.start for r in open_runs.values()) if open_runs else end)
            ready = [i for i in held if i[0] < safe]
            if ready:
                held = held[len(ready):]
                held_bytes = sum(len(i[2]) for i in held if isinstance(i[2], bytes))
                yield from _release(ready, safe)
        if open_runs and is_rotated(lf.path) and self._quiet(lf.path):
            # A rotated file ends inside a line: its successor holds the rest.
            done = self._complete_from_successor(kind, lf, open_runs, last_end)
            if done is not None:
                open_runs.clear()
                held = sorted(held + done, key=lambda i: i[0])
        if held and not open_runs and not skip:
            yield from _release(held, last_end)
        # Whatever is still open is read again next pass, from its first piece.

    def _add(self, open_runs: dict, piece: Piece, start: int, end: int):
        run = open_runs.get(piece.stream)
        if run is None:
            if piece.final:
                if len(piece.data) > self.max_line:
                    return (start, end, None)
                return (start, end, piece.data)
            run = open_runs[piece.stream] = _Run(start)
        run.size += len(piece.data)
        if run.chunks is not None:
            if run.size > self.max_line:
                run.chunks = None   # keep counting, stop keeping: memory stays bounded
            else:
                run.chunks.append(piece.data)
        if not piece.final:
            return None
        del open_runs[piece.stream]
        return (run.start, end, b"".join(run.chunks) if run.chunks is not None else None)

    def _abandon(self, open_runs: dict) -> list:
        """Too much held behind unfinished lines: give them up (counted)."""
        items = [(r.start, r.start, BadLine("partial_abandoned",
                                            f"a line split into pieces was never finished "
                                            f"({r.size:,} bytes so far)")) for r in open_runs.values()]
        open_runs.clear()
        return items

    def _complete_from_successor(self, kind: str, lf, open_runs: dict, eof: int):
        succ = successor(lf.path)
        if succ is None:
            return None
        pieces = _head_pieces(kind, succ, set(open_runs), self.max_line)
        if pieces is None:
            return None
        items = []
        for stream, run in open_runs.items():
            tail = pieces.get(stream)
            if tail is None:
                return None   # that stream's end is not written yet: wait
            size = run.size + len(tail)
            data = (b"".join(run.chunks) + tail
                    if run.chunks is not None and size <= self.max_line else None)
            items.append((run.start, eof, data))
        return items


def _release(items: list, end: int) -> Iterator:
    """Items in file order; only the last one moves the committed offset (to ``end``),
    so a crash between them re-reads them all (and their keys make that harmless)."""
    for i, (start, _end, payload) in enumerate(items):
        yield start, (end if i == len(items) - 1 else start), payload


# -- rotations ------------------------------------------------------------------------

def is_rotated(path: str) -> bool:
    """A rotation by its name (a glob makes every file "live" to the reader)."""
    return _ROTATED.match(os.path.basename(path)) is not None


def successor(path: str) -> str | None:
    """The file written after the rotated ``path``: the next rotation, else the live
    file (``0.log.20240601-101010`` -> a later timestamp or ``0.log``; ``x.log.3`` ->
    ``x.log.2``; ``x.log.1`` -> ``x.log``)."""
    directory, name = os.path.split(path)
    m = _ROTATED.match(name)
    if not m:
        return None
    base, suffix = m.group("base"), m.group("suffix")
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return None
    if "-" in suffix:
        later = sorted(n for n in names if (mm := _ROTATED.match(n)) and mm.group("base") == base
                       and "-" in mm.group("suffix") and mm.group("suffix") > suffix)
        if later:
            return os.path.join(directory, later[0])
    elif int(suffix) > 1:
        for n in (f"{base}.{int(suffix) - 1}", f"{base}.{int(suffix) - 1}.gz"):
            if n in names:
                return os.path.join(directory, n)
        return None
    return os.path.join(directory, base) if base in names else None


def predecessor(path: str) -> str | None:
    """The rotation written just before ``path`` (the inverse of :func:`successor`)."""
    directory, name = os.path.split(path)
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return None
    for n in sorted(names):
        if n != name and _ROTATED.match(n) and successor(os.path.join(directory, n)) == path:
            return os.path.join(directory, n)
    return None


def _read_head(path: str, limit: int) -> bytes:
    with open(path, "rb") as f:
        if path.endswith(".gz"):
            return gzip.GzipFile(fileobj=f).read(limit)
        return f.read(limit)


def _read_tail(path: str, limit: int) -> bytes:
    with open(path, "rb") as f:
        if path.endswith(".gz"):
            data = gzip.GzipFile(fileobj=f).read()
            return data[-limit:]
        size = os.fstat(f.fileno()).st_size
        f.seek(max(size - limit, 0))
        return f.read()


def _head_pieces(kind: str, path: str, streams: set, max_line: int) -> dict | None:
    """The leading pieces of ``streams`` in ``path`` up to each one's final piece, joined
    (a stream not finished in what is read is missing)."""
    try:
        data = _read_head(path, max_line + PEEK_LIMIT)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    found: dict[bytes, list] = {s: [] for s in streams}
    done: dict[bytes, bytes] = {}
    for raw in data.split(b"\n")[:-1]:
        piece = parse_piece(kind, raw)
        if isinstance(piece, BadLine) or piece.stream not in found or piece.stream in done:
            continue
        found[piece.stream].append(piece.data)
        if piece.final:
            done[piece.stream] = b"".join(found[piece.stream])
        if len(done) == len(streams):
            break
    return done


def _leading_continuations(kind: str, path: str, offset: int, quiet) -> tuple[set, bool]:
    """Streams whose leading pieces in this file (read from its start) finish a line
    begun in the previous rotation, which counts that line; and whether to wait (that
    rotation may still grow, so neither side can decide yet)."""
    if offset != 0:
        return set(), False
    before = predecessor(path)
    if before is None:
        return set(), False
    try:
        tail = _read_tail(before, PEEK_LIMIT)
    except (OSError, EOFError, gzip.BadGzipFile):
        return set(), False
    last_final: dict[bytes, bool] = {}
    for raw in tail.split(b"\n")[:-1]:
        piece = parse_piece(kind, raw)
        if not isinstance(piece, BadLine):
            last_final[piece.stream] = piece.final
    open_streams = {s for s, final in last_final.items() if not final}
    if open_streams and not quiet(before):
        return set(), True
    return open_streams, False
