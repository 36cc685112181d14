"""When the monitor writes, and in which order: its checkpoints, in the foreground or on
a background thread during a catch-up, the rewind after a failed one, and the counters
saved after a pass.

Commit protocol (failure-scenarios.md, B0): changed sessions are written first (each
atomically, then one directory fsync), then the index, then ``.state.json``. A crash
anywhere replays from the last saved offsets, and the identity of every round (where
its line came from: file fingerprint + byte offset, and the hash of the line's bytes;
never the client's ``request_id``) makes the replay count nothing twice.

In a catch-up the checkpoints are written in the background while the next lines are
parsed: by a commit process (commit_process.py) forked at the start of the pass, or,
where a fork is not possible or not safe (no ``os.fork``, other threads), by a thread.
Either way one commit is in flight at a time, in the same order, and a failed one (an
error, or a commit process that died) rewinds to the offsets last saved. A large
synchronous checkpoint (the end of such a pass) has its index rows written by a forked
child while the files are written, committed once they are durable (index_helper.py).
"""

from __future__ import annotations

import copy
import dataclasses
import sqlite3
import threading
import time

from ..errors import MonitorError
from ..stop import signals_held, start_thread
from ..store.durable import atomic_write_many, begin_writing, fault_at
from ..store.sessions import dump_document
from .commit_process import CommitProcess, CommitProcessDied, NotSent
from .index_helper import IndexHelper, IndexHelperDied, wanted as split_wanted
from .pass_report import PassStats
from .state import save_state


