"""What the overview shows, as plain data (strings already formatted as in the CLI).

Built once per request from :mod:`report` (the overview, from the index): totals as
cards, usage tables, charts, the session list and the burn rate; :mod:`render_html` turns
it into the server-rendered page, and the JSON API sends the same dict (``?view=1``) to
app.js, which updates the page in place with it. The session page's data is
:mod:`session_view`'s. Nothing here knows HTML: escaping is the renderers' job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo

from . import charts
from ..pricing import tokens
from ..fmt import fmt_cost, fmt_int, fmt_pct, fmt_time, fmt_usd, plural
from .html_parts import url
from ..reports.reader import SORTS, StoreReader
from ..reports.aggregates import day_range, recent_days
from ..reports.records import key_group_record, key_group_rows, session_record, usage_record

PAGE_SIZES = (25, 50, 100, 200)
SESSION_COLUMNS = ("Session", "Model", "Rounds", "Input", "Output", "Cached", "Cost", "Updated")
USAGE_COLUMNS = ("Sessions", "Rounds", "Input", "Output", "Reasoning", "Cached", "Cost")


def int_param(params: dict, name: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter held to low..high; ``default`` if not a number."""
    try:
        return max(low, min(int(params.get(name, default)), high))
    except ValueError:
        return default


@dataclass(frozen=True)
class SessionQuery:
    """The overview's session list state, as it appears in the URL."""

    q: str = ""
    sort: str = "updated"
    model: str = ""
    consumer: str = ""
    page: int = 1
    per_page: int = 25

    @classmethod
    def from_params(cls, params: dict[str, str]) -> "SessionQuery":
        sort = params.get("sort", "updated")
        page = int_param(params, "page", 1, 1, 10**7)
        per_page = int_param(params, "per_page", 25, 0, 10**7)
        return cls(q=params.get("q", "")[:200], sort=sort if sort in SORTS else "updated",
                   model=params.get("model", "")[:300], consumer=params.get("consumer", "")[:300],
                   page=page, per_page=per_page if per_page in PAGE_SIZES else 25)

    def params(self, **changes: object) -> dict:
        """Query parameters of this state (defaults left out), with ``changes``."""
        values = {"q": self.q, "sort": self.sort, "model": self.model,
                  "consumer": self.consumer, "page": self.page, "per_page": self.per_page,
                  **changes}
        defaults = SessionQuery()
        return {k: v for k, v in values.items() if v != getattr(defaults, k)}


def _card(ident: str, label: str, value: str, note: str = "", tone: str = "") -> dict:
    """A card; ``tone`` "warn" when its figure is not the whole truth (unpriced rounds)."""
    return {"id": ident, "label": label, "value": value, "note": note, "tone": tone}


def token_cards(t: dict) -> list[dict]:
    """The normalised token columns (tokens.py) as cards; ``t`` has input, output,
    reasoning, cached, cache_write. The page shows tokens.LEGEND once beside them."""
    inp, out = t["input"], t["output"]
    parts = [f"{fmt_int(t['cached'])} cached"]
    if t.get("cache_write"):
        parts.append(f"{fmt_int(t['cache_write'])} cache write")
    return [
        _card("input", "Input tokens", fmt_int(inp), "incl. " + ", ".join(parts)),
        _card("output", "Output tokens", fmt_int(out), f"incl. {fmt_int(t['reasoning'])} reasoning"),
        _card("reasoning", "Reasoning tokens", fmt_int(t["reasoning"]), "part of output"),
        _card("cached", "Cached tokens", fmt_int(t["cached"]),
              f"part of input; {fmt_int(t['cache_write'])} cache writes" if t.get("cache_write")
              else "part of input"),
        _card("total", "Total tokens", fmt_int(inp + out), "input + output"),
    ]


# -- overview -------------------------------------------------------------------------

def overview_data(reader: StoreReader, tz: tzinfo = timezone.utc, days: int = 30) -> dict:
    """The overview's aggregates, from the index only (never a session file)."""
    _first, last, since, until, note = recent_days(reader, days, tz)
    reader.scan_models_and_consumers()
    return {
        "days_note": note,
        "as_of": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "totals": reader.totals(),
        "by_model": reader.aggregate("model"),
        "by_consumer": reader.aggregate("consumer"),
        "by_agent": key_group_rows(reader, "agent"),
        "by_channel": key_group_rows(reader, "channel"),
        "by_day": day_range(reader.aggregate("day", tz=tz, since=since, until=until), days, tz,
                            today=last),
        "unpriced": reader.unpriced_models(),
    }


