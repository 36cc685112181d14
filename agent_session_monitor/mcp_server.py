"""``scripts/mcp_server.py``: the session store as an MCP server, for agents.

The Model Context Protocol over stdio (https://modelcontextprotocol.io/specification,
revisions 2024-11-05 to 2025-11-25): JSON-RPC 2.0 messages, one per line on stdin and
stdout, nothing else on stdout (diagnostics go to stderr). The client sends
``initialize`` (the server answers with the protocol version both speak, its tools
capability and its name), then ``notifications/initialized``, then ``tools/list`` and
``tools/call``. Read-only: every call opens the store's index afresh, so answers follow
the monitor as it writes.

Tools (what an agent asks; SKILL.md says when to use which):
- ``session_cost``: one session's cost, tokens, models, its sub-agents and cost with
  them, its parent, and its web link (signed when a link secret is set);
- ``top_sessions``: the most costly (or largest, latest) sessions;
- ``usage_stats``: usage and cost by model, agent, channel, kind, consumer or day.

A tool that cannot answer (an unknown session, a bad argument) returns a result with
``isError: true`` and one line saying why, so the model can correct itself; protocol
errors (unknown method or tool, malformed JSON) are JSON-RPC errors. Nothing a client
sends makes the server exit or write a traceback to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import sys
from pathlib import Path
from typing import BinaryIO, Callable, TextIO

from . import __version__
from .argtypes import Parser, parse
from .config import DEFAULT_DATA_DIR, ENV_BASE_URL, ENV_DATA_DIR, ENV_LINK_SECRET, data_dir, resolve
from .errors import MonitorError
from .links import DEFAULT_BASE_URL, DEFAULT_LINK_TTL, parse_ttl, session_url
from .reports.reader import StoreReader
from .reports.aggregates import day_range, range_totals, recent_days
from .reports.records import key_group_record, key_group_rows, session_record, usage_record
from .session_keys import parse_session_key
from .reports.timerange import parse_tz
from .mcp_schema import TOOLS, ToolError, _choice, _integer, _only, _text, _when

PROG = "mcp_server.py"
SERVER_NAME = "agent-session-monitor"
# Oldest to newest; the initialize handshake settles on the client's if it is here.
PROTOCOL_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
STRUCTURED_SINCE = "2025-06-18"   # results carry structuredContent from this revision
MAX_LINE = 4 * 2**20              # a request is a few hundred bytes; never buffer more

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = (
    -32700, -32600, -32601, -32602, -32603)


class Server:
    """The protocol state of one stdio connection and the tools' configuration."""

    def __init__(self, directory: Path, base_url: str, secret: str | None,
                 link_ttl: int | None = DEFAULT_LINK_TTL) -> None:
        self.directory = directory
        self.base_url = base_url
        self.secret = secret
        # Anyone who can chat with the agent can ask for a link to any session id: a
        # signed link is a credential, so it expires (--link-expires-in, default 30d).
        self.link_ttl = link_ttl
        self.version: str | None = None   # negotiated protocol revision
        self.handlers: dict[str, Callable[[dict], dict]] = {
            "session_cost": self.session_cost, "top_sessions": self.top_sessions,
            "usage_stats": self.usage_stats}

    # -- JSON-RPC ----------------------------------------------------------------------

    def handle_line(self, line: bytes) -> dict | None:
        """One line from the client -> the response to write (None for a notification
        or a response, which get none)."""
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            return _error(None, PARSE_ERROR, "parse error: not a JSON document")
        if not isinstance(message, dict):
            # Batches were removed from MCP in 2025-06-18; a bare value is no request.
            return _error(None, INVALID_REQUEST, "invalid request: not a JSON-RPC object")
        msg_id = message.get("id")
        if "method" not in message:
            return None   # a response to a request we never send, or noise: ignore
        method = message.get("method")
        has_id = "id" in message
        if (message.get("jsonrpc") != "2.0" or not isinstance(method, str)
                or (has_id and (msg_id is None or isinstance(msg_id, bool)
                                or not isinstance(msg_id, (str, int))))):
            return _error(msg_id if isinstance(msg_id, (str, int)) and not isinstance(msg_id, bool)
                          else None, INVALID_REQUEST, "invalid request")
        params = message.get("params", {})
        if not has_id:
            return None   # notifications (initialized, cancelled, ...) need no answer
        if not isinstance(params, dict):
            return _error(msg_id, INVALID_PARAMS, "params must be an object")
        try:
            if method == "initialize":
                return _result(msg_id, self.initialize(params))
            if method == "ping":
                return _result(msg_id, {})
            if method == "tools/list":
                return _result(msg_id, {"tools": TOOLS})
            if method == "tools/call":
                return self.call(msg_id, params)
            return _error(msg_id, METHOD_NOT_FOUND, f"method not found: {method[:100]}")
        except Exception as e:   # a bug must not end the connection: say it, go on
            print(f"{PROG}: internal error in {method[:100]}: {e!r}", file=sys.stderr)
            return _error(msg_id, INTERNAL_ERROR, "internal error")

    def initialize(self, params: dict) -> dict:
        asked = params.get("protocolVersion")
        self.version = asked if asked in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[-1]
        return {"protocolVersion": self.version,
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": SERVER_NAME, "title": "Agent Session Monitor",
                               "version": __version__},
                "instructions": "Read-only cost and token usage of the AI agent sessions "
                                "behind this gateway. session_cost answers for one session "
                                "(pass your own session key), top_sessions finds the costly "
                                "ones, usage_stats groups by model, agent, channel or day."}

    def call(self, msg_id: object, params: dict) -> dict:
        name = params.get("name")
        arguments = params.get("arguments")
        if not isinstance(name, str) or name not in self.handlers:
            return _error(msg_id, INVALID_PARAMS, f"unknown tool: {str(name)[:100]}")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            return _result(msg_id, self._tool_error("arguments must be an object"))
        try:
            data = self.handlers[name](arguments)
        except ToolError as e:
            return _result(msg_id, self._tool_error(str(e)))
        except MonitorError as e:
            return _result(msg_id, self._tool_error(str(e)))
        except (sqlite3.Error, OSError) as e:
            # The index being replaced, a disk error: say so; the next call may succeed.
            return _result(msg_id, self._tool_error(f"the session store could not be read: {e}"))
        result = {"content": [{"type": "text", "text": json.dumps(data, ensure_ascii=False,
                                                                   indent=1)}],
                  "isError": False}
        if self.version is None or self.version >= STRUCTURED_SINCE:
            result["structuredContent"] = data
        return _result(msg_id, result)

    @staticmethod
    def _tool_error(message: str) -> dict:
        return {"content": [{"type": "text", "text": message}], "isError": True}

    # -- tools -------------------------------------------------------------------------

    def _open(self) -> StoreReader:
        return StoreReader.open(self.directory, progress=False)

    def url(self, session_id: str) -> str:
        return session_url(session_id, self.base_url, self.secret, self.link_ttl)

    def session_cost(self, args: dict) -> dict:
        _only(args, "session_id")
        session_id = _text(args, "session_id", required=True)
        with _closing(self._open()) as reader:
            summary = reader.find(session_id)
            if summary is None:
                close = reader.close_matches(session_id)
                raise ToolError(f"no session {session_id[:200]!r} in the store"
                                + (f"; close matches: {', '.join(close)}" if close else ""))
            family = None if summary["unsessioned"] else reader.rollup(session_id)
        record = session_record(summary)
        key = parse_session_key(None if summary["unsessioned"] else session_id)
        record.update({"agent": key.agent, "channel": key.channel, "kind": key.kind,
                       "url": self.url(session_id)})
        if family:
            record.update({"parent": family["parent"],
                           "cost_with_subagents_usd": family["cost_with_subagents_usd"],
                           "rounds_with_subagents": family["rounds_with_subagents"],
                           "subagents": family["subagents"], "children": family["children"]})
        else:
            record.update({"parent": None, "cost_with_subagents_usd": record["cost_usd"],
                           "rounds_with_subagents": record["rounds"], "subagents": 0,
                           "children": []})
        return record

    def top_sessions(self, args: dict) -> dict:
        _only(args, "sort_by", "limit", "since", "search")
        sort = _choice(args, "sort_by", ("cost", "cost-with-subagents", "tokens", "rounds",
                                         "updated"), "cost")
        limit = _integer(args, "limit", 1, 100, 10)
        since = _when(args, "since")
        search = _text(args, "search")
        with _closing(self._open()) as reader:
            rows = reader.sessions(sort, limit, 0, since=since, search=search)
            count = reader.count_sessions(since=since, search=search)
            rolled = reader.costs_with_subagents() if sort != "cost-with-subagents" else {}
        sessions = []
        for r in rows:
            record = session_record(r)
            if "cost_with_subagents_usd" not in record:
                record["cost_with_subagents_usd"] = (
                    rolled.get(r["session_id"], (r["cost"],))[0] if not r["unsessioned"] else r["cost"])
            record["url"] = self.url(r["session_id"])
            sessions.append(record)
        return {"sort_by": sort, "sessions_in_store": count, "sessions": sessions}

    def usage_stats(self, args: dict) -> dict:
        _only(args, "by", "since", "until", "days", "tz")
        by = _choice(args, "by", ("model", "agent", "channel", "kind", "consumer", "day"), "model")
        try:
            tz = parse_tz(_text(args, "tz") or "UTC")
        except (MonitorError, ValueError, KeyError) as e:
            raise ToolError(f"tz: {e}") from None
        with _closing(self._open()) as reader:
            if by == "day":
                if args.get("since") or args.get("until"):
                    raise ToolError("by=day takes days (and tz), not since/until")
                days = _integer(args, "days", 1, 366, 7)
                first, last, since, until, note = recent_days(reader, days, tz, None)
                rows = [usage_record(r, "day") for r in day_range(
                    reader.aggregate("day", tz=tz, since=since, until=until), days, tz, today=last)]
                window = {"first_day": first.isoformat(), "last_day": last.isoformat(),
                          "time_zone": str(tz), **({"note": note} if note else {})}
            else:
                since, until = _when(args, "since", tz), _when(args, "until", tz)
                if "days" in args:
                    raise ToolError("days is for by=day; use since/until here")
                if by in ("agent", "channel", "kind"):
                    rows = [key_group_record(r, by) for r in key_group_rows(reader, by, since, until)]
                else:
                    rows = [usage_record(r, by) for r in reader.aggregate(by, since=since, until=until)]
                window = {"since": since, "until": until}
            totals = usage_record(range_totals(reader, since, until), "")
        return {"by": by, "range": window, "rows": rows, "totals": totals}


