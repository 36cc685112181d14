"""Terminal output of ``cli.py show``: one session's header, its rounds (tokens, cost,
tool calls, messages, answers), its insights and its sub-agent family.

Every string that came from a log goes through ``safe_text`` here, where it is printed.
"""

from __future__ import annotations

import textwrap
from datetime import timezone, tzinfo
from typing import TextIO

from ..pricing import tokens
from ..pricing.table import provenance_lines
from ..session_keys import parse_session_key
from ..fmt import (
    content_text, fmt_cost, fmt_int, fmt_time, fmt_usd, safe_text, tool_call_parts,
)
from .render_text import Column, clip, display_width, render_table


def render_session(out: TextIO, doc: dict, *, tz: tzinfo = timezone.utc, max_chars: int = 500,
                   contexts: dict[str, list] | None = None, only_round: int | None = None,
                   suggestions: list[dict] | None = None, insights: dict | None = None,
                   family: dict | None = None) -> None:
    """The skill's "CLI Session Details": the header, then every round (or one).
    ``contexts`` maps a round's key to its full rebuilt message list (--full-context);
    ``insights`` (insights.session_insights) adds anomalies and cheaper models;
    ``family`` (StoreReader.rollup) the parent, the sub-agents and the cost with them."""
    rounds = doc.get("rounds") or []
    w = out.write
    title = f"Session: {safe_text(doc.get('session_id'))}"
    w(f"{title}\n{'=' * min(max(display_width(title), 40), 100)}\n")
    tool_rounds = sum(1 for r in rounds if r.get("has_tool_calls"))
    unpriced = doc.get("unpriced_rounds") or 0
    fields = [
        ("Created", f"{safe_text(fmt_time(doc.get('created_at'), tz))} {tz}"),
        ("Updated", f"{safe_text(fmt_time(doc.get('updated_at'), tz))} {tz}"),
        ("Models", safe_text(", ".join(doc.get("models") or [])) or "-"),
        ("Consumers", safe_text(", ".join(doc.get("consumers") or [])) or "-"),
        ("Rounds", f"{fmt_int(len(rounds))} ({fmt_int(tool_rounds)} with tool calls)"),
        ("Cost", fmt_cost(doc.get("total_cost_usd"), unpriced)),
    ]
    if unpriced:
        models = safe_text(", ".join(doc.get("unpriced_models") or [])) or "-"
        fields.append(("Unpriced", f"{fmt_int(unpriced)} round{'s' if unpriced != 1 else ''} "
                                   f"(no price for: {models}); not counted as $0"))
    key = parse_session_key(None if doc.get("unsessioned") else doc.get("session_id"))
    if key.kind != "other":
        fields.append(("Agent", f"{safe_text(key.agent or '-')}  channel: "
                                f"{safe_text(key.channel or '-')}  kind: {key.kind}"))
    if family:
        if family["parent"]:
            fields.append(("Parent", safe_text(family["parent"])))
        if family["subagents"]:
            n = family["subagents"]
            with_subs = fmt_cost(family["cost_with_subagents_usd"],
                                 family["unpriced_rounds_with_subagents"])
            fields[5] = ("Cost", f"{fields[5][1]} own; {with_subs} with {n} sub-agent"
                                 f"{'s' if n != 1 else ''} ({fmt_int(family['rounds_with_subagents'])} rounds)")
    # Which prices made the cost, right under it (continuation lines of "Cost").
    at = next(i for i, (label, _) in enumerate(fields) if label == "Cost") + 1
    fields[at:at] = [("", line) for line in provenance_lines(doc)]
    for label, value in fields:
        w(f"{label + ':' if label else '':<11}{value}\n")
    if family and family["children"]:
        w("\nSub-agents (spawned by this session; their rounds are in their own sessions):\n")
        render_table(out, [
            Column("  CHILD SESSION", lambda c: "  " + safe_text(c["session_id"]), right=False),
            Column("ROUNDS", lambda c: fmt_int(c["rounds"]) if c["in_store"] else "-"),
            Column("OWN COST", lambda c: fmt_cost(c["cost_usd"], c["unpriced_rounds"])
                   if c["in_store"] else "(no rounds yet)"),
            Column("WITH SUB-AGENTS", lambda c: fmt_usd(c["cost_with_subagents_usd"])
                   if c["subagents"] else ""),
        ], family["children"])
    totals = tokens.of_session(doc)
    rows = [("Input", "input"), ("  cached", "cached"), ("  cache write", "cache_write"),
            ("Output", "output"), ("  reasoning", "reasoning"), ("Total", "total")]
    cells = [fmt_int(totals[name]) for _, name in rows]
    width = max(len(c) for c in cells)
    w("\nToken Statistics:\n")
    for (label, _), cell in zip(rows, cells):
        w(f"  {label + ':':<15}{cell:>{width}}\n")
    w(f"  {tokens.LEGEND}\n")
    if suggestions:
        w("\nSame tokens on other models (per-round prices):\n")
        for s in suggestions:
            change = f"{s['change_pct']:+.0f}%" if s.get("change_pct") is not None else ""
            w(f"  {safe_text(s['model']):<28}{fmt_usd(s['cost_usd']):>12}  {change}\n")
    badges: dict[int, list[str]] = {}
    if insights:
        _render_insights(out, insights)
        for a in insights.get("anomalies") or []:
            # Every round the anomaly spans (a loop's repeats, a burst's rounds).
            for n in range(a.get("first_round") or a["round"], (a.get("last_round") or a["round"]) + 1):
                badges.setdefault(n, []).append(f"[{a['badge']}]")
    w("\nConversation Rounds:\n")
    previous_system = None
    for rnd in rounds:
        if only_round is None or rnd.get("round") == only_round:
            _render_round(out, rnd, tz, max_chars, previous_system,
                          contexts.get(rnd.get("key")) if contexts is not None else None,
                          badges.get(rnd.get("round")))
        previous_system = rnd.get("system") or previous_system
    if not rounds:
        w("  (no rounds)\n")


