"""OTLP export: a durable outbox filled by the monitor's commit, drained by a sender thread.

Ingestion never waits on the network. ``before_flush`` (called by ``Monitor.checkpoint``
before any session file is written) only inserts the encoded spans into
``.otlp-outbox.sqlite`` in the output directory, keyed by span id; ``on_commit`` marks
them ready once the sessions that hold their rounds are on disk. A daemon thread POSTs
ready spans in batches to ``{endpoint}/v1/traces`` and deletes them on a 2xx (sender.py).

Exactly once, as far as the exporter can know:
- only rounds the store has committed are sent, so a crash before the session write,
  whose replay stores the rounds again, sends nothing twice (the ids are the same, the
  insert is ignored);
- a crash after the session write but before ``on_commit`` leaves rows not yet ready: at
  start they are checked against the store (there: ready; not there: deleted, the replay
  queues them again);
- a crash between a 2xx and the delete resends a batch with the same span ids, which
  Phoenix (``ON CONFLICT (span_id) DO NOTHING``) and id-keyed backends store once.
A backend that answers 200 before its data is durable loses what it had queued when it
stops: Phoenix queues the spans after its answer and, on SIGTERM, writes for 5 s and
drops the rest ("Span ingestion stopped with N spans still pending"; SIGKILL drops all).
No exporter can see that loss.
The backlog is bounded (spans and bytes): past the bound the oldest spans are dropped,
counted and reported. Counters live in ``state.extra["otlp"]``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ..errors import MonitorError
from ..stop import start_thread
from .options import ExportConfig, add_arguments, config_from_args  # noqa: F401 (wiring API)
from ..fmt import safe_text
from ..store.names import UNSESSIONED_ID
from ..store.index import sql_text
from .spans import round_to_span
from .sender import BACKOFF_CAP, Sender
from .wire import encode_span
from ..values import utc_now
from ..pricing.table import provider_of

OUTBOX_NAME = ".otlp-outbox.sqlite"
IDLE_POLL = 1.0                  # seconds between looks at an empty outbox
WARN_EVERY = 60.0                # seconds between two lines of a repeating kind

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
  seq INTEGER PRIMARY KEY,      -- queue order
  span_id BLOB NOT NULL UNIQUE, -- replays and resends are recognised by it
  session_id TEXT NOT NULL,
  key TEXT NOT NULL,            -- the round's idempotency key, to check it against the store
  ready INTEGER NOT NULL DEFAULT 0,  -- 1 once the session holding the round is written
  span BLOB NOT NULL            -- the encoded Span message
);
CREATE INDEX IF NOT EXISTS outbox_ready ON outbox(ready, seq);
"""


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before the session files that it precedes (power loss).
    db.execute("PRAGMA synchronous=FULL")
    return db


