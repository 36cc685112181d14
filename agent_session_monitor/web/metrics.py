"""``GET /metrics``: the store's totals and the monitor's health in the Prometheus text
exposition format (version 0.0.4), for the Prometheus and Grafana operators already run.

Everything comes from the derived index (one GROUP BY over the usage rows) and from
``.state.json``; never a session file. Labels are model, consumer and agent (the
OpenClaw agent id from the session key, empty for other sessions): a session id
is unbounded (one series per conversation would grow Prometheus's memory without end),
so it is never a label. Counters only grow: pruning keeps the totals of what it removes
in the index (retention.py), so a prune never makes a counter go down.

Token kinds follow storage.md's one meaning for every provider: ``input`` is every
prompt token (uncached + cache read + cache write), ``output`` every generated token
(text + reasoning); ``cache_read``, ``cache_write`` and ``reasoning`` are parts of those.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from .. import __version__

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_LABEL_SETS = 2000        # (model, consumer, agent) series per family; see fold_rare
OTHER = "(other)"
PREFIX = "asm_"

# (kind label, SQL over the exclusive bucket columns of the usage table)
TOKEN_KINDS = (
    ("input", "SUM(b_input) + SUM(b_cache_read) + SUM(b_cache_write) + SUM(b_cache_write_1h)"),
    ("output", "SUM(b_output) + SUM(b_reasoning)"),
    ("cache_read", "SUM(b_cache_read)"),
    ("cache_write", "SUM(b_cache_write) + SUM(b_cache_write_1h)"),
    ("reasoning", "SUM(b_reasoning)"),
)


def usage_sql(agents: bool) -> str:
    """Sums per (model, consumer[, agent]); the agent is the session's (session-key
    parser), joined by the session's integer id."""
    sums = (f"{', '.join(sql for _, sql in TOKEN_KINDS)}, SUM(cost), SUM(rounds), "
            "SUM(unpriced_rounds), SUM(tool_calls)")
    if not agents:
        return f"SELECT model, consumer, NULL, {sums} FROM usage GROUP BY model, consumer"
    return (f"SELECT u.model, u.consumer, s.agent, {sums.replace('SUM(', 'SUM(u.')} "
            "FROM usage u JOIN sessions s ON s.sid = u.sid "
            "GROUP BY u.model, u.consumer, s.agent")


