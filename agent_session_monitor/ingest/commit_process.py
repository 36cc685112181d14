"""A commit process for a catch-up: the checkpoints' file writes, index rows and state go
to a child process, so that the monitor's parsing and the commit's I/O use both cores.

Why not a thread: every ``open``/``write``/``fsync``/``rename`` and every SQLite step of a
commit thread releases the GIL and must win it back from the parsing thread, which holds
it for a switch interval (5 ms) at a time. A batch of 24,000 session files then took 13 s
instead of 3 (a GIL convoy). A child has a GIL of its own; the monitor hands it one
message per checkpoint and waits for one reply: one blocking ``read`` per batch.

Protocol (one commit in flight at a time, as with the thread):

* The monitor forks the child at the start of a catch-up pass, while it is small and has
  no other thread, after closing its SQLite connection (reopened at once): no connection
  exists on both sides of the fork. The child inherits the store's ``.lock`` (flock is
  on the open file), so no second monitor writes while it does.
* Per checkpoint the monitor sends, from its main thread, the changed session documents
  and the state as of the batch's offsets. Marshalled documents, not session files:
  that costs the monitor a fraction of what summarising, serialising and computing the
  index rows would (on 25,000 short sessions its CPU time fell from ~17 s to ~11 s with
  pickle, its peak RSS by ~20 MB), and the child does that work on the other core. The
  commit goes as messages of ~1 MB of documents each, marshalled one document at a time
  as they are sent, then one with the state: neither process ever holds the batch whole
  in serialised form next to its documents (8 MB for 1,850 short sessions). marshal, not
  pickle: pickle leaves a UTF-8 copy inside every non-ASCII string it writes (CPython
  caches it in the string), which the monitor's cached sessions then kept (7-12 MB on
  the short bench), and it is 2.5x slower. The child takes the state's message as the
  go-ahead: a commit cut short (the monitor killed or interrupted while sending, or a
  document marshal refuses: an "abandon" message) is never acted on. It then does what
  a synchronous commit does, in the same order: summarise and serialise each session
  into ``atomic_write_many``, decoding one document at a time from the messages (only
  its index rows and its rounds' texts are kept past its file) -> index rows and
  pending mark cleared (on its own connection) -> ``save_state``, and replies with the
  files' sizes or the error (type, errno, strerror).
* A failure in the child is the monitor's failed commit (the same rewind and message).
  A child that dies (SIGKILL, the OOM killer) is seen as end of file: a failed commit
  too, never a traceback. A monitor that dies takes the child with it (PR_SET_PDEATHSIG
  on Linux; elsewhere the child exits at end of file once its batch is done): a batch is
  self-consistent, so either way ``.state.json`` never describes data not on disk.
* The child ignores SIGINT and SIGTERM (a Ctrl-C or ``systemctl stop`` reaches the whole
  process group): the monitor handles them, waits for the batch in flight and saves.
  Once a reply has come, the monitor holds both while it reads and applies it
  (:func:`signals_held`), so that is never cut in half; the wait before, and a hand-over
  (a batch cut short is never acted on), stay interruptible.
* At the end of the pass the monitor closes the pipe and reaps the child.
* The monitor never waits for the child forever: a child that takes nothing from the
  pipe, sends no reply or does not exit for ``ASM_COMMIT_TIMEOUT`` seconds (default
  600; a stopped child, a frozen mount) is killed, and that is a commit process that
  died: the same rewind and one line, and in follow mode the next pass retries.
"""

from __future__ import annotations

import gc
import marshal
import os
import select
import signal
import sqlite3
import struct
import threading
import time
from pathlib import Path

from ..stop import hold_signals, release_signals
from ..store import durable, fulltext
from ..store.document import summarise
from ..store.index import commit_prepared, connect, index_path, prepare_rows
from ..store.sessions import dump_document
from .state import State, save_state

_HEADER = struct.Struct("<Q")
_DOC_LEN = struct.Struct("<Q")
_CHUNK_BYTES = 1 << 20         # documents per message: about one pipe's worth
# The first byte of a commit's messages: documents, the state (the commit is complete:
# act on it), or "forget the documents sent so far" (see CommitProcess.send).
_DOCS, _STATE, _ABANDON = b"D", b"S", b"A"
_PIPE_BYTES = 1 << 20          # F_SETPIPE_SZ: fewer wake-ups per batch sent
DISABLE_ENV = "ASM_COMMIT_PROCESS"   # "0": commit on a thread (benchmarks, tests)
TIMEOUT_ENV = "ASM_COMMIT_TIMEOUT"   # seconds without progress before the child is killed
DEFAULT_TIMEOUT = 600.0
MAX_TIMEOUT = 1e7


