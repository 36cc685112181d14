"""The monitor: ``poll_once()`` reads what is new, stores it, saves the state; a thin loop
repeats it in follow mode. When and in which order it writes (the commit protocol) is
commit.py's; what a pass did and its summary, pass_report.py's.
"""

from __future__ import annotations

import copy
import functools
import gc
import hashlib
import os
import sqlite3
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

from ..pricing import tokens
from ..errors import MonitorError
from ..fmt import safe_text
from ..store.durable import (
    DirLock, check_store_dir, ensure_dir, refuse_symlink,
    remove_stale_temps,
)
from ..store import retention
from .commit import CommitMixIn
from .container_logs import Unwrapper
from ..store.index import Index
from ..store.pruned_archive import ARCHIVE_NAME, Archive
from .parse import parse_line
from .pass_report import PassStats, Progress
from .request import BadLine, Request
from ..values import utc_now
from ..pricing.table import PriceTable, load_price_table
from ..store.upgrade import upgrade_needed, upgrade_store
from .rounds import build_round
from ..store.document import LINE_KEY_PREFIX
from .state import load_state
from ..store.sessions import SessionStore
from ..store.subagents import note_spawns
from .stdin_source import StreamSource
from .tail import Tailer

REPORT_PER_KIND = 3   # bad lines reported in full per kind and pass; the rest are counted


@dataclass
class MonitorConfig:
    log_paths: list[str]
    output_dir: Path
    state_file: Path | None = None
    session_key: str | None = None
    max_rotate: int = 5
    store_content: bool = True
    pricing: str | None = None
    follow: bool = False
    refresh_interval: float = 1.0
    rotate_wait: float = 30.0
    max_line_bytes: int = 64 * 2**20
    reset_from: str | None = None
    checkpoint_bytes: int = 256 * 2**20    # input read between checkpoints in a catch-up
    pending_bytes: int = 24 * 2**20        # content held in memory before a flush
    # Real directories log files may be read from (confine.py); None: any.
    allowed_log_dirs: list[Path] | None = None

    @property
    def state_path(self) -> Path:
        return self.state_file or self.output_dir / ".state.json"


def _young_collections_only(read_all):
    """Read a catch-up without the garbage collector's full collections.

    A catch-up holds many thousands of live objects (cached sessions, their messages,
    the price table), and CPython scans all of them in a full collection each time the
    heap has grown by a quarter: 15 times, a tenth of the CPU, in a catch-up of 25,000
    sessions. What reading creates is acyclic (decoded JSON, round dicts) and its
    short-lived cycles (exceptions) die young, which the young collections still free.
    The full ones resume after the catch-up; a small pass (follow mode) keeps them as
    they are, so a long-lived monitor still collects its old cycles."""
    @functools.wraps(read_all)
    def run(self, pairs, *args, **kwargs):
        behind = sum(max(lf.size - src.offset, 0) if not lf.gz
                     else 0 if src.gz_complete else lf.size for src, lf in pairs)
        if behind < CATCH_UP_BYTES:
            return read_all(self, pairs, *args, **kwargs)
        young, middle, full = gc.get_threshold()
        gc.set_threshold(young, middle, 2**31 - 1)
        try:
            return read_all(self, pairs, *args, **kwargs)
        finally:
            gc.set_threshold(young, middle, full)
    return run


CATCH_UP_BYTES = 4 * 2**20   # behind by this much, a pass is a catch-up


