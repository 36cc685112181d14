"""The session store on disk: one JSON file per session, loaded on demand, rewritten
atomically and only when it changed (spec: storage.md)."""

from __future__ import annotations

import errno
import gc
import json
import os
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from .ondisk import compact, expand
from ..errors import MonitorError
from ..fmt import safe_text
from .durable import atomic_write_many, open_regular
from .names import UNSESSIONED_FILE, file_name_for
from ..values import MAX_DEPTH, format_time, too_deep, utc_now
from .sanitize import sanitise_document
from .document import Session, in_document_order, in_round_order, new_document


def dump_document(doc: dict) -> bytes:
    """Serialise a session in its on-disk form (ondisk.py): compact JSON, UTF-8 (so CJK
    text is not inflated sixfold)."""
    try:
        text = _COMPACT_JSON.encode(compact(doc))
    except (ValueError, TypeError, RecursionError):
        # The parser admits only JSON-safe values, so this is a defence: a round whose
        # content cannot be written must not wedge the store. Its tokens and cost stay.
        _drop_unserialisable_content(doc)
        text = json.dumps(compact(doc), ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate from the log cannot be UTF-8: escape this document instead.
        return json.dumps(compact(doc), ensure_ascii=True, separators=(",", ":"),
                          allow_nan=False).encode("ascii")


# json.dumps(..., ensure_ascii=False, separators=(",", ":"), allow_nan=False) without
# building its encoder for every session written (it keeps no state between calls).
# No check for circular references: a document is decoded JSON (it holds none), and one
# nested too deeply is a RecursionError either way, caught above. The same bytes, 4%
# fewer instructions (callgrind, 1,500 short sessions: no id per container kept in a dict).
_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False,
                                 check_circular=False)

# Containers left in memory since the last commit after which one is due (SessionStore):
# a 12 MB batch of the bench logs' chats holds at most ~80,000; 12 MB of lists nested
# deep, ~6 million (~500 MB).
PENDING_OBJECTS = 400_000
OBJECT_BYTES = 200   # what a small dict in a message costs, with its keys and GC header
DENSE = 8            # containers costing 8 times the batch's bytes (bench logs: <= 2.5)
# Containers of dense batches the cache may hold (~20 MB) before it lets every clean
# session go: a small dense batch (a follow pass of a few lines, a hostile line in a
# batch of 20 KB) empties nothing by itself, a trickle of them does.
DENSE_HELD = 100_000


def containers() -> int:
    """A running count of containers (lists, dicts, ...) made less those freed: the
    collector's count of its youngest generation (O(1)), plus what it had reached at each
    collection, which resets it (a 1 MB batch of tiny dicts crosses a pass's threshold).
    The difference across some work is what that work left in memory."""
    if _on_collect not in gc.callbacks:
        gc.callbacks.append(_on_collect)
    return _collected[0] + gc.get_count()[0]


_collected = [0]


def _on_collect(phase: str, _info: dict) -> None:
    if phase == "start":
        _collected[0] += gc.get_count()[0]


CONTENT_KEYS = ("messages", "question", "answer", "reasoning", "system", "tool_calls", "extra",
                "input_token_details", "output_token_details")


def _drop_unserialisable_content(doc: dict) -> None:
    for rnd in doc["rounds"]:
        try:
            json.dumps(rnd, allow_nan=False)
        except (ValueError, TypeError, RecursionError):
            for key in CONTENT_KEYS:
                rnd.pop(key, None)
            rnd["warnings"] = sorted(set(rnd.get("warnings", [])) | {"unserialisable_content"})


def read_document(path: Path) -> dict:
    return read_document_sized(path)[0]


def read_document_sized(path: Path) -> tuple[dict, int]:
    """The plain document of a session file and the file's size, from one open.

    Never through a symlink (OSError ELOOP): a session file linked elsewhere would show,
    and merge, someone else's data; never a FIFO or device (OSError EINVAL).
    """
    with os.fdopen(open_regular(path), "rb") as f:
        data = f.read()
        mtime = os.fstat(f.fileno()).st_mtime
    return parse_document(data, mtime), len(data)