def escape_label(value: object) -> str:
    """A label value as the exposition format wants it: backslash, double quote and
    newline escaped; None (no model, no consumer) is the empty value."""
    text = "" if value is None else str(value)
    text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class Exposition:
    """Metric families written in order, each with its HELP and TYPE once."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[dict, float | int]]) -> None:
        full = PREFIX + name
        self.parts.append(f"# HELP {full} {escape_help(help_text)}\n# TYPE {full} {kind}\n")
        for labels, value in samples:
            if labels:
                inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
                self.parts.append(f"{full}{{{inner}}} {format_value(value)}\n")
            else:
                self.parts.append(f"{full} {format_value(value)}\n")

    def text(self) -> str:
        return "".join(self.parts)


# The pricing epoch and a reprice in progress (store/index.py), read by the same
# statement as the sums: one snapshot, so a reprice committing meanwhile cannot put new
# costs under the old epoch.
_EPOCH_SQL = ("SELECT (SELECT value FROM meta WHERE key = 'pricing_epoch'), "
              "(SELECT value FROM meta WHERE key = 'repricing'), ")


def usage_families(db: sqlite3.Connection, out: Exposition) -> None:
    """Counters per (model, consumer, agent) from the index's usage rows."""
    agents = any(r[1] == "agent" for r in db.execute("PRAGMA table_info(sessions)"))
    found = db.execute(_EPOCH_SQL + "* FROM (" + usage_sql(agents) + ")").fetchall()
    epoch = found[0][0] if found else None
    repricing = bool(found) and found[0][1] is not None
    rows, folded = fold_rare([r[2:] for r in found])
    n = len(TOKEN_KINDS)

    def labels(r) -> dict:
        return {"model": r[0], "consumer": r[1], "agent": r[2]}

    def priced(r) -> dict:
        # --reprice changes costs, up or down, and a counter must never go down: each
        # reprice that changed a cost starts new series (Prometheus sees the old ones
        # end), and while one runs no cost is shown (README, /metrics).
        return {**labels(r), "pricing_epoch": _epoch_label(epoch)}

    out.family("tokens_total", "counter",
               "Tokens, by kind: input (every prompt token, cache included), output (every "
               "generated token, reasoning included), and the cache_read, cache_write and "
               "reasoning parts of those.",
               (({**labels(r), "kind": kind}, r[3 + i] or 0)
                for r in rows for i, (kind, _) in enumerate(TOKEN_KINDS)))
    out.family("cost_usd_total", "counter",
               "Cost in US dollars of the priced rounds (unpriced rounds add nothing: see "
               "asm_unpriced_rounds_total).",
               # A group whose every round is unpriced has an unknown cost, not $0: no
               # sample (asm_unpriced_rounds_total counts those rounds).
               ((priced(r), round(r[3 + n] or 0.0, 12)) for r in rows
                if r[4 + n] != r[5 + n] and not repricing))
    out.family("rounds_total", "counter", "Rounds (model requests) stored.",
               ((labels(r), r[4 + n] or 0) for r in rows))
    out.family("unpriced_rounds_total", "counter",
               "Rounds whose model has no price: their cost is unknown, not zero.",
               ((priced(r), r[5 + n] or 0) for r in rows if not repricing))
    out.family("tool_call_rounds_total", "counter", "Rounds whose answer called a tool.",
               ((labels(r), r[6 + n] or 0) for r in rows))
    sessions = db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
    out.family("sessions", "gauge", "Sessions in the index (pruned ones included).",
               [({}, sessions)])
    out.family("label_sets_folded", "gauge",
               f"(model, consumer, agent) label sets summed into the {OTHER} series: more "
               f"than {MAX_LABEL_SETS} exist (client-chosen model names?).", [({}, folded)])


def _epoch_label(value: object) -> str:
    try:
        return str(max(int(value), 0))
    except (TypeError, ValueError):
        return "0"


def fold_rare(rows: list, limit: int | None = None) -> tuple[list, int]:
    """At most ``limit`` label sets: model names come from clients, and a client sending
    a new one per request would otherwise create series without end in every Prometheus
    that scrapes this. The label sets with the most rounds keep their own series; the
    rest are summed into one ``(other)`` series (said by asm_label_sets_folded). Never
    reached in normal use; when it is, a label set that later earns its own series
    leaves ``(other)``, which Prometheus reads as a counter reset of ``(other)``."""
    limit = MAX_LABEL_SETS if limit is None else limit
    if len(rows) <= limit:
        return sorted(rows, key=lambda r: (r[0] or "", r[1] or "", r[2] or "")), 0
    ranked = sorted(rows, key=lambda r: (-(r[4 + len(TOKEN_KINDS)] or 0), r[0] or "",
                                         r[1] or "", r[2] or ""))
    kept, rest = ranked[:limit - 1], ranked[limit - 1:]
    other = [OTHER, OTHER, OTHER] + [sum((r[i] or 0) for r in rest)
                                     for i in range(3, len(rest[0]))]
    kept.sort(key=lambda r: (r[0] or "", r[1] or "", r[2] or ""))
    return kept + [tuple(other)], len(rest)


