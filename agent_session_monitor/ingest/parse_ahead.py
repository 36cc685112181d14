"""Parsing ahead: what can be known of a line without the store, in a second process
during a catch-up, so that the JSON decoding runs on the other core.

A line becomes a round in two halves. The first needs nothing but the line: decode the
outer and the inner JSON, check for forgery, validate the ai_log (parse.py), hash the
line for its idempotency key, build and price the round (rounds.py). The second needs
the store and stays in the monitor's process, in file order: the duplicate check, linking
the round's messages to its session, the pass's counts, the checkpoints.
:func:`parse_record` and :func:`build_record` are the first half, used by both paths;
the monitor's ``_take`` is the second.

A catch-up with more than ``parse_ahead_bytes`` behind (monitor.py) forks one
:class:`ParseWorker` at the start of its pass, while the monitor has no other thread,
when a core is idle (:func:`spare_core`; on a saturated machine it only adds work).
The monitor still reads and frames the lines (rotation, truncation, container
unwrapping, the oversized-line rule and the allow-list, which is checked on the open
descriptor, stay where they are: the worker opens nothing, it closes every descriptor it
inherited but its two pipes) and sends them, about 1 MiB at a time with their offsets;
the worker sends back one record per line, in order. The monitor handles a record only
in file order, and the offsets it saves in a checkpoint are those of the lines handled,
never of lines only read (monitor.py), so a crash of either process anywhere replays
from offsets whose lines are all in the store.

What crosses the pipe is what the monitor needs and no more: for a round, its session
id, warnings, key and built round, and its messages *relative to the previous request of
its session*: a long conversation re-logs its whole history on every request, and
unpickling that history costs the monitor as much as decoding it. The worker keeps the
last request's messages per session (an LRU bounded by line bytes) and sends the length
of the common prefix, the key of the line it was shared with, and the new messages. The
monitor rebuilds the whole list from its own copy only when that session's context tip
is the round of that very key, which this monitor linked itself this pass (the same line
bytes, hence the same messages); else (a duplicate, a session reloaded from disk) it
decodes the line once more itself. The rebuilt list equals the logged one, so the
stored session is the same byte for byte.

Failure: a worker that dies (SIGKILL, out of memory) leaves end-of-file on its pipe;
the monitor warns once, reaps it and parses the rest of the pass itself. A line the
worker cannot parse or pickle comes back as "redo" and is parsed by the monitor, so an
unexpected error is raised where it always was. The worker exits on end-of-file of its
input (the monitor finished, or was killed) and ignores Ctrl-C (the monitor decides);
the monitor always reaps it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import struct
import time
from collections import OrderedDict
from typing import Callable

from ..pricing.table import PriceTable
from ..store.document import LINE_KEY_PREFIX, common_prefix
from ..stop import release_signals
from ..store.sessions import OBJECT_BYTES, containers
from .commit_process import fork_server
from .parse import parse_line
from .request import BadLine, Request
from .rounds import build_round, for_build_round

# Record kinds (first item of each record tuple: cheap to pickle, in order).
BAD, NON_AI, BLANK, FILTERED, REQUEST, ROUND, REDO, PARSED = range(8)

BATCH_BYTES = 1 * 2**20      # lines per message to the worker
MAX_IN_FLIGHT = 3            # batches sent and not yet handled
# What the per-session tips the worker keeps may cost: their lines' bytes, plus
# OBJECT_BYTES a container their messages decoded into (content nested deep or made of
# tiny containers costs ~40 times its bytes). Catch-ups of the bench logs find every
# tip they need at 2 MB (sessions are interleaved a few hundred at a time).
TIP_BYTES = 8 * 2**20
# Seconds without an answer after which the worker is taken for stopped or hung (kill
# -STOP, a debugger): it is killed and the monitor parses the rest itself.
TIMEOUT_ENV = "ASM_PARSE_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
_HEADER = struct.Struct("<Q")
_PIPE_SIZE = 1 * 2**20


def line_key(line: bytes) -> str:
    """The idempotency key of a round: a hash of its whole line."""
    return LINE_KEY_PREFIX + hashlib.sha256(line).hexdigest()[:32]


def position_key(fp: str, offset: int) -> str:
    """Where a line of a file starts; equal to what a stored round's ``source`` gives
    (session.round_keys), so rounds of older versions are recognised too."""
    return f"{fp[:16]}:{offset}"


def parse_record(line: bytes, read_time: str, session_key: str | None,
                 key: str | None = None) -> tuple:
    """The store-independent verdict on one line: ``(BAD, kind, detail)``,
    ``(NON_AI, forged)``, ``(BLANK,)``, ``(FILTERED,)`` or ``(REQUEST, req, key)``;
    ``key``: the line's :func:`line_key`, when the caller has it."""
    try:
        req = parse_line(line, read_time)
    except BadLine as bad:
        return (BAD, bad.kind, bad.detail)
    if not isinstance(req, Request):
        if req == "blank":
            return (BLANK,)
        return (NON_AI, req == "forged_non_ai")
    if session_key is not None and req.session_id != session_key:
        return (FILTERED,)
    return (REQUEST, req, key or line_key(line))