def parse_document(data: bytes, mtime: float) -> dict:
    """A session file's bytes -> the plain document.

    Bytes that are not a session document at all (a disk fault, a cut copy: not JSON,
    not UTF-8, not an object with rounds) raise ValueError saying what is wrong, so that
    every reader can name the file (:func:`unreadable_reason`); values within a document
    that no reader can use are repaired and flagged by sanitize.py.
    """
    try:
        doc = json.loads(data)
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 (byte {e.start})") from None
    except RecursionError:
        doc = _decode_deep_document(data)
    except ValueError as e:
        raise ValueError(f"not valid JSON ({e})" if data.strip() else "empty") from None
    if not isinstance(doc, dict):
        raise ValueError(f"not a session document (a JSON {type(doc).__name__})")
    if not isinstance(doc.get("rounds"), list):
        raise ValueError("not a session document (no rounds list)")
    # Older versions and hand edits leave values no reader can use (sanitize.py).
    sanitise_document(doc, _file_time(mtime))
    try:
        doc = in_document_order(expand(doc))
        doc["rounds"] = [in_round_order(rnd) for rnd in doc["rounds"]]
        return doc
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"its rounds do not fit together ({type(e).__name__}: {e})") from None


def _decode_deep_document(data: bytes) -> dict:
    """A session file an older version wrote with content nested ~1,000 deep (the
    parser now keeps such a field as its JSON text, ingest/nesting.py), too deep for
    json from this stack: decoded on a thread of its own (an empty stack), each too-deep
    content value replaced by its JSON text (a message of a list one by one, so the
    message chain still fits), named in ``nested_as_text``. Raises ValueError when even
    that fails. Rare: only such files pay for the thread."""
    found: list = []

    def work() -> None:
        try:
            doc = json.loads(data)
            if isinstance(doc, dict) and isinstance(doc.get("rounds"), list):
                for rnd in doc["rounds"]:
                    if type(rnd) is dict:
                        _nested_content_as_text(rnd)
            found.append(doc)
        except (ValueError, RecursionError) as e:
            found.append(e)

    thread = threading.Thread(target=work, name="asm-deep-document", daemon=True)
    thread.start()
    thread.join()
    if not found or isinstance(found[0], BaseException):
        raise ValueError("JSON nested too deeply") from None
    return found[0]


def _nested_content_as_text(rnd: dict) -> None:
    kept = []
    for key in CONTENT_KEYS:
        value = rnd.get(key)
        if key == "extra" and type(value) is dict:
            for name, inner in value.items():
                if too_deep(inner):
                    value[name] = _as_text(inner)
                    kept.append(name)
        elif key == "messages" and type(value) is list:
            for i, message in enumerate(value):
                if too_deep(message, limit=MAX_DEPTH - 1):
                    value[i] = _as_text(message)
                    kept.append(key)
        elif too_deep(value):
            rnd[key] = _as_text(value)
            kept.append(key)
    if kept:
        rnd["nested_as_text"] = sorted(set(kept) | set(rnd.get("nested_as_text") or ()))
        warnings = rnd.get("warnings")
        rnd["warnings"] = sorted(set(warnings if isinstance(warnings, list) else [])
                                 | {"deeply_nested_messages"})


def _as_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def unreadable_reason(e: BaseException) -> str:
    """What is wrong with a session file, for a message that names it."""
    if isinstance(e, OSError):
        if e.errno == errno.ELOOP:
            return "it is a symbolic link (never followed)"
        if e.errno in (errno.EINVAL, errno.EISDIR):
            return "not a regular file"
        return e.strerror or str(e)
    return str(e)


class UnreadableSession(MonitorError):
    """The file of a session exists but cannot be read as one: corrupt, or not ours."""

    def __init__(self, session_id: str, path: Path, reason: str) -> None:
        super().__init__(f"session \"{safe_text(session_id)}\": its file {safe_text(path)} is "
                         f"corrupt or unreadable: {safe_text(reason)}. It is kept as it is; "
                         "restore it from a backup, or move it aside and re-read the logs "
                         "(main.py --rebuild-index lists every such file)")
        self.session_id, self.path, self.reason = session_id, path, reason


def _file_time(mtime: float) -> str:
    from datetime import datetime, timezone
    try:
        return format_time(datetime.fromtimestamp(mtime, timezone.utc))
    except (OverflowError, OSError, ValueError):
        return utc_now()


