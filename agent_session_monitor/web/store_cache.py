"""The session store as the web server reads it: a reader per request, the index's
change stamp (:class:`IndexWatch`), and the overview's aggregates and /metrics' usage
counters cached until the index changes (refreshed in the background within
``max_lag``). :mod:`routes` answers requests from it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import traceback
from contextlib import contextmanager
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Callable, Iterator

from . import metrics, views
from ..errors import MonitorError
from ..store.index import INDEX_NAME
from ..reports.reader import StoreReader
from .auth import Refused

# How old /metrics' usage counters may be while newer ones are computed in the background
# (about one scrape interval: Prometheus scrapes every 15 to 60 s).
METRICS_LAG = 60.0


class IndexWatch:
    """Tells whether the index changed: SQLite's own cross-process change detection
    (``PRAGMA data_version`` on one long-lived connection) plus the file's identity,
    since a rebuild replaces the file. None when there is no index to watch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._ident: tuple[int, int] | None = None
        self._epoch = 0

    def stamp(self) -> tuple | None:
        with self._lock:
            try:
                st = os.stat(self.path)
            except OSError:
                self._close()
                return None
            ident = (st.st_dev, st.st_ino)
            try:
                if self._db is None or ident != self._ident:
                    self._close()
                    self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                               check_same_thread=False)
                    self._ident = ident
                    self._epoch += 1
                version = self._db.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error:
                self._close()
                return None
            return ident, self._epoch, version

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
        self._db, self._ident = None, None


class StoreCache:
    """Reads the store for :class:`routes.WebApp`; ``log_line`` reports a failed
    background refresh."""

    def __init__(self, data_dir: Path, tz: tzinfo, max_lag: float,
                 log_line: Callable[[str], None]) -> None:
        self.data_dir = Path(data_dir)
        self.tz = tz
        self.log_line = log_line
        self._memory_lock = threading.Lock()
        self._memory: tuple[StoreReader, int, float] | None = None
        self.watch = IndexWatch(self.data_dir / INDEX_NAME)
        self.max_lag = max_lag
        self._overview: dict[tuple, tuple[tuple, dict, float]] = {}
        self._overview_lock = threading.Lock()
        self._refreshing_lock = threading.Lock()
        self._refreshing = False
        self._metrics: tuple[tuple, str, float] | None = None
        self._metrics_lock = threading.Lock()

    @contextmanager
    def reader(self) -> Iterator[StoreReader]:
        """A fresh reader per request (the monitor writes the index concurrently; WAL
        gives each request a consistent, current snapshot). A store without an index
        file is indexed in memory once and shared, rebuilt when the directory changes."""
        if (self.data_dir / INDEX_NAME).exists() or not self.data_dir.is_dir():
            try:
                reader = StoreReader.open(self.data_dir, progress=False)
            except MonitorError as e:
                raise Refused(503, "No session store", str(e)) from None
            try:
                yield reader
            finally:
                reader.close()
            return
        with self._memory_lock:
            stamp = os.stat(self.data_dir).st_mtime_ns
            cached = self._memory
            if cached is None or (cached[1] != stamp and time.monotonic() - cached[2] > 10):
                if cached is not None:
                    cached[0].close()
                self._memory = cached = (StoreReader.open(self.data_dir, progress=False), stamp,
                                         time.monotonic())
            yield cached[0]

    def overview_data(self, days: int) -> dict:
        """The overview's aggregates (``views.overview_data``, from the index), computed
        again only after the index changed: with 100,000 sessions SQLite needs a second
        or more for them, while checking for a change takes microseconds.

        After a change, a result younger than ``max_lag`` seconds is still served while
        one background thread computes the new one, so a monitor committing every second
        does not make every page wait; the page shows the time its data is from. With
        ``max_lag`` 0 every answer is exact."""
        key = (days, datetime.now(self.tz).date())
        stamp = self.watch.stamp()
        cached = self._overview.get(key)
        if cached is not None and stamp is not None:
            if cached[0] == stamp:
                return cached[1]
            if time.monotonic() - cached[2] < self.max_lag:
                self._refresh_later(key, days)
                return cached[1]
        return self._compute_overview(key, days)

    def _compute_overview(self, key: tuple, days: int) -> dict:
        with self._overview_lock:   # one computation at a time; latecomers reuse it
            stamp = self.watch.stamp()
            cached = self._overview.get(key)
            if cached is not None and stamp is not None and cached[0] == stamp:
                return cached[1]
            started = time.monotonic()
            with self.reader() as reader:
                data = views.overview_data(reader, self.tz, days)
            # Which change of the store these figures include: app.js asks again while
            # /api/version reports a newer one (a stale answer served within max_lag).
            data["version"] = self.store_version(stamp)
            if stamp is not None:
                kept = [(k, v) for k, v in self._overview.items() if k != key][-7:]
                self._overview = {**dict(kept), key: (stamp, data, started)}
            return data

    def _refresh_later(self, key: tuple, days: int) -> None:
        with self._refreshing_lock:
            if self._refreshing:
                return
            self._refreshing = True

        def run() -> None:
            try:
                self._compute_overview(key, days)
            except Exception:
                self.log_line("error: background overview refresh: "
                              + traceback.format_exc().rstrip())
            finally:
                self._refreshing = False

        threading.Thread(target=run, name="overview-refresh", daemon=True).start()

    def metrics_usage(self) -> str:
        """/metrics' usage counters (``metrics.usage_text``). They take one GROUP BY over
        every usage row (most of a second at 100,000 sessions), so they are cached until
        the index changes; after a change a result younger than METRICS_LAG is served
        while one background thread computes the new one (the next scrape gets it:
        counters lag a scrape, never go back). ``max_lag`` 0 makes every answer exact.
        "" without a store."""
        stamp = self.watch.stamp()
        cached = self._metrics
        if not self.data_dir.is_dir():
            usage = ""
        elif cached is not None and stamp is not None and cached[0] == stamp:
            usage = cached[1]
        elif (cached is not None and stamp is not None and self.max_lag > 0
              and time.monotonic() - cached[2] < METRICS_LAG):
            usage = cached[1]
            self._refresh_metrics_later()
        else:
            usage = self._compute_metrics()
        return usage

    def _compute_metrics(self) -> str:
        with self._metrics_lock:   # concurrent scrapes share one computation
            stamp = self.watch.stamp()
            if self._metrics is not None and stamp is not None and self._metrics[0] == stamp:
                return self._metrics[1]
            started = time.monotonic()
            with self.reader() as reader:
                usage = metrics.usage_text(reader.db)
            self._metrics = (stamp, usage, started) if stamp is not None else None
            return usage

    def _refresh_metrics_later(self) -> None:
        if not self._metrics_lock.acquire(blocking=False):
            return   # a computation is already running; it is the refresh

        def run() -> None:
            try:
                self._compute_metrics()
            except Exception:
                self.log_line("error: background metrics refresh: "
                              + traceback.format_exc().rstrip())

        self._metrics_lock.release()
        threading.Thread(target=run, name="metrics-refresh", daemon=True).start()

    def store_version(self, stamp: tuple | None) -> str:
        if stamp is not None:
            (dev, ino), epoch, data_version = stamp
            return f"{dev}-{ino}-{epoch}-{data_version}"
        try:   # no index file: the directory changes when a session file is replaced
            return f"dir-{os.stat(self.data_dir).st_mtime_ns}"
        except OSError:
            return "none"
