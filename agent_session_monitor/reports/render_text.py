"""Terminal output of the query CLI: aligned tables and session details, plus the JSON and
CSV writers over the same rows. Each renderer takes the output stream.

Every string that came from a log (ids, models, consumers, messages) goes through
``safe_text`` here, where it is printed. The web UI has its own HTML renderer and does
not import this module.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import textwrap
import unicodedata
from dataclasses import dataclass
from datetime import timezone, tzinfo
from typing import Callable, Iterable, TextIO

from ..pricing import tokens
from ..pricing.table import provenance_lines
from ..session_keys import parse_session_key
from ..fmt import (
    content_text, fmt_cost, fmt_int, fmt_pct, fmt_time, fmt_usd, safe_text, shorten,
    tool_call_parts,
)

ELLIPSIS = "…"


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[dict], str]
    right: bool = True   # numbers align right, text left


# -- text helpers ---------------------------------------------------------------------

def terminal_width(out: TextIO) -> int | None:
    """Columns available when ``out`` is a terminal (or $COLUMNS is set); None when the
    output goes to a pipe or file, where nothing needs to fit."""
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    isatty = getattr(out, "isatty", None)
    if isatty is not None and isatty():
        return shutil.get_terminal_size((120, 24)).columns
    return None


def display_width(text: str) -> int:
    """Terminal cells: CJK characters take two."""
    if text.isascii():
        return len(text)
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int, right: bool) -> str:
    fill = " " * max(width - display_width(text), 0)
    return fill + text if right else text + fill


def cut_middle(text: str, width: int) -> str:
    """Cut an id to ``width`` keeping both ends: ids differ at their tails
    (``agent:main:discord:channel:1465…``), so the tail must stay visible."""
    if width <= 0 or len(text) <= width:
        return text
    if width < 8:
        return shorten(text, width)
    tail = (width - 1) // 2
    return text[: width - 1 - tail] + ELLIPSIS + text[len(text) - tail:]


def clip(text: str, max_chars: int) -> str:
    """``text`` cut at ``max_chars`` (0 = whole), saying how much was left out."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}{ELLIPSIS} [+{len(text) - max_chars:,} chars]"


# -- tables ---------------------------------------------------------------------------

def render_table(out: TextIO, columns: list[Column], rows: Iterable[dict],
                 total: dict | None = None, empty: str = "(none)") -> None:
    body = [[col.cell(r) for col in columns] for r in rows]
    foot = [col.cell(total) for col in columns] if total is not None else None
    widths = [max([display_width(col.header)] + [display_width(line[i]) for line in body]
                  + ([display_width(foot[i])] if foot else []))
              for i, col in enumerate(columns)]

    def line(cells: list[str]) -> str:
        return "  ".join(_pad(c, w, col.right) for c, w, col in zip(cells, widths, columns)).rstrip()

    header = line([col.header for col in columns])
    rule = "-" * display_width(header)
    out.write(header + "\n" + rule + "\n")
    for cells in body:
        out.write(line(cells) + "\n")
    if not body:
        out.write(empty + "\n")
    if foot is not None:
        out.write(rule + "\n" + line(foot) + "\n")


def _usage_columns(key_header: str, key: Callable[[dict], str]) -> list[Column]:
    return [
        Column(key_header, key, right=False),
        Column("SESSIONS", lambda r: fmt_int(r["sessions"])),
        Column("ROUNDS", lambda r: fmt_int(r["rounds"])),
        *token_columns(),
        Column("COST", lambda r: fmt_cost(r["cost"], r["unpriced_rounds"])),
    ]


def token_columns() -> list[Column]:
    """The normalised token columns (tokens.py), parts beside their wholes; every table
    that shows them says what they mean once, with tokens.LEGEND."""
    return [
        Column("INPUT", lambda r: fmt_int(r["input"])),
        Column("CACHED", lambda r: fmt_int(r["cached"])),
        Column("CACHE WRITE", lambda r: fmt_int(r.get("cache_write") or 0)),
        Column("OUTPUT", lambda r: fmt_int(r["output"])),
        Column("REASONING", lambda r: fmt_int(r["reasoning"])),
        Column("TOTAL", lambda r: fmt_int(r["input"] + r["output"])),
    ]


