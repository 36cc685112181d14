"""The commands of ``scripts/cli.py`` (spec: interfaces.md, "scripts/cli.py"): one handler
per command, each ``(args, out) -> exit status``, and what they share (opening the store,
the notes on stderr, time windows). The arguments and the entry point are in cli.py.

Every command but ``show`` answers from the derived index, never from the conversations,
so ``list``, ``stats-*`` and ``export`` stay fast with 100,000 sessions; ``show`` reads
the one session file it needs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import time
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TextIO

from .argtypes import prog_name
from .config import DEFAULT_DATA_DIR, ENV_BASE_URL, ENV_DATA_DIR, ENV_LINK_SECRET, data_dir, resolve
from .errors import EXIT_OK, EXIT_USAGE, MonitorError
from .fmt import fmt_int, fmt_usd, plural, safe_text
from .store.durable import atomic_write
from .links import DEFAULT_BASE_URL, DEFAULT_LINK_TTL, parse_ttl, session_url
from .reports.burn import burn
from .finops.insights import session_insights
from .pricing.table import load_price_table
from .reports.render_text import render_burn, render_sessions, render_usage, terminal_width
from .reports.session_text import render_session
from .reports.json_csv import write_csv, write_json
from .finops.focus import FOCUS_VERSION, write_focus
from .finops.report import REPORT_CSV_FIELDS, finops_report, report_csv_rows, session_what_if
from .reports.reader import KEY_GROUPS, StoreReader
from .reports.aggregates import (
    day_range, latest_round, range_totals, recent_days, totals_of, unpriced_between,
    unpriced_of_days,
)
from .reports.records import key_group_record, key_group_rows, session_record, usage_record
from .store import fulltext
from .reports import window
from .reports.timerange import duration, parse_since, parse_tz
from .store.document import full_context

PROG = prog_name("cli.py")


# -- commands -------------------------------------------------------------------------

def cmd_show(args: argparse.Namespace, out: TextIO) -> int:
    """One session, every round: tokens, cost, tool calls, messages, answers."""
    tz = parse_tz(args.tz)
    with _reader(args) as reader:
        doc = reader.load_session(args.session_id)
        if doc is None:
            raise _unknown_session(reader, args)
        family = None if doc.get("unsessioned") else reader.rollup(doc["session_id"])
        table = load_price_table(args.pricing)
    compare = table if args.compare else None
    rounds = doc.get("rounds") or []
    if args.round is not None and not any(r.get("round") == args.round for r in rounds):
        raise MonitorError(f"session \"{safe_text(args.session_id)}\" has no round {args.round} "
                           f"(it has rounds 1..{len(rounds)})")
    picked = [r for r in rounds if args.round is None or r.get("round") == args.round]
    contexts = None
    if args.full_context:
        by_key = {r["key"]: r for r in rounds}
        contexts = {r["key"]: full_context(by_key, r) for r in picked}
    suggestions = session_what_if(rounds, compare, args.compare) if compare else None
    insights = session_insights(doc, table)
    if args.json:
        shown = {**doc, "rounds": [{**r, "context": contexts[r["key"]]} if contexts else r
                                   for r in picked]}
        if suggestions is not None:
            shown["what_if"] = suggestions
        shown["insights"] = insights
        if family:
            shown["subagents"] = family
        write_json(out, shown)
    else:
        render_session(out, doc, tz=tz, max_chars=args.max_chars, contexts=contexts,
                       only_round=args.round, suggestions=suggestions, insights=insights,
                       family=family)
    return EXIT_OK


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    """Sessions, most recently updated first (or by cost, tokens, rounds)."""
    tz = parse_tz(args.tz)
    since = parse_since(args.since, tz) if args.since else None
    filters = dict(model=args.model, consumer=args.consumer, since=since, search=args.search)
    with _reader(args) as reader:
        if args.search and not reader.fulltext:
            args.err.write(f"note: {fulltext.MISSING}\n")
        filters["since"] = _slide(args, reader, since)
        rows = reader.sessions(args.sort_by, args.limit or None, args.offset, **filters)
        count = reader.count_sessions(**filters) if args.limit or args.offset else len(rows)
        _note_if_empty(args, reader)
    if args.json:
        write_json(out, [session_record(r) for r in rows], rows=True)
    else:
        width = None if args.wide else terminal_width(out)
        render_sessions(out, rows, count, sort=args.sort_by, width=width, tz=tz)
    return EXIT_OK


def cmd_stats_model(args: argparse.Namespace, out: TextIO) -> int:
    """Per model: sessions, rounds, tokens by kind, cost (each round under its own model)."""
    return _stats(args, out, "model", "MODEL", "Model Statistics",
                  ["Each round is counted under its own model: a session that used several "
                   "models appears under each; TOTAL counts it once."])


def cmd_stats_consumer(args: argparse.Namespace, out: TextIO) -> int:
    """Per gateway consumer (API key): who spent the tokens and the money."""
    return _stats(args, out, "consumer", "CONSUMER", "Consumer Statistics",
                  ["(none): requests the gateway logged without a consumer."])


def cmd_stats_agent(args: argparse.Namespace, out: TextIO) -> int:
    """Per OpenClaw agent (from the session key): cost, and the share its sub-agents spent."""
    return _stats(args, out, "agent", "AGENT", "Agent Statistics",
                  ["Each session counts under the agent its key names (agent:<id>:...); "
                   "(none): keys that name no agent.",
                   "SUB-AGENTS: the part of COST spent in sub-agent sessions "
                   "(agent:<id>:subagent:...); SHARE: that part of COST."])


def cmd_stats_channel(args: argparse.Namespace, out: TextIO) -> int:
    """Per channel (telegram, discord...), with what the sub-agents they spawned spent."""
    return _stats(args, out, "channel", "CHANNEL", "Channel Statistics",
                  ["Each session counts under the channel its key names; (none): keys that "
                   "name none (sub-agents, cron, hooks, main).",
                   "SPAWNED: what sub-agents spawned from the channel's sessions spent in "
                   "sessions of another row (counted there too); WITH SUB-AGENTS = COST + "
                   "SPAWNED; SHARE = SPAWNED / WITH SUB-AGENTS."])


def _stats(args: argparse.Namespace, out: TextIO, by: str, header: str, title: str,
           notes: list[str]) -> int:
    tz = parse_tz(args.tz)
    since, until = _window(args, tz)
    keyed = by in KEY_GROUPS
    with _reader(args) as reader:
        _note_if_empty(args, reader)
        if until is None:
            since = _slide(args, reader, since)
        rows = (key_group_rows(reader, by, since, until) if keyed
                else reader.aggregate(by, since=since, until=until))
        if args.json:
            record = key_group_record if keyed else usage_record
            write_json(out, [record(r, by) for r in rows], rows=True)
            return EXIT_OK
        totals = (totals_of(reader, rows, since, until) if (since or until) and not keyed
                  else range_totals(reader, since, until))
        unpriced = ([(r["key"] or "(no model)", r["unpriced_rounds"]) for r in rows
                     if r["unpriced_rounds"]] if by == "model"
                    else unpriced_between(reader, since, until))
    render_usage(out, title + _range_title(args), header, rows, totals, unpriced, notes=notes,
                 subagents=by if keyed else None)
    return EXIT_OK


def cmd_stats_date(args: argparse.Namespace, out: TextIO) -> int:
    """Per day of event time: each round on the day of its own timestamp in --tz."""
    tz = parse_tz(args.tz)
    end = _day(args.end) if args.end else None
    with _reader(args) as reader:
        _note_if_empty(args, reader)
        first, last, since, until, note = recent_days(reader, args.days, tz, end)
        if note:
            args.err.write(f"note: {note}\n")
        rows = day_range(reader.aggregate("day", tz=tz, since=since, until=until),
                         args.days, tz, today=last)
        if args.json:
            write_json(out, [usage_record(r, "day") for r in rows], rows=True)
            return EXIT_OK
        totals = totals_of(reader, rows, since, until)
        unpriced = unpriced_of_days(rows)
    title = (f"Daily Statistics (last {plural(args.days, 'day')}: {first} to {last}, days in {tz}"
             + (", ending at the latest round" if note else "") + ")")
    render_usage(out, title, "DATE", rows, totals, unpriced, models_column=True)
    return EXIT_OK


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    """The FinOps report (totals, by model, day, consumer, session) as JSON or CSV."""
    # "-" is stdout: JSON unless --format says CSV (a pipe has no extension to go by).
    kind = args.format or ("json" if args.file == "-" else _format_of(args.file))
    tz = parse_tz(args.tz)
    since, until = _window(args, tz)
    if kind == "focus":
        return _export_focus(args, out, since, until)
    table = load_price_table(args.pricing)
    with _reader(args) as reader:
        # The CSV has no column for the per-session suggestion: skip its index scan.
        report = finops_report(reader, table, tz=tz, since=since, until=until,
                               what_if_models=args.what_if, insights=kind == "json")
        _note_if_empty(args, reader)
    buffer = io.StringIO()
    if kind == "json":
        write_json(buffer, report, rows=True)
    else:
        write_csv(buffer, REPORT_CSV_FIELDS, report_csv_rows(report))
    if args.file == "-":
        out.write(buffer.getvalue())
        return EXIT_OK
    try:
        atomic_write(Path(args.file), buffer.getvalue().encode("utf-8"), sync_dir=False)
    except OSError as e:
        raise MonitorError(f"cannot write {safe_text(args.file)}: {e.strerror or e}") from e
    totals = report["totals"]
    if args.json:
        write_json(out, {"file": args.file, "format": kind, "sessions": totals["sessions"],
                         "rounds": totals["rounds"], "cost_usd": totals["cost_usd"],
                         "unpriced_rounds": totals["unpriced_rounds"]})
    else:
        unpriced = (f" ({fmt_int(totals['unpriced_rounds'])} rounds unpriced)"
                    if totals["unpriced_rounds"] else "")
        out.write(f"Wrote {kind.upper()} report to {safe_text(args.file)}: "
                  f"{fmt_int(totals['sessions'])} sessions, {fmt_int(totals['rounds'])} rounds, "
                  f"{fmt_usd(totals['cost_usd'])}{unpriced}; prices: {safe_text(table.source)}\n")
    return EXIT_OK


def _export_focus(args: argparse.Namespace, out: TextIO, since: str | None,
                  until: str | None) -> int:
    """``export --format focus``: the FOCUS 1.2 CSV (focus.py)."""
    table = load_price_table(args.pricing)
    buffer = io.StringIO()
    with _reader(args) as reader:
        _note_if_empty(args, reader)
        result = write_focus(buffer, reader, table, since=since, until=until,
                             granularity=args.granularity, account=args.billing_account)
    if args.file == "-":
        out.write(buffer.getvalue())
    else:
        try:
            atomic_write(Path(args.file), buffer.getvalue().encode("utf-8"), sync_dir=False)
        except OSError as e:
            raise MonitorError(f"cannot write {safe_text(args.file)}: {e.strerror or e}") from e
    if result.skipped_rounds:
        # FOCUS has no null or placeholder cost: unpriced usage cannot be a row.
        print(f"cli.py: warning: {fmt_int(result.skipped_rounds)} unpriced rounds left out of "
              f"the FOCUS file (no price for: "
              f"{', '.join(safe_text(m) for m in sorted(result.skipped_models))}); add prices "
              "with --pricing", file=sys.stderr)
    if args.file == "-":
        return EXIT_OK
    if args.json:
        write_json(out, {"file": args.file, "format": "focus", "rows": result.rows,
                         "billed_cost_usd": result.billed_cost,
                         "unpriced_rounds_left_out": result.skipped_rounds})
    else:
        out.write(f"Wrote FOCUS {FOCUS_VERSION} CSV to {safe_text(args.file)}: "
                  f"{plural(result.rows, 'row')} ({args.granularity}), BilledCost "
                  f"{fmt_usd(result.billed_cost)}; prices: {safe_text(table.source)}\n")
    return EXIT_OK


def cmd_burn(args: argparse.Namespace, out: TextIO) -> int:
    """Burn rate: tokens/min and $/hour now, today so far and projected, active sessions."""
    tz = parse_tz(args.tz)
    at = (datetime.fromisoformat(parse_since(args.at, tz).replace("Z", "+00:00"))
          if args.at else None)
    with _reader(args) as reader:
        _note_if_empty(args, reader)
        try:
            data = burn(reader.db, now=at, tz=tz, window_minutes=args.window,
                        active_minutes=args.active, limit=args.limit, latest_if_idle=at is None)
        except OverflowError:
            raise MonitorError(f"--at {safe_text(args.at)!r}: the window around it reaches past "
                               "the calendar (years 1..9999)", EXIT_USAGE) from None
        if data.get("note"):
            args.err.write(f"note: {data['note']} (--at chooses the moment)\n")
    if args.json:
        write_json(out, data)
    else:
        render_burn(out, data, tz)
    return EXIT_OK


def cmd_url(args: argparse.Namespace, out: TextIO) -> int:
    """The web UI link of a session (what Clawdbot pastes), signed when a secret is set."""
    secret = resolve(args.secret, ENV_LINK_SECRET)
    base = str(resolve(args.base_url, ENV_BASE_URL, DEFAULT_BASE_URL))
    if not re.match(r"https?://[^/?#\s]+", base):
        raise MonitorError(f"--base-url {safe_text(base)!r} is not an http(s) URL "
                           "(e.g. http://127.0.0.1:8888)", EXIT_USAGE)
    ttl = _link_ttl(args.expires_in, bool(secret))
    if not args.no_check:
        # The agent asks for its link before the monitor's next pass has seen the
        # session: the link is still right, and its page waits for the first round.
        matches: list[str] = []
        try:
            with _reader(args) as reader:
                known = reader.find(args.session_id) is not None
                if not known:
                    matches = reader.close_matches(args.session_id)
        except MonitorError:
            known = False   # no store yet at all: the same answer
        if not known:
            hint = ("; did you mean: " + ", ".join(safe_text(m) for m in matches)) if matches else ""
            args.err.write(f"note: session \"{safe_text(args.session_id)}\" is not in "
                           f"{_shown_dir(args)} yet; its page waits for its first round "
                           f"(main.py writes it on its next pass){hint}\n")
    now = time.time()
    link = session_url(args.session_id, base, str(secret) if secret else None, ttl, now=now)
    if args.json:
        expires = (datetime.fromtimestamp(int(now + ttl), timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ") if ttl is not None else None)
        write_json(out, {"session_id": args.session_id, "url": link, "signed": bool(secret),
                         "expires_at": expires})
    else:
        out.write(link + "\n")
    return EXIT_OK


# -- helpers --------------------------------------------------------------------------

@contextlib.contextmanager
def _reader(args: argparse.Namespace):
    reader = StoreReader.open(data_dir(args.data_dir))
    for name, why in reader.skipped:   # a store without an index, read file by file
        args.err.write(f"note: session file {safe_text(reader.directory / name)} is corrupt "
                       f"or unreadable ({safe_text(why)}); left out of these figures\n")
    try:
        yield reader
    finally:
        reader.close()


def _shown_dir(args: argparse.Namespace) -> str:
    """The data directory as the user wrote it (``./sessions``, not ``sessions``)."""
    return safe_text(resolve(args.data_dir, ENV_DATA_DIR, DEFAULT_DATA_DIR))


def _unknown_session(reader: StoreReader, args: argparse.Namespace) -> MonitorError:
    matches = reader.close_matches(args.session_id)
    hint = ("did you mean: " + ", ".join(safe_text(m) for m in matches) if matches
            else f"{PROG} list shows the sessions there")
    return MonitorError(f"no session \"{safe_text(args.session_id)}\" in {_shown_dir(args)}; {hint}")


def _note_if_empty(args: argparse.Namespace, reader: StoreReader) -> None:
    # Pruned sessions (retention.py) are not listed but still have totals.
    if reader.db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 0:
        args.err.write(f"note: no sessions in {_shown_dir(args)} yet (main.py --output-dir "
                       f"{_shown_dir(args)} writes them)\n")


def _window(args: argparse.Namespace, tz) -> tuple[str | None, str | None]:
    since = parse_since(args.since, tz) if args.since else None
    until = parse_since(args.until, tz) if args.until else None
    return since, until


def _slide(args: argparse.Namespace, reader: StoreReader, since: str | None) -> str | None:
    """``--since 24h`` (back from now) with no round since, in a store that has older
    ones (a replayed log, the bundled example): the same span back from the latest round
    instead, said on stderr. A date or time given as such never moves."""
    back = duration(args.since) if args.since else None
    if back is None or since is None:
        return since
    latest = latest_round(reader)
    if latest is None or latest >= since:
        return since
    moved = window.stamp(window.parse_stamp(latest) - back)
    args.since_note = f"the {args.since} to the latest round"
    args.err.write(f"note: no rounds in the last {safe_text(args.since)}: showing the "
                   f"{safe_text(args.since)} to the latest round ({latest[:16].replace('T', ' ')} "
                   "UTC)\n")
    return moved


def _range_title(args: argparse.Namespace) -> str:
    since = getattr(args, "since_note", None) or (f"since {args.since}" if args.since else None)
    parts = ([since] if since else []) + ([f"until {args.until}"] if args.until else [])
    if parts and args.tz and str(parse_tz(args.tz)) != "UTC":
        parts.append(f"times in {args.tz}")
    return f" ({', '.join(safe_text(p) for p in parts)})" if parts else ""


def _format_of(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".json", ".csv"):
        return suffix[1:]
    raise MonitorError(f"cannot tell the format of {safe_text(path)!r}: name it .json or .csv, "
                       "or pass --format json|csv", EXIT_USAGE)


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise MonitorError(f"--end {safe_text(text)!r} is not a date (YYYY-MM-DD)", EXIT_USAGE) from None


def _link_ttl(text: str | None, signed: bool) -> int | None:
    """--expires-in: a duration or ``never``; signed links expire after 30 days unless
    told otherwise (links.DEFAULT_LINK_TTL)."""
    if text is None:
        return DEFAULT_LINK_TTL if signed else None
    try:
        ttl = parse_ttl(text)
    except ValueError as e:
        raise MonitorError(f"--expires-in {safe_text(text)[:40]!r}: {e}", EXIT_USAGE) from None
    if ttl is not None and not signed:
        raise MonitorError(f"--expires-in needs a link secret (--secret or ${ENV_LINK_SECRET}): "
                           "an unsigned link cannot expire", EXIT_USAGE)
    return ttl


# Beyond these a count or a span is a typo, and SQLite (64-bit) or datetime (years
# 1..9999) could not hold it anyway.
MAX_COUNT = 10**12
MAX_DAYS = 36_500
MAX_MINUTES = 10**7