class Monitor(CommitMixIn):
    """One output directory, its lock, state, store, index and log files.

    Use as a context manager; :meth:`poll_once` is the whole unit of work.
    ``on_commit`` callbacks get the sessions each checkpoint wrote (budgets, export).
    """

    def __init__(self, config: MonitorConfig, table: PriceTable | None = None,
                 err: TextIO | None = None, progress: bool | None = None) -> None:
        self.config = config
        self.err = err or sys.stderr
        self.table = table or load_price_table(config.pricing)
        self.progress = self.err.isatty() if progress is None else progress
        # Hooks for other components (exporters, budgets). before_flush gets the rounds
        # new since the last commit, before any session file is written (a durable
        # outbox written there survives a crash that the session files do not);
        # on_commit gets the sessions written, after the index is updated.
        self.before_flush: list[Callable[[list, "Monitor"], None]] = []
        self.on_commit: list[Callable[[list, "Monitor"], None]] = []
        self.lock: DirLock | None = None
        self.notes: list[str] = []
        # The background commit in flight (checkpoint(background=True)), if any.
        self._commit_thread: threading.Thread | None = None
        self._commit_error: BaseException | None = None
        self._commit_sources: list = []

    # -- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> "Monitor":
        out = self.config.output_dir
        ensure_dir(out)
        check_store_dir(out)
        state = self.config.state_path
        if state.parent != out:
            ensure_dir(state.parent)
            check_store_dir(state.parent)
        for path in (state, state.with_name(state.name + ".bak")):
            refuse_symlink(path)
        self.lock = DirLock(out)
        try:
            acquired = self.lock.try_acquire()
        except OSError as e:
            raise MonitorError(f"cannot lock {out}: {e.strerror}; check its permissions") from e
        if not acquired:
            raise AlreadyRunning(f"another monitor is writing {out} (it holds {self.lock.path}); "
                                 "this one exits")
        try:
            self._open()
        except BaseException:
            self.lock.release()
            raise
        return self

    def _open(self) -> None:
        out = self.config.output_dir
        remove_stale_temps(out)
        if self.config.state_path.parent != out:
            ensure_dir(self.config.state_path.parent)
            remove_stale_temps(self.config.state_path.parent)
        self.state, note = load_state(self.config.state_path, self.config.reset_from)
        if note:
            self.notes.append(note)
        self.store = SessionStore(out, store_content=self.config.store_content,
                                  warn=self._warn)
        try:
            self.index = Index(out)
        except sqlite3.Error as e:
            raise MonitorError(f"cannot open the index {out / '.index.sqlite'}: {e} "
                               "(it is derived data: delete it and it is rebuilt)") from e
        if self.index.needs_rebuild:
            self.index.rebuild(self._index_progress if self.progress else None)
            for name, why in self.index.skipped:
                self.notes.append(f"session file {out / name} is corrupt or unreadable ({why}); "
                                  "left out of the index, kept as it is")
        elif self.index.repair_pending():
            self.notes.append("re-indexed sessions an interrupted run had left pending")
        if retention.recover(out, self.index.db):
            self.notes.append("finished pruning sessions an interrupted prune had left")
        self._archive: Archive | None = None
        self._archive_absent = False
        self.store.pruned_keys = self._pruned_keys
        if upgrade_needed(self.index):
            try:
                n = upgrade_store(out, self.index, self.table, self.config.store_content,
                                  self._upgrade_progress if self.progress else None)
            except (OSError, sqlite3.Error) as e:
                # The upgrade rewrites every file: a disk that fills or a directory
                # another user owns shows here first. Each file is replaced atomically.
                reason = getattr(e, "strerror", None) or str(e)
                raise MonitorError(f"cannot upgrade the store in {out}: {reason}; nothing "
                                   "was lost, the next run finishes the upgrade once it is "
                                   "writable (free space?)") from e
            if n:
                self.notes.append(f"upgraded {n:,} session file{'s' if n != 1 else ''} "
                                  "written by an earlier version to the current layout")
        files = [p for p in self.config.log_paths if p != "-"]
        self.stream = (StreamSource(sys.stdin.fileno(), self.config.max_line_bytes)
                       if "-" in self.config.log_paths else None)
        self.tailer = Tailer(files, self.config.max_rotate, self.state.sources,
                             keep_open=self.config.follow, rotate_wait=self.config.rotate_wait,
                             max_line=self.config.max_line_bytes,
                             allowed=self.config.allowed_log_dirs)
        self._saved_sources = copy.deepcopy(self.state.sources)
        self.unwrapper = Unwrapper(self.config.max_line_bytes, self.config.rotate_wait)

    def _pruned_keys(self, file_name: str) -> set:
        if self._archive is None:
            # Only prune() creates the archive (under the writer lock): one look at the
            # directory, not a stat per session loaded (in a catch-up each would wait
            # for the directory lock of the commit in flight).
            if self._archive_absent or not (self.config.output_dir / ARCHIVE_NAME).exists():
                self._archive_absent = True
                return set()
            self._archive = Archive(self.config.output_dir)
        return self._archive.keys_for(file_name)

    def prune(self, keep) -> "retention.PruneResult":
        """``--keep``: prune sessions idle longer than ``keep`` (after a commit)."""
        self.checkpoint()
        result = retention.prune(self.config.output_dir, self.index.db, keep)
        self._archive_absent = False
        self.store.forget(result.names)
        return result

    def __exit__(self, *exc: object) -> None:
        try:
            self._finish_commits()   # a pass interrupted mid catch-up: let its commit end
            self.tailer.release_all()
            if getattr(self, "_archive", None) is not None:
                self._archive.close()
            self.index.close()
        finally:
            if self.lock:
                self.lock.release()

    def _warn(self, message: str) -> None:
        print(safe_text(message), file=self.err, flush=True)

    # -- one pass ------------------------------------------------------------------

    def poll_once(self) -> PassStats:
        """Read every new complete line of every log file, store it, save the state."""
        stats = PassStats()
        read_time = utc_now()
        pairs = self.tailer.poll_files()
        self._report_tail_events(stats)
        if self.state.extra.pop("reset_to_end", False):
            for src, lf in pairs:
                src.offset = _last_line_end(lf)
        stats.files = len(pairs)
        todo = sum(max((lf.size if not lf.gz else 0) - src.offset, 0) for src, lf in pairs)
        progress = Progress(self.err, todo) if self.progress else None
        self._begin_catch_up(pairs)
        try:
            self._read_all(pairs, stats, read_time, progress)
            if self.stream is not None:
                self._read_stream(stats, read_time)
        finally:
            self._end_catch_up()
            self.tailer.close_unheld(pairs)
        if progress:
            progress.done()
        self.checkpoint()
        self._count_pass(stats)
        return stats

    @_young_collections_only
    def _read_all(self, pairs, stats: PassStats, read_time: str, progress) -> None:
        since_checkpoint = 0
        reported: Counter = Counter()
        # A background commit holds its batch serialised while the next one fills:
        # half-size batches keep the peak memory where synchronous commits had it.
        pending_limit = (self.config.pending_bytes if self.before_flush or self.on_commit
                         else self.config.pending_bytes // 2)
        for src, lf in pairs:
            name = os.path.basename(lf.path)
            # Container runtime wrappers (CRI, Docker json-file) come off here; a plain
            # log passes through untouched (container_logs.py).
            for start, end, line in self.unwrapper.lines(src, lf, self.tailer.lines(src, lf)):
                length = end - start
                stats.bytes_read += length
                since_checkpoint += length
                if line is None:
                    self._bad(stats, reported, "oversized_line", lf.path, start,
                              f"line of {length:,} bytes exceeds --max-line-bytes")
                elif isinstance(line, BadLine):
                    self._bad(stats, reported, line.kind, lf.path, start, line.detail)
                else:
                    stats.lines += 1
                    self._handle(line, src.fp, start, read_time, stats, reported, lf.path)
                src.offset = end
                if (since_checkpoint >= self.config.checkpoint_bytes
                        or self.store.pending_bytes >= pending_limit):
                    self.checkpoint(background=True)
                    since_checkpoint = 0
                if progress:
                    progress.update(name, stats)
            self._report_tail_events(stats)

    def _read_stream(self, stats: PassStats, read_time: str) -> None:
        reported: Counter = Counter()
        since_checkpoint = 0
        for start, end, line in self.stream.lines(block=not self.config.follow):
            stats.bytes_read += end - start
            since_checkpoint += end - start
            if line is None:
                self._bad(stats, reported, "oversized_line", "<stdin>", start,
                          f"line of {end - start:,} bytes exceeds --max-line-bytes")
            else:
                stats.lines += 1
                self._handle(line, None, start, read_time, stats, reported, "<stdin>")
            if since_checkpoint >= self.config.checkpoint_bytes:
                self.checkpoint()
                since_checkpoint = 0

    def _handle(self, line: bytes, fp: str | None, start: int, read_time: str, stats: PassStats,
                reported: Counter, path: str) -> None:
        try:
            req = parse_line(line, read_time)
        except BadLine as bad:
            self._bad(stats, reported, bad.kind, path, start, bad.detail)
            return
        if not isinstance(req, Request):
            if req == "non_ai":
                stats.non_ai += 1
            elif req == "forged_non_ai":
                stats.non_ai += 1
                self._forged(stats, reported, path, start)
            return
        if self.config.session_key is not None and req.session_id != self.config.session_key:
            stats.filtered += 1
            return
        for w in req.warnings:
            stats.warnings[w] += 1
        if "forged" in req.warnings:
            self._forged(stats, reported, path, start)
        # Idempotency (storage.md): a round is where its line came from, never the
        # request_id a client may repeat. The place (file fingerprint + offset) survives
        # rotation and compression; the line's bytes identify it on a pipe, and also
        # catch the same line delivered twice (a shipper's retry, a log copied to a
        # second pod): byte-identical lines cannot be two requests, since the provider's
        # response id, the timings and the ports differ.
        key = line_key(line)
        session = self.store.get(req.session_id)
        place = position_key(fp, start) if fp is not None else None
        if key in session.keys or (place is not None and place in session.keys):
            stats.duplicates += 1
            return
        source = {"fp": fp[:16], "offset": start} if fp is not None else {"stream": "stdin"}
        rnd = build_round(req, key, source, self.table,
                          self.config.store_content)
        if b"childSessionKey" in line:   # a sub-agent spawn result (cheap test first)
            note_spawns(session.doc, rnd, req.ai.get("messages"))
        messages = req.ai.get("messages") if self.config.store_content else None
        # No rounds yet: neither on disk nor earlier in this pass (no stat per round).
        created = not session.doc["rounds"]
        self.store.add_round(req.session_id, rnd, messages, len(line), session)
        stats.rounds += 1
        name = session.file_name
        if created:
            stats.new_sessions.add(name)
        stats.sessions.add(name)
        t = tokens.of_round(rnd)
        stats.input_tokens += t["input"]
        stats.output_tokens += t["output"]
        stats.reasoning_tokens += t["reasoning"]
        stats.cached_tokens += t["cached"]
        stats.cache_write_tokens += t["cache_write"]
        if rnd["cost_usd"] is None:
            stats.unpriced[rnd["model"] or "(no model)"] += 1
        else:
            stats.cost += rnd["cost_usd"]

    def _bad(self, stats: PassStats, reported: Counter, kind: str, path: str, offset: int,
             detail: str) -> None:
        stats.bad[kind] += 1
        reported[kind] += 1
        if reported[kind] <= REPORT_PER_KIND:
            self._warn(f"skipped {kind} line in {path} at offset {offset}: {detail}")

    def _forged(self, stats: PassStats, reported: Counter, path: str, offset: int) -> None:
        stats.forged += 1
        reported["forged"] += 1
        if reported["forged"] <= REPORT_PER_KIND:
            self._warn(f"warning: forged line in {path} at offset {offset}: a client wrote "
                       "keys of its own through a header; only the genuine fields were used")

    def _report_tail_events(self, stats: PassStats) -> None:
        for event in self.tailer.events:
            stats.tail_events[event.kind] += 1
            if event.amount:
                self.state.count_kind("lost_bytes", event.kind, event.amount)
            if not event.quiet:
                self._warn(("warning: " if event.kind != "data_loss" else "") + event.message)
        self.tailer.events = []

    def _index_progress(self, done: int, total: int) -> None:
        self._count_progress("indexing sessions", done, total)

    def _upgrade_progress(self, done: int, total: int) -> None:
        # Once per store and version, and it reads every file: minutes on a big store.
        self._count_progress("checking session files for an upgrade", done, total)

    def _count_progress(self, label: str, done: int, total: int) -> None:
        if done == total or done % 200 == 0:
            self.err.write(f"\r{label}: {done:,}/{total:,}")
            if done == total:
                self.err.write("\n")
            self.err.flush()


def line_key(line: bytes) -> str:
    """The idempotency key of a round: a hash of its whole line."""
    return LINE_KEY_PREFIX + hashlib.sha256(line).hexdigest()[:32]


def position_key(fp: str, offset: int) -> str:
    """Where a line of a file starts; equal to what a stored round's ``source`` gives
    (session.round_keys), so rounds of older versions are recognised too."""
    return f"{fp[:16]}:{offset}"


class AlreadyRunning(MonitorError):
    """Another monitor holds the store's lock."""


def _last_line_end(lf) -> int:
    """Offset just after the last newline of a plain file (for --reset-from end)."""
    if lf.gz or lf.size == 0:
        return lf.size if not lf.gz else 0
    fd = lf.file.fileno()
    pos = lf.size
    while pos > 0:
        start = max(0, pos - 65536)
        chunk = os.pread(fd, pos - start, start)
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            return start + nl + 1
        pos = start
    return 0