class _closing:
    def __init__(self, reader: StoreReader) -> None:
        self.reader = reader

    def __enter__(self) -> StoreReader:
        return self.reader

    def __exit__(self, *exc: object) -> None:
        self.reader.close()


def _result(msg_id: object, result: dict) -> dict:
    return {"jsonrpc": "2.0", "id": msg_id, "result": result}


def _error(msg_id: object, code: int, message: str) -> dict:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}


# -- the stdio loop ---------------------------------------------------------------------

def serve(server: Server, stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Answer each line of ``stdin`` on ``stdout`` until end of input."""
    while True:
        line = stdin.readline(MAX_LINE + 1)
        if not line:
            return
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):   # drop the rest of the long line
                line = stdin.readline(MAX_LINE)
            response = _error(None, PARSE_ERROR, f"message longer than {MAX_LINE} bytes")
        elif not line.strip():
            continue
        else:
            response = server.handle_line(line)
        if response is not None:
            # ASCII JSON: never a raw newline inside a message, and any text (a lone
            # surrogate from a client-set session id) can be written.
            stdout.write(json.dumps(response, ensure_ascii=True, allow_nan=False,
                                    default=str).encode("ascii") + b"\n")
            stdout.flush()


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG, description="Serve the session store to agents over MCP (stdio): tools "
        "session_cost, top_sessions, usage_stats. Configure it as a stdio MCP server: "
        "command python3, args [path/to/scripts/mcp_server.py, --data-dir, DIR].")
    p.add_argument("--version", action="version", version=f"agent-session-monitor {__version__}")
    p.add_argument("--data-dir", metavar="DIR",
                   help=f"session store (default ${ENV_DATA_DIR} or {DEFAULT_DATA_DIR})")
    p.add_argument("--base-url", metavar="URL",
                   help=f"web UI address for session links (default ${ENV_BASE_URL} or "
                        f"{DEFAULT_BASE_URL})")
    p.add_argument("--link-expires-in", metavar="DURATION", default=None,
                   help="signed session links (with $" + ENV_LINK_SECRET + ") expire after "
                        "this long: 3600, 90m, 24h, 7d, or never (default 30d)")
    return p


def main(argv: list[str] | None = None, stdin: BinaryIO | None = None,
         stdout: BinaryIO | None = None, err: TextIO | None = None) -> int:
    err = err or sys.stderr
    args = parse(build_parser(), argv, err)   # a usage error: one line on err, 2
    if isinstance(args, int):
        return args
    base = str(resolve(args.base_url, ENV_BASE_URL, DEFAULT_BASE_URL))
    if not re.match(r"https?://[^/?#\s]+", base):
        err.write(f"{PROG}: error: --base-url {base[:200]!r} is not an http(s) URL\n")
        return 2
    try:
        ttl = (DEFAULT_LINK_TTL if args.link_expires_in is None
               else parse_ttl(args.link_expires_in))
    except ValueError as e:
        err.write(f"{PROG}: error: --link-expires-in {args.link_expires_in[:40]!r}: {e}\n")
        return 2
    secret = resolve(None, ENV_LINK_SECRET)
    server = Server(data_dir(args.data_dir), base, str(secret) if secret else None, ttl)
    if stdout is None:
        # The protocol owns stdout: anything else printed (a stray print, a warning)
        # goes to stderr instead of corrupting the stream.
        stdout = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        serve(server, stdin or sys.stdin.buffer, stdout)
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    return 0