# prepare_idle: rounds of other sessions a changed session must have gone without one of
# its own (plus twice its count: a long session costs more to serialise again), and the
# bytes serialised ahead at most (held until their checkpoint).
IDLE_ROUNDS = 128
IDLE_PER_ROUND = 2
READY_BYTES = 4 * 2**20


class SessionStore:
    """Sessions of one output directory, as the monitor (the only writer) sees them.

    Clean sessions stay cached (LRU, bounded by their file sizes: parsed, a document
    takes several times its file's bytes) so that a live session is not re-read on every
    poll; dirty ones stay until :meth:`flush`.
    """

    def __init__(self, directory: Path, *, store_content: bool = True,
                 cache_bytes: int = 6 * 2**20, warn=None) -> None:
        self.directory = directory
        self.store_content = store_content
        # A parsed document takes ~5 times its file's bytes (chat messages): 6 MB of
        # files is ~2,400 short sessions, ~35 MB; a catch-up of short sessions re-reads
        # none at a tenth of that (they are interleaved a few hundred at a time).
        self.cache_bytes = cache_bytes
        # Containers (lists, dicts) left in memory by what was added since the last
        # commit (note_objects): what the bytes undercount, ~40 times for content
        # nested deep or made of tiny containers. Past PENDING_OBJECTS a commit is due
        # whatever the bytes; dense batches holding DENSE_HELD of them in all (one such
        # batch, or many small ones) empty the cache once they are written.
        self.pending_objects = 0
        self._dense_held = 0    # containers of dense batches taken since the cache emptied
        self._dense = False     # the next eviction lets every clean session go
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._cached_bytes = 0
        self._dirty: dict[str, Session] = {}
        self.pending_bytes = 0  # rough size of content added since the last flush
        # (session_id, round) added since the last flush, for hooks (exporters).
        self.new_rounds: list[tuple[str, dict]] = []
        self._warn = warn or (lambda msg: print(msg, file=sys.stderr))
        # file name -> idempotency keys of its pruned rounds (retention.py): a pruned
        # round the log brings back is then a duplicate, not a new charge.
        self.pruned_keys: Callable[[str], set] | None = None
        # Session files known to exist (see track_names), else None: look on disk.
        self._names: set[str] | None = None
        # Changed sessions by when a round was last added to them, least recent first,
        # with that round's number in self._added (prepare_idle), and the bytes of the
        # sessions serialised ahead.
        self._untouched: OrderedDict[str, tuple[Session, int]] = OrderedDict()
        self._added = 0
        self._ready_bytes = 0

    def track_names(self) -> None:
        """List the directory once and from then on know which sessions have a file
        without looking: during a catch-up with a commit in flight, every lookup of a new
        session's name would wait for the directory lock that commit's creates and
        renames hold. Only this process writes the directory (the lock)."""
        if self._names is None:
            # Every name, unfiltered: a session file taken for absent would be overwritten.
            self._names = set(os.listdir(self.directory))

    def file_name(self, session_id: str | None) -> str:
        return UNSESSIONED_FILE if session_id is None else file_name_for(session_id)

    def get(self, session_id: str | None) -> Session:
        name = self.file_name(session_id)
        session = self._sessions.get(name)
        if session is not None:
            self._sessions.move_to_end(name)
            return session
        session = self._load(name, session_id)
        self._sessions[name] = session
        self._cached_bytes += session.size
        return session

    def _load(self, name: str, session_id: str | None) -> Session:
        session = self._read(name, session_id)
        if self.pruned_keys is not None:
            session.keys |= self.pruned_keys(name)
        return session

    def _read(self, name: str, session_id: str | None) -> Session:
        if self._names is not None and name not in self._names:
            return Session(new_document(session_id), name)
        path = self.directory / name
        try:
            # One open, not a stat then an open: in a catch-up most sessions are new,
            # and a missing file is found by the open that would read it.
            doc, size = read_document_sized(path)
        except FileNotFoundError:
            return Session(new_document(session_id), name)
        except (OSError, ValueError) as e:
            # Atomic writes make this a manual edit or a disk fault. Keep the file for
            # the user, say so, and go on: never crash the monitor over one session.
            aside = path.with_name(f".corrupt-{int(time.time())}-{name}")
            os.replace(path, aside)
            self._warn(f"warning: session file {path} is unreadable ({e}); moved to {aside}")
            return Session(new_document(session_id), name)
        return Session(doc, name, size)

    def add_round(self, session_id: str | None, rnd: dict, messages: object,
                  line_bytes: int = 0, session: Session | None = None) -> bool:
        """Add a round unless its key is already in the session. True if added."""
        if session is None:
            session = self.get(session_id)
        if rnd["key"] in session.keys:
            return False
        total = len(messages) if isinstance(messages, list) else 1
        if session.ready is not None:
            self._ready_bytes -= len(session.ready[2])
        stored = session.add(rnd, messages, self.store_content)
        name = session.file_name
        self._dirty[name] = session
        self._added += 1
        untouched = self._untouched
        untouched[name] = (session, self._added)
        untouched.move_to_end(name)
        self.new_rounds.append((session.doc["session_id"], rnd))
        self.pending_bytes += 512 + line_bytes * max(stored, 1) // max(total, 1)
        return True

    def note_objects(self, n: int) -> None:
        """``n`` containers the content being added left in memory (containers())."""
        if n > 0:
            self.pending_objects += n

    def pending_full(self, limit: int) -> bool:
        """Whether the content added since the last commit is due for one: ``limit``
        bytes of it (their share of their lines), or PENDING_OBJECTS containers."""
        return self.pending_bytes >= limit or self.pending_objects >= PENDING_OBJECTS

    @property
    def dense(self) -> bool:
        """Whether the batch held objects out of proportion to its bytes (then a commit
        waits for the one in flight and the cache lets every clean session go)."""
        return (self.pending_objects >= PENDING_OBJECTS
                or self.pending_objects * OBJECT_BYTES > DENSE * max(self.pending_bytes, 1))

    def has_key(self, session_id: str | None, key: str) -> bool:
        return key in self.get(session_id).keys

    @property
    def dirty_count(self) -> int:
        return len(self._dirty)

    def flush(self) -> list[Session]:
        """Write every changed session atomically (one directory fsync for the batch)."""
        written = list(self._dirty.values())
        atomic_write_many(self.directory, ((self.directory / session.file_name,
                                            self._serialise(session)) for session in written))
        self.take_dirty_docs()   # written: now clean
        self._evict()
        return written

    def take_dirty(self) -> list[tuple[Session, Path, bytes]]:
        """Serialise every changed session now and mark it clean, for a commit that
        writes the bytes later (on another thread) while the sessions change again. Until
        that commit is known to have succeeded, :meth:`discard_all` must undo it."""
        taken = [(session, self.directory / session.file_name, self._serialise(session))
                 for session in self._dirty.values()]
        self.take_dirty_docs()
        return taken

    def take_dirty_docs(self) -> list[Session]:
        """:meth:`take_dirty` for a commit process, which summarises and serialises the
        documents itself (it gets them pickled, a snapshot): the changed sessions, now
        marked clean. :meth:`sized` gives them their new file sizes once written."""
        taken = list(self._dirty.values())
        for session in taken:
            session.dirty = False
            session.ready = None   # (a commit process serialises the documents itself)
            if self._names is not None:
                self._names.add(session.file_name)
        self._dirty.clear()
        self._untouched.clear()
        self._ready_bytes = 0
        if self.dense:
            self._dense_held += self.pending_objects
            if self._dense_held >= DENSE_HELD:
                self._dense = True
        self.pending_bytes = self.pending_objects = 0
        self.new_rounds = []
        return taken

    def _serialise(self, session: Session) -> bytes:
        """A session's file as it is now; the cache's byte count follows its new size."""
        data = self._ready(session)
        if data is None:
            session.summarise()
            data = dump_document(session.doc)
        self._cached_bytes += len(data) - session.size
        session.size = len(data)
        return data

    def _ready(self, session: Session) -> bytes | None:
        """The bytes :meth:`prepare_idle` serialised for ``session``, if no round was
        added to it since (else None), taken."""
        ready = session.ready
        if ready is None:
            return None
        session.ready = None
        self._ready_bytes -= len(ready[2])
        rounds = session.doc["rounds"]
        if ready[0] == len(rounds) and rounds and rounds[-1] is ready[1]:
            return ready[2]
        return None

    def rows_ahead(self, sessions: list[Session]) -> dict:
        """File name -> the index rows :meth:`prepare_idle` computed with the bytes, of
        those of ``sessions`` that got no round since (taken with the bytes)."""
        found = {}
        for session in sessions:
            ready = session.ready
            if ready is not None and ready[3] is not None:
                rounds = session.doc["rounds"]
                if ready[0] == len(rounds) and rounds and rounds[-1] is ready[1]:
                    found[session.file_name] = ready[3]
        return found

    def prepare_idle(self, rows_of: Callable[[str, dict, int], tuple] | None = None) -> bool:
        """Summarise and serialise, ahead of the checkpoint that writes it, one changed
        session that no line has added a round to for a while, and compute its index rows
        with ``rows_of(file name, document, size)``; False when there is none
        (or the bytes held ahead reach READY_BYTES). For a process that would otherwise
        wait (the monitor, for its parse worker): the checkpoint after the last line,
        which nothing overlaps, then writes the bytes (:meth:`_serialise`). A session
        that gets another round afterwards is serialised again at its checkpoint: it
        must have been left alone for IDLE_ROUNDS rounds of other sessions, and twice
        its own count (the bench logs: 0-5% of the sessions serialised ahead)."""
        untouched = self._untouched
        while untouched and self._ready_bytes < READY_BYTES:
            name, (session, added) = next(iter(untouched.items()))
            idle = self._added - added
            if idle < IDLE_ROUNDS:
                return False   # the least recently changed session is still busy
            del untouched[name]
            rounds = session.doc["rounds"]
            if idle < IDLE_ROUNDS + IDLE_PER_ROUND * len(rounds) or not session.dirty \
                    or session.ready is not None or not rounds:
                continue
            session.summarise()
            data = dump_document(session.doc)
            rows = rows_of(name, session.doc, len(data)) if rows_of is not None else None
            session.ready = (len(rounds), rounds[-1], data, rows)
            self._ready_bytes += len(data)
            return True
        return False

    def sized(self, sessions: list[Session], sizes: list[int]) -> None:
        """The file sizes of sessions written by a commit process (cache accounting)."""
        for session, size in zip(sessions, sizes):
            if self._sessions.get(session.file_name) is session:
                self._cached_bytes += size - session.size
            session.size = size

    def discard_all(self) -> None:
        """Forget every cached session (after a failed background commit, sessions
        marked clean may hold rounds that are not on disk): they are re-read from disk."""
        for session in self._dirty.values():
            session.ready = None
        self._sessions.clear()
        self._dirty.clear()
        self._untouched.clear()
        self._ready_bytes = 0
        self._cached_bytes = 0
        self._dense_held = 0
        self.pending_bytes = self.pending_objects = 0
        self.new_rounds = []

    def evict(self) -> None:
        self._evict()

    def discard_dirty(self) -> None:
        """Forget unwritten changes (after a failed flush they are re-read from the log)."""
        for name in list(self._dirty):
            self._dirty[name].ready = None
            session = self._sessions.pop(name, None)
            if session is not None:
                self._cached_bytes -= session.size
        self._dirty.clear()
        self._untouched.clear()
        self._ready_bytes = 0
        self.pending_bytes = self.pending_objects = 0
        self.new_rounds = []

    def forget(self, names: list[str]) -> None:
        """Drop clean cached sessions (their files were pruned)."""
        for name in names:
            session = self._sessions.get(name)
            if session is not None and not session.dirty:
                del self._sessions[name]
                self._cached_bytes -= session.size

    def _evict(self) -> None:
        if self._dense:   # every clean session goes: what they hold is not in their bytes
            self._dense, self._dense_held = False, 0
            for name, session in list(self._sessions.items()):
                if not session.dirty:
                    del self._sessions[name]
                    self._cached_bytes -= session.size
            return
        while self._cached_bytes > self.cache_bytes and self._sessions:
            name, session = next(iter(self._sessions.items()))
            if session.dirty:
                self._sessions.move_to_end(name)
                break
            del self._sessions[name]
            self._cached_bytes -= session.size
