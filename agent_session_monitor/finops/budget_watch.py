"""The monitor's budget and anomaly watch: the commit hook behind ``monitor_hooks.attach``.

Bookkeeping lives in ``monitor.state.alerts`` (saved in ``.state.json``):

- ``fired``: alert key -> day of its event time, every threshold and anomaly already
  raised (including those recorded quietly because their data was older than
  ``--alert-max-age``). Kept as one compact JSON string: the state file is pretty-printed
  by a pure-Python encoder at every checkpoint, and thousands of small entries would
  slow every poll. Keys older than FIRED_DAYS (event time) or beyond FIRED_MAX are
  forgotten: a session resumed after that long can alert again;
- ``outbox``: alerts not yet delivered to every webhook, with the webhooks still owed
  (by a secret-free id): re-sent after a failure or by the next run, dropped after a
  day; a compact string too, at most OUTBOX_MAX (a dead webhook must not make the state
  file, rewritten at every checkpoint, grow without end).

Only the monitor's thread touches it; the sender threads report back through
``Delivery.results()``, read here on each commit, ``tick()`` and ``close()``.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import TextIO

from . import anomalies
from ..reports import burn
from .alerts import Alert, stderr_line
from .budgets import (  # FinOpsConfig: where it always was, for importers
    FinOpsConfig, Usage, budget_alert, crossings, day_usage, local_day, now_stamp,
    session_usage, total_tokens,
)
from ..fmt import fmt_pct, fmt_usd
from ..links import DEFAULT_LINK_TTL, session_url
from ..reports.live import budget_line
from ..pricing.cost import Buckets

ANOMALY_TITLES = {"tool_loop": "tool-call loop", "runaway_context": "runaway context",
                  "cost_outlier": "a round far costlier than usual",
                  "idle_burst": "idle, then a burst"}
RETRY_AFTER = 300.0          # a webhook that failed every retry is tried again this much later
OUTBOX_TTL = 24 * 3600.0     # and given up on after this long
OUTBOX_MAX = 100
FIRED_MAX = 10_000
FIRED_DAYS = 14


class FinOps:
    """Hooks on one open monitor. Every failure in here is logged, never raised: a
    budget check must not stop ingestion."""

    def __init__(self, monitor, config: FinOpsConfig, err: TextIO, clock=time.time) -> None:
        self.monitor, self.config, self.err, self.clock = monitor, config, err, clock
        self.delivery = None
        self.book = book = monitor.state.alerts
        fired = book.get("fired") or {}
        try:
            self.fired: dict = json.loads(fired) if isinstance(fired, str) else dict(fired)
        except ValueError:
            self._log("warning: the alert memory in the state file is unreadable; thresholds "
                      "already alerted may alert again")
            self.fired = {}
        outbox = book.get("outbox") or []
        try:
            self.outbox: list = json.loads(outbox) if isinstance(outbox, str) else list(outbox)
        except ValueError:
            self.outbox = []
        self._pending: list = []
        self._inflight: set = set()
        self._total: int | None = None
        self.last_alert: Alert | None = None
        self.delivery = None
        if config.sinks:   # HTTP delivery is imported only when there is a webhook
            from .delivery import Delivery

            self.delivery = Delivery(config.sinks, err=err, timeout=config.timeout,
                                     retries=config.retries, backoff=config.backoff)
        if config.active:
            monitor.before_flush.append(self._before_flush)
            monitor.on_commit.append(self._on_commit)
        if any(b.scope == "total" for b in config.budgets):
            self._total = total_tokens(monitor.index.db)
        for entry in self.outbox:   # a previous run's leftovers are due now
            entry["retry_at"] = 0
        self._resend()

    # -- hooks ---------------------------------------------------------------------

    def _before_flush(self, new_rounds: list, monitor) -> None:
        # The rounds of this commit attempt; used only once the commit has succeeded.
        self._pending = list(new_rounds)

    def _on_commit(self, written: list, monitor) -> None:
        new, self._pending = self._pending, []
        try:
            self._collect()
            self._raise(self._evaluate(written, new))
            self._resend()
        except Exception as e:   # noqa: BLE001 - never stop ingestion over an alert
            self._log(f"warning: budget and alert checks failed: {type(e).__name__}: {e}")
        self._store()   # the monitor saves the state right after this hook

    def tick(self) -> None:
        """Follow mode, after each pass: take the senders' results, retry what is due."""
        try:
            self._collect()
            self._resend()
        except Exception as e:   # noqa: BLE001
            self._log(f"warning: alert delivery bookkeeping failed: {e}")
        self._store()

    def close(self, wait: float | None = None) -> None:
        """Give pending deliveries a moment (default twice the request timeout, at most
        15 s), then stop the senders and save what is still owed for the next run."""
        if self.delivery is None:
            return
        if wait is None:
            wait = min(2 * self.config.timeout + 1, 15.0)
        self.delivery.close(wait)
        self._collect()
        if self.outbox:
            self._log(f"note: {len(self.outbox)} alert(s) not yet delivered everywhere; "
                      "the next run retries them")
        self._save()

    # -- evaluation ----------------------------------------------------------------

    def _evaluate(self, written: list, new: list) -> list[tuple[Alert, str, list]]:
        """(alert, event time, keys to remember) for everything newly crossed or found."""
        cfg, db = self.config, self.monitor.index.db
        now = now_stamp(self.clock())
        found: list[tuple[Alert, str, list]] = []
        latest = max((r["timestamp"] for _, r in new), default="")
        if self._total is not None:
            self._total += sum(_tokens(r) for _, r in new)
        days: dict = {}
        for _, r in new:
            day = local_day(r["timestamp"], cfg.tz)
            days[day] = max(days.get(day, ""), r["timestamp"])
        consumer_days: dict = {}
        for _, r in new:
            key = (r.get("consumer") or "(none)", local_day(r["timestamp"], cfg.tz))
            consumer_days[key] = max(consumer_days.get(key, ""), r["timestamp"])
        own = {(b.unit, b.consumer) for b in cfg.budgets if b.consumer is not None}
        sessions = None
        for budget in cfg.budgets:
            if budget.scope == "total":
                usages = [Usage("store", self._total or 0, 0.0, 0, latest, "store")]
            elif budget.scope == "session":
                if sessions is None:
                    sessions = session_usage(db, [s.file_name for s in written])
                usages = sessions
            elif budget.scope == "day":
                usages = [replace(u, last_event=days[d])
                          for d in days for u in day_usage(db, d, cfg.tz)]
            else:
                usages = []
                for d in {d for _, d in consumer_days}:
                    for u in day_usage(db, d, cfg.tz, by_consumer=True):
                        name = u.subject.split("\n")[0]
                        if (name, d) in consumer_days and (
                                budget.consumer is not None or (budget.unit, name) not in own):
                            usages.append(replace(u, last_event=consumer_days[(name, d)]))
            for crossing in crossings(budget, usages, cfg.thresholds, self.fired):
                url = self._link(crossing.usage.subject) if budget.scope == "session" else None
                note = self._projection(crossing) if budget.scope == "day" else ""
                found.append((budget_alert(crossing, created_at=now, url=url, note=note),
                              crossing.usage.last_event, crossing.keys()))
        if cfg.anomaly_kinds:
            found += self._anomalies(written, new, now)
        return found

    def _anomalies(self, written: list, new: list, now: str) -> list:
        first: dict = {}
        for sid, r in new:
            first[sid] = min(first.get(sid, r["round"]), r["round"])
        found = []
        for session in written:
            doc = session.doc
            since = first.get(doc["session_id"])
            if since is None:
                continue
            by_round = {r["round"]: r for r in doc["rounds"]}
            for a in anomalies.detect(doc, self.monitor.table, since_round=since):
                key = f"anomaly|{a.kind}|{a.anchor}|{doc['session_id']}"
                if a.kind not in self.config.anomaly_kinds or key in self.fired:
                    continue
                alert = Alert(key=key, kind="anomaly", severity=a.severity,
                              title=f"Agent anomaly: {ANOMALY_TITLES.get(a.kind, a.kind)}",
                              text=a.explanation,
                              fields=(("Session", doc["session_id"]), ("Round", str(a.round)),
                                      ("Model", by_round.get(a.round, {}).get("model") or "-")),
                              session_id=doc["session_id"], url=self._link(doc["session_id"]),
                              created_at=now, data={**a.as_dict(), "session_id": doc["session_id"]})
                found.append((alert, by_round.get(a.round, {}).get("timestamp", ""), [key]))
        return found

    def _projection(self, crossing) -> str:
        """For today's daily budget: where the day ends at the last hour's pace."""
        try:
            data = burn.burn(self.monitor.index.db, tz=self.config.tz,
                             now=datetime.fromtimestamp(self.clock(), timezone.utc))
        except Exception:   # noqa: BLE001 - a missing projection is not worth an error
            return ""
        today = data["today"]
        if today["day"] != crossing.usage.subject or not data["recent"]["rounds"]:
            return ""
        if crossing.budget.unit == "usd":
            return f"At the last hour's pace the day ends near {fmt_usd(today['projected_cost_usd'])}."
        return f"At the last hour's pace the day ends near {today['projected_tokens']:,} tokens."

    def _link(self, session_id: str) -> str | None:
        if not self.config.base_url:
            return None
        # Alerts land in shared channels: a signed link in one expires like any other,
        # counted from the wall clock (self.clock may follow the log's event times).
        return session_url(session_id, self.config.base_url, self.config.link_secret,
                           DEFAULT_LINK_TTL)

    # -- recording and sending -----------------------------------------------------

    def _raise(self, found: list) -> None:
        if not found:
            return
        now = self.clock()
        cutoff = (datetime.fromtimestamp(now - self.config.max_age, timezone.utc)
                  .strftime("%Y-%m-%dT%H:%M:%S") if self.config.max_age > 0 else "")
        send, quiet = [], 0
        for alert, event, keys in found:
            for key in keys:
                self.fired[key] = (event or now_stamp(now))[:10]
            if event and event[:19] < cutoff:
                quiet += 1
            else:
                send.append(alert)
        rank = {"critical": 0, "warning": 1, "info": 2}
        send.sort(key=lambda a: rank.get(a.severity, 3))
        if len(send) > self.config.max_alerts:
            rest = send[self.config.max_alerts - 1:]
            send = send[:self.config.max_alerts - 1] + [Alert(
                key=f"summary|{now}|{len(rest)}", kind="summary", severity=rest[0].severity,
                title=f"{len(rest)} more alerts", created_at=now_stamp(now),
                text=f"{len(rest)} more budget thresholds or anomalies in this pass, not sent "
                     "one by one: see cli.py list --sort-by cost, and cli.py show for a session.",
                data={"titles": sorted({a.title for a in rest})})]
        for alert in send:
            self.outbox.append({"id": alert.id, "alert": alert.to_dict(), "since": now,
                                "retry_at": 0,
                                "sinks": list(self.delivery.sinks) if self.delivery else []})
        self._trim()
        # Durable before anything leaves: see the module docstring of monitor_hooks.py.
        self._save()
        for alert in send:
            self._log(stderr_line(alert))
            self.last_alert = alert
        if quiet:
            self._log(f"note: {quiet} budget threshold(s) or anomalies in data older than "
                      "--alert-max-age were recorded without alerting")
        self.outbox[:] = [e for e in self.outbox if e["sinks"]]
        self._resend()

    def _resend(self) -> None:
        if self.delivery is None:
            self.outbox.clear()
            return
        now = self.clock()
        keep = []
        for entry in self.outbox:
            entry["sinks"] = [s for s in entry["sinks"] if s in self.delivery.sinks]
            if not entry["sinks"] or "id" not in entry:
                continue
            if now - entry.get("since", now) > OUTBOX_TTL:
                self._log(f"alert given up after {OUTBOX_TTL / 3600:.0f} h of failed deliveries: "
                          f"{stderr_line(Alert.from_dict(entry['alert']))}")
                continue
            keep.append(entry)
            due = [s for s in entry["sinks"] if (entry["id"], s) not in self._inflight]
            if due and entry.get("retry_at", 0) <= now:
                self._inflight.update((entry["id"], s) for s in due)
                self.delivery.submit(Alert.from_dict(entry["alert"]), due)
        self.outbox[:] = keep

    def _collect(self) -> None:
        if self.delivery is None:
            return
        by_id = {e.get("id"): e for e in self.outbox}
        for outcome in self.delivery.results():
            self._inflight.discard((outcome.alert_id, outcome.sink_id))
            # Delivery counts for /metrics: sent, and failed (for good, or put off).
            counts = self.book.setdefault("counts", {})
            kind = "sent" if outcome.ok else "failed"
            counts[kind] = counts.get(kind, 0) + 1
            entry = by_id.get(outcome.alert_id)
            if entry is None:
                continue
            if outcome.ok or outcome.final:
                entry["sinks"] = [s for s in entry["sinks"] if s != outcome.sink_id]
            else:
                entry["retry_at"] = self.clock() + RETRY_AFTER
        self.outbox[:] = [e for e in self.outbox if e["sinks"]]

    def _trim(self) -> None:
        if len(self.outbox) > OUTBOX_MAX:
            dropped = self.outbox[:len(self.outbox) - OUTBOX_MAX]
            del self.outbox[:len(dropped)]
            self._log(f"warning: {len(dropped)} undelivered alert(s) dropped (more than "
                      f"{OUTBOX_MAX} waiting)")
        days = [d for d in self.fired.values() if isinstance(d, str) and len(d) == 10]
        if days:
            # Relative to the newest event day remembered, not the wall clock: a replay
            # of old logs must not forget what it has just raised.
            newest = datetime.strptime(max(days), "%Y-%m-%d")
            oldest = (newest - timedelta(days=FIRED_DAYS)).strftime("%Y-%m-%d")
            for key in [k for k, day in self.fired.items() if str(day) < oldest]:
                del self.fired[key]
        if len(self.fired) > FIRED_MAX:
            # The oldest by event time: their days and sessions are long over.
            for key in sorted(self.fired, key=self.fired.get)[:len(self.fired) - FIRED_MAX]:
                del self.fired[key]


    def _store(self) -> None:
        """Into the state, as compact strings (see the module docstring)."""
        try:
            self.book["fired"] = json.dumps(self.fired, separators=(",", ":"),
                                            ensure_ascii=False)
            self.book["outbox"] = json.dumps(self.outbox, separators=(",", ":"),
                                             ensure_ascii=False)
        except (TypeError, ValueError) as e:   # never raised into the monitor's commit
            self._log(f"warning: cannot record the alert state: {e}")

    def _save(self) -> None:
        self._store()
        try:
            self.monitor.save_committed_state()
        except OSError as e:
            # Still send: the marks are in memory, so this process will not repeat them.
            self._log(f"warning: cannot save alert state to {self.monitor.config.state_path}: "
                      f"{e.strerror or e}")

    def _log(self, line: str) -> None:
        if self.delivery is not None:
            self.delivery.log(line)
        else:
            print(line, file=self.err, flush=True)

    # -- the live view -------------------------------------------------------------

    def live_text(self) -> str:
        """Budget lines and the burn-rate line for ``render_live(budget_line=...)``."""
        lines = []
        try:
            db, cfg = self.monitor.index.db, self.config
            now = datetime.fromtimestamp(self.clock(), timezone.utc)
            for b in cfg.budgets:
                if b.scope == "total":
                    if self._total is None:
                        self._total = total_tokens(db)
                    lines.append(budget_line(self._total, int(b.limit)))
                elif b.scope == "day":
                    u = day_usage(db, now.astimezone(cfg.tz).date(), cfg.tz)[0]
                    used = u.value(b.unit)
                    lines.append(f"Today {u.label}: {b.amount(used)} / {b.amount(b.limit)} "
                                 f"({fmt_pct(used, b.limit)})")
            data = burn.burn(db, now=now, tz=cfg.tz)
            lines.append(burn.burn_line(data))
            top = burn.top_line(data)
            if top:
                lines.append(top)
            if self.last_alert is not None:
                lines.append(f"Last alert: {self.last_alert.title}")
        except Exception as e:   # noqa: BLE001 - the live view goes on without it
            lines.append(f"(budget line unavailable: {type(e).__name__})")
        return "\n".join(lines)


def _tokens(rnd: dict) -> int:
    b = Buckets.from_dict(rnd.get("buckets") or {})
    return b.prompt_tokens + b.output + b.reasoning