class CommitProcessDied(Exception):
    """The commit process ended without replying (killed, out of memory)."""


class NotSent(Exception):
    """A document that cannot be marshalled (nested deeper than marshal goes): the commit
    was abandoned, the process is idle and took nothing of it."""


class CommitProcess:
    """The monitor's handle on its commit child."""

    def __init__(self, pid: int, send_fd: int, reply_fd: int) -> None:
        self.pid = pid
        self._send_fd: int | None = send_fd
        self._reply_fd: int | None = reply_fd
        self.in_flight = False
        self.timeout = _timeout()
        os.set_blocking(send_fd, False)   # a write that cannot proceed waits in select()

    @classmethod
    def start(cls, directory: Path, state_path: Path) -> "CommitProcess | None":
        """Fork a commit process, or None where that is not possible or not safe (no
        fork, or other threads: a fork copies none of them, nor what they hold)."""
        if (not hasattr(os, "fork") or os.environ.get(DISABLE_ENV) == "0"
                or threading.active_count() > 1):
            return None
        parent = os.getpid()
        try:
            pid, data_w, reply_r, held = fork_server(
                lambda data_r, reply_w, held: _serve(directory, state_path, data_r, reply_w,
                                                     parent, held),
                to_size=_PIPE_BYTES)
        except OSError:
            return None
        proc = cls(pid, data_w, reply_r)
        try:
            release_signals(held)   # a signal that came meanwhile is raised here
        except BaseException:
            proc.close()   # the child exits at end of file: none is left behind
            raise
        return proc

    def send(self, docs: list[tuple[str, dict]], state: State) -> None:
        """Hand one commit to the child: (file name, session document) of the changed
        sessions, marshalled now (a snapshot: they change again while the child writes),
        and the state that describes them. OSError if the child is gone; NotSent (nothing
        was committed, the child is idle) for a document marshal refuses."""
        import pickle   # here, not at the top: a cron pass that forks nothing skips it

        self.in_flight = True
        try:
            chunk = bytearray(_DOCS)
            for item in docs:
                try:
                    data = marshal.dumps(item)
                except (ValueError, RecursionError):
                    # Nested too deeply: what went is forgotten, this commit goes elsewhere.
                    self._send(_ABANDON)
                    self.in_flight = False
                    raise NotSent from None
                chunk += _DOC_LEN.pack(len(data))
                chunk += data
                del data
                if len(chunk) >= _CHUNK_BYTES:
                    self._send(chunk)
                    chunk = bytearray(_DOCS)
            if len(chunk) > len(_DOCS):
                self._send(chunk)
            del chunk
            self._send(_STATE + pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
        except TimeoutError:
            self._kill()
            raise TimeoutError(0, f"it took nothing from its pipe for {self.timeout:g} s "
                                  "(stopped or hung?) and was killed") from None

    def _send(self, payload: bytes) -> None:
        _write_message(self._send_fd, payload, self.timeout)

    def wait(self) -> None:
        """Wait until the reply to the commit in flight can be read (interruptible:
        nothing is consumed), or CommitProcessDied after the timeout."""
        try:
            _wait(self._reply_fd, self.timeout)
        except TimeoutError:
            self._given_up()

    def _given_up(self) -> None:
        self._kill()
        self.in_flight = False
        self._reap()
        raise CommitProcessDied(f"it did not reply for {self.timeout:g} s (stopped or "
                                "hung?) and was killed") from None

    def result(self) -> list[int]:
        """The reply to the commit in flight (call :meth:`wait` first): the sizes of the
        files written, in the order sent; or raise the error the child met (OSError /
        sqlite3.Error as they were), or CommitProcessDied if it ended without one."""
        try:
            reply = _read_message(self._reply_fd, self.timeout)
        except TimeoutError:
            self._kill()
            self.in_flight = False
            self._reap()
            raise CommitProcessDied(f"it did not reply for {self.timeout:g} s (stopped or "
                                    "hung?) and was killed") from None
        self.in_flight = False
        if reply is None:
            raise CommitProcessDied(self._reap())
        import pickle

        outcome = pickle.loads(reply)
        if outcome[0] == "ok":
            return outcome[1]
        kind, name, code, text = outcome
        if kind == "os":
            raise OSError(code, text)
        if kind == "sqlite":
            raise sqlite3.OperationalError(text)
        raise RuntimeError(f"commit process: {name}: {text}")

    def finish(self) -> None:
        """No more commits: the child exits after replying to the one in flight."""
        fd, self._send_fd = self._send_fd, None
        if fd is not None:
            try:
                # Said, not only implied by end of file: a process forked later by the
                # monitor (and not exec'd) would hold a copy of this end of the pipe.
                os.write(fd, _HEADER.pack(0))
            except OSError:
                pass   # a full pipe (the child is reading a batch) or a dead child
            os.close(fd)

    @property
    def finishing(self) -> bool:
        return self._send_fd is None

    def close(self) -> None:
        """End the child (it exits at end of file, after a batch in flight) and reap it."""
        # Idempotent, also when interrupted half way (the monitor's exit calls it again).
        self.finish()
        fd, self._reply_fd = self._reply_fd, None
        if fd is not None:
            os.close(fd)
        self.in_flight = False
        self._reap()

    def _reap(self) -> str:
        """Wait for the child to end; how it ended, in words."""
        if self.pid is None:
            return "it had ended"
        self.finish()
        # It exits at end of file once its batch is written; one that does not (stopped,
        # hung) is killed after the timeout.
        deadline = time.monotonic() + self.timeout
        pause = 0.0005
        while True:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                status = None
                break
            if pid:
                break
            if time.monotonic() >= deadline:
                self._kill()
                deadline = float("inf")
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        self.pid = None
        if status is None:
            return "it had ended"
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = str(sig)
            return f"it was killed by {name}" + (" (the OOM killer?)" if sig == signal.SIGKILL else "")
        return f"it exited with status {os.waitstatus_to_exitcode(status)}"


    def _kill(self) -> None:
        # SIGKILL ends a stopped process too.
        try:
            os.kill(self.pid, signal.SIGKILL)
        except (ProcessLookupError, TypeError):
            pass


def fork_server(serve, to_size: int = 0, from_size: int = 0) -> tuple[int, int, int, object]:
    """Fork a child that runs ``serve(read_fd, write_fd, held)`` on two new pipes and
    exits (0 once it returns, 1 if it raises: it never returns into the monitor's code).
    In the parent: (pid, the fd to write to it, the fd to read it from, ``held``), with
    SIGINT and SIGTERM still held (:func:`fork_holding_signals`): release them with
    :func:`release_signals` once ready for a signal. A pipe with a size is grown to it
    first (:func:`grow_pipe`). OSError if a pipe or the fork fails, nothing left open.
    One place for the commit process, the parse worker and the index helper."""
    to_r, to_w = os.pipe()
    try:
        from_r, from_w = os.pipe()
    except OSError:
        os.close(to_r)
        os.close(to_w)
        raise
    if to_size:
        grow_pipe(to_w, to_size)
    if from_size:
        grow_pipe(from_w, from_size)
    pid, held = fork_holding_signals((to_r, to_w, from_r, from_w))
    if pid == 0:   # the child: never returns into the monitor's code
        code = 1
        try:
            os.close(to_w)
            os.close(from_r)
            serve(to_r, from_w, held)
            code = 0
        finally:
            os._exit(code)
    os.close(to_r)
    os.close(from_w)
    return pid, to_w, from_r, held


def fork_holding_signals(fds: tuple[int, ...]) -> tuple[int, object]:
    """``os.fork()`` with SIGINT and SIGTERM held across it: (pid, what to pass to
    :func:`release_signals`, which the child calls once its own handlers are set and
    the parent once it is ready for a signal). A ``systemctl stop`` reaching the group at
    the fork would otherwise run the monitor's handler inside an at-fork hook (threading's,
    logging's _releaseLock), where its KeyboardInterrupt is ignored or printed: the stop
    was lost or a traceback appeared. If the fork fails, the signals are released,
    ``fds`` closed and the OSError raised."""
    held = hold_signals()
    try:
        return os.fork(), held
    except OSError:
        release_signals(held)
        for fd in fds:
            os.close(fd)
        raise


def _timeout() -> float:
    try:
        value = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
    except ValueError:
        return DEFAULT_TIMEOUT
    # "inf" (wait for ever, say) is ~4 months: select() refuses a larger timeout.
    return min(value, MAX_TIMEOUT) if value > 0 else DEFAULT_TIMEOUT


def _serve(directory: Path, state_path: Path, data_fd: int, reply_fd: int, parent: int,
           held: object = None) -> None:
    """The child's loop: one commit per state message until end of file."""
    import pickle

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    release_signals(held)   # one that came meanwhile is ignored now
    _die_with(parent)
    durable.in_commit_process(parent)
    # No cyclic garbage collection while a batch is handled: decoding, summarising
    # and serialising a batch allocates millions of containers, each of which counted
    # toward a collection that traversed everything alive (the batch, and the monitor's
    # heap this process shares): ~10% of the child's CPU on 25,000 short sessions. A
    # batch's documents hold no cycles and are freed by their reference counts; what
    # else one leaves is collected after it, over this process's own objects only (the
    # inherited ones are frozen, so no page of them is touched, nor copied, by it).
    gc.disable()
    gc.freeze()
    db: sqlite3.Connection | None = None
    chunks: list[bytearray] = []   # the documents of the commit being received
    try:
        while True:
            if not chunks:
                gc.collect()
            message = _read_message(data_fd)
            if not message:   # end of file, or the monitor's "no more commits"
                return        # (a commit whose state has not come is never acted on)
            kind = message[:1]
            if kind == _DOCS:
                chunks.append(message)
                continue
            if kind == _ABANDON:
                chunks = []
                continue
            state = pickle.loads(memoryview(message)[1:])
            del message
            try:
                sizes: list[int] = []
                prepared: list = []
                if chunks:
                    if db is None:
                        db = connect(index_path(directory))
                    _write_sessions(directory, _documents(chunks), sizes, prepared,
                                    fulltext.present(db))
                    durable.fault_at("index")
                    commit_prepared(db, prepared)
                    del prepared
                durable.fault_at("state")
                save_state(state_path, state)
                outcome = ("ok", sizes)
            except OSError as e:
                outcome = ("os", type(e).__name__, e.errno, e.strerror or str(e))
            except sqlite3.Error as e:
                outcome = ("sqlite", type(e).__name__, None, str(e))
            except Exception as e:
                outcome = ("other", type(e).__name__, None, str(e))
            chunks = []
            try:
                _write_message(reply_fd, pickle.dumps(outcome))
            except OSError:
                return   # the monitor is gone
    finally:
        if db is not None:
            db.close()


def _documents(chunks: list[bytearray]):
    """The (file name, document) of a commit's messages, decoded one at a time; each
    message is let go once its documents are out. A batch's documents decoded take
    ~4x their marshalled bytes: only one of them is held at a time."""
    while chunks:
        chunk = chunks.pop(0)
        with memoryview(chunk) as view:
            pos, end = len(_DOCS), len(chunk)
            while pos < end:
                (n,) = _DOC_LEN.unpack_from(view, pos)
                pos += _DOC_LEN.size
                yield marshal.loads(view[pos:pos + n])
                pos += n


def _write_sessions(directory: Path, docs, sizes: list[int], prepared: list,
                    with_text: bool) -> None:
    """Summarise, serialise and write the sessions as one durable batch; their sizes and
    their index rows (prepare_rows), computed as each is written, are appended to
    ``sizes`` and ``prepared``."""
    folder = os.fspath(directory)   # joined as text: a Path per file costs more than its name

    def files():
        for name, doc in docs:
            summarise(doc)
            data = dump_document(doc)
            sizes.append(len(data))
            # Its rounds' texts, not the rounds: the rest of the document goes now.
            prepared.extend(prepare_rows([(name, doc, len(data))], with_text, texts=True))
            del doc
            yield os.path.join(folder, name), data

    durable.atomic_write_many(directory, files())


def _die_with(parent: int) -> None:
    """Linux: SIGKILL this process when the monitor dies, so that a killed monitor's
    lock is free at once and no batch of it is written after its death."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError, ImportError):
        pass   # no prctl: end of file ends the child after its batch
    if os.getppid() != parent:   # the monitor died before prctl took effect
        os._exit(0)


def grow_pipe(fd: int, size: int = _PIPE_BYTES) -> None:
    """Ask for a larger pipe buffer (Linux); the default 64 KiB only costs system calls."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except (OSError, ImportError):
        pass


def _write_message(fd: int, payload: bytes, timeout: float | None = None) -> None:
    _write_all(fd, _HEADER.pack(len(payload)), timeout)
    _write_all(fd, payload, timeout)


def _write_all(fd: int, data: bytes, timeout: float | None = None) -> None:
    """Write all of ``data``; with a ``timeout`` (on a non-blocking fd), TimeoutError
    when the reader takes nothing for that long."""
    view = memoryview(data)
    while view:
        if timeout is not None:
            _wait(fd, timeout, write=True)
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                continue
        else:
            n = os.write(fd, view)
        view = view[n:]


def _wait(fd: int, timeout: float, write: bool = False) -> None:
    ready = select.select([], [fd], [], timeout) if write else select.select([fd], [], [], timeout)
    if not any(ready):
        raise TimeoutError


def _read_message(fd: int, timeout: float | None = None) -> bytearray | None:
    """One whole message, or None at end of file (also in the middle of one: a message
    cut short by its writer's death is never acted on)."""
    header = _read_exactly(fd, _HEADER.size, timeout)
    if header is None:
        return None
    return _read_exactly(fd, _HEADER.unpack(header)[0], timeout)


def _read_exactly(fd: int, n: int, timeout: float | None = None) -> bytearray | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        if timeout is not None:
            _wait(fd, timeout)
        k = os.readv(fd, [view[got:]])
        if k == 0:
            return None
        got += k
    return buf

