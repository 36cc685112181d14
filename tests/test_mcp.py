"""scripts/mcp_server.py: the MCP server over stdio (issue 17).

Two clients: the official ``mcp`` Python SDK (a test-only dependency in
.venv-test/mcp, installed by tools/install_test_deps.sh; ASM_MCP_PYTHON names another
python that has it), and a standard-library client speaking the protocol line by line,
which also sends what no SDK would (garbage, wrong versions, huge lines) to show the
server answers every request and never dies. Both run against the store of the realistic
OpenClaw traffic (tests/openclaw_logs.py), whose every cost is known.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import subprocess
import sys
import textwrap
import time
import unittest
from urllib.parse import parse_qs, urlsplit

from tests.helpers import ROOT, TempDirTest, ingest, require_tool, venv_python
from tests.openclaw_logs import scenario

from agent_session_monitor.mcp_schema import TOOLS
from agent_session_monitor.links import verify
from agent_session_monitor.mcp_server import MAX_LINE, PROTOCOL_VERSIONS, Server, serve

SERVER = ROOT / "scripts" / "mcp_server.py"


def mcp_python() -> str | None:
    return venv_python("ASM_MCP_PYTHON", "mcp", "mcp.client.stdio")


class StoreTest(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        self.truth = scenario()
        log = self.tmp / "access.log"
        log.write_bytes(b"".join(self.truth.sorted_lines()))
        ingest(self.out, log)
        self.main = "agent:main:main"


class StdioProtocol(StoreTest):
    """The server as a subprocess, spoken to in raw JSON-RPC lines."""

    def exchange(self, *lines: bytes | dict, env: dict | None = None,
                 args: tuple = ()) -> list[dict]:
        data = b"".join((json.dumps(m).encode() if isinstance(m, dict) else m) + b"\n"
                        for m in lines)
        proc = subprocess.run([sys.executable, str(SERVER), "--data-dir", str(self.out), *args],
                              input=data, capture_output=True, timeout=60,
                              env={**os.environ, **(env or {})})
        self.assertEqual(proc.returncode, 0, proc.stderr)
        out = proc.stdout.decode("ascii")   # ASCII JSON only
        return [json.loads(line) for line in out.splitlines()]

    @staticmethod
    def request(msg_id, method: str, params: dict | None = None) -> dict:
        msg = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            msg["params"] = params
        return msg

    def initialize(self, version: str = "2025-11-25") -> dict:
        return self.request(0, "initialize", {"protocolVersion": version, "capabilities": {},
                                              "clientInfo": {"name": "test", "version": "1"}})

    def test_handshake_list_and_every_tool_answer_from_the_store(self):
        got = self.exchange(
            self.initialize(), {"jsonrpc": "2.0", "method": "notifications/initialized"},
            self.request(1, "tools/list"),
            self.request("two", "tools/call", {"name": "session_cost",
                                               "arguments": {"session_id": self.main}}),
            self.request(3, "tools/call", {"name": "top_sessions",
                                           "arguments": {"sort_by": "cost-with-subagents", "limit": 2}}),
            self.request(4, "tools/call", {"name": "usage_stats", "arguments": {"by": "agent"}}),
            self.request(5, "ping"))
        self.assertEqual([m["id"] for m in got], [0, 1, "two", 3, 4, 5])   # no answer to the notification
        init = got[0]["result"]
        self.assertEqual(init["protocolVersion"], "2025-11-25")
        self.assertIn("tools", init["capabilities"])
        self.assertEqual([t["name"] for t in got[1]["result"]["tools"]],
                         ["session_cost", "top_sessions", "usage_stats"])
        cost = got[2]["result"]
        self.assertFalse(cost["isError"])
        self.assertEqual(json.loads(cost["content"][0]["text"]), cost["structuredContent"])
        data = cost["structuredContent"]
        self.assertAlmostEqual(data["cost_usd"], self.truth.own(self.main), places=12)
        self.assertAlmostEqual(data["cost_with_subagents_usd"], self.truth.with_subagents(self.main),
                               places=12)
        self.assertEqual(len(data["children"]), 2)
        url = urlsplit(data["url"])
        self.assertEqual((url.scheme, url.netloc, url.path), ("http", "127.0.0.1:8888", "/session"))
        self.assertEqual(parse_qs(url.query)["id"], [self.main])
        top = got[3]["result"]["structuredContent"]["sessions"]
        self.assertEqual(top[0]["session_id"], self.main)
        agents = got[4]["result"]["structuredContent"]
        self.assertEqual({r["agent"] for r in agents["rows"]}, {"main", "work"})
        self.assertAlmostEqual(agents["totals"]["cost_usd"],
                               sum(self.truth.own(s) for s in self.truth.costs), places=12)
        self.assertEqual(got[5]["result"], {})

    def test_the_signed_link_uses_the_configured_secret_and_base_url(self):
        got = self.exchange(self.initialize(), self.request(1, "tools/call", {
            "name": "session_cost", "arguments": {"session_id": self.main}}),
            env={"AGENT_SESSION_MONITOR_LINK_SECRET": "s3cret",
                 "AGENT_SESSION_MONITOR_BASE_URL": "https://asm.example.org"})
        url = got[1]["result"]["structuredContent"]["url"]
        self.assertTrue(url.startswith("https://asm.example.org/session?id="))
        self.assertIn("&sig=", url)

    def test_a_signed_link_asked_for_in_a_chat_expires_after_30_days_unless_configured(self):
        # Whoever can chat with the agent can ask for any session's link: a link that
        # never expired would be a standing credential for that conversation.
        secret = {"AGENT_SESSION_MONITOR_LINK_SECRET": "s3cret"}
        ask = self.request(1, "tools/call", {"name": "session_cost",
                                             "arguments": {"session_id": self.main}})
        for args, ttl in (((), 30 * 86400), (("--link-expires-in", "2h"), 7200),
                          (("--link-expires-in", "never"), None)):
            with self.subTest(args=args):
                before = time.time()
                url = self.exchange(self.initialize(), ask, env=secret, args=args
                                    )[1]["result"]["structuredContent"]["url"]
                q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
                self.assertTrue(verify(self.main, q["sig"], q.get("exp"), "s3cret"))
                if ttl is None:
                    self.assertNotIn("exp", q)
                else:
                    self.assertAlmostEqual(int(q["exp"]) - before, ttl, delta=30)
                    self.assertFalse(verify(self.main, q["sig"], q["exp"], "s3cret",
                                            now=int(q["exp"]) + 1))
        for bad in ("soon", "0", "-5m", "36501d", "9" * 5000):
            proc = subprocess.run([sys.executable, str(SERVER), "--data-dir", str(self.out),
                                   "--link-expires-in", bad], input=b"", capture_output=True,
                                  timeout=60)
            self.assertEqual((proc.returncode, proc.stdout), (2, b""), bad[:20])
            self.assertEqual(len(proc.stderr.decode().strip().splitlines()), 1, proc.stderr)
            self.assertNotIn(b"Traceback", proc.stderr)

    def test_version_negotiation_keeps_a_known_version_and_offers_the_latest_otherwise(self):
        for asked, agreed in [*((v, v) for v in PROTOCOL_VERSIONS), ("1999-01-01", PROTOCOL_VERSIONS[-1]),
                              ("2026-07-28", PROTOCOL_VERSIONS[-1])]:
            with self.subTest(asked=asked):
                got = self.exchange(self.initialize(asked), self.request(1, "tools/call", {
                    "name": "usage_stats", "arguments": {}}))
                self.assertEqual(got[0]["result"]["protocolVersion"], agreed)
                # structuredContent exists from 2025-06-18; older clients get text only.
                self.assertEqual("structuredContent" in got[1]["result"], agreed >= "2025-06-18")

    def test_protocol_errors_are_json_rpc_errors_and_tool_errors_are_results(self):
        got = self.exchange(
            self.initialize(), b"not json", b"[1, 2]", b'"a string"',
            self.request(1, "resources/list"), self.request(2, "tools/call", {"name": "rm -rf"}),
            {"jsonrpc": "1.0", "id": 3, "method": "ping"},
            self.request(4, "tools/call", {"name": "session_cost", "arguments": {"session_id": "nope"}}),
            self.request(5, "tools/call", {"name": "top_sessions", "arguments": {"limit": 10 ** 9}}),
            self.request(6, "tools/call", {"name": "usage_stats", "arguments": {"by": "password"}}),
            self.request(7, "tools/call", {"name": "usage_stats", "arguments": {"since": "yesterday-ish"}}),
            self.request(8, "tools/call", {"name": "session_cost", "arguments": {"session_id": 5}}),
            self.request(9, "tools/call", {"name": "session_cost", "arguments": [1]}),
            self.request(10, "tools/call", {"name": "top_sessions", "arguments": {"evil": 1}}),
            self.request(11, "tools/list", "not an object"),
            self.request(12, "server/discover"),
            self.request(13, "ping"))
        errors = {m.get("id"): m.get("error", {}).get("code") for m in got[1:]}
        self.assertEqual([m["error"]["code"] for m in got[1:4]], [-32700, -32600, -32600])
        self.assertEqual((errors[1], errors[2], errors[3], errors[11], errors[12]),
                         (-32601, -32602, -32600, -32602, -32601))
        for msg_id in (4, 5, 6, 7, 8, 9, 10):
            result = next(m for m in got if m.get("id") == msg_id)["result"]
            self.assertTrue(result["isError"], msg_id)
            self.assertEqual(result["content"][0]["type"], "text")
            self.assertNotIn("Traceback", result["content"][0]["text"])
        self.assertIn("close matches", next(m for m in got if m.get("id") == 4)["result"]["content"][0]["text"]
                      .replace("no session 'nope' in the store", "close matches"))
        self.assertEqual(got[-1], {"jsonrpc": "2.0", "id": 13, "result": {}})

    def test_a_line_longer_than_the_limit_is_refused_and_the_next_one_answered(self):
        huge = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"' + b"a" * (MAX_LINE + 10) + b'"}}'
        got = self.exchange(huge, self.request(2, "ping"))
        self.assertEqual(got[0]["error"]["code"], -32700)
        self.assertEqual(got[1]["id"], 2)


class InProcessFuzz(StoreTest):
    """Random and hostile lines straight into the server's loop: every request gets
    exactly one answer with its id, nothing else is written, nothing raises."""

    def test_hostile_lines_each_get_one_well_formed_answer(self):
        server = Server(self.out, "http://127.0.0.1:8888", None)
        rng = random.Random(11)
        values = [None, True, 0, -1, 2 ** 70, 1.5, "", "x" * 5000, "\ud800", "\x00", [], {},
                  {"a": [1]}, "agent:main:main", "../../etc/passwd", "NaN"]
        lines, expect = [], []
        for i in range(400):
            kind = rng.random()
            if kind < 0.15:
                lines.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 60))))
                continue
            tool = rng.choice([t["name"] for t in TOOLS] + ["x"])
            props = next((list(t["inputSchema"]["properties"]) for t in TOOLS if t["name"] == tool),
                         ["a"])
            args = {rng.choice(props + ["zz"]): rng.choice(values) for _ in range(rng.randint(0, 3))}
            msg = {"jsonrpc": "2.0", "id": i, "method": rng.choice(["tools/call"] * 4 + ["ping", "x"]),
                   "params": {"name": tool, "arguments": args}}
            lines.append(json.dumps(msg).encode())
            expect.append(i)
        out = io.BytesIO()
        serve(server, io.BytesIO(b"\n".join(lines) + b"\n"), out)
        answers = [json.loads(line) for line in out.getvalue().decode("ascii").splitlines()]
        self.assertEqual([a["id"] for a in answers if a["id"] is not None], expect)
        for a in answers:
            self.assertEqual(a["jsonrpc"], "2.0")
            self.assertEqual(("result" in a) + ("error" in a), 1)
            if "error" in a:
                self.assertNotEqual(a["error"]["code"], -32603, a)   # never an internal error


SDK_CLIENT = textwrap.dedent("""
    import asyncio, json, sys
    from mcp import ClientSession, StdioServerParameters, Client
    from mcp.client.stdio import stdio_client

    server_py, server, store, session = sys.argv[1:5]
    params = StdioServerParameters(command=server_py, args=[server, "--data-dir", store])

    def plain(result):
        return {"isError": result.is_error, "structured": result.structured_content,
                "text": [c.text for c in result.content]}

    async def classic():
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as s:
                init = await s.initialize()
                tools = await s.list_tools()
                cost = await s.call_tool("session_cost", {"session_id": session})
                missing = await s.call_tool("session_cost", {"session_id": "no-such-session"})
                return {"version": init.protocol_version, "server": init.server_info.name,
                        "tools": sorted(t.name for t in tools.tools),
                        "schemas": [t.input_schema for t in tools.tools],
                        "cost": plain(cost), "missing": plain(missing)}

    async def high_level():
        async with Client(params) as c:
            top = await c.call_tool("top_sessions", {"sort_by": "cost-with-subagents", "limit": 3})
            stats = await c.call_tool("usage_stats", {"by": "channel"})
            days = await c.call_tool("usage_stats", {"by": "day", "days": 2})
            return {"version": c.protocol_version, "top": plain(top), "stats": plain(stats),
                    "days": plain(days)}

    print(json.dumps({"classic": asyncio.run(classic()), "client": asyncio.run(high_level())}))