def render_usage(out: TextIO, title: str, key_header: str, rows: list[dict], totals: dict,
                 unpriced: list[tuple[str, int]], *, models_column: bool = False,
                 notes: Iterable[str] = (), subagents: str | None = None) -> None:
    """stats-model / -consumer / -date / -agent / -channel: one row per group and a TOTAL
    row. ``subagents``: "agent" adds the part spent by sub-agents, "channel" what the
    sub-agents spawned from each group spent (report.key_group_rows)."""
    columns = _usage_columns(key_header, lambda r: safe_text(r["key"] if r["key"] is not None
                                                             else "(none)"))
    if subagents == "agent":
        columns += [Column("SUB-AGENTS", lambda r: "" if "subagent_cost" not in r
                           else fmt_usd(r["subagent_cost"])),
                    Column("SHARE", lambda r: "" if "subagent_cost" not in r
                           else fmt_pct(r["subagent_cost"] or 0, r["cost"] or 0))]
    elif subagents:
        columns += [Column("SPAWNED", lambda r: "" if "spawned_cost" not in r
                           else fmt_usd(r["spawned_cost"])),
                    Column("WITH SUB-AGENTS", lambda r: "" if "spawned_cost" not in r
                           else fmt_usd(r["cost_with_subagents"])),
                    Column("SHARE", lambda r: "" if "spawned_cost" not in r
                           else fmt_pct(r["spawned_cost"] or 0, r["cost_with_subagents"] or 0))]
    if models_column:
        # The TOTAL row (models None) leaves the column blank.
        columns.append(Column("MODELS", lambda r: "" if r["models"] is None else shorten(
            safe_text(", ".join(r["models"])) or "-", 60), right=False))
    out.write(title + "\n\n")
    render_table(out, columns, rows, total={**totals, "key": "TOTAL", "models": None},
                 empty="(no rounds)")
    out.write(tokens.LEGEND + "\n")
    for note in notes:
        out.write(note + "\n")
    write_unpriced_note(out, unpriced)


def write_unpriced_note(out: TextIO, unpriced: list[tuple[str, int]]) -> None:
    if not unpriced:
        return
    rounds = sum(n for _, n in unpriced)
    names = ", ".join(safe_text(m) for m, _ in unpriced[:8])
    more = f" and {len(unpriced) - 8} more" if len(unpriced) > 8 else ""
    out.write(f"* {fmt_int(rounds)} round{'s' if rounds != 1 else ''} of {len(unpriced)} "
              f"model{'s' if len(unpriced) != 1 else ''} {'have' if rounds != 1 else 'has'} "
              "no price (not counted as $0): "
              f"{names}{more}\n")


def render_sessions(out: TextIO, rows: list[dict], total_count: int, *, sort: str,
                    width: int | None, tz: tzinfo) -> None:
    """The session list. Ids are whole unless they do not fit ``width`` (None: no limit),
    then cut in the middle, and the footer says so."""
    def models(r: dict) -> str:
        names = r["models"] or ([r["model"]] if r["model"] else [])
        text = safe_text(names[0]) if names else "-"
        return shorten(text, 30) + (f" +{len(names) - 1}" if len(names) > 1 else "")

    rest = [
        Column("MODEL", models, right=False),
        Column("ROUNDS", lambda r: fmt_int(r["rounds"])),
        Column("INPUT", lambda r: fmt_int(r["input"])),
        Column("OUTPUT", lambda r: fmt_int(r["output"])),
        Column("CACHED", lambda r: fmt_int(r["cached"])),
        Column("COST", lambda r: fmt_cost(r["cost"], r["unpriced_rounds"])),
        *([Column("WITH SUB-AGENTS", lambda r: fmt_usd(r["cost_with_subagents"]))]
          if rows and "cost_with_subagents" in rows[0] else []),
        Column(f"UPDATED ({tz})", lambda r: safe_text(fmt_time(r["updated_at"], tz, seconds=False)),
               right=False),
    ]
    ids = [safe_text(r["session_id"]) for r in rows]
    longest = max((display_width(i) for i in ids), default=7)
    id_width = longest
    if width is not None:
        used = sum(2 + max(display_width(c.header), *(display_width(c.cell(r)) for r in rows))
                   for c in rest) if rows else 0
        id_width = min(longest, max(width - used, 24))
    cut = id_width < longest
    by_row = {id(r): cut_middle(i, id_width) for r, i in zip(rows, ids)}
    columns = [Column("SESSION", lambda r: by_row[id(r)], right=False), *rest]
    render_table(out, columns, rows, empty="(no sessions)")
    if rows:
        out.write(tokens.LEGEND + "\n")
    shown = f"{fmt_int(len(rows))} of {fmt_int(total_count)} session{'s' if total_count != 1 else ''}"
    out.write(f"{shown}, by {sort}" + ("; ids cut to fit: --wide shows them whole" if cut else "")
              + "\n")
    if any(r["unpriced_rounds"] and r["cost"] is not None for r in rows):
        out.write("* some rounds of the session have no price for their model (not counted as $0)\n")


