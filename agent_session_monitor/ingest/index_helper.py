"""The index half of a large synchronous checkpoint, on the other core.

A catch-up of a log with few checkpoints (a few MB of small messages, or a few long
sessions) ends with one synchronous commit that holds all of it: the monitor serialised
and wrote every session file, then computed and wrote every index row, one after the
other on one core while the other idled (15 MB, 201 sessions: 0.46 s of a 0.85 s run).
A child forked at that moment has the sessions for free (its pages are the monitor's: no
pickling, unlike the commit process of commit_process.py, which gets them pickled while
the monitor parses on). It computes the sessions' rows and writes them into the index
inside one open transaction while the monitor serialises and writes the files. Once the
files are durable the monitor sends their sizes; only then does the child fill in the
sizes, clear the pending mark and commit, and the monitor saves ``.state.json`` after
its reply. The commit protocol's order is unchanged: files durable -> index committed
-> state; the rows are those of ``Index.update``.

Failure: an uncommitted SQLite transaction is no transaction. The child commits nothing
before the sizes arrive; a monitor that fails (an error writing the files, Ctrl-C, an
injected fault) kills it first, and a monitor that dies takes it along (PR_SET_PDEATHSIG,
or end of file). A child that dies before its reply is the monitor's failed commit: the
pending mark set before the files were written makes the next run re-index them. A
child killed after its commit and before its reply leaves the index a step ahead of the
state, with the files durable: the order allows that.
"""

from __future__ import annotations

import gc
import os
import signal
import struct
import threading
from pathlib import Path

from ..store import fulltext
from ..store.document import summarise
from ..store.index import connect, prepare_rows, replace_prepared
from ..stop import release_signals
from .commit_process import (
    DISABLE_ENV, _die_with, _read_message, _timeout, _wait, _write_message, fork_server,
)
from .parse_ahead import spare_core

SPLIT_ENV = "ASM_SPLIT_COMMIT_ROUNDS"
# Rounds held by the sessions of a checkpoint from which their index rows are written by
# a child: below it, the fork (a few ms for a large monitor) costs more than it saves.
SPLIT_ROUNDS = 1500
# And rounds new since the last commit: a follower's checkpoint of a few new lines of a
# long session stays in one process (a long-lived monitor minds its CPU more than the
# milliseconds the child would save it).
SPLIT_NEW_ROUNDS = 500
# And a monitor smaller than this: a child's resident size counts every page it shares
# with the monitor, so a fork of a large one (a catch-up of 100,000 short sessions,
# ~270 MB) would report a process past the 300 MB budget; its final checkpoint is a
# small part of such a run anyway.
SPLIT_MAX_RESIDENT = 160 * 2**20


class IndexHelperDied(Exception):
    """The helper ended without committing (killed, out of memory, or it failed)."""


def split_rounds() -> tuple[int | None, bool]:
    """Rounds from which a synchronous checkpoint splits (None: never), and whether a test
    forces it: ASM_SPLIT_COMMIT_ROUNDS (0 every checkpoint with sessions, -1 none) runs
    either path whatever the load."""
    value = os.environ.get(SPLIT_ENV)
    if value is not None:
        try:
            n = int(value)
        except ValueError:
            pass
        else:
            return (None if n < 0 else n), True
    return SPLIT_ROUNDS, False


def wanted(sessions: list, new_rounds: int) -> bool:
    """Whether a checkpoint of ``sessions`` (``new_rounds`` of them new) should split off
    its index rows: enough rounds, forks allowed and safe, and a core idle
    (parse_ahead.spare_core): on a busy machine the child only adds its own costs (its
    copy-on-write page faults, the parent's, the totals computed twice: ~+40% of the
    index work's CPU)."""
    limit, forced = split_rounds()
    if limit is None or not sessions or not hasattr(os, "fork"):
        return False
    if not forced and new_rounds < SPLIT_NEW_ROUNDS:
        return False
    if os.environ.get(DISABLE_ENV) == "0" or threading.active_count() > 1:
        return False   # no forks wanted, or not safe (a thread's locks stay held in the child)
    if not forced and resident_bytes() > SPLIT_MAX_RESIDENT:
        return False
    rounds = 0
    for session in sessions:
        rounds += len(session.doc["rounds"])
        if rounds >= limit:
            return forced or spare_core()
    return False


