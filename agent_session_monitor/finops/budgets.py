"""Budgets: what is allowed, what is used (from the index), which thresholds are newly
crossed, and the alert that says so.

Scopes: the whole store (``--budget N``, the original's token budget), each session,
each day of event time in ``--tz``, and each consumer per day. Units: tokens (every
token a round used: prompt, cache reads and writes, output and reasoning, i.e. the sum
of its exclusive buckets) or USD (priced rounds; unpriced ones are named, never $0).

A threshold fires once per (budget, subject): the keys already fired are kept in
``state.alerts["fired"]`` (monitor_hooks.py saves it before anything is sent), so a restart, a
re-read of the same log or a replay after a crash does not fire it again. The key holds
the limit: raising a budget re-arms its thresholds.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import date, datetime, timezone, tzinfo

from .alerts import Alert
from ..fmt import fmt_int, fmt_usd
from ..reports import window
from ..reports.timerange import day_window

DEFAULT_THRESHOLDS = (50, 80, 100)
SCOPE_TITLES = {"total": "Token budget", "session": "Session budget", "day": "Daily budget",
                "consumer_day": "Consumer daily budget"}


@dataclass
class FinOpsConfig:
    budgets: list = field(default_factory=list)
    thresholds: tuple = DEFAULT_THRESHOLDS
    tz: tzinfo = timezone.utc
    sinks: list = field(default_factory=list)
    anomaly_kinds: frozenset = frozenset()
    max_age: float = 24 * 3600.0      # older data is recorded without alerting; 0 = any age
    timeout: float = 5.0
    retries: int = 3
    backoff: float = 1.0
    base_url: str | None = None
    link_secret: str | None = None
    max_alerts: int = 20              # per commit; the rest go into one summary alert

    @property
    def active(self) -> bool:
        return bool(self.budgets or self.sinks or self.anomaly_kinds)


@dataclass(frozen=True)
class Budget:
    scope: str                   # "total", "session", "day", "consumer_day"
    unit: str                    # "tokens" or "usd"
    limit: float
    consumer: str | None = None  # consumer_day: one consumer's own limit (None: every one)

    def amount(self, value: float) -> str:
        return fmt_usd(value) if self.unit == "usd" else f"{fmt_int(round(value))} tokens"


@dataclass(frozen=True)
class Usage:
    """What one subject of a budget has used: a session, a day, a consumer's day."""

    subject: str          # session id, day, "consumer\nday" or "store"
    tokens: int
    cost_usd: float
    unpriced_rounds: int = 0
    last_event: str = ""  # latest event time that counted (for the alert horizon)
    label: str = ""       # for people: the session id, "2026-02-01 (UTC)", ...
    extra: tuple = ()     # more (label, value) fields for the alert

    def value(self, unit: str) -> float:
        return self.cost_usd if unit == "usd" else self.tokens


@dataclass(frozen=True)
class Crossing:
    budget: Budget
    usage: Usage
    thresholds: tuple      # newly crossed, ascending

    def keys(self) -> list[str]:
        return [fired_key(self.budget, self.usage.subject, t) for t in self.thresholds]


def fired_key(budget: Budget, subject: str, threshold: int) -> str:
    return f"budget|{budget.scope}|{budget.unit}|{budget.limit:g}|{threshold}|{subject}"


def parse_consumer_budget(text: str, unit: str) -> Budget:
    """``X`` (every consumer) or ``CONSUMER=X`` (that one); ValueError if malformed."""
    name, sep, amount = text.rpartition("=")
    value = float(amount) if unit == "usd" else int(amount)
    if not value > 0:
        raise ValueError("a budget must be positive")
    return Budget("consumer_day", unit, value, name if sep else None)


def parse_thresholds(text: str) -> tuple:
    values = sorted({int(part) for part in text.split(",") if part.strip()})
    if not values or any(v <= 0 or v > 1000 for v in values):
        raise ValueError("thresholds are percentages between 1 and 1000, e.g. 50,80,100")
    return tuple(values)


def crossings(budget: Budget, usages: list[Usage], thresholds: tuple,
              fired: dict) -> list[Crossing]:
    """The thresholds each usage has reached and that have not fired yet."""
    found = []
    for usage in usages:
        if budget.consumer is not None and usage.subject.split("\n")[0] != budget.consumer:
            continue
        pct = 100.0 * usage.value(budget.unit) / budget.limit
        new = tuple(t for t in thresholds if pct >= t
                    and fired_key(budget, usage.subject, t) not in fired)
        if new:
            found.append(Crossing(budget, usage, new))
    return found