def render_burn(out: TextIO, data: dict, tz: tzinfo) -> None:
    """``cli.py burn``: the recent rate, today so far and projected, the active sessions."""
    recent, today = data["recent"], data["today"]
    w = out.write
    w(f"Burn rate at {safe_text(fmt_time(data['at'], tz, seconds=False))} {tz} (event time; "
      f"recent = the last {data['window_minutes']} min)\n\n")
    w(f"  Recent:  {fmt_int(round(recent['tokens_per_min']))} tokens/min, "
      f"{fmt_usd(recent['usd_per_hour'])}/hour ({fmt_int(recent['rounds'])} rounds, "
      f"{fmt_usd(recent['cost_usd'])})\n")
    w(f"  Today:   {today['day']} ({safe_text(today['time_zone'])}): "
      f"{fmt_int(today['tokens'])} tokens, {fmt_usd(today['cost_usd'])} in "
      f"{today['elapsed_hours']:g} h; {today['remaining_hours']:g} h left\n")
    w(f"  Projected by midnight: {fmt_usd(today['projected_cost_usd'])} at the recent rate, "
      f"{fmt_usd(today['average_projection_usd'])} at today's average pace\n")
    unpriced = today["unpriced_rounds"]
    if unpriced:
        w(f"  * {fmt_int(unpriced)} round{'s' if unpriced != 1 else ''} today "
          f"{'have' if unpriced != 1 else 'has'} no price (not counted in $)\n")
    w(f"\nActive sessions (a round in the last {data['active_minutes']} min): "
      f"{fmt_int(data['active_count'])}\n")
    if not data["active_sessions"]:
        return
    columns = [
        Column("SESSION", lambda r: cut_middle(safe_text(r["session_id"]), 48), right=False),
        Column("MODEL", lambda r: shorten(safe_text(r["model"] or "-"), 30), right=False),
        Column("TOKENS/MIN", lambda r: fmt_int(round(r["tokens_per_min"]))),
        Column("$/HOUR", lambda r: fmt_usd(r["usd_per_hour"])),
        Column("ROUNDS", lambda r: fmt_int(r["rounds"])),
        Column("LAST ROUND", lambda r: safe_text(fmt_time(r["updated_at"], tz)), right=False),
    ]
    render_table(out, columns, data["active_sessions"])
    if data["active_count"] > len(data["active_sessions"]):
        w(f"({fmt_int(data['active_count'] - len(data['active_sessions']))} more; --limit "
          "shows more)\n")


# -- machine output -------------------------------------------------------------------

def write_json(out: TextIO, data: object, rows: bool = False) -> None:
    """Indented JSON; with ``rows``, lists of records print one record per line, which
    keeps a 100,000-session report readable, greppable and quick to write (the indenting
    encoder is pure Python, the compact one is C)."""
    if rows and isinstance(data, (list, dict)):
        out.write(_rows_json(data) + "\n")
    else:
        out.write(_json(data, indent=2) + "\n")


def _json(data: object, indent: int | None = None) -> str:
    # ensure_ascii: control characters and lone surrogates from logs leave as \u escapes.
    return json.dumps(data, indent=indent, ensure_ascii=True, allow_nan=False)


def _rows_json(data: list | dict) -> str:
    if isinstance(data, list):
        if not data:
            return "[]"
        return "[\n" + ",\n".join(f"  {_json(item)}" for item in data) + "\n]"
    parts = []
    for key, value in data.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            value_text = "[\n" + ",\n".join(f"    {_json(item)}" for item in value) + "\n  ]"
        else:
            value_text = _json(value)
        parts.append(f"  {_json(key)}: {value_text}")
    return "{\n" + ",\n".join(parts) + "\n}"


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: object) -> object:
    """Spreadsheets run cells that start like a formula: ids and model names come from
    whoever sent the request, so such text is prefixed with a quote (OWASP CSV injection).
    Lists become ``a;b``."""
    if isinstance(value, (list, tuple)):
        value = ";".join(str(v) for v in value)
    if isinstance(value, float):
        # Plain decimals: spreadsheets misread 2.72e-05 and show float noise.
        return f"{value:.12f}".rstrip("0").rstrip(".") or "0"
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def write_csv(out: TextIO, fields: list[str], rows: Iterable[dict]) -> None:
    """A header line even when there are no rows."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(fields)
    for row in rows:
        writer.writerow([_csv_cell(row.get(f)) for f in fields])


# -- one session ----------------------------------------------------------------------

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
        _text_field(out, "Messages (logged truncated by the gateway)", messages, max_chars)
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
