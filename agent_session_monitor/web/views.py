"""What the web pages show, as plain data (strings already formatted as in the CLI).

Built once per request from :mod:`report` (the overview, from the index) or one session
document; :mod:`render_html` turns it into the server-rendered page, and the JSON API
sends the same dict (``?view=1``) to app.js, which updates the page in place with it.
Nothing here knows HTML: escaping is the renderers' job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo

from . import charts
from ..pricing import tokens
from ..fmt import (
    content_text, fmt_cost, fmt_int, fmt_pct, fmt_time, fmt_usd, plural, tool_call_parts,
)
from .html_parts import url
from ..pricing.table import provenance_lines
from ..reports.reader import (
    SORTS, StoreReader, day_range, key_group_record, key_group_rows, recent_days,
    session_record, usage_record,
)
from ..session_keys import parse_session_key
from ..store.document import full_context, round_question

# One text block (a tool result, a pasted file) past this is cut on the page; the JSON
# download has everything.
MAX_TEXT = 40_000
PAGE_SIZES = (25, 50, 100, 200)
SESSION_COLUMNS = ("Session", "Model", "Rounds", "Input", "Output", "Cached", "Cost", "Updated")
USAGE_COLUMNS = ("Sessions", "Rounds", "Input", "Output", "Reasoning", "Cached", "Cost")


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
        try:
            page = max(1, min(int(params.get("page", "1")), 10**7))
        except ValueError:
            page = 1
        try:
            per_page = int(params.get("per_page", "25"))
        except ValueError:
            per_page = 25
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


# -- one session ----------------------------------------------------------------------

def session_page(doc: dict, tz: tzinfo = timezone.utc, after: int = 0,
                 insights: dict | None = None, family: dict | None = None) -> dict:
    """Everything on ``/session``: summary, per-round chart, insights
    (``insights.session_insights``), sub-agents (``family``, StoreReader.rollup) and the
    rounds (all, or those after the first ``after`` for an in-place refresh)."""
    rounds = doc.get("rounds") or []
    results = _tool_results(rounds)
    unpriced = doc.get("unpriced_rounds") or 0
    tool_rounds = sum(1 for r in rounds if r.get("has_tool_calls"))
    cost_note = ""
    if unpriced:
        # Short enough for the card's two lines on a phone; the rounds say the rest.
        models = ", ".join(doc.get("unpriced_models") or []) or "(no model)"
        cost_note = (f"no price for: {models}" if unpriced == len(rounds) else
                     f"{plural(unpriced, 'round')} unpriced: {models}")
    cards = [
        _card("rounds", "Rounds", fmt_int(len(rounds)), f"{fmt_int(tool_rounds)} with tool calls"),
        *token_cards(tokens.of_session(doc)),
        _card("cost", "Cost", fmt_cost(doc.get("total_cost_usd"), unpriced), cost_note,
              "warn" if unpriced else ""),
    ]
    facts = [
        ["Created", f"{fmt_time(doc.get('created_at'), tz)} {tz}"],
        ["Updated", f"{fmt_time(doc.get('updated_at'), tz)} {tz}"],
        ["Models", ", ".join(doc.get("models") or []) or "-"],
        ["Consumers", ", ".join(doc.get("consumers") or []) or "-"],
        *(["Prices", line] for line in provenance_lines(doc)),
    ]
    key = parse_session_key(None if doc.get("unsessioned") else doc.get("session_id"))
    if key.kind != "other":
        facts.append(["Agent", f"{key.agent or '-'} · channel {key.channel or '-'} · {key.kind}"])
    children = []
    if family:
        if family["parent"]:
            facts.append(["Parent", family["parent"]])
        if family["subagents"]:
            n = family["subagents"]
            cards.append(_card("with-subagents", "Cost with sub-agents",
                               fmt_cost(family["cost_with_subagents_usd"],
                                        family["unpriced_rounds_with_subagents"]),
                               f"{n} sub-agent{'s' if n != 1 else ''}, "
                               f"{fmt_int(family['rounds_with_subagents'])} rounds"))
        children = [{"id": c["session_id"], "href": url("/session", id=c["session_id"]),
                     "rounds": fmt_int(c["rounds"]) if c["in_store"] else "-",
                     "cost": fmt_cost(c["cost_usd"], c["unpriced_rounds"])
                     if c["in_store"] else "no rounds yet",
                     "with": fmt_usd(c["cost_with_subagents_usd"]) if c["subagents"] else ""}
                    for c in family["children"]]
    badges: dict[int, list[str]] = {}
    for a in (insights or {}).get("anomalies") or []:
        badges.setdefault(a.get("round"), []).append(str(a.get("badge")))
    views = []
    previous_system = None
    for i, rnd in enumerate(rounds):
        if (rnd.get("round") or 0) > after:
            views.append({**_round_view(rnd, tz, results, previous_system,
                                        last=i == len(rounds) - 1),
                          "badges": badges.get(rnd.get("round"), [])})
        previous_system = rnd.get("system") or previous_system
    return {
        "session_id": doc.get("session_id") or "",
        "updated_at": doc.get("updated_at"),
        "generated_at": _now(tz),
        "cards": cards,
        "token_legend": tokens.LEGEND,
        "facts": facts,
        "chart": charts.per_round(rounds),
        "children": children,
        "parent": {"id": family["parent"], "href": url("/session", id=family["parent"])}
        if family and family["parent"] else None,
        "insights": insights_view(insights) if insights is not None else None,
        "keys": [r.get("key") for r in rounds],
        "after": after,
        "rounds": views,
    }


def insights_view(insights: dict) -> dict:
    """A session's anomalies and cheaper-model suggestions, formatted."""
    anomalies = [{"badge": str(a.get("badge")), "severity": str(a.get("severity") or ""),
                  "round": a.get("round"), "anchor": f"r{a.get('round')}",
                  "text": str(a.get("explanation") or "")}
                 for a in insights.get("anomalies") or []]
    suggestions = insights.get("suggestions") or []
    rows = [[s["model"], s["provider"] + (" (same)" if s.get("same_provider") else ""),
             fmt_usd(s["cost_usd"]), f"{fmt_usd(s['saving_usd'])} ({s['saving_pct']:.0f}%)"]
            for s in suggestions]
    return {"anomalies": anomalies,
            "suggestions": {"head": ["Model", "Provider", "Would cost", "Saving"],
                            "rows": rows, "foot": None},
            "actual": fmt_usd(suggestions[0]["actual_usd"]) if suggestions else "",
            "note": f"{insights.get('suggestions_basis', '')}. {insights.get('caveat', '')}"
            if suggestions else "",
            "empty": not anomalies and not suggestions}


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