def _render_round(out: TextIO, rnd: dict, tz: tzinfo, max_chars: int,
                  previous_system: object, context: list | None,
                  badges: list[str] | None = None) -> None:
    w = out.write
    head = [f"Round {rnd.get('round')}", f"{safe_text(fmt_time(rnd.get('timestamp'), tz))} {tz}",
            safe_text(rnd.get("model") or "(no model)")]
    if rnd.get("consumer"):
        head.append(f"consumer {safe_text(rnd['consumer'])}")
    if rnd.get("response_type"):
        head.append(safe_text(rnd["response_type"]))
    if badges:
        head.append(" ".join(badges))
    w("\n  " + "  |  ".join(head) + "\n")
    t = tokens.of_round(rnd)
    extra = [f"cached {fmt_int(t['cached'])}", f"reasoning {fmt_int(t['reasoning'])}"]
    if t["cache_write"]:
        extra.append(f"cache write {fmt_int(t['cache_write'])}")
    cost = fmt_usd(rnd.get("cost_usd"))
    if rnd.get("cost_usd") is not None and rnd.get("priced_as") not in (None, rnd.get("model")):
        cost += f" (priced as {safe_text(rnd['priced_as'])})"
    if rnd.get("provider_cost_usd") is not None:
        cost += f"; provider reported {fmt_usd(rnd['provider_cost_usd'])}"
    w(f"    Tokens: {fmt_int(t['input'])} in -> {fmt_int(t['output'])} out "
      f"({', '.join(extra)})   Cost: {cost}\n")
    latency = [f"{label} {fmt_int(rnd[name])} ms" for label, name in
               (("first token", "llm_first_token_duration"), ("total", "llm_service_duration"))
               if isinstance(rnd.get(name), int)]
    if latency:
        w(f"    Latency: {', '.join(latency)}\n")
    for warning in rnd.get("warnings") or []:
        w(f"    Note: {safe_text(warning)}\n")
    calls = rnd.get("tool_calls") or []
    if isinstance(calls, str):
        _text_field(out, "Tool calls (logged truncated by the gateway)", calls, max_chars)
    elif calls:
        w(f"    Tool calls ({len(calls)}):\n")
        for call in calls:
            name, arguments = tool_call_parts(call)
            w(f"      {_indented(f'{name}({clip(arguments, max_chars)})', 8)}\n")
    elif rnd.get("has_tool_calls"):
        w("    Tool calls: yes\n")
    if rnd.get("system") and rnd.get("system") != previous_system:
        _text_field(out, "System", rnd["system"], max_chars)
    messages = rnd.get("messages")
    if rnd.get("messages_truncated") or isinstance(messages, str):
        label = ("Messages (nested too deeply: the JSON text as logged)"
                 if "messages" in (rnd.get("nested_as_text") or ())
                 else "Messages (logged truncated by the gateway)")
        _text_field(out, label, messages, max_chars)
    elif context is not None:
        w(f"    Full context ({len(context)} messages; new in this round from "
          f"#{(rnd.get('messages_offset') or 0) + 1}):\n")
        _messages(out, context, max_chars)
    elif messages:
        w(f"    New messages ({len(messages)}):\n")
        _messages(out, messages, max_chars)
    shown = messages if isinstance(messages, list) and context is None else []
    for label in ("question", "answer", "reasoning"):
        if rnd.get(label) in (None, ""):
            continue
        if label == "question" and shown and isinstance(shown[-1], dict) \
                and shown[-1].get("content") == rnd["question"]:
            continue   # Higress's question is the last message, just shown above
        _text_field(out, label.capitalize(), rnd[label], max_chars)