class CommitMixIn:
    """The commit half of :class:`~.monitor.Monitor`, which mixes it in and holds what
    it uses: ``config``, ``state``, ``store``, ``index``, ``tailer``, the hooks
    (``before_flush``, ``on_commit``), ``_saved_sources`` and the ``_commit_*``
    attributes of the background commit in flight."""

    _commit_proc: CommitProcess | None = None   # during a catch-up pass
    _commit_taken: list = []   # the sessions of its commit in flight
    _index_suspect = False   # a commit failed: pending index marks to re-read first

    # An idle --follow monitor still saves its state this often: its written_at is the
    # heartbeat /metrics shows (asm_last_pass_timestamp_seconds: alert on > 300 s).
    idle_save_seconds = 60.0
    _saved_at = float("-inf")

    def checkpoint(self, background: bool = False, idle_save: bool = False) -> None:
        """Commit: sessions, then index, then state. On failure nothing advances.

        ``background`` (checkpoints inside a catch-up): the sessions are serialised now
        and written, indexed and described by the state in the commit process (or on a
        thread) while the next lines are parsed, so the second core does it. The order
        per commit is the same, one commit is in flight at a time, and a failure
        surfaces at the next checkpoint, which then rewinds as a failed commit does.
        Hooks (exporters, budgets) need the synchronous order, so they disable it.

        In ``--follow``, a commit that would save a state describing exactly what the
        last one saved (an idle poll: only the pass count moved) writes nothing: no fsync
        and no .bak every second. Anything else the state records (an offset, an identity
        after a rotation with no new bytes, a truncation, a file gone, a counter, an
        alert, an exporter's progress) is saved by the commit that changed it. The pass
        count is saved with the next change, by ``idle_save`` (the stop), or once every
        ``idle_save_seconds`` (a heartbeat for /metrics' last pass)."""
        self._join_commit()
        if self._pass_cut:
            self._abandon_cut_pass()
        self._fold_counts()
        if background and not self.before_flush and not self.on_commit:
            self._start_commit()
            return
        try:
            self._repair_index()
            if self.store.dirty_count:
                dirty = list(self.store._dirty.values())
                for hook in self.before_flush:
                    hook(self.store.new_rounds, self)
                self.index.mark_pending([s.file_name for s in dirty])
                # Rows computed while the catch-up waited for its parse worker
                # (monitor._work_ahead), of sessions unchanged since.
                ahead = self.store.rows_ahead(dirty)
                # A large commit: its index rows are written by a child on the other core
                # while this process writes the files (index_helper.py).
                helper = (IndexHelper.start(self.index, dirty, ahead)
                          if split_wanted(dirty, len(self.store.new_rounds)) else None)
                try:
                    written = self.store.flush()
                    fault_at("index")
                    if helper is not None:
                        helper.commit([s.file_name for s in written], [s.size for s in written])
                    else:
                        self.index.update([(s.file_name, s.doc, s.size) for s in written],
                                          ahead)
                finally:
                    if helper is not None:
                        helper.abandon()   # after a failure: killed before it commits
                for hook in self.on_commit:
                    hook(written, self)
            self.state.sources = self.tailer.sources
            described = self.state.described() if self.config.follow else None
            now = time.monotonic()
            if (described is None or described != self._saved_described or idle_save
                    or now - self._saved_at >= self.idle_save_seconds):
                fault_at("state")
                # What is saved and what this process remembers as saved change
                # together: a SIGTERM between them made the stop rewind to the pair
                # of before and save it over this one (its sources and counters). The
                # copies are made first: only the save (one small file) is held.
                remembered = self._copies_to_remember()
                with signals_held():
                    save_state(self.config.state_path, self.state)
                    self._saved_sources, self._saved_counters = remembered
                self._saved_described, self._saved_at = described, now
        except (OSError, sqlite3.Error, IndexHelperDied) as e:
            self.store.discard_dirty()
            self._index_suspect = True
            # Rewind to what the files on disk describe: the next pass re-reads it.
            self._rewind()
            reason = getattr(e, "strerror", None) or str(e)
            raise MonitorError(f"cannot write the store in {self.config.output_dir}: "
                               f"{reason}; nothing was lost, the same lines are "
                               "read again once it is writable (free space?)") from e
        self._saved_sources, self._saved_counters = self._copies_to_remember()

    def _copies_to_remember(self) -> tuple[list, dict]:
        return copy.deepcopy(self.tailer.sources), copy.deepcopy(self.state.counters)

    def _repair_index(self) -> None:
        # After a failed commit the index may still mark sessions of it pending, whose
        # files were renamed or not: the next commit clears every mark, so re-read
        # those files first (a session re-read from the log adds no round to them).
        if self._index_suspect:
            self.index.repair_pending()
            self._index_suspect = False

    def _begin_catch_up(self, pairs) -> None:
        """At the start of a pass: fork the commit process if the pass has enough to read
        for background checkpoints, now, while the monitor is small (the child's pages
        are its parent's at the fork) and has no other thread."""
        if (self._commit_proc is not None or self._commit_thread is not None
                or self.before_flush or self.on_commit):
            return
        todo = sum(max((lf.size if not lf.gz else 0) - src.offset, 0)
                   + (lf.size if lf.gz and not src.gz_complete else 0) for src, lf in pairs)
        if todo < min(self.config.checkpoint_bytes, self.config.pending_bytes // 2):
            return
        self.index.close()   # no SQLite connection on both sides of the fork
        try:
            self._commit_proc = CommitProcess.start(self.config.output_dir,
                                                    self.config.state_path)
        finally:
            self.index.reconnect()

    def _end_catch_up(self) -> None:
        """When a pass has read everything (or was interrupted): the commit process takes
        no more commits. It ends now, or once the commit in flight has replied (the
        checkpoint that waits for it reaps it; so does the monitor's exit)."""
        proc = self._commit_proc
        if proc is None:
            return
        if proc.in_flight:
            proc.finish()
        else:
            proc.close()   # (interrupted, it is closed again on exit)
            self._commit_proc = None

    def _finish_commits(self) -> None:
        """On exit: let a commit in flight end (its outcome is the next run's to see),
        and reap the commit process."""
        thread = self._commit_thread
        if thread is not None:
            _wait_for(thread)
            self._commit_thread = None
        if self._commit_proc is not None:
            self._commit_proc.close()
            self._commit_proc = None

    def _start_commit(self) -> None:
        self.store.track_names()
        if self._commit_proc is not None:
            self._send_commit()
            return
        taken = self.store.take_dirty()
        try:
            self._repair_index()
            if taken:
                self.index.mark_pending(session.file_name for session, _p, _d in taken)
            prepared = self.index.prepare([(s.file_name, s.doc, len(d)) for s, _p, d in taken])
        except (OSError, sqlite3.Error) as e:
            self._commit_failed(e)
        sources, state = self._state_snapshot()
        self._thread_commit([(path, data) for _s, path, data in taken], prepared, sources, state)

    def _thread_commit(self, items: list, prepared: list, sources: list, state) -> None:
        self._commit_sources, self._commit_counters = sources, state.counters
        self._saved_described = None   # a state is saved that checkpoint() did not see

        done = threading.Event()

        def commit() -> None:
            try:
                if items:
                    atomic_write_many(self.config.output_dir, items)
                    fault_at("index")
                    self.index.update_prepared(prepared)
                fault_at("state")
                save_state(self.config.state_path, state)
            except BaseException as e:   # handed to the main thread by _join_commit
                self._commit_error = e
            finally:
                done.set()

        self._commit_error = None
        thread = threading.Thread(target=commit, name="asm-commit", daemon=True)
        thread.done = done
        with signals_held():   # recorded once it runs: a stop never finds one unstarted
            self._commit_thread = thread
            start_thread(thread)   # SIGTERM goes to the main thread

    def _send_commit(self) -> None:
        """:meth:`_start_commit` in the commit process: it gets the documents and the
        state, serialises, writes, indexes and saves (commit_process.py)."""
        taken = self.store.take_dirty_docs()
        try:
            self._repair_index()
            if taken:
                self.index.mark_pending(session.file_name for session in taken)
        except (OSError, sqlite3.Error) as e:
            self._commit_failed(e)
        sources, state = self._state_snapshot()
        proc = self._commit_proc
        try:
            proc.send([(session.file_name, session.doc) for session in taken], state)
        except NotSent:
            # A value nested too deeply to marshal (a hostile message list): the process
            # took nothing of it and is idle; this commit goes on a thread instead, or
            # one line would stop every pass at the same place.
            self._thread_commit_of(taken, sources, state)
            return
        except BaseException as e:
            # Killed before or while it read the batch (EPIPE), hung (the timeout), or
            # this process interrupted mid-send: the child acts only on whole messages.
            self._commit_proc = None
            proc.close()
            if isinstance(e, OSError):
                self._commit_died(CommitProcessDied(f"it ended ({e.strerror})"))
            self.store.discard_all()
            self._rewind()
            raise
        self._commit_sources, self._commit_counters = sources, state.counters
        self._saved_described = None   # a state is saved that checkpoint() did not see
        self._commit_taken = taken

    def _thread_commit_of(self, taken: list, sources: list, state) -> None:
        """The sessions ``taken`` for the commit process, serialised and committed on a
        thread instead (their pending marks are set)."""
        items, docs = [], []
        try:
            for session in taken:
                session.summarise()
                data = dump_document(session.doc)
                self.store.sized([session], [len(data)])
                items.append((self.config.output_dir / session.file_name, data))
                docs.append((session.file_name, session.doc, len(data)))
            prepared = self.index.prepare(docs)
        except (OSError, sqlite3.Error) as e:
            self._commit_failed(e)
        self._thread_commit(items, prepared, sources, state)

    def _state_snapshot(self):
        """The offsets read so far and the state as of them, copied: the counters change
        while the commit in flight writes it."""
        sources = copy.deepcopy(self.tailer.sources)
        state = dataclasses.replace(self.state, sources=sources,
                                    counters=copy.deepcopy(self.state.counters),
                                    alerts=copy.deepcopy(self.state.alerts),
                                    extra=copy.deepcopy(self.state.extra))
        self.state.sources = self.tailer.sources
        return sources, state

    def _join_commit(self) -> None:
        """Wait for the commit in flight; on success its offsets are the saved ones."""
        proc = self._commit_proc
        if proc is not None and proc.in_flight:
            try:
                proc.wait()   # a Ctrl-C here leaves the commit in flight, to join later
            except CommitProcessDied as e:
                self._process_died(proc, e)
            # Once the reply is there, a Ctrl-C waits until it is read and applied.
            with signals_held():
                self._join_process(proc)
            return
        thread = self._commit_thread
        if thread is None:
            return
        _wait_for(thread)   # (a stop here leaves the thread set: the stop's checkpoint waits)
        with signals_held():   # the commit's state is saved: remember it, uncut
            self._commit_thread = None
            error, self._commit_error = self._commit_error, None
            if error is None:
                self._saved_sources = self._commit_sources
                self._saved_counters = self._commit_counters
        if error is not None:
            if not isinstance(error, (OSError, sqlite3.Error)):
                self.store.discard_all()
                self._rewind()
                raise error
            self._commit_failed(error)
        self.store.evict()

    def _join_process(self, proc: CommitProcess) -> None:
        taken, self._commit_taken = self._commit_taken, []
        try:
            self.store.sized(taken, proc.result())
        except CommitProcessDied as e:
            self._process_died(proc, e)
        except (OSError, sqlite3.Error) as e:
            self._commit_failed(e)
        except BaseException:
            self.store.discard_all()
            self._rewind()
            raise
        finally:
            if proc.finishing and self._commit_proc is proc:
                proc.close()
                self._commit_proc = None
        self._saved_sources = self._commit_sources
        self._saved_counters = self._commit_counters
        self.store.evict()

    def _process_died(self, proc: CommitProcess, e: CommitProcessDied) -> None:
        self._commit_proc = None
        self._commit_taken = []
        proc.close()
        self._commit_died(e)

    def _commit_died(self, e: CommitProcessDied) -> None:
        self.store.discard_all()
        self._rewind()
        self._index_suspect = True
        # Its temp files: only this monitor and its (reaped) child write the store. The
        # sweep takes the writing mark too (a temp name): set again, since this monitor
        # goes on writing (--follow), and a kill later must leave it for the next start.
        begin_writing(self.config.output_dir, sweep=True)
        if self.config.state_path.parent != self.config.output_dir:
            begin_writing(self.config.state_path.parent, sweep=True)
        raise MonitorError(f"the commit process writing {self.config.output_dir} ended "
                           f"before its checkpoint did: {e}; nothing was lost, the same "
                           "lines are read again") from None

    def _commit_failed(self, e: BaseException) -> None:
        # Sessions marked clean for the failed commit hold rounds that are not on disk:
        # forget the whole cache, and re-read from the last offsets that are.
        self.store.discard_all()
        self._rewind()
        self._index_suspect = True
        reason = getattr(e, "strerror", None) or str(e)
        raise MonitorError(f"cannot write the store in {self.config.output_dir}: "
                           f"{reason}; nothing was lost, the same lines are "
                           "read again once it is writable (free space?)") from e

    def _rewind(self) -> None:
        """Back to what the state on disk describes: its offsets, and its counters (the
        lines after them are read, and counted, again); rounds the failed commit did
        write are recognised there as this state's, not as duplicates."""
        self._saved_described = None
        self.tailer.sources[:] = copy.deepcopy(self._saved_sources)
        self.state.sources = self.tailer.sources
        self.state.counters = copy.deepcopy(self._saved_counters)
        self._recover_from = {src.fp: src.offset for src in self._saved_sources}
        self._round_places = {}

    def save_committed_state(self) -> None:
        """Save the state as of the last commit, with the alerts and the exporters'
        progress as they are now (budget alerts between passes, or at exit after a pass
        cut short, whose offsets and counts run ahead of what was committed)."""
        self._saved_described = None
        save_state(self.config.state_path, dataclasses.replace(
            self.state, sources=self._saved_sources, counters=self._saved_counters))

    def _abandon_cut_pass(self) -> None:
        """A pass cut short (Ctrl-C, SIGTERM, an error) left its last line half handled:
        counted perhaps, its round added perhaps, its offset not advanced. Nothing of it
        after the last checkpoint is saved: the state stays the last one committed,
        offsets and counters together, and those lines are read (and counted) again.
        Rounds of them already on disk are recognised as this state's, not duplicates."""
        self._pass_cut = False
        self._pass_stats = None
        self.store.discard_all()
        self._rewind()

    def _fold_counts(self, final: bool = False) -> None:
        """Add to the state's counters what the pass counted since the last checkpoint:
        a state carries the counts of exactly the lines whose offsets it records, so a
        kill after any checkpoint neither loses the counts of the lines it committed nor
        counts them again when the next run reads what follows. ``final``: the pass has
        read everything (``passes`` counts the passes that ran to their end)."""
        stats = self._pass_stats
        if stats is None:
            return
        s, done = self.state, self._folded
        now = pass_counts(stats)
        for name, n in now.items():
            if isinstance(name, tuple):
                if n != done.get(name, 0):
                    s.count_kind(name[0], name[1], n - done.get(name, 0))
            else:
                s.count(name, n - done.get(name, 0))
        self._folded = now
        if final:
            s.count("passes")
            self._pass_stats = None


def pass_counts(stats: PassStats) -> dict:
    """The pass's counts as the state keeps them: a count by name, or by (group, kind)."""
    counts: dict = {"lines_read": stats.lines, "rounds_stored": stats.rounds + stats.recovered,
                    "duplicates_skipped": stats.duplicates, "non_ai_lines": stats.non_ai,
                    "forged_lines": stats.forged}
    for group, by_kind in (("bad_lines", stats.bad), ("warnings", stats.warnings),
                           ("file_events", stats.tail_events)):
        for kind, n in by_kind.items():
            counts[(group, kind)] = n
    return counts


def _wait_for(thread: threading.Thread) -> None:
    """Until the commit thread's work is done. Not ``join()``: in CPython 3.11 a signal
    handler that raises inside it (the stop) makes its clean-up release the lock the
    still-running thread holds and mark it stopped, so every later ``join()`` returned at
    once while it still wrote: the stop then closed the index under it (a segfault) and
    took its state as saved. An Event cut by a signal is left as it was; once it is set,
    the thread has only to return."""
    thread.done.wait()
    thread.join()