# Each warning a round can carry, as the page explains it (the code stays in the JSON).
WARNINGS = {
    "salvaged": "salvaged: the log line was not valid JSON (a quote in a header such as the "
                "User-Agent, which the gateway does not escape); its ai_log was read intact",
    "forged": "forged: the line carried a key twice (a client writing through a header); "
              "the genuine one was used",
    "naive_time": "time without a zone in the log: read as UTC",
    "bad_time": "the log's time could not be read: another time of the line was used",
    "time_from_read": "no time in the line: the time it was read is shown",
    "bad_details": "the provider's token details could not be read: totals used as logged",
    "truncated_by_gateway": "cut by the gateway's value_length_limit: some text is shown as "
                            "logged (head [truncated] tail)",
    "cost_out_of_range": "the tokens priced to an impossible amount: left unpriced",
    "raw_control_char": "a raw control character in the log line was replaced",
    "bad_session_id": "the session id was not usable: the round is kept as unsessioned",
    "reserved_session_id": "the session id is a name this tool reserves: kept as unsessioned",
}
SHORT_REASONING = 600   # characters: reasoning this short is shown open


def _warning_text(code: object) -> str:
    return WARNINGS.get(str(code), str(code))


def _round_view(rnd: dict, tz: tzinfo, results: dict, previous_system: object,
                last: bool = False) -> dict:
    n = rnd.get("round") or 0
    cost = fmt_usd(rnd.get("cost_usd"))
    if rnd.get("cost_usd") is not None and rnd.get("priced_as") not in (None, rnd.get("model")):
        cost += f" (priced as {rnd['priced_as']})"
    if rnd.get("provider_cost_usd") is not None:
        cost += f"; provider reported {fmt_usd(rnd['provider_cost_usd'])}"
    t = tokens.of_round(rnd)
    stats = [["Input", fmt_int(t["input"])], ["Output", fmt_int(t["output"])],
             ["Reasoning", fmt_int(t["reasoning"])], ["Cached", fmt_int(t["cached"])]]
    if t["cache_write"]:
        stats.append(["Cache write", fmt_int(t["cache_write"])])
    stats.append(["Cost", cost])
    latency = [f"{label} {fmt_int(rnd[name])} ms" for label, name in
               (("first token", "llm_first_token_duration"), ("total", "llm_service_duration"))
               if isinstance(rnd.get(name), int) and not isinstance(rnd.get(name), bool)]
    if latency:
        stats.append(["Latency", ", ".join(latency)])
    tags = [t for t in (rnd.get("response_type"),
                        f"consumer {rnd['consumer']}" if rnd.get("consumer") else None,
                        f"chat round {rnd['chat_round']}" if rnd.get("chat_round") else None)
            if isinstance(t, str) and t]
    calls = []
    logged_calls = rnd.get("tool_calls")
    if isinstance(logged_calls, str):
        # Cut by the gateway's length limit: one entry, the text as it was logged.
        logged_calls = [{"function": {"name": "(cut by the gateway's length limit)",
                                      "arguments": logged_calls}}]
    for call in logged_calls if isinstance(logged_calls, list) else []:
        name, arguments = tool_call_parts(call)
        call_id = call.get("id") if isinstance(call, dict) else None
        found = results.get(call_id) if isinstance(call_id, str) else None
        calls.append({"name": name, "id": call_id if isinstance(call_id, str) else "",
                      "arguments": _clip(_pretty(arguments)),
                      "result": _clip(found[1]) if found else None,
                      "result_round": found[0] if found else None,
                      "no_result": "" if found else (
                          "No result yet: the agent has not sent its next request"
                          if last else "Result not among the stored messages (cut by the "
                          "gateway, or not sent back)")})
    messages = rnd.get("messages")
    truncated = bool(rnd.get("messages_truncated")) or isinstance(messages, str)
    new = messages if isinstance(messages, list) else []
    offset = rnd.get("messages_offset") or 0
    system = rnd.get("system")
    return {
        "n": n,
        "key": rnd.get("key") or "",
        "anchor": f"r{n}",
        "time": f"{fmt_time(rnd.get('timestamp'), tz)} {tz}",
        "model": rnd.get("model") or "(no model)",
        "unpriced": rnd.get("cost_usd") is None,
        "tags": tags,
        "stats": stats,
        "warnings": [_warning_text(w) for w in rnd.get("warnings") or []],
        "tool_calls": calls,
        "has_tool_calls": bool(rnd.get("has_tool_calls")),
        "system": _clip(content_text(system)) if system and system != previous_system else None,
        **_question(rnd, new),
        "answer": _text_or_none(rnd.get("answer")),
        "reasoning": _text_or_none(rnd.get("reasoning")),
        "reasoning_open": len(content_text(rnd.get("reasoning")) or "") <= SHORT_REASONING,
        "messages": [_message_view(m) for m in new],
        "truncated_messages": _clip(messages) if truncated and isinstance(messages, str) else None,
        "new_from": offset + 1,
        "context_count": 0 if truncated else offset + len(new),
    }


