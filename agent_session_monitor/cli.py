"""``scripts/cli.py``: query the session store (spec: interfaces.md, "scripts/cli.py").

The arguments of every command and the entry point, ``main(argv) -> int``: a usage error
or a failed command is one line and a non-zero exit, never a traceback. The commands
themselves are in cli_commands.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, TextIO

from . import __version__
from .argtypes import Parser, parse
from .cli_commands import (
    MAX_COUNT, MAX_DAYS, MAX_MINUTES, PROG, cmd_burn, cmd_export, cmd_list, cmd_show,
    cmd_stats_agent, cmd_stats_channel, cmd_stats_consumer, cmd_stats_date, cmd_stats_model,
    cmd_url,
)
from .config import ENV_BASE_URL, ENV_DATA_DIR, ENV_LINK_SECRET, ENV_PRICING
from .errors import (
    EXIT_INTERRUPTED, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, MonitorError, silence_stdout,
)
from .fmt import safe_text
from .links import DEFAULT_BASE_URL
from .finops.focus import DEFAULT_ACCOUNT
from .reports.reader import SORTS


def _non_negative(text: str, high: int = MAX_COUNT) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text[:40]!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    if value > high:
        raise argparse.ArgumentTypeError(f"must be at most {high:,}")
    return value


def _positive(text: str, high: int = MAX_COUNT) -> int:
    value = _non_negative(text, high)
    if value == 0:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _days(text: str) -> int:
    return _positive(text, MAX_DAYS)


def _minutes(text: str) -> int:
    return _positive(text, MAX_MINUTES)


# -- arguments ------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Query the session store written by main.py: sessions, "
                "rounds, tokens and cost.",
                epilog=f"--data-dir defaults to ${ENV_DATA_DIR} or ./sessions. Every read "
                       "command takes --json.")
    p.add_argument("--version", action="version", version=f"agent-session-monitor {__version__}")
    # Accepted before and after the command: the command's copy only sets the value
    # when given (SUPPRESS), so it never resets one given before the command.
    _store_options(p, argparse.SUPPRESS)
    p.set_defaults(data_dir=None, pricing=None, json=False)
    store = Parser(add_help=False)
    _store_options(store, argparse.SUPPRESS)
    zone = Parser(add_help=False)
    zone.add_argument("--tz", metavar="ZONE",
                      help="time zone for times and days: UTC (default), an IANA name such as "
                           "Asia/Shanghai, or an offset such as -05:00")
    window = Parser(add_help=False)
    window.add_argument("--since", metavar="WHEN", help="from this time: a date, an ISO time or "
                        "a duration back from now (90m, 24h, 7d)")
    window.add_argument("--until", metavar="WHEN", help="before this time (same forms)")

    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, handler: Callable, *parents: argparse.ArgumentParser):
        doc = (handler.__doc__ or "").strip()
        parser = sub.add_parser(name, help=doc, description=doc, parents=[store, *parents])
        parser.set_defaults(handler=handler)
        return parser

    c = command("show", cmd_show, zone)
    c.add_argument("session_id", metavar="SESSION_ID")
    c.add_argument("--round", type=_positive, metavar="N", help="only round N")
    c.add_argument("--full-context", action="store_true",
                   help="each round's whole request (every message it carried), not only the "
                        "messages new in that round")
    c.add_argument("--max-chars", type=_non_negative, default=500, metavar="N",
                   help="cut each text at N characters (default 500; 0 = never)")
    c.add_argument("--compare", action="append", metavar="MODEL",
                   help="also price the session's rounds on MODEL, round by round; repeatable")

    c = command("list", cmd_list, zone)
    c.add_argument("--sort-by", choices=list(SORTS), default="updated")
    c.add_argument("--limit", type=_non_negative, default=20, metavar="N",
                   help="at most N sessions (default 20; 0 = all)")
    c.add_argument("--offset", type=_non_negative, default=0, metavar="N",
                   help="skip the first N (paging)")
    c.add_argument("--model", metavar="M", help="only sessions with a round on model M or a "
                   "dated snapshot of it (gpt-4o-mini matches gpt-4o-mini-2024-07-18)")
    c.add_argument("--consumer", metavar="C", help="only sessions with a round from consumer C")
    c.add_argument("--since", metavar="WHEN", help="only sessions updated since: a date, an ISO "
                   "time or a duration back from now (90m, 24h, 7d)")
    c.add_argument("--search", metavar="TEXT", help="only sessions whose id or model contains "
                   "TEXT, or whose conversation (questions, answers, reasoning, tool calls) has "
                   "every word of it")
    c.add_argument("--wide", action="store_true", help="never cut session ids to fit the terminal")

    command("stats-model", cmd_stats_model, zone, window)
    command("stats-consumer", cmd_stats_consumer, zone, window)
    command("stats-agent", cmd_stats_agent, zone, window)
    command("stats-channel", cmd_stats_channel, zone, window)

    c = command("stats-date", cmd_stats_date, zone)
    c.add_argument("--days", type=_days, default=7, metavar="N",
                   help="how many days back, today included (default 7)")
    c.add_argument("--end", metavar="YYYY-MM-DD", help="last day of the range (default today in --tz)")

    c = command("export", cmd_export, zone, window)
    c.add_argument("file", metavar="FILE", help="where to write the report; - for stdout")
    c.add_argument("--format", choices=("json", "csv", "focus"),
                   help="default: from FILE's extension (.json, .csv); focus: a FOCUS 1.2 "
                        "CSV for FinOps tools")
    c.add_argument("--granularity", choices=("day", "round"), default="day",
                   help="FOCUS rows: per UTC day, model, consumer (and agent), or per round "
                        "with its session (default day)")
    c.add_argument("--billing-account", default=DEFAULT_ACCOUNT, metavar="ID",
                   help=f"FOCUS BillingAccountId (default {DEFAULT_ACCOUNT})")
    c.add_argument("--what-if", action="append", metavar="MODEL",
                   help="price the traffic on MODEL too (default: the priced models it used); "
                        "repeatable")

    c = command("burn", cmd_burn, zone)
    c.add_argument("--at", metavar="WHEN", help="as of this time instead of now (a date, an ISO "
                   "time or a duration back from now): rates of a replayed log")
    c.add_argument("--window", type=_minutes, default=60, metavar="MINUTES",
                   help="the recent rate is over this many minutes (default 60)")
    c.add_argument("--active", type=_minutes, default=15, metavar="MINUTES",
                   help="a session is active with a round this recent (default 15)")
    c.add_argument("--limit", type=_positive, default=10, metavar="N",
                   help="at most N active sessions listed (default 10)")

    c = command("url", cmd_url)
    c.add_argument("session_id", metavar="SESSION_ID")
    c.add_argument("--base-url", metavar="URL",
                   help=f"web UI address (default ${ENV_BASE_URL} or {DEFAULT_BASE_URL})")
    c.add_argument("--secret", metavar="SECRET",
                   help=f"link secret to sign with (default ${ENV_LINK_SECRET}; the variable "
                        "keeps it out of the process list)")
    c.add_argument("--expires-in", metavar="DURATION",
                   help="signed link valid this long: 3600, 90m, 24h, 7d")
    c.add_argument("--no-check", action="store_true",
                   help="do not check that the session exists in the store")
    return p


def _store_options(p: argparse.ArgumentParser, default: object) -> None:
    p.add_argument("--data-dir", metavar="DIR", default=default,
                   help=f"session store (default ${ENV_DATA_DIR} or ./sessions)")
    p.add_argument("--pricing", metavar="FILE", default=default,
                   help=f"price overrides for what-if figures (default ${ENV_PRICING})")
    p.add_argument("--json", action="store_true", default=default, help="machine output (JSON)")


# -- entry point ----------------------------------------------------------------------

def main(argv: list[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    args = parse(parser, argv, err, out)
    if isinstance(args, int):
        return args
    if not getattr(args, "handler", None):
        err.write(f"{PROG}: error: a command is needed (show, list, stats-model, stats-date, "
                  "stats-consumer, stats-agent, stats-channel, export, burn, url); --help explains them\n")
        return EXIT_USAGE
    args.err = err
    try:
        code = args.handler(args, out)
        out.flush()
        return code
    except MonitorError as e:
        err.write(f"{PROG}: error: {safe_text(e)}\n")
        return e.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `cli.py list | head`: the reader has what it wanted; no traceback, and no
        # second error when Python flushes stdout at exit.
        if out is sys.stdout:
            silence_stdout()
        return EXIT_OK
    except Exception as e:  # a bug: still one line, with a way to get the details
        if os.environ.get("AGENT_SESSION_MONITOR_DEBUG"):
            raise
        err.write(f"{PROG}: internal error: {type(e).__name__}: {safe_text(e)} (set "
                  "AGENT_SESSION_MONITOR_DEBUG=1 for the traceback, and please report it)\n")
        return EXIT_RUNTIME
