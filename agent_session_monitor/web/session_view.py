"""What the session page shows, as plain data (strings already formatted as in the CLI).

Built once per request from one session document: the summary, the per-round chart,
insights, sub-agents and every round with its question, answer, reasoning, tool calls
and warnings. :mod:`render_session` turns it into the server-rendered page, and the JSON
API sends the same dict (``/api/session?view=1``) to app.js. The overview's data is
:mod:`views`'. Nothing here knows HTML: escaping is the renderers' job.
"""

from __future__ import annotations

import json
from datetime import timezone, tzinfo

from . import charts
from ..pricing import tokens
from ..fmt import content_text, fmt_cost, fmt_int, fmt_time, fmt_usd, plural, tool_call_parts
from .html_parts import url
from ..pricing.table import provenance_lines
from ..session_keys import parse_session_key
from ..store.document import full_context, round_question
from .views import _card, _now, token_cards

# One text block (a tool result, a pasted file) past this is cut on the page; the JSON
# download has everything.
MAX_TEXT = 40_000


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


# Each warning a round can carry, as the page explains it (the code stays in the JSON).
WARNINGS = {
    "salvaged": "salvaged: the log line was not valid JSON (a quote in a header such as the "
                "User-Agent, which the gateway does not escape); its ai_log was read intact",
    "forged": "forged: the line carried a key twice (a client writing through a header); "
              "the genuine one was used",
    "naive_time": "time without a zone in the log: read as UTC",
    "bad_time": "the log's time could not be read: another time of the line was used",
    "time_from_read": "no time in the line: the time it was read is shown",
    "untrusted_time": "the line's time comes after a request header a client can write, "
                      "in a log format not declared (--log-format): not used",
    "duplicate_key": "the ai_log held a key twice, with equal values",
    "bad_details": "the provider's token details could not be read: totals used as logged",
    "truncated_by_gateway": "cut by the gateway's value_length_limit: some text is shown as "
                            "logged (head [truncated] tail)",
    "deeply_nested_messages": "a field the client wrote (messages, question, ...) nested "
                              "deeper than 64 levels: kept as the JSON text it was logged "
                              "as (nested_as_text); the round is billed as usual",
    "huge_messages": "a field the client wrote holds more than 200,000 lists and objects: "
                     "kept as the JSON text it was logged as (nested_as_text), never decoded; "
                     "the round is billed as usual",
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
        "messages_label": ("Messages (nested too deeply: the JSON text as logged)"
                           if "messages" in (rnd.get("nested_as_text") or ())
                           else "Messages (logged truncated by the gateway)"),
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
        if not isinstance(value, (dict, list)):
            return arguments
        return json.dumps(value, indent=2, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        # (A JSON text nested deeper than json, or its indenting encoder at ~3 frames a
        # level, goes: a model's or a client's tool arguments can be.)
        return arguments


def _text_or_none(value: object) -> str | None:
    text = content_text(value)
    return _clip(text) if text else None


def _clip(text: str) -> str:
    if len(text) <= MAX_TEXT:
        return text
    return (f"{text[:MAX_TEXT]}\n… [{fmt_int(len(text) - MAX_TEXT)} more characters: "
            "download the session JSON for all of it]")