def health_families(directory: Path, out: Exposition, state_path: Path | None = None) -> None:
    """The monitor's health from ``.state.json``: when it last passed, how far behind
    the logs it is, what it skipped, and its alerts."""
    path = state_path or directory / ".state.json"
    try:
        state = json.loads(path.read_bytes())
        if not isinstance(state, dict):
            raise ValueError
    except (OSError, ValueError):
        state = {}
    counters = state.get("counters") if isinstance(state.get("counters"), dict) else {}
    written = _epoch(state.get("written_at"))
    out.family("last_pass_timestamp_seconds", "gauge",
               "Unix time of the monitor's last committed pass (0: none yet).",
               [({}, written if written is not None else 0)])
    out.family("bytes_behind", "gauge",
               "Bytes of the tracked log files not yet read (live, uncompressed files).",
               [({}, bytes_behind(state.get("sources")))])
    for name, key, help_text in (
            ("passes_total", "passes", "Monitor passes."),
            ("lines_read_total", "lines_read", "Log lines read."),
            ("duplicates_skipped_total", "duplicates_skipped",
             "Rounds read again (rotation, restart) and recognised as already stored."),
            ("forged_lines_total", "forged_lines",
             "Lines where a client wrote keys of its own through a header (ignored)."),
            ("stored_rounds_total", "rounds_stored",
             "Rounds the monitor stored, each line counted once across restarts (alert "
             "when it stops growing while asm_lines_read_total grows)."),
            ("non_ai_lines_total", "non_ai_lines",
             "Log lines without an ai_log (a rising share: the ai-statistics plugin is "
             "off for some route).")):
        out.family(name, "counter", help_text, [({}, _int(counters.get(key)))])
    for name, key, help_text in (
            ("bad_lines_total", "bad_lines", "Log lines skipped, by kind."),
            ("round_warnings_total", "warnings",
             "Rounds stored with a flag, by kind (salvaged, forged, time_from_read, "
             "duplicate_key...)."),
            ("file_events_total", "file_events",
             "Events of the log files, by kind (truncated, replaced, rewritten, "
             "data_loss, unreadable, refused, bad_gzip)."),
            ("lost_bytes_total", "lost_bytes",
             "Log bytes that could not be read (truncation, a file gone), by kind.")):
        kinds = counters.get(key) if isinstance(counters.get(key), dict) else {}
        out.family(name, "counter", help_text,
                   [({"kind": k}, _int(kinds[k])) for k in sorted(kinds)])
    alerts = state.get("alerts") if isinstance(state.get("alerts"), dict) else {}
    counts = alerts.get("counts") if isinstance(alerts.get("counts"), dict) else {}
    out.family("alerts_sent_total", "counter", "Alert deliveries a webhook accepted.",
               [({}, _int(counts.get("sent")))])
    out.family("alerts_failed_total", "counter",
               "Alert deliveries that failed (given up, or put off to retry later).",
               [({}, _int(counts.get("failed")))])
    outbox = alerts.get("outbox") if isinstance(alerts.get("outbox"), list) else []
    out.family("alerts_pending", "gauge", "Alerts not yet delivered to every webhook.",
               [({}, len(outbox))])


def bytes_behind(sources: object) -> int:
    """Unread bytes of each tracked plain file still at its last path (same identity)."""
    total = 0
    for src in sources if isinstance(sources, list) else []:
        if not isinstance(src, dict) or src.get("gz") or not isinstance(src.get("path"), str):
            continue
        try:
            st = os.stat(src["path"])
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (src.get("dev"), src.get("ino")):
            total += max(st.st_size - _int(src.get("offset")), 0)
    return total


def usage_text(db: sqlite3.Connection) -> str:
    """The usage counters alone (the part worth caching until the index changes)."""
    out = Exposition()
    usage_families(db, out)
    return out.text()


def render(usage: str, directory: Path) -> str:
    """The whole exposition: ``usage`` (from :func:`usage_text`, empty without a store)
    and the monitor's health, read now."""
    out = Exposition()
    out.family("info", "gauge", "Version of agent-session-monitor serving these metrics.",
               [({"version": __version__}, 1)])
    out.parts.append(usage)
    health_families(directory, out)
    return out.text()


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _epoch(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
