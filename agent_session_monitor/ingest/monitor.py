"""The monitor: ``poll_once()`` reads what is new, stores it, saves the state; a thin loop
repeats it in follow mode. When and in which order it writes (the commit protocol) is
commit.py's; what a pass did and its summary, pass_report.py's.
"""

from __future__ import annotations

import copy
import functools
import gc
import os
import sqlite3
import sys
import threading
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TextIO

from .maintenance import end_upgrade_reprice, sync_pricing_epoch
from ..pricing import tokens
from ..errors import MonitorError
from ..fmt import plural, safe_text
from ..store.durable import (
    DirLock, begin_writing, check_store_dir, end_writing, ensure_dir, refuse_symlink,
)
from ..store import retention
from .commit import CommitMixIn
from .container_logs import Unwrapper
from ..store import fulltext
from ..store.index import Index, rows_ahead
from ..store.pruned_archive import ARCHIVE_NAME, Archive
from .forgery import declare_formats
from .nesting import HUGE_WARNING as HUGE, MAX_CONTAINERS, MAX_DEPTH, WARNING as NESTED
from .parse import parse_line
from .parse_ahead import (
    BAD, BATCH_BYTES, FILTERED, MAX_IN_FLIGHT, NON_AI, PARSED, REDO, REQUEST, ROUND,
    ParseWorker, WorkerGone, build_record, line_key, parse_record, position_key, round_of,
    spare_core,
)
from .pass_report import PassStats, Progress
from .request import BadLine
from ..values import utc_now
from ..pricing.table import PriceTable, load_price_table
from ..store.upgrade import upgrade_needed, upgrade_store
from .state import load_state
from ..store.sessions import PENDING_OBJECTS, SessionStore, containers
from ..store.subagents import note_spawns
from .stdin_source import StreamSource
from .logfile import has_head, line_hash, tail_hash
from .tail import Tailer

REPORT_PER_KIND = 3   # bad lines reported in full per kind and pass; the rest are counted
_NEVER = 2**63        # an offset past any file's end


# File events that are errors, printed even with -q: lines lost or not readable.
ERROR_EVENTS = frozenset(("data_loss", "unreadable", "refused", "bad_gzip"))


# Content kept as its JSON text (nesting.py), and what the warning says of it.
_KEPT_AS_TEXT = {
    NESTED: f"nests deeper than {MAX_DEPTH} levels",
    HUGE: f"holds more than {MAX_CONTAINERS:,} lists and objects (never decoded)",
}


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
    # Behind by this many bytes, a pass parses in a second process (parse_ahead.py);
    # None: never.
    parse_ahead_bytes: int | None = 4 * 2**20
    # Custom access-log formats (--log-format, forgery.parse_log_format): lines of one of
    # them are read by the place of each key, as Higress's are.
    log_formats: list = field(default_factory=list)

    @property
    def state_path(self) -> Path:
        return self.state_file or self.output_dir / ".state.json"


