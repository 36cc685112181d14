"""Sending alerts to webhooks without ever holding up ingestion.

One worker thread per webhook, each with a bounded queue: ``submit`` never blocks (a
full queue is reported, and the alert stays in the caller's outbox for later), a slow
or dead webhook only delays its own queue, and the monitor's thread never touches the
network. Each POST has a timeout; transient failures (network errors, timeouts, 408,
425, 429, 5xx) are retried with exponential backoff (a 429's Retry-After is honoured, up
to a cap); other answers are final. Every outcome is reported back through
:meth:`Delivery.results`, and a failure is logged with the alert's text, so an alert is
never lost without a word.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, TextIO

from .. import __version__
from ..stop import start_thread
from .alerts import Alert, Sink, payload_for, stderr_line

TRANSIENT = {408, 425, 429}


@dataclass(frozen=True)
class Outcome:
    alert_id: str
    sink_id: str
    ok: bool
    final: bool        # False: gave up for now (closing, queue full); worth retrying later
    detail: str = ""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook that redirects is misconfigured; following it would turn the POST into
    a GET and report success."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def post_json(url: str, payload: dict, timeout: float) -> tuple[int | None, str, float | None]:
    """POST ``payload``: (HTTP status or None on a network error, detail, Retry-After)."""
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8", "surrogatepass")
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": f"agent-session-monitor/{__version__}"})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read(65536)
            return response.status, "", None
    except urllib.error.HTTPError as e:
        try:
            text = e.read(300).decode("utf-8", "replace")
        except OSError:
            text = ""
        retry = e.headers.get("Retry-After") if e.headers else None
        try:
            after = float(retry) if retry else None
        except ValueError:
            after = None
        return e.code, f"HTTP {e.code} {e.reason}: {text.strip()[:200]}".rstrip(": "), after
    except urllib.error.URLError as e:
        return None, f"cannot reach it: {e.reason}", None
    except (OSError, ValueError) as e:   # timeouts, resets, a malformed response
        return None, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__, None


class Delivery:
    """Background delivery of alerts to a fixed set of webhooks."""

    def __init__(self, sinks: list[Sink], *, err: TextIO, timeout: float = 5.0,
                 retries: int = 3, backoff: float = 1.0, max_backoff: float = 30.0,
                 queue_size: int = 200,
                 post: Callable[[str, dict, float], tuple] = post_json) -> None:
        self.sinks = {s.id: s for s in sinks}
        self.err, self.timeout, self.retries = err, timeout, retries
        self.backoff, self.max_backoff, self.post = backoff, max_backoff, post
        self._results: "queue.SimpleQueue[Outcome]" = queue.SimpleQueue()
        self._write_lock = threading.Lock()
        self._abandon = threading.Event()   # set when closing: stop waiting, keep the rest
        self._queues = {sid: queue.Queue(maxsize=queue_size) for sid in self.sinks}
        self._busy = {sid: 0 for sid in self.sinks}
        self._busy_lock = threading.Lock()
        self._threads = []
        for sid in self.sinks:
            t = threading.Thread(target=self._work, args=(sid,), daemon=True,
                                 name=f"alerts-{self.sinks[sid].kind}-{sid[:6]}")
            start_thread(t)   # SIGTERM goes to the main thread (stop.py)
            self._threads.append(t)

    # -- the monitor's side --------------------------------------------------------

    def submit(self, alert: Alert, sink_ids: list[str] | None = None) -> None:
        """Queue ``alert`` for each of ``sink_ids`` (default all). Never blocks."""
        for sid in (self.sinks if sink_ids is None else sink_ids):
            q = self._queues.get(sid)
            if q is None:
                continue
            with self._busy_lock:
                self._busy[sid] += 1
            try:
                q.put_nowait(alert)
            except queue.Full:
                with self._busy_lock:
                    self._busy[sid] -= 1
                self._report(Outcome(alert.id, sid, False, False, "queue full"), alert)

    def results(self) -> list[Outcome]:
        """Outcomes since the last call (delivered, failed for good, or put off)."""
        found = []
        while True:
            try:
                found.append(self._results.get_nowait())
            except queue.Empty:
                return found

    def pending(self) -> int:
        with self._busy_lock:
            return sum(self._busy.values())

    def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for every queue to drain; True if it did."""
        deadline = time.monotonic() + seconds
        while self.pending():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self, wait: float = 0.0) -> bool:
        """Give the queues ``wait`` seconds, then stop; undelivered alerts are reported
        as put off (not final) so the caller keeps them. True if all were delivered."""
        drained = self.wait(wait)
        self._abandon.set()
        for t in self._threads:
            t.join(timeout=0.2)
        return drained

    # -- the workers ---------------------------------------------------------------

    def _work(self, sid: str) -> None:
        q, sink = self._queues[sid], self.sinks[sid]
        while True:
            try:
                alert = q.get(timeout=0.1)
            except queue.Empty:
                if self._abandon.is_set():
                    return
                continue
            try:
                if self._abandon.is_set():
                    outcome = Outcome(alert.id, sid, False, False, "not sent before exit")
                else:
                    outcome = self._deliver(sink, alert)
            except Exception as e:   # a bug must not kill the worker and lose the queue
                outcome = Outcome(alert.id, sid, False, True, f"internal error: {e!r}")
            self._report(outcome, alert)
            with self._busy_lock:
                self._busy[sid] -= 1

    def _deliver(self, sink: Sink, alert: Alert) -> Outcome:
        payload = payload_for(sink, alert)
        detail = ""
        for attempt in range(self.retries + 1):
            status, detail, retry_after = self.post(sink.url, payload, self.timeout)
            if status is not None and 200 <= status < 300:
                return Outcome(alert.id, sink.id, True, True)
            if status is not None and status not in TRANSIENT and status < 500:
                return Outcome(alert.id, sink.id, False, True, detail)
            if attempt == self.retries:
                break
            delay = min(self.backoff * 2 ** attempt, self.max_backoff)
            if retry_after is not None:
                delay = min(max(retry_after, delay), self.max_backoff)
            if self._abandon.wait(delay):
                return Outcome(alert.id, sink.id, False, False, f"{detail}; not retried before exit")
        return Outcome(alert.id, sink.id, False, False,
                       f"{detail} (tried {self.retries + 1} times)")

    def _report(self, outcome: Outcome, alert: Alert) -> None:
        self._results.put(outcome)
        # Put off at exit: the caller keeps it and says so once, not once per alert.
        if not outcome.ok and (outcome.final or not self._abandon.is_set()):
            label = self.sinks[outcome.sink_id].label
            later = "" if outcome.final else "; kept to retry later"
            self.log(f"alert not delivered to {label}: {outcome.detail}{later}: "
                     f"{stderr_line(alert)}")

    def log(self, line: str) -> None:
        with self._write_lock:
            try:
                self.err.write(line + "\n")
                self.err.flush()
            except (OSError, ValueError):
                pass