def stats_record(data: dict, tz: tzinfo) -> dict:
    """``/api/stats``: :func:`overview_data` with the CLI's explicit field names."""
    return {
        "generated_at": data["as_of"],
        "time_zone": str(tz),
        "totals": usage_record(data["totals"], ""),
        "by_model": [usage_record(r, "model") for r in data["by_model"]],
        "by_consumer": [usage_record(r, "consumer") for r in data["by_consumer"]],
        "by_agent": [key_group_record(r, "agent") for r in data["by_agent"]],
        "by_channel": [key_group_record(r, "channel") for r in data["by_channel"]],
        "by_day": [usage_record(r, "day") for r in data["by_day"]],
        "unpriced_models": [{"model": m, "rounds": n} for m, n in data["unpriced"]],
    }


def overview(data: dict, sessions: dict, tz: tzinfo = timezone.utc,
             burn: dict | None = None) -> dict:
    """Everything on ``/``: cards, charts, tables, ``sessions`` (a :func:`sessions_table`)
    and ``burn`` (``insights.overview_burn``)."""
    totals, unpriced = data["totals"], data["unpriced"]
    cost_note = ""
    if totals["unpriced_rounds"] and totals["cost"] is not None:
        cost_note = "priced rounds only"
    names = ", ".join(m if len(m) <= 30 else m[:29] + "…" for m, _ in unpriced[:3]) + (
        f" and {len(unpriced) - 3} more" if len(unpriced) > 3 else "")
    cards = [
        _card("sessions", "Sessions", fmt_int(totals["sessions"])),
        _card("rounds", "Rounds", fmt_int(totals["rounds"]),
              f"{fmt_int(totals['tool_calls'])} with tool calls"),
        *token_cards(totals),
        _card("cost", "Cost", fmt_cost(totals["cost"], totals["unpriced_rounds"]), cost_note,
              "warn" if totals["unpriced_rounds"] else ""),
        _card("unpriced", "Unpriced rounds", fmt_int(totals["unpriced_rounds"]),
              f"no price for: {names}" if unpriced else "every round priced"),
    ]
    by_model, by_consumer = data["by_model"], data["by_consumer"]
    return {
        "generated_at": fmt_time(data["as_of"], tz),
        "tz": str(tz),
        "days": len(data["by_day"]),
        "days_title": (f"Cost per day (last {plural(len(data['by_day']), 'day')}, {tz}"
                       + (", to the latest round" if data.get("days_note") else "") + ")"),
        "days_note": data.get("days_note") or "",
        "cards": cards,
        "token_legend": tokens.LEGEND,
        "charts": {"cost_per_day": charts.cost_per_day(data["by_day"]),
                   "tokens_by_model": charts.tokens_by_model(by_model)},
        "models": _usage_table("Model", by_model, totals, "(no model)"),
        "consumers": _usage_table("Consumer", by_consumer, totals, "(none)"),
        # Only for stores with OpenClaw keys: elsewhere every session is "(none)".
        "agents": _usage_table("Agent", data["by_agent"], totals, "(none)", "agent")
        if any(r["key"] is not None for r in data["by_agent"]) else None,
        "channels": _usage_table("Channel", data["by_channel"], totals, "(none)", "channel")
        if any(r["key"] is not None for r in data["by_channel"]) else None,
        "filters": {"models": sorted(r["key"] for r in by_model if r["key"]),
                    "consumers": sorted(r["key"] for r in by_consumer if r["key"])},
        "sessions": sessions,
        "burn": burn_view(burn) if burn is not None else None,
    }


def _usage_table(key_header: str, rows: list[dict], totals: dict, none_label: str,
                 subagents: str | None = None) -> dict:
    """A usage table; ``subagents`` "agent" adds the part spent in sub-agent sessions,
    "channel" what the sub-agents spawned from the group spent (key_group_rows)."""
    extra_head: list[str] = []
    if subagents == "agent":
        extra_head = ["Sub-agents", "Share"]
    elif subagents:
        extra_head = ["Spawned", "With sub-agents", "Share"]

    def cells(r: dict, key: str) -> list[str]:
        row = [key, fmt_int(r["sessions"]), fmt_int(r["rounds"]), fmt_int(r["input"]),
               fmt_int(r["output"]), fmt_int(r["reasoning"]), fmt_int(r["cached"]),
               fmt_cost(r["cost"], r["unpriced_rounds"])]
        if subagents == "agent":
            row += (["", ""] if "subagent_cost" not in r else
                    [fmt_usd(r["subagent_cost"]), fmt_pct(r["subagent_cost"] or 0, r["cost"] or 0)])
        elif subagents:
            row += (["", "", ""] if "spawned_cost" not in r else
                    [fmt_usd(r["spawned_cost"]), fmt_usd(r["cost_with_subagents"]),
                     fmt_pct(r["spawned_cost"] or 0, r["cost_with_subagents"] or 0)])
        return row

    body = [cells(r, r["key"] if r["key"] is not None else none_label) for r in rows]
    return {"head": [key_header, *USAGE_COLUMNS, *extra_head], "rows": body,
            "foot": cells(totals, "TOTAL") if rows else None}