def _render_insights(out: TextIO, insights: dict) -> None:
    """Anomaly badges with their explanations, then cheaper models and the caveat."""
    w = out.write
    found = insights.get("anomalies") or []
    if found:
        w(f"\nAnomalies ({len(found)}):\n")
        for a in found:
            head = f"  [{a['badge']}] round {a['round']} ({a['severity']}): "
            w(textwrap.fill(safe_text(a["explanation"]), width=100, initial_indent=head,
                            subsequent_indent=" " * 6, break_on_hyphens=False) + "\n")
    cheaper = insights.get("suggestions") or []
    if cheaper:
        w("\nCheaper models for the same tokens:\n")
        width = max(len(safe_text(s["model"])) for s in cheaper)
        for s in cheaper:
            where = "same provider" if s["same_provider"] else safe_text(s["provider"])
            w(f"  {safe_text(s['model']):<{width}}  {fmt_usd(s['cost_usd']):>12}  "
              f"-{s['saving_pct']:.0f}%  saves {fmt_usd(s['saving_usd'])}  ({where})\n")
        note = f"{insights.get('suggestions_basis', '')}. {insights.get('caveat', '')}"
        w(textwrap.fill(safe_text(note), width=100, initial_indent="  ",
                        subsequent_indent="  ") + "\n")


def _messages(out: TextIO, messages: list, max_chars: int) -> None:
    for msg in messages:
        if not isinstance(msg, dict):
            out.write(f"      {_indented(clip(content_text(msg), max_chars), 8)}\n")
            continue
        role = str(msg.get("role") or "?")
        if msg.get("tool_call_id"):
            role += f" {msg['tool_call_id']}"
        parts = [content_text(msg.get("content"))]
        for call in msg.get("tool_calls") or []:
            name, arguments = tool_call_parts(call)
            parts.append(f"-> {name}({arguments})")
        text = clip("\n".join(p for p in parts if p), max_chars)
        out.write(f"      [{safe_text(role)}] {_indented(text, 8)}\n")


def _text_field(out: TextIO, label: str, value: object, max_chars: int) -> None:
    text = clip(content_text(value), max_chars)
    out.write(f"    {label}: {_indented(text, 6)}\n")


def _indented(text: str, indent: int) -> str:
    """Escaped text whose continuation lines keep the block's indentation."""
    return safe_text(text).replace("\n", "\n" + " " * indent)