def resident_bytes() -> int:
    """This process's resident size (Linux /proc/self/statm; elsewhere 0)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


class IndexHelper:
    """The monitor's handle on the child writing a checkpoint's index rows."""

    def __init__(self, pid: int, send_fd: int, reply_fd: int, names: list[str]) -> None:
        self.pid: int | None = pid
        self._send_fd: int | None = send_fd
        self._reply_fd: int | None = reply_fd
        self.names = names
        self.timeout = _timeout()

    @classmethod
    def start(cls, index, sessions: list, ahead: dict | None = None) -> "IndexHelper | None":
        """Fork the helper for ``sessions`` (their pending mark is set), or None if the
        fork failed. ``index`` (the monitor's Index) is closed across the fork: no SQLite
        connection exists on both sides of it. ``ahead``: file name -> rows already
        computed (index.rows_ahead) of sessions unchanged since: the child has them."""
        names = [session.file_name for session in sessions]
        docs = [session.doc for session in sessions]
        rows = [(ahead or {}).get(name) for name in names]
        parent = os.getpid()
        index.close()
        try:
            pid, data_w, reply_r, held = fork_server(
                lambda data_r, reply_w, held: _serve(index.path, names, docs, rows, data_r,
                                                     reply_w, parent, held))
        except OSError:
            index.reconnect()
            return None
        helper = cls(pid, data_w, reply_r, names)
        try:
            index.reconnect()
            release_signals(held)   # a signal that came meanwhile is raised here
        except BaseException:
            helper.abandon()
            raise
        return helper

    def commit(self, names: list[str], sizes: list[int]) -> None:
        """The files of the sessions are durable, with these sizes: the child completes
        the rows and commits. Returns once it has; IndexHelperDied if it did not (the
        index then still marks them pending)."""
        if names != self.names:   # never: the same sessions, in the same order
            raise IndexHelperDied("the sessions written are not those it was given")
        try:
            _write_message(self._send_fd, struct.pack(f"<{len(sizes)}q", *sizes))
            _wait(self._reply_fd, self.timeout)
            reply = _read_message(self._reply_fd, self.timeout)
        except (OSError, TimeoutError):
            reply = None
        how = self._reap(kill=reply is None)
        if reply is None:
            raise IndexHelperDied(f"the process writing its index rows ended before it "
                                  f"committed them ({how})")
        if bytes(reply) != b"ok":
            raise IndexHelperDied("the process writing its index rows failed: "
                                  + bytes(reply).decode("utf-8", "replace"))

    def abandon(self) -> None:
        """The checkpoint failed or was interrupted: the child is killed before it can
        commit (if it has not already), and reaped."""
        self._reap(kill=True)

    def _reap(self, kill: bool) -> str:
        for name in ("_send_fd", "_reply_fd"):
            fd = getattr(self, name)
            setattr(self, name, None)
            if fd is not None:
                os.close(fd)
        pid, self.pid = self.pid, None
        if pid is None:
            return "it had ended"
        if kill:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            _pid, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return "it had ended"
        if os.WIFSIGNALED(status):
            return f"it was killed by signal {os.WTERMSIG(status)}"
        return f"it exited with status {os.waitstatus_to_exitcode(status)}"


def _serve(path: Path, names: list[str], docs: list[dict], rows: list, data_fd: int,
           reply_fd: int, parent: int, held: object) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):   # the monitor decides; it kills this
        signal.signal(sig, signal.SIG_IGN)
    release_signals(held)
    _die_with(parent)
    # The documents are the monitor's pages: a collection would visit, and copy, them all.
    gc.disable()
    db = connect(path)
    try:
        try:
            todo = [(name, doc, 0) for name, doc, done in zip(names, docs, rows)
                    if done is None]
            for _name, doc, _size in todo:
                summarise(doc)   # the same totals the monitor computes before serialising
            # No snapshot of the rounds' text: nothing changes them in this process.
            computed = iter(prepare_rows(todo, fulltext.present(db), snapshot=False))
            prepared = [done if done is not None else next(computed) for done in rows]
            del docs, todo, computed
            # Inside a transaction, not committed: invisible to readers and to a crash.
            replace_prepared(db, prepared)
            del prepared
        except Exception as e:   # said when the sizes come: the monitor writes the files
            db.rollback()
            failure = f"{type(e).__name__}: {e}"
        else:
            failure = None
        message = _read_message(data_fd)
        if message is None:   # the monitor gave up (or died): nothing is committed
            db.rollback()
            return
        if failure is not None:
            _write_message(reply_fd, failure.encode("utf-8", "replace"))
            return
        sizes = struct.unpack(f"<{len(names)}q", message)
        try:
            db.executemany("UPDATE sessions SET size = ? WHERE file = ?", zip(sizes, names))
            db.execute("DELETE FROM meta WHERE key = 'pending'")
            db.commit()
        except Exception as e:
            db.rollback()
            _write_message(reply_fd, f"{type(e).__name__}: {e}".encode("utf-8", "replace"))
            return
        _write_message(reply_fd, b"ok")
    finally:
        db.close()