def session_list(reader: StoreReader, query: SessionQuery) -> dict:
    """One page of the session list (search, sort, filters), from the index."""
    filters = dict(model=query.model or None, consumer=query.consumer or None,
                   search=query.q or None)
    total = reader.count_sessions(**filters)
    pages = max(1, -(-total // query.per_page))
    page = min(query.page, pages)
    rows = reader.sessions(query.sort, query.per_page, (page - 1) * query.per_page, **filters)
    return {"rows": rows, "total": total, "page": page, "pages": pages, "query": query,
            "filtered": any(filters.values())}


def sessions_record(listing: dict) -> dict:
    """``/api/sessions``: a page of :func:`session_list` with the CLI's field names."""
    query = listing["query"]
    return {"total": listing["total"], "page": listing["page"], "pages": listing["pages"],
            "per_page": query.per_page, "sort": query.sort,
            "sessions": [{**session_record(r), "url": url("/session", id=r["session_id"])}
                         for r in listing["rows"]]}


def sessions_table(listing: dict, tz: tzinfo = timezone.utc) -> dict:
    query, rows, total, page = listing["query"], listing["rows"], listing["total"], listing["page"]
    first = (page - 1) * query.per_page + 1 if rows else 0
    summary = (f"{fmt_int(first)}–{fmt_int(first + len(rows) - 1)} of {fmt_int(total)} "
               f"session{'s' if total != 1 else ''}") if rows else (
        "No sessions match" if listing["filtered"] else "No sessions yet")
    return {
        "head": [*SESSION_COLUMNS[:-1], f"Updated ({tz})"],
        "rows": [{"href": url("/session", id=r["session_id"]), "cells": _session_cells(r, tz)}
                 for r in rows],
        "total": total, "page": page, "pages": listing["pages"], "summary": summary,
        "query": query.params(page=page),
        "prev": url("/", **query.params(page=page - 1)) if page > 1 else None,
        "next": url("/", **query.params(page=page + 1)) if page < listing["pages"] else None,
    }


def _session_cells(r: dict, tz: tzinfo) -> list[str]:
    models = r["models"] or ([r["model"]] if r["model"] else [])
    model = (models[0] + (f" +{len(models) - 1}" if len(models) > 1 else "")) if models else "-"
    cost = fmt_cost(r["cost"], r["unpriced_rounds"])
    if r.get("cost_with_subagents") not in (None, r["cost"]):   # sorted by it: say it
        cost += f" ({fmt_usd(r['cost_with_subagents'])} with sub-agents)"
    return [r["session_id"], model, fmt_int(r["rounds"]), fmt_int(r["input"]),
            fmt_int(r["output"]), fmt_int(r["cached"]), cost,
            fmt_time(r["updated_at"], tz, seconds=False)]


def _now(tz: tzinfo) -> str:
    return datetime.now(tz).strftime("%Y-%m-%d %H:%M:%S")


def burn_view(data: dict) -> dict:
    """``insights.overview_burn``: the last hour's pace, today so far and projected, and
    the sessions spending now."""
    recent, today = data["recent"], data["today"]
    unpriced = today.get("unpriced_rounds") or 0
    cards = [
        _card("burn-rate", f"Last {data['window_minutes']} min",
              f"{fmt_usd(recent['usd_per_hour'])}/h",
              f"{fmt_int(round(recent['tokens_per_min']))} tokens/min"),
        _card("burn-today", f"Today ({today['day']}, {today['time_zone']})",
              fmt_usd(today["cost_usd"]),
              f"{fmt_int(today['rounds'])} rounds" + (f", {fmt_int(unpriced)} unpriced"
                                                       if unpriced else "")),
        _card("burn-projected", "Projected by midnight", fmt_usd(today["projected_cost_usd"]),
              f"at the last {data['window_minutes']} min's pace"),
        _card("burn-active", "Active sessions", fmt_int(data["active_count"]),
              f"a round in the last {data['active_minutes']} min"),
    ]
    active = [{"href": url("/session", id=s["session_id"]), "id": s["session_id"],
               "text": f"{s['model'] or '-'} · {fmt_usd(s['usd_per_hour'])}/h · "
                       f"{fmt_int(round(s['tokens_per_min']))} tokens/min"}
              for s in data["active_sessions"]]
    return {"cards": cards, "active": active, "note": data.get("note") or ""}