# -- usage from the index -------------------------------------------------------------

TOKENS = "u.input + u.output"   # total (tokens.py): the index's normalised columns


def session_usage(db: sqlite3.Connection, files: list[str]) -> list[Usage]:
    found = []
    for i in range(0, len(files), 500):
        chunk = files[i:i + 500]
        marks = ",".join("?" * len(chunk))
        for sid, updated, rounds, unpriced, model, tokens, cost in db.execute(
                f"SELECT s.session_id, s.updated_at, s.rounds, s.unpriced_rounds, s.model, "
                f"SUM({TOKENS}), SUM(u.cost) FROM sessions s JOIN usage u ON u.sid = s.sid "
                f"WHERE s.file IN ({marks}) GROUP BY s.sid", chunk):
            found.append(Usage(sid, tokens or 0, cost or 0.0, unpriced, updated or "", sid,
                               (("Rounds", fmt_int(rounds)), ("Model", model or "-"))))
    return found


def day_usage(db: sqlite3.Connection, day: date, tz: tzinfo,
              by_consumer: bool = False) -> list[Usage]:
    """The day's usage in ``tz`` (one row, or one per consumer), from the time index."""
    _, _, since, until = day_window(1, tz, day)
    group = ", u.consumer" if by_consumer else ""
    src, params = window.source(since, until)
    rows = db.execute(f"SELECT COALESCE(SUM({TOKENS}), 0), COALESCE(SUM(u.cost), 0), "
                      f"COALESCE(SUM(u.unpriced_rounds), 0), MAX(u.at){group} FROM {src} u"
                      + (" GROUP BY u.consumer" if by_consumer else ""), params).fetchall()
    label = f"{day.isoformat()} ({tz})"
    found = []
    for tokens, cost, unpriced, last, *consumer in rows:
        if by_consumer:
            name = consumer[0] if consumer[0] is not None else "(none)"
            found.append(Usage(f"{name}\n{day.isoformat()}", tokens, cost, unpriced, last or "",
                               f"{name} on {label}", (("Consumer", name), ("Day", label))))
        else:
            found.append(Usage(day.isoformat(), tokens, cost, unpriced, last or "", label,
                               (("Day", label),)))
    return found


def total_tokens(db: sqlite3.Connection) -> int:
    return db.execute(f"SELECT COALESCE(SUM({TOKENS}), 0) FROM usage u").fetchone()[0]


def local_day(timestamp: str, tz: tzinfo) -> date:
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return moment.astimezone(tz).date()


# -- the alert ------------------------------------------------------------------------

def budget_alert(crossing: Crossing, *, created_at: str, url: str | None = None,
                 note: str = "") -> Alert:
    b, u = crossing.budget, crossing.usage
    top = crossing.thresholds[-1]
    used = u.value(b.unit)
    pct = 100.0 * used / b.limit
    title = SCOPE_TITLES[b.scope] + (" exceeded" if top >= 100 else f": {top}% used")
    whom = {"total": "The store", "session": f"Session {u.label}", "day": u.label,
            "consumer_day": f"Consumer {u.label}"}[b.scope]
    reached = ", ".join(f"{t}%" for t in crossing.thresholds)
    text = (f"{whom} has used {b.amount(used)} of its {b.amount(b.limit)} "
            f"{'daily ' if b.scope in ('day', 'consumer_day') else ''}budget ({pct:.0f}%; "
            f"reached {reached}).")
    if b.unit == "usd" and u.unpriced_rounds:
        text += f" {fmt_int(u.unpriced_rounds)} unpriced rounds are not counted."
    if note:
        text += " " + note
    severity = "critical" if top >= 100 else "warning" if top >= 80 else "info"
    fields = (("Used", f"{b.amount(used)} ({pct:.0f}%)"), ("Budget", b.amount(b.limit)),
              *u.extra)
    if b.scope == "session":
        fields = (("Session", u.label), *fields)
    return Alert(key=crossing.keys()[-1], kind="budget", severity=severity, title=title,
                 text=text, fields=fields,
                 session_id=u.subject if b.scope == "session" else None, url=url,
                 created_at=created_at,
                 data={"scope": b.scope, "unit": b.unit, "limit": b.limit, "used": used,
                       "percent": round(pct, 1), "thresholds": list(crossing.thresholds),
                       "subject": u.subject, "consumer": b.consumer,
                       "unpriced_rounds": u.unpriced_rounds, "last_event": u.last_event})


def now_stamp(now: float) -> str:
    return datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