class Monitor(CommitMixIn):
    """One output directory, its lock, state, store, index and log files.

    Use as a context manager; :meth:`poll_once` is the whole unit of work.
    ``on_commit`` callbacks get the sessions each checkpoint wrote (budgets, export).
    """

    def __init__(self, config: MonitorConfig, table: PriceTable | None = None,
                 err: TextIO | None = None, progress: bool | None = None,
                 quiet: bool = False) -> None:
        self.config = config
        self.err = err or sys.stderr
        self.table = table or load_price_table(config.pricing)
        # quiet (-q): errors only on stderr (lines lost, logs unreadable or refused);
        # warnings are still counted in the state, and no progress is drawn.
        self.quiet = quiet
        self.progress = (self.err.isatty() and not quiet) if progress is None else progress
        # Hooks for other components (exporters, budgets). before_flush gets the rounds
        # new since the last commit, before any session file is written (a durable
        # outbox written there survives a crash that the session files do not);
        # on_commit gets the sessions written, after the index is updated.
        self.before_flush: list[Callable[[list, "Monitor"], None]] = []
        self.on_commit: list[Callable[[list, "Monitor"], None]] = []
        self.lock: DirLock | None = None
        self.notes: list[str] = []      # for the user at the start (not with -q)
        self.problems: list[str] = []   # the same, about damage found: always shown
        # The background commit in flight (checkpoint(background=True)), if any.
        self._commit_thread: threading.Thread | None = None
        self._commit_error: BaseException | None = None
        self._commit_sources: list = []
        # Parsing ahead (parse_ahead.py): a token of the pass in progress; a session's
        # ``linked`` is (that token, key of the round whose messages are its context tip)
        # for rounds linked this pass.
        self._ahead_pass: object | None = None
        self.ahead_redecoded = 0   # lines decoded again here (tests, measurements)
        # The pass in progress: its counts, those of them already in self.state.counters
        # (commit.py, _fold_counts), and whether it was cut short.
        self._pass_stats: PassStats | None = None
        self._folded: dict = {}
        self._pass_cut = False
        self._round_places: dict = {}   # file name -> {key: (fp, offset)} (_stored_from)

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
        except BaseException:   # e.g. an upgrade of older files that met a full disk
            self._end_writing()
            self.lock.release()
            raise
        return self

    def _open(self) -> None:
        out = self.config.output_dir
        # A long-lived monitor lists the directory once at its start in any case; a cron
        # pass only when the mark says the previous writer did not end cleanly.
        begin_writing(out, sweep=self.config.follow)
        if self.config.state_path.parent != out:
            ensure_dir(self.config.state_path.parent)
            begin_writing(self.config.state_path.parent, sweep=self.config.follow)
        declare_formats(self.config.log_formats)   # before the parse worker forks
        self.state, note = load_state(self.config.state_path, self.config.reset_from)
        if note:   # the state was damaged: shown even with -q
            self.problems.append(note)
        # A session file found damaged and moved aside: an error, shown even with -q.
        self.store = SessionStore(out, store_content=self.config.store_content,
                                  warn=functools.partial(self._warn, error=True))
        rebuilt = self._open_index()   # (then nothing is pending)
        if not rebuilt and (n := self.index.repair_pending()):
            # Shown even with -q: a run killed mid-write (the OOM killer, a kill -9)
            # leaves no other trace a cron mail would show.
            self.problems.append(f"the previous run was killed mid-write: re-indexed the "
                                 f"{plural(n, 'session')} it had left pending (nothing lost)")
        if retention.recover(out, self.index.db):
            self.problems.append("finished pruning sessions an interrupted prune had left")
        cut_reprice = sync_pricing_epoch(self)   # /metrics' cost series (maintenance.py)
        if cut_reprice:
            self.problems.append(cut_reprice)
        self._archive: Archive | None = None
        self._archive_absent = False
        self.store.pruned_keys = self._pruned_keys
        if upgrade_needed(self.index):
            try:
                n, repriced = upgrade_store(out, self.index, self.table,
                                            self.config.store_content,
                                            self._upgrade_progress if self.progress else None)
                if repriced:
                    end_upgrade_reprice(self)
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
        self._saved_counters = copy.deepcopy(self.state.counters)
        # What the last state this process saved describes (State.described): None until
        # the first save (the file may be missing, or the .bak it was loaded from).
        self._saved_described: str | None = None
        # Where the saved state stopped in each file (by fingerprint): a round found
        # stored from a line at or after it was written by a commit whose state was
        # never saved (a kill, a failed commit): stored, not a duplicate. (A file not in
        # the state: from its start.)
        self._recover_from = {src.fp: src.offset for src in self.state.sources}
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
            self._end_writing()
            if self.lock:
                self.lock.release()

    def _end_writing(self) -> None:
        """Remove the writing mark, unless a commit may still be writing. Every failed
        write removes its own temp files (atomic_write_many, atomic_write) and those of a
        dead commit process are swept (_commit_died), so an error is no reason to keep it;
        a SIGKILL or a power cut never gets here."""
        if getattr(self, "_commit_proc", None) is None \
                and getattr(self, "_commit_thread", None) is None:
            end_writing(self.config.output_dir)
            end_writing(self.config.state_path.parent)

    def _open_index(self) -> bool:
        """Open the index, rebuilt from the session files if it is new or incomplete
        (then True)."""
        out = self.config.output_dir
        try:
            self.index = Index(out)
        except sqlite3.Error as e:
            if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                # Another program holds it (a reader's long query, a sqlite3 shell):
                # deleting a busy index is not the fix.
                raise MonitorError(f"cannot open the index {out / '.index.sqlite'}: {e} "
                                   "(another program is using it: close it and run again)"
                                   ) from e
            raise MonitorError(f"cannot open the index {out / '.index.sqlite'}: {e} "
                               "(it is derived data: delete it and it is rebuilt)") from e
        if self.index.needs_rebuild:
            self.index.rebuild(self._index_progress if self.progress else None)
            for name, why in self.index.skipped:
                self.problems.append(f"session file {out / name} is corrupt or unreadable "
                                     f"({why}); left out of the index, kept as it is")
            return True
        return False

    def _reopen_replaced_index(self) -> None:
        """A follower whose index file was deleted or replaced (it is derived data: a
        user may delete it) opens and rebuilds it at the next pass, with the pricing
        epoch the state keeps; it went on writing to the deleted file, which no reader
        sees."""
        if not self.index.replaced():
            return
        self._join_commit()   # a commit in flight writes through the old connection
        self.index.close()
        self._open_index()
        sync_pricing_epoch(self)
        self._warn(f"the index {self.index.path} was deleted or replaced: rebuilt from the "
                   "session files")

    def _warn(self, message: str, error: bool = False) -> None:
        if error or not self.quiet:
            print(safe_text(message), file=self.err, flush=True)

    # -- one pass ------------------------------------------------------------------

    def poll_once(self) -> PassStats:
        """Read every new complete line of every log file, store it, save the state."""
        if self._pass_cut:   # the last pass was cut short: back to its last checkpoint
            self._join_commit()
            self._abandon_cut_pass()
        stats = PassStats()
        self._pass_stats, self._folded = stats, {}
        self._round_places = {}
        try:
            with fewer_collections():
                self._pass(stats)
        except BaseException:
            self._pass_cut = True
            raise
        return stats

    def _pass(self, stats: PassStats) -> None:
        self._reopen_replaced_index()
        read_time = utc_now()
        before = {id(src): src.offset for src in self.tailer.sources}
        pairs = self.tailer.poll_files()
        for src, _lf in pairs:
            if src.offset < before.get(id(src), 0):
                # Truncated or rewritten (tail.py moved it back): rounds found stored
                # from its lines are the old lines' (a real re-read), not a lost commit's.
                self._recover_from[src.fp] = _NEVER
        self._report_tail_events(stats)
        if self.state.extra.pop("reset_to_end", False):
            for src, lf in pairs:
                src.offset = _last_line_end(lf)
                _describe_offset(src, lf)   # (a .gz: from offset 0, nothing to describe)
        stats.files = len(pairs)
        todo = sum(max((lf.size if not lf.gz else 0) - src.offset, 0) for src, lf in pairs)
        progress = Progress(self.err, todo) if self.progress else None
        todo_all = todo + sum(lf.size for src, lf in pairs if lf.gz and not src.gz_complete)
        # Asked before the commit process is forked: a child starting up is a task
        # runnable now, and would take the idle core for busy.
        spare = spare_core() if todo_all else False
        self._begin_catch_up(pairs)
        try:
            self._read_all(pairs, stats, read_time, progress, todo_all, spare)
            if self.stream is not None:
                self._read_stream(stats, read_time)
        finally:
            self._end_catch_up()
            self.tailer.close_unheld(pairs)
        if progress:
            progress.done()
        self._fold_counts(final=True)
        self.checkpoint()

    def _read_all(self, pairs, stats: PassStats, read_time: str, progress, todo: int = 0,
                  spare: bool = False) -> None:
        ahead, forced = self._parse_ahead_bytes()
        if ahead is not None and todo >= ahead and (
                forced or threading.active_count() == 1 and spare):
            # A catch-up: lines are parsed in a second process (parse_ahead.py), forked
            # now, while this process has no other thread (a thread holding a lock at
            # the fork, the allocator's or OpenSSL's, would leave it held in the child),
            # if a core is idle.
            try:
                worker = ParseWorker(read_time, self.config.session_key, self.table,
                                     self.config.store_content)
            except OSError as e:   # no process or pipe to spare: parse here
                self._warn(f"warning: cannot start a parse worker ({e.strerror}); "
                           "parsing in this process")
                worker = None
            if worker is not None:
                try:
                    self._read_ahead(pairs, stats, read_time, progress, worker, todo)
                except BaseException:
                    worker.close(kill=True)
                    raise
                worker.close()
                return
        since_checkpoint = 0
        reported: Counter = Counter()
        pending_limit = self._pending_limit()
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
                        or self.store.pending_full(pending_limit)):
                    _describe_offset(src, lf)
                    self._checkpoint_in_pass()
                    since_checkpoint = 0
                if progress:
                    progress.update(name, stats)
            self._report_tail_events(stats)

    def _checkpoint_in_pass(self) -> None:
        """A background checkpoint in a catch-up; one of content that holds far more
        objects than its bytes (nested deep, tiny containers) also waits for its commit,
        so that its sessions, written, leave the cache now, not after the next batch."""
        dense = self.store.pending_objects >= PENDING_OBJECTS
        self.checkpoint(background=True)
        if dense:
            self._join_commit()

    def _pending_limit(self) -> int:
        # A background commit holds its batch serialised while the next one fills:
        # half-size batches keep the peak memory where synchronous commits had it.
        return (self.config.pending_bytes if self.before_flush or self.on_commit
                else self.config.pending_bytes // 2)

    def _parse_ahead_bytes(self) -> tuple[int | None, bool]:
        """Bytes behind from which a pass parses in a second process (None: never), and
        whether a test forces the choice: ASM_PARSE_AHEAD_BYTES overrides the
        configuration (0: every pass, -1: none) so each suite can run either path."""
        value = os.environ.get("ASM_PARSE_AHEAD_BYTES")
        n, forced = self.config.parse_ahead_bytes, False
        if value is not None:
            try:
                n, forced = int(value), True
            except ValueError:
                pass
        return (None if n is None or n < 0 else n), forced

    def _read_ahead(self, pairs, stats: PassStats, read_time: str, progress,
                    worker: "ParseWorker", todo: int = 0) -> None:
        """_read_all with the lines parsed by ``worker``, handled here in file order.

        Each source's offset moves as its lines are *read* (the reader and the
        unwrapper see exactly what they see in _read_all), but a checkpoint records the
        end of the last line *handled*, described by the hash of the bytes before it;
        a file's reader is drained before the next file is read (the reader has then
        described the file's end and may have closed it: a checkpoint in the drain
        hashes through the run's own descriptor)."""
        run = _AheadRun(worker, stats, read_time, progress, self.config.checkpoint_bytes)
        # Compressed files: how many bytes they hold is not known before they are read.
        run.todo = None if any(lf.gz and not src.gz_complete for src, lf in pairs) else todo
        worker.idle = functools.partial(self._work_ahead, run)
        self._ahead_pass = object()
        try:
            for src, lf in pairs:
                run.begin(src, lf)
                for start, end, line in self.unwrapper.lines(src, lf, self.tailer.lines(src, lf)):
                    src.offset = end
                    run.add(self, start, end, line)
                run.finish(self)
                self._report_tail_events(stats)
        except BaseException:
            run.rewind()
            raise
        finally:
            self._ahead_pass = None

    def _work_ahead(self, run: "_AheadRun") -> bool:
        """While this process waits for the parse worker: serialise a session ahead of
        the checkpoint that writes it (SessionStore.prepare_idle). Not for a commit
        process, which gets the documents and serialises them itself, until the rest of
        the pass is expected to fit in the batch in progress: the checkpoint after the
        last line is then this process's own, and nothing overlaps it. Their index rows
        too (index.rows_ahead): the checkpoint's index helper, or this process, then
        only writes them."""
        if self._commit_proc is not None and not run.last_batch(self):
            return False
        if run.with_text is None:
            run.with_text = fulltext.present(self.index.db)
        return self.store.prepare_idle(functools.partial(rows_ahead, with_text=run.with_text))

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
        # Containers the line leaves in memory (the collector's count of new ones less
        # those freed: O(1), read once the decoded line is gone); the store weighs
        # pending content by them as well as by bytes.
        before = containers()
        record = parse_record(line, read_time, self.config.session_key)
        self._take(record, line, fp, start, read_time, stats, reported, path)
        del record
        self.store.note_objects(containers() - before)

    def _take(self, record: tuple, line: bytes, fp: str | None, start: int, read_time: str,
              stats: PassStats, reported: Counter, path: str) -> None:
        """The store's half of a line (parse_ahead.py has the other): count it, skip a
        duplicate, add its round to its session."""
        kind = record[0]
        if kind == REQUEST:
            _k, req, key = record
            session_id, warnings, rnd = req.session_id, req.warnings, None
        elif kind == ROUND or kind == PARSED:
            _k, session_id, warnings, key, rnd, messages, pred, shared, spawn = record
        elif kind == BAD:
            self._bad(stats, reported, record[1], path, start, record[2])
            return
        elif kind == NON_AI:
            stats.non_ai += 1
            if record[1]:
                self._forged(stats, reported, path, start)
            return
        elif kind == FILTERED:
            stats.filtered += 1
            return
        elif kind == REDO:   # the worker could not: the same line, parsed here
            self._handle(line, fp, start, read_time, stats, reported, path)
            return
        else:   # BLANK
            return
        if warnings:
            for w in warnings:
                stats.warnings[w] += 1
            if "forged" in warnings:
                self._forged(stats, reported, path, start)
            for flag, what in _KEPT_AS_TEXT.items():
                if flag in warnings:
                    # Once per pass in full; the summary counts them all.
                    reported[flag] += 1
                    if reported[flag] == 1:
                        self._warn(f"warning: round in {path} at offset {start}: a field "
                                   f"the client wrote {what}: billed, that field kept as the "
                                   "JSON text it was logged as (nested_as_text)")
            if "untrusted_time" in warnings:
                reported["untrusted_time"] += 1
                if reported["untrusted_time"] <= REPORT_PER_KIND:
                    self._warn(f"warning: round in {path} at offset {start} dated by the time "
                               "it was read: its start_time comes after a request header, "
                               "where a client can write one, in a log format not declared "
                               "(declare it with --log-format to read its time by place)")
        # Idempotency (storage.md): a round is where its line came from, never the
        # request_id a client may repeat. The place (file fingerprint + offset) survives
        # rotation and compression; the line's bytes identify it on a pipe, and also
        # catch the same line delivered twice (a shipper's retry, a log copied to a
        # second pod): byte-identical lines cannot be two requests, since the provider's
        # response id, the timings and the ports differ.
        session = self.store.get(session_id)
        place = position_key(fp, start) if fp is not None else None
        if key in session.keys or (place is not None and place in session.keys):
            if (place is not None and start >= self._recover_from.get(fp, 0)
                    and self._stored_from(session, key) == (fp[:16], start)):
                # This very line, stored by a commit killed (or failed) before it saved
                # the state, whose counts were lost with it: a round stored, counted now.
                stats.recovered += 1
            else:
                stats.duplicates += 1
            return
        if rnd is None:
            record = build_record(record, line, fp, start, self.table, self.config.store_content)
            _k, session_id, warnings, key, rnd, messages, pred, shared, spawn = record
        elif kind == PARSED:   # the worker left building the round to this process
            rnd = round_of(rnd, key, fp, start, self.table, self.config.store_content)
        if pred is not None:
            messages = self._rejoin(session, pred, shared, messages, line, read_time)
        if spawn is not None:   # the line names a sub-agent spawn (build_record looked)
            note_spawns(session.doc, rnd, spawn)
        # No rounds yet: neither on disk nor earlier in this pass (no stat per round).
        created = not session.doc["rounds"]
        self.store.add_round(session_id, rnd, messages, len(line), session)
        if self._ahead_pass is not None and isinstance(messages, (list, str)):
            session.linked = (self._ahead_pass, key)
        stats.rounds += 1
        if created:   # once per session and pass: from then on it has a round
            stats.new_sessions += 1
        stats.sessions.add(session.file_name)
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

    def _stored_from(self, session, key: str) -> tuple | None:
        """(file fingerprint, offset) of the line of the round ``key`` of ``session``.
        Asked only for lines past the saved offsets: the places of a session's rounds
        are mapped once (rounds added after that are this run's, never a lost commit's;
        the maps are dropped with the cache at a rewind)."""
        places = self._round_places.get(session.file_name)
        if places is None:
            places = self._round_places[session.file_name] = {}
            for rnd in session.doc["rounds"]:
                source = rnd.get("source")
                if isinstance(source, dict):
                    places[rnd.get("key")] = (source.get("fp"), source.get("offset"))
        return places.get(key)

    def _rejoin(self, session, pred: str, shared: int, new: list, line: bytes,
                read_time: str) -> object:
        """A request's whole message list from the worker's ``shared`` first messages of
        the line keyed ``pred`` and the ``new`` ones: from this session's context tip
        when that is the round of line ``pred`` as linked in this pass, else decoded
        again from the line."""
        mark = session.linked
        if (mark is not None and mark[0] is self._ahead_pass and mark[1] == pred
                and session.doc.get("context_tip") == pred):
            base = session.tip_context()
            if len(base) >= shared:
                return base[:shared] + new
        self.ahead_redecoded += 1
        return parse_line(line, read_time).ai.get("messages")

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
                self._warn(("warning: " if event.kind != "data_loss" else "") + event.message,
                           error=event.kind in ERROR_EVENTS)
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


class _AheadRun:
    """The lines of one pass between reading and handling (Monitor._read_ahead): every
    item read, in order, each handled once its record is back from the worker (or at
    once when it needs none: an oversized or malformed line)."""

    def __init__(self, worker: ParseWorker, stats: PassStats, read_time: str, progress,
                 mon_checkpoint_bytes: int) -> None:
        self.worker: ParseWorker | None = worker
        self.stats, self.read_time, self.progress = stats, read_time, progress
        self.reported: Counter = Counter()
        self.since_checkpoint = 0
        self.items: deque = deque()   # [start, end, line, record], read, not handled
        self.batch: list = []         # items of lines not yet sent
        self.batch_bytes = 0
        self.sent: deque = deque()    # batches sent whose records are not back
        self.src = self.lf = None
        self.todo: int | None = None   # bytes the pass has to read (None: not known)
        self.with_text: bool | None = None   # the index has full-text rows (once asked)
        # Lines per message: small enough that checkpoints fall where they fall when
        # the lines are parsed here (checkpoint_bytes, in tests a few KB).
        self.batch_limit = min(BATCH_BYTES, max(mon_checkpoint_bytes // 4, 4096))

    def begin(self, src, lf) -> None:
        self.src, self.lf, self.name = src, lf, os.path.basename(lf.path)
        self.handled_end = src.offset
        # The reader closes the file at its end (a cron pass; a drained rotation in
        # --follow) while up to MAX_IN_FLIGHT batches read are not handled yet: a
        # checkpoint in that drain still hashes the bytes before the offset it saves.
        self._close_fd()
        try:
            self.fd = -1 if lf.gz else os.dup(lf.file.fileno())
        except (OSError, ValueError):
            self.fd = -1
        # What the reader changes when it reaches the file's end: put back if this pass
        # stops before the lines read are handled.
        self.before_end = (src.tail, src.line, src.size, src.mtime, src.gz_complete)

    def add(self, mon: "Monitor", start: int, end: int, line) -> None:
        item = [start, end, line, None]
        self.items.append(item)
        if self.worker is not None and isinstance(line, bytes):
            self.batch.append(item)
            self.batch_bytes += len(line)
            if self.batch_bytes >= self.batch_limit:
                self._send(mon)
        self._handle_ready(mon)

    def finish(self, mon: "Monitor") -> None:
        """The file's reader is done (it has described the file's end): handle every
        line read."""
        self._send(mon)
        while self.sent:
            self._receive(mon)
            self._handle_ready(mon)
        self._handle_ready(mon)
        self.src = None
        self._close_fd()

    fd = -1   # a descriptor of the file being handled (begin)

    def _close_fd(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def _as_handled(self) -> tuple:
        """Make the source describe the lines handled, as the sequential loop has it
        while it handles them (the reader may have gone further, even to the file's end:
        its size and tail hash); returns what to put back."""
        src = self.src
        now = (src.offset, src.tail, src.line, src.size, src.mtime, src.gz_complete)
        src.offset = self.handled_end
        src.tail, src.line, src.size, src.mtime, src.gz_complete = self.before_end
        return now

    def rewind(self) -> None:
        """This pass stops (an error, an interrupt): the source describes the lines
        handled, as the sequential loop leaves it."""
        if self.src is not None:
            self._as_handled()
        self._close_fd()

    def _send(self, mon: "Monitor") -> None:
        batch, self.batch, self.batch_bytes = self.batch, [], 0
        if not batch or self.worker is None:
            return
        try:
            # Who builds the rounds: the worker, unless this process had to wait for it
            # since the last batch (then this one has the time to spare, and hashes the
            # lines for their keys too: 6% of the worker's time on long sessions).
            build, self.worker.waited = not self.worker.waited, False
            if build:
                lines = [(item[0], item[2]) for item in batch]
            else:
                lines = [(item[0], item[2], line_key(item[2])) for item in batch]
            self.worker.send(self.src.fp, lines, build)
        except WorkerGone:
            self._gone(mon)
            return
        self.sent.append(batch)
        while len(self.sent) > MAX_IN_FLIGHT:
            self._receive(mon)
            self._handle_ready(mon)

    def _receive(self, mon: "Monitor") -> None:
        try:
            before = containers()
            records = self.worker.receive()
            mon.store.note_objects(containers() - before)
        except WorkerGone:
            self._gone(mon)
            return
        batch = self.sent.popleft()
        if len(records) != len(batch):
            self._gone(mon)
            return
        for item, record in zip(batch, records):
            item[3] = record

    def _gone(self, mon: "Monitor") -> None:
        how = self.worker.close(kill=True) or "it exited"
        mon._warn(f"warning: the parse worker process ended ({how}); this pass parses "
                  "its remaining lines itself")
        self.worker = None
        self.sent.clear()
        self.batch, self.batch_bytes = [], 0

    def last_batch(self, mon: "Monitor") -> bool:
        """Whether the lines of the pass not yet handled are expected to fit in the
        checkpoint batch in progress, at the rate content has been pending since the
        last checkpoint (a guess: wrong, it only wastes what was serialised ahead)."""
        done = self.since_checkpoint
        if self.todo is None or done <= 0:
            return False
        left = max(self.todo - self.stats.bytes_read, 0)
        pending = mon.store.pending_bytes
        return (done + left < mon.config.checkpoint_bytes
                and (pending + left * pending / done) * 1.25 < mon._pending_limit())

    def _checkpoint_due(self, mon: "Monitor") -> bool:
        return (self.since_checkpoint >= mon.config.checkpoint_bytes
                or mon.store.pending_full(mon._pending_limit()))

    def _handle_ready(self, mon: "Monitor") -> None:
        items, stats, path = self.items, self.stats, self.lf.path
        src = self.src
        while items:
            start, end, line, record = items[0]
            if record is None and self.worker is not None and isinstance(line, bytes):
                return   # its record is not back yet
            items.popleft()
            length = end - start
            stats.bytes_read += length
            self.since_checkpoint += length
            if line is None:
                mon._bad(stats, self.reported, "oversized_line", path, start,
                         f"line of {length:,} bytes exceeds --max-line-bytes")
            elif isinstance(line, BadLine):
                mon._bad(stats, self.reported, line.kind, path, start, line.detail)
            else:
                stats.lines += 1
                if record is None:   # no worker (any more)
                    mon._handle(line, src.fp, start, self.read_time, stats, self.reported, path)
                else:   # (a session it loads from disk counts too)
                    before = containers()
                    mon._take(record, line, src.fp, start, self.read_time, stats,
                              self.reported, path)
                    mon.store.note_objects(containers() - before)
            self.handled_end = end
            if self._checkpoint_due(mon):
                # The offsets saved are those of the lines handled, not of those read.
                now = self._as_handled()
                try:
                    # Not described (the file is another one by now): no checkpoint
                    # here; the pass's last one saves what the reader saw at the end.
                    if _describe_offset(src, self.lf, self.fd):
                        mon._checkpoint_in_pass()
                        self.since_checkpoint = 0
                finally:
                    (src.offset, src.tail, src.line, src.size, src.mtime,
                     src.gz_complete) = now
            if self.progress:
                self.progress.update(self.name, stats)


def _describe_offset(src, lf, fd: int = -1) -> bool:
    """Before a checkpoint in the middle of a file: the hash of the bytes before the
    offset it saves, which the reader otherwise sets only when it reaches the file's end.
    A state saved with the new offset and the old tail described no file: after a kill
    the next run took the log for one rewritten in place, read it all again and counted
    every line twice. ``fd`` (the parse-ahead drain, whose reader has closed the file):
    read through it, if the file there still has the head of the one read. Whether the
    source now describes its offset."""
    if lf.gz:
        # From the bytes read (decompressed), when the reader still has them; else not
        # known ("": a .gz is then matched by its length, as before the tail was kept).
        recent = lf.recent
        tail = recent.hash_at(src.offset) if recent is not None else None
        src.tail = tail if tail is not None else ""
        src.line = (recent.line_at(src.offset) if recent is not None else None) or ""
        return True
    try:
        if fd < 0:
            tail, line = tail_hash(lf.file, src.offset), line_hash(lf.file, src.offset)
        else:
            if not has_head(fd, src):   # truncated and written again meanwhile
                return False
            tail, line = tail_hash(fd, src.offset), line_hash(fd, src.offset)
    except (OSError, ValueError):
        return False
    if tail is None or line is None:   # it shrank meanwhile; the next pass sees that
        return False
    src.tail, src.line = tail, line
    return True


# Allocations (net, of objects the cyclic collector tracks) between two collections of
# the youngest generation during a pass; Python's default is 700.
PASS_GC_THRESHOLD = 100_000


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Run the cyclic garbage collector less often while a pass works. Every line
    decodes into fresh dicts and lists, and at Python's default threshold the collector
    ran 1,500 times in a catch-up of the short-sessions bench log (57,791 lines), 11 of
    them full collections walking every object the pass holds (the cached sessions, the
    batch in progress): 2.2 s of its 14.6 s of CPU (0.2 s at this threshold). What a
    pass allocates is freed by reference counting (decoded JSON holds no cycles); the
    collector still runs, 140 times less often, so a cycle left by anything else is
    still found. Forked children (commit process, parse worker) inherit the setting."""
    old = gc.get_threshold()
    gc.set_threshold(max(old[0], PASS_GC_THRESHOLD), *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


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