def _question(rnd: dict, new: list) -> dict:
    """The round's question and its label. A round logged with an empty question (a
    tool loop whose request ended with a tool result) shows that last message instead
    of leaving it folded in the message list."""
    question = _text_or_none(round_question(rnd))
    if question is None and new and isinstance(new[-1], dict):
        last = new[-1]
        content = last.get("content")
        is_result = last.get("role") == "tool" or (isinstance(content, list) and content and all(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content))
        if is_result:
            return {"question": _text_or_none(content), "question_label": "Last message: a tool result"}
    return {"question": question, "question_label": _question_label(rnd)}


def _question_label(rnd: dict) -> str:
    """In an agent's tool loop the logged "question" (the request's last message) is a
    tool result, not something a person asked: say so."""
    messages = rnd.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages \
        and isinstance(messages[-1], dict) \
        and messages[-1].get("content") == rnd.get("question") else None
    if last is None:
        question = rnd.get("question")
        blocks = question if isinstance(question, list) else []
    else:
        if last.get("role") == "tool":
            return "Last message: a tool result"
        blocks = last.get("content") if isinstance(last.get("content"), list) else []
    if blocks and all(isinstance(b, dict) and b.get("type") == "tool_result" for b in blocks):
        return "Last message: a tool result"
    return "Question"