class Exporter(Sender):
    """The outbox and its sender for one monitor. ``attach()`` makes and starts one."""

    def __init__(self, monitor, config: ExportConfig) -> None:
        self.monitor = monitor
        self.config = config
        self.path = Path(monitor.config.output_dir) / OUTBOX_NAME
        self.content = config.content and monitor.config.store_content
        self.shown_url = _shown(config.endpoint)
        self._lock = threading.Lock()
        self.counters = _saved_counters(monitor.state.extra.get("otlp"))
        self.last_error: str | None = None
        self.sent_this_run = 0
        self._pending: list[bytes] = []        # span ids queued since the last commit
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._idle = threading.Event()         # the sender found nothing ready
        self._next_try = 0.0                   # monotonic time of the sender's next attempt
        self._inflight = 0                     # highest seq of the batch being sent
        self._failures = 0
        self._outage_said = False
        self._batch_limit = config.batch_spans
        self._warned: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        try:
            self.db = connect(self.path)
            self.db.executescript(SCHEMA)
            self._reconcile()
            self.rows, self.bytes = self.db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(span)), 0) FROM outbox").fetchone()
        except sqlite3.Error as e:
            raise MonitorError(f"cannot open the OTLP outbox {self.path}: {e} (delete it to "
                               "start afresh; the spans queued in it are then not sent)") from e
        monitor.before_flush.append(self.before_flush)
        monitor.on_commit.append(self.on_commit)

    # -- the monitor's side: SQLite only ------------------------------------------------

    def _reconcile(self) -> None:
        """Rows a crash left not ready: ready if the store has the round, else deleted
        (the replay of the same lines queues them again)."""
        rows = self.db.execute("SELECT seq, session_id, key FROM outbox WHERE ready=0").fetchall()
        if not rows:
            return
        store = self.monitor.store
        ready = [(seq,) for seq, sid, key in rows
                 if store.has_key(None if sid == UNSESSIONED_ID else sid, key)]
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("UPDATE outbox SET ready=1 WHERE seq=?", ready)
            self.db.execute("DELETE FROM outbox WHERE ready=0")

    def before_flush(self, new_rounds: list, monitor) -> None:
        """Queue the spans of rounds about to be committed (a sqlite3.Error fails the
        checkpoint like a full disk: nothing advances, the lines are read again)."""
        rows, ids = [], []
        for session_id, rnd in new_rounds:
            span = round_to_span(session_id, rnd, self.content, self._provider(rnd.get("model")),
                                 self.config.trace_per_session)
            ids.append(span.span_id)
            rows.append((span.span_id, sql_text(session_id), sql_text(rnd["key"]), encode_span(span)))
        added = added_bytes = 0
        with self.db:
            self.db.execute("BEGIN")
            for row in rows:
                if self.db.execute("INSERT OR IGNORE INTO outbox (span_id, session_id, key, "
                                   "span) VALUES (?, ?, ?, ?)", row).rowcount:
                    added += 1
                    added_bytes += len(row[3])
        with self._lock:
            self.rows += added
            self.bytes += added_bytes
        # Replaced, not extended: the rounds of a checkpoint that failed were discarded
        # with it, and come back in a later ``new_rounds`` when their lines are re-read.
        self._pending = ids
        if self.rows > self.config.max_spans or self.bytes > self.config.max_bytes:
            self._trim()

    def on_commit(self, written: list, monitor) -> None:
        """The sessions are on disk: their spans may go."""
        ids, self._pending = self._pending, []
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("UPDATE outbox SET ready=1 WHERE span_id=?", [(i,) for i in ids])
        self.record_state()
        self._wake.set()

    def _provider(self, model: str | None) -> str | None:
        found = self.monitor.table.lookup(model) if model else None
        return provider_of(*found) if found else None

    def _trim(self) -> None:
        """Drop the oldest ready spans beyond the bound. Under the lock the sender takes
        to pick a batch, and above that batch: a span is never both sent and dropped."""
        with self._lock:
            over_rows = self.rows - self.config.max_spans
            over_bytes = self.bytes - self.config.max_bytes
            victims, freed = [], 0
            for seq, size in self.db.execute("SELECT seq, LENGTH(span) FROM outbox WHERE "
                                             "ready=1 AND seq > ? ORDER BY seq", (self._inflight,)):
                if len(victims) >= over_rows and freed >= over_bytes:
                    break
                victims.append((seq,))
                freed += size
            with self.db:
                self.db.execute("BEGIN")
                self.db.executemany("DELETE FROM outbox WHERE seq=?", victims)
            self.rows -= len(victims)
            self.bytes -= freed
        self._count_drop("backlog_full", len(victims))
        if victims:
            self._warn(f"OTLP export: the outbox is over its bound ({self.config.max_spans:,} "
                       f"spans / {self.config.max_bytes // 2**20:,} MiB) while {self.shown_url} "
                       f"is not taking spans ({self.last_error or 'no answer yet'}): dropped the "
                       f"{len(victims):,} oldest; {self.counters['dropped']['backlog_full']:,} "
                       "dropped so far (raise --otlp-max-backlog to keep more)", every="full")

    def record_state(self) -> None:
        """Copy the counters into ``state.extra["otlp"]`` (saved with the next state)."""
        with self._lock:
            self.monitor.state.extra["otlp"] = {
                "endpoint": self.shown_url, "sent": self.counters["sent"],
                "failed_attempts": self.counters["failed_attempts"],
                "dropped": dict(self.counters["dropped"]), "backlog": self.rows,
                "last_error": self.last_error, "updated_at": utc_now()}

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="otlp-sender", daemon=True)
        start_thread(self._thread)   # SIGTERM goes to the main thread (stop.py)

    def flush(self, seconds: float) -> bool:
        """Give the sender up to ``seconds`` to empty the outbox; True when it did. Gives up
        early when its next retry falls after the deadline (a dead endpoint)."""
        deadline = time.monotonic() + seconds
        self._idle.clear()
        self._wake.set()
        while time.monotonic() < deadline:
            if self._idle.wait(0.05):
                return True
            if self._next_try > deadline or self._thread is None or not self._thread.is_alive():
                return False
        return False

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def close(self, flush_seconds: float | None = None) -> None:
        """Stop the sender after up to ``flush_seconds`` (default: the configured
        ``--otlp-flush-seconds``) of sending, and save the counters with the state
        (``monitor.checkpoint()``: call this inside the ``with Monitor`` block).
        What is left stays queued for the next run."""
        seconds = self.config.flush_seconds if flush_seconds is None else flush_seconds
        if self._thread is not None and seconds > 0:
            self.flush(seconds)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.config.timeout + 1)
        self.record_state()
        try:
            self.monitor.checkpoint()
        finally:
            self.db.close()

    def summary(self) -> str:
        """One line for the pass summary."""
        with self._lock:
            dropped = sum(self.counters["dropped"].values())
            text = (f"OTLP export to {self.shown_url}: {self.sent_this_run:,} spans sent, "
                    f"{self.rows:,} queued")
        if dropped:
            kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(self.counters["dropped"].items()))
            text += f", {dropped:,} dropped in all ({kinds})"
        if self.last_error and self.rows:
            text += f"; last error: {self.last_error}"
        return text

    # -- the sender thread --------------------------------------------------------------

    def _run(self) -> None:
        db = connect(self.path)
        try:
            while not self._stop.is_set():
                try:
                    delay = self._send_once(db)
                except Exception as e:  # noqa: BLE001  the thread must outlive any one batch
                    self.last_error = f"{type(e).__name__}: {e}"
                    self._warn(f"OTLP export: {self.last_error}; retrying", every="bug")
                    delay = BACKOFF_CAP
                if delay is None:                 # nothing ready
                    self._idle.set()
                    self._wake.wait(IDLE_POLL)
                    self._wake.clear()
                elif delay:
                    self._next_try = time.monotonic() + delay
                    self._stop.wait(delay)
                self._next_try = 0.0
        finally:
            db.close()

    def _count_drop(self, kind: str, n: int) -> None:
        if n:
            with self._lock:
                dropped = self.counters["dropped"]
                dropped[kind] = dropped.get(kind, 0) + n

    def _warn(self, message: str, every: str | None = None) -> None:
        """One stderr line; those of a kind ``every`` (drops, which can repeat for each
        batch of an outage) at most once a minute, the counters telling the rest."""
        if every:
            now = time.monotonic()
            if now - self._warned.get(every, -WARN_EVERY) < WARN_EVERY:
                return
            self._warned[every] = now
        print(safe_text(message), file=self.monitor.err, flush=True)


def _saved_counters(saved: object) -> dict:
    """The cumulative counters of earlier runs (a hand-edited state may hold anything)."""
    saved = saved if isinstance(saved, dict) else {}
    dropped = saved.get("dropped") if isinstance(saved.get("dropped"), dict) else {}

    def count(value: object) -> int:
        return value if type(value) is int and value >= 0 else 0

    return {"sent": count(saved.get("sent")), "failed_attempts": count(saved.get("failed_attempts")),
            "dropped": {str(k): count(v) for k, v in dropped.items()}}


def _shown(url: str) -> str:
    """The endpoint as printed: without user:password@ (headers are never printed)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host      # IPv6
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def attach(monitor, args) -> Exporter | None:
    """Start exporting ``monitor``'s rounds when the arguments (or the standard OTEL_
    variables) name an endpoint; None otherwise. Call after ``Monitor.__enter__``."""
    config = config_from_args(args)
    if config is None:
        return None
    exporter = Exporter(monitor, config)
    exporter.start()
    return exporter