""")


class OfficialSdkClient(StoreTest):
    """The official MCP Python SDK (``mcp``) as the client: its stdio transport, the
    initialize handshake (ClientSession) and the high-level Client, which first probes
    the newer handshake-free revision and falls back."""

    def test_the_official_sdk_lists_and_calls_every_tool(self):
        python = mcp_python()
        require_tool(self, "the mcp SDK (tools/install_test_deps.sh, or ASM_MCP_PYTHON)",
                     found=python is not None)
        proc = subprocess.run([python, "-c", SDK_CLIENT, sys.executable, str(SERVER), str(self.out),
                               self.main], capture_output=True, text=True, timeout=120)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        got = json.loads(proc.stdout)
        classic, client = got["classic"], got["client"]
        self.assertIn(classic["version"], PROTOCOL_VERSIONS)
        self.assertEqual(classic["server"], "agent-session-monitor")
        self.assertEqual(classic["tools"], ["session_cost", "top_sessions", "usage_stats"])
        cost = classic["cost"]
        self.assertFalse(cost["isError"])
        self.assertAlmostEqual(cost["structured"]["cost_with_subagents_usd"],
                               self.truth.with_subagents(self.main), places=12)
        self.assertEqual(json.loads(cost["text"][0]), cost["structured"])
        self.assertTrue(classic["missing"]["isError"])
        self.assertIn(client["version"], PROTOCOL_VERSIONS)
        self.assertEqual(client["top"]["structured"]["sessions"][0]["session_id"], self.main)
        channels = {r["channel"] for r in client["stats"]["structured"]["rows"]}
        self.assertEqual(channels, {None, "discord", "telegram"})
        self.assertEqual(len(client["days"]["structured"]["rows"]), 2)


if __name__ == "__main__":
    unittest.main()


class StoreTrouble(StoreTest):
    def test_a_missing_or_broken_store_is_a_tool_error_not_a_protocol_failure(self):
        import shutil
        server = Server(self.tmp / "nowhere", "http://127.0.0.1:8888", None)
        line = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                           "params": {"name": "usage_stats", "arguments": {}}}).encode()
        answer = server.handle_line(line)
        self.assertTrue(answer["result"]["isError"])
        self.assertIn("no session store", answer["result"]["content"][0]["text"])
        (self.out / ".index.sqlite").write_bytes(b"not a database" * 100)
        for suffix in ("-wal", "-shm"):
            (self.out / f".index.sqlite{suffix}").unlink(missing_ok=True)
        answer = Server(self.out, "http://127.0.0.1:8888", None).handle_line(line)
        self.assertIn("result", answer)   # a broken index: read from the files instead
        shutil.rmtree(self.out)
        answer = Server(self.out, "http://127.0.0.1:8888", None).handle_line(line)
        self.assertTrue(answer["result"]["isError"])


class EntryPoint(unittest.TestCase):
    def test_bad_flags_return_a_usage_exit_code_without_a_traceback(self):
        from agent_session_monitor.mcp_server import main
        err = io.StringIO()
        for argv in (["--nope"], ["--base-url", "ftp://x"], ["--base-url", "x" * 5000]):
            with self.subTest(argv=argv[:1]), contextlib.redirect_stderr(err):
                self.assertEqual(main(argv, err=err), 2)
        self.assertNotIn("Traceback", err.getvalue())