def context_view(doc: dict, n: int) -> dict | None:
    """The full message list round ``n``'s request carried (rebuilt from the chain)."""
    rounds = doc.get("rounds") or []
    rnd = next((r for r in rounds if r.get("round") == n), None)
    if rnd is None:
        return None
    by_key = {r["key"]: r for r in rounds if "key" in r}
    context = full_context(by_key, rnd)
    offset = rnd.get("messages_offset") or 0
    return {"n": n, "count": len(context), "new_from": offset + 1,
            "messages": [{**_message_view(m), "new": i >= offset} for i, m in enumerate(context)]}


def _message_view(msg: object) -> dict:
    if not isinstance(msg, dict):
        return {"role": "?", "label": "?", "text": _clip(content_text(msg)), "calls": []}
    role = msg.get("role") if isinstance(msg.get("role"), str) else "?"
    label = role
    if isinstance(msg.get("tool_call_id"), str):
        label += f" · result of {msg['tool_call_id']}"
    if isinstance(msg.get("name"), str):
        label += f" · {msg['name']}"
    calls = []
    for call in msg.get("tool_calls") or []:
        name, arguments = tool_call_parts(call)
        calls.append({"name": name, "arguments": _clip(_pretty(arguments))})
    return {"role": role, "label": label, "text": _clip(content_text(msg.get("content"))),
            "calls": calls}


def _tool_results(rounds: list[dict]) -> dict[str, tuple[int, str]]:
    """Tool call id -> (round where its result was sent, result text): an OpenAI
    ``tool`` message or an Anthropic ``tool_result`` block in a later request."""
    found: dict[str, tuple[int, str]] = {}
    for rnd in rounds:
        messages = rnd.get("messages")
        if not isinstance(messages, list):
            continue
        for msg in messages:
            if not isinstance(msg, dict):
                continue
            call_id = msg.get("tool_call_id")
            if isinstance(call_id, str) and call_id not in found:
                found[call_id] = (rnd.get("round") or 0, content_text(msg.get("content")))
            content = msg.get("content")
            if isinstance(content, list):
                for block in content:
                    if (isinstance(block, dict) and block.get("type") == "tool_result"
                            and isinstance(block.get("tool_use_id"), str)
                            and block["tool_use_id"] not in found):
                        found[block["tool_use_id"]] = (rnd.get("round") or 0,
                                                       content_text(block.get("content")))
    return found


def _pretty(arguments: str) -> str:
    """Tool arguments logged as a JSON string, indented; anything else as logged."""
    try:
        value = json.loads(arguments)
    except (TypeError, ValueError):
        return arguments
    if not isinstance(value, (dict, list)):
        return arguments
    return json.dumps(value, indent=2, ensure_ascii=False)


def _text_or_none(value: object) -> str | None:
    text = content_text(value)
    return _clip(text) if text else None


def _clip(text: str) -> str:
    if len(text) <= MAX_TEXT:
        return text
    return (f"{text[:MAX_TEXT]}\n… [{fmt_int(len(text) - MAX_TEXT)} more characters: "
            "download the session JSON for all of it]")
