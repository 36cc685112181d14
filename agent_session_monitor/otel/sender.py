"""One batch of the OTLP outbox sent, and its answer acted on: the POST (gzip, headers,
timeout), then success, partial success, a setup problem, refused content (the batch
halved to find the span at fault) or an outage (backoff with jitter, small probe batches).

``Sender`` is the sender thread's half of ``outbox.Exporter``, which mixes it in: its
``__init__`` sets the state read here, and its thread (``_run``) calls ``_send_once``.
"""

from __future__ import annotations

import gzip
import random
import sqlite3
import urllib.error
import urllib.request
from http.client import HTTPException

from .wire import decode_partial_success, encode_request

BATCH_BYTES = 4 * 2**20          # one request's spans: collectors refuse bodies over 4-16 MB
BACKOFF_FIRST, BACKOFF_CAP = 1.0, 120.0
CONFIG_RETRY = 300.0             # a 401/404 is a setup problem: retry, but rarely
# After a failure the sender probes with small batches, doubling on each success: a dead
# endpoint is not sent 4 MB again and again, and the backlog bound (which spares the
# batch in flight) drops the oldest spans but these few.
PROBE_SPANS = 16
WARN_AFTER = 3                   # failures in a row before stderr hears of it (cron mails it)
# Setup problems (auth, wrong URL) keep the backlog: dropping it all because a token
# expired would be the loss the outbox exists to prevent. Other 4xx (400, 413, 422) refuse
# the content: the batch is split to find the span at fault, and only that one dropped.
SETUP_ERRORS = {401: "check --otlp-header", 403: "check --otlp-header",
                404: "check --otlp-endpoint", 405: "check --otlp-endpoint",
                407: "check the proxy", 415: "the endpoint does not take OTLP protobuf"}
RETRYABLE = {408, 425, 429}


class Sender:
    """Sends the outbox's ready spans, one batch at a time (see the module docstring)."""

    def _send_once(self, db: sqlite3.Connection) -> float | None:
        """Send one batch. Returns None when nothing was ready, else the delay before the
        next attempt (0: at once)."""
        batch, size = [], 0
        with self._lock:   # see _trim
            for seq, span in db.execute("SELECT seq, span FROM outbox WHERE ready=1 ORDER BY "
                                        "seq LIMIT ?", (self._batch_limit,)):
                if batch and size + len(span) > BATCH_BYTES:
                    break
                batch.append((seq, span))
                size += len(span)
            if not batch:
                return None
            self._inflight = batch[-1][0]
        try:
            status, body, retry_after = self._post([s for _, s in batch])
        finally:
            with self._lock:
                self._inflight = 0
        n = len(batch)
        if status is not None and 200 <= status < 300:
            rejected, message = decode_partial_success(body)
            self._delete(db, batch, "rejected" if rejected else None, min(rejected, n))
            with self._lock:
                self.counters["sent"] += n - min(rejected, n)
                self.sent_this_run += n - min(rejected, n)
            if rejected:
                self._warn(f"OTLP export: {self.shown_url} rejected {rejected} of {n} spans: "
                           f"{message or 'no reason given'}", every="partial")
            if self._outage_said:
                self._warn(f"OTLP export to {self.shown_url} works again after "
                           f"{self._failures} failed attempts")
            self._failures, self._outage_said = 0, False
            self.last_error = None
            self._batch_limit = min(self._batch_limit * 2, self.config.batch_spans)
            return 0
        reason = f"HTTP {status}" if status is not None else body.decode("utf-8", "replace")
        if status is not None and status in SETUP_ERRORS:
            self._fail(f"{reason} ({SETUP_ERRORS[status]})", setup=True)
            return max(retry_after or 0, CONFIG_RETRY)
        if status is not None and 400 <= status < 500 and status not in RETRYABLE:
            # The content was refused (400, 413, 422): halve the batch to isolate the
            # span at fault; a single refused span is dropped, loudly.
            if n > 1:
                self._batch_limit = max(1, n // 2)
                return 0
            self._delete(db, batch, "rejected", 1)
            self._warn(f"OTLP export: {self.shown_url} refused a span ({reason}: "
                       f"{body[:200].decode('utf-8', 'replace')}); dropped it "
                       f"({self.counters['dropped']['rejected']:,} so far)", every="refused")
            return 0
        self._fail(reason)
        delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** min(self._failures - 1, 16))
        delay *= random.uniform(0.5, 1.0)   # jitter: many monitors, one collector
        return max(delay, min(retry_after or 0, BACKOFF_CAP))

    def _post(self, spans: list[bytes]) -> tuple[int | None, bytes, float | None]:
        """(status or None, body or error text, Retry-After seconds)."""
        body = encode_request(spans, self.config.resource)
        headers = {"Content-Type": "application/x-protobuf", **self.config.headers}
        if self.config.gzip:
            body = gzip.compress(body, 6)
            headers["Content-Encoding"] = "gzip"
        request = urllib.request.Request(self.config.endpoint, data=body, headers=headers,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout) as response:
                return response.status, response.read(1 << 20), None
        except urllib.error.HTTPError as e:
            try:
                text = e.read(4096)
            except (OSError, HTTPException):
                text = b""
            return e.code, text, _retry_after(e.headers.get("Retry-After"))
        except (OSError, HTTPException, ValueError) as e:
            # URLError, refused, reset, timeout, a closed connection, a bad URL.
            reason = getattr(e, "reason", None) or e
            return None, f"{type(e).__name__}: {reason}".encode(), None

    def _delete(self, db: sqlite3.Connection, batch: list, drop_kind: str | None,
                dropped: int) -> None:
        with db:
            db.execute("BEGIN")
            db.executemany("DELETE FROM outbox WHERE seq=?", [(seq,) for seq, _ in batch])
        with self._lock:
            self.rows -= len(batch)
            self.bytes -= sum(len(s) for _, s in batch)
        if drop_kind and dropped:
            self._count_drop(drop_kind, dropped)

    def _fail(self, reason: str, setup: bool = False) -> None:
        """Count a failed attempt; say so once per outage: at once for a setup problem
        (someone must act), after a few in a row otherwise (a blip needs nobody)."""
        self._failures += 1
        self._batch_limit = min(self._batch_limit, PROBE_SPANS)
        with self._lock:
            self.counters["failed_attempts"] += 1
        if not self._outage_said and (setup or self._failures >= WARN_AFTER):
            self._outage_said = True
            self._warn(f"OTLP export to {self.shown_url} failed ({reason}); spans stay queued "
                       f"({self.rows:,}) and are retried with backoff")
        self.last_error = reason


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None   # an HTTP date: the backoff decides