def build_record(record: tuple, line: bytes, fp: str | None, start: int, table: PriceTable,
                 store_content: bool, tips: "_Tips | None" = None, build: bool = True,
                 objects: int = 0) -> tuple:
    """A ``REQUEST`` record built into ``(ROUND, session_id, warnings, key, rnd, messages,
    pred, shared, spawn)``: ``messages`` is the request's whole list, or with ``pred``
    (the key of the session's previous line) its part after the ``shared`` first
    messages; ``spawn`` is the whole list when the line reports a sub-agent spawn.
    Without ``build``, the same with the request (reduced to what :func:`round_of`
    reads: rounds.for_build_round) in place of the round: ``PARSED``, built by the
    monitor when it has the time (the worker is the slower of the two)."""
    _kind, req, key = record
    warnings = list(req.warnings)   # counted as parsed: build_round may add to them
    messages = req.ai.get("messages")
    spawn = messages if b"childSessionKey" in line else None
    pred, shared = None, 0
    sent = messages if store_content else None
    if store_content and tips is not None:
        if isinstance(messages, list):
            tip = tips.get(req.session_id)
            if tip is not None and tip[1]:
                shared = common_prefix(tip[1], messages)
                if shared:
                    pred, sent = tip[0], messages[shared:]
            tips.put(req.session_id, key, messages,
                     len(line) + OBJECT_BYTES * max(objects, 0))
        elif isinstance(messages, str):
            tips.put(req.session_id, key, [], len(line))
    if not build:
        return (PARSED, req.session_id, warnings, key, for_build_round(req), sent, pred,
                shared, spawn)
    rnd = round_of(req, key, fp, start, table, store_content)
    return (ROUND, req.session_id, warnings, key, rnd, sent, pred, shared, spawn)


def round_of(req: Request, key: str, fp: str | None, start: int, table: PriceTable,
             store_content: bool) -> dict:
    """The round of a request from a log file (``fp``) or from stdin (None)."""
    source = {"fp": fp[:16], "offset": start} if fp is not None else {"stream": "stdin"}
    return build_round(req, key, source, table, store_content)


def spare_core() -> bool:
    """A core for a second process (the worker, or index_helper.py's child): more than
    one, and either the 1-minute load average leaves one idle or, right now, no other
    task is runnable and the average is below cores + 0.5. On a machine already busy a
    second process buys no time, it only adds the cost of moving the lines and the
    records (measured: a catch-up ~15% slower at load 8 on 2 cores). The average lags a
    minute behind: this monitor's own runs of the last minute (cron passes, a benchmark
    alternating runs: at most ~2 busy processes) kept it above cores - 0.5 on an
    otherwise idle machine, and the choice flipped from run to run; above cores + 0.5
    others are at work, and an idle instant between their bursts is no idle core."""
    cores = os.cpu_count() or 1
    if cores < 2:
        return False
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return True
    return load < cores - 0.5 or (load < cores + 0.5 and runnable_now() <= 1)


def runnable_now() -> int:
    """Tasks runnable at this instant, this one included (Linux: /proc/loadavg's fourth
    field); unknown: a number that leaves no core spare."""
    try:
        with open("/proc/loadavg", "rb") as f:
            return int(f.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return 1 << 30


class _Tips:
    """session id -> (key, messages) of its latest request, least recently used first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.items: OrderedDict = OrderedDict()

    def get(self, session_id):
        return self.items.get(session_id)

    def put(self, session_id, key: str, messages: list, size: int) -> None:
        old = self.items.pop(session_id, None)
        if old is not None:
            self.size -= old[2]
        self.items[session_id] = (key, messages, size)
        self.size += size
        while self.size > self.limit and self.items:
            _sid, (_k, _m, n) = self.items.popitem(last=False)
            self.size -= n


class WorkerGone(Exception):
    """The worker process ended (killed, out of memory): parse in this process."""


class ParseWorker:
    """A forked process that turns batches of lines into records, in order."""

    def __init__(self, read_time: str, session_key: str | None, table: PriceTable,
                 store_content: bool) -> None:
        import pickle   # here, not at start-up: a pass that never forks never needs it;
        self.protocol = pickle.HIGHEST_PROTOCOL   # and before the fork: the worker imports nothing
        pid, to_w, from_r, held = fork_server(
            lambda to_r, from_w, held: _serve(to_r, from_w, read_time, session_key, table,
                                              store_content, held),
            to_size=_PIPE_SIZE, from_size=_PIPE_SIZE)
        self.pid = pid
        self.wfd, self.rfd = to_w, from_r
        os.set_blocking(self.wfd, False)
        self.buf = bytearray()
        self.waited = False
        # Work for this process while it would wait for the worker: a call does one
        # piece and says whether there may be more (monitor._work_ahead).
        self.idle: Callable[[], bool] | None = None
        self.status: int | None = None
        self.timeout = _timeout()
        try:
            release_signals(held)   # a signal that came meanwhile is raised here
        except BaseException:
            self.close(kill=True)
            raise

    def send(self, fp: str | None, lines: list, build: bool = True) -> None:
        """Send one batch ``[(start, line), ...]`` or ``[(start, line, key), ...]`` (the
        lines' keys hashed by the monitor); results read meanwhile are kept. ``build``:
        the worker builds the rounds (else it sends ``PARSED`` records)."""
        import pickle
        import select

        payload = pickle.dumps((fp, build, lines), protocol=pickle.HIGHEST_PROTOCOL)
        data = memoryview(_HEADER.pack(len(payload)) + payload)
        while data:
            try:
                n = os.write(self.wfd, data)
            except BlockingIOError:
                # The pipe is full while the worker writes results: read them, so
                # neither waits for the other.
                self.waited = True
                while self._idle() and not any(
                        select.select([self.rfd], [self.wfd], [], 0)[:2]):
                    pass
                readable, writable, _x = select.select([self.rfd], [self.wfd], [], self.timeout)
                if not readable and not writable:
                    raise WorkerGone(f"no answer for {self.timeout:g} s")
                if readable:
                    self._fill()
                continue
            except OSError as e:   # BrokenPipeError: it died
                raise WorkerGone(str(e)) from None
            data = data[n:]

    def receive(self) -> list:
        """The records of the oldest batch not yet received. ``waited`` becomes true
        when this process waits for the worker, here or in :meth:`send` (the worker is
        the slower side; its reader resets it)."""
        import pickle
        import select

        need = _HEADER.size
        if not self._complete():
            ready, _w, _x = select.select([self.rfd], [], [], 0)
            self.waited = self.waited or not ready
            while not ready and self._idle():
                ready = select.select([self.rfd], [], [], 0)[0]
        while True:
            if len(self.buf) >= need:
                size = _HEADER.unpack_from(self.buf)[0]
                need = _HEADER.size + size
                if len(self.buf) >= need:
                    records = pickle.loads(memoryview(self.buf)[_HEADER.size:need])
                    del self.buf[:need]
                    return records
            self._fill()

    def _idle(self) -> bool:
        return self.idle is not None and self.idle()

    def _complete(self) -> bool:
        if len(self.buf) < _HEADER.size:
            return False
        return len(self.buf) >= _HEADER.size + _HEADER.unpack_from(self.buf)[0]

    def _fill(self) -> None:
        import select

        ready, _w, _x = select.select([self.rfd], [], [], self.timeout)
        if not ready:
            raise WorkerGone(f"no answer for {self.timeout:g} s")
        try:
            chunk = os.read(self.rfd, _PIPE_SIZE)
        except OSError as e:
            raise WorkerGone(str(e)) from None
        if not chunk:
            raise WorkerGone("end of file")
        self.buf += chunk

    def close(self, kill: bool = False) -> str | None:
        """End the worker and reap it; how it ended when that was not a clean exit."""
        for fd in (self.wfd, self.rfd):
            if fd >= 0:
                os.close(fd)
        self.wfd = self.rfd = -1
        if self.status is None:
            if kill:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _pid, self.status = _waitpid(self.pid, self.timeout)
        if os.WIFSIGNALED(self.status):
            return f"killed by signal {os.WTERMSIG(self.status)}"
        if os.WEXITSTATUS(self.status):
            return f"exit status {os.WEXITSTATUS(self.status)}"
        return None


def _timeout() -> float:
    try:
        value = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
    except ValueError:
        return DEFAULT_TIMEOUT
    # "inf" is ~4 months: select() refuses a larger timeout.
    return min(value, 1e7) if value > 0 else DEFAULT_TIMEOUT


def _waitpid(pid: int, timeout: float) -> tuple[int, int]:
    """Reap ``pid``; one that has not exited ``timeout`` s after end of file (stopped,
    hung) is killed first."""
    deadline, pause = time.monotonic() + timeout, 0.0005
    while True:
        found, status = os.waitpid(pid, os.WNOHANG)
        if found:
            return found, status
        if time.monotonic() >= deadline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = float("inf")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _serve(rfd: int, wfd: int, read_time: str, session_key: str | None, table: PriceTable,
           store_content: bool, held: object = None) -> None:
    # Ctrl-C reaches the whole process group: the monitor decides, this one follows it
    # by end of file. Nothing inherited is ours to hold: the store's lock, the index,
    # the log files.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    release_signals(held)   # held across the fork: from here on, as set just above
    low, high = sorted((rfd, wfd))
    os.closerange(3, low)
    os.closerange(low + 1, high)
    os.closerange(high + 1, 1 << 20)
    tips = _Tips(TIP_BYTES)
    reader = _FrameReader(rfd)
    count = containers
    while True:
        batch = reader.next()
        if batch is None:
            return
        fp, build, lines = batch
        records = []
        for entry in lines:
            start, line = entry[0], entry[1]
            try:
                before = count()   # containers decoded: what the tip costs
                record = parse_record(line, read_time, session_key,
                                      entry[2] if len(entry) > 2 else None)
                if record[0] == REQUEST:
                    record = build_record(record, line, fp, start, table, store_content, tips,
                                          build, count() - before)
            except Exception:
                record = (REDO,)
            records.append(record)
        del batch, lines
        payload = _dump(records)
        _write_all(wfd, _HEADER.pack(len(payload)) + payload)


def _dump(records: list) -> bytes:
    import pickle

    try:
        return pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        # One record cannot cross (nested too deeply for pickle, say): that line is
        # parsed again by the monitor, the others are sent as built.
        safe = []
        for record in records:
            try:
                pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
                safe.append(record)
            except Exception:
                safe.append((REDO,))
        return pickle.dumps(safe, protocol=pickle.HIGHEST_PROTOCOL)


class _FrameReader:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def _exactly(self, n: int) -> bytes | None:
        chunks, got = [], 0
        while got < n:
            chunk = os.read(self.fd, min(n - got, _PIPE_SIZE))
            if not chunk:
                return None
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def next(self):
        head = self._exactly(_HEADER.size)
        if head is None:
            return None
        body = self._exactly(_HEADER.unpack(head)[0])
        import pickle

        return None if body is None else pickle.loads(body)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
