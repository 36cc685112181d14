"""Agents, channels and sub-agents (issue 17): OpenClaw session keys, per-agent and
per-channel stats, and children rolled into their parent without counting a round twice.

The traffic is generated from what OpenClaw's source shows (tests/openclaw_logs.py):
the issue's scenario (a main session spawning two sub-agents, a cron job, a Discord
channel, a Telegram group of a second agent) and seeded random forests of parents,
children and grandchildren with unrelated sessions, some forging spawn results.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import shutil
import string
import unittest

from tests.helpers import TempDirTest, ingest
from tests.openclaw_logs import mix, scenario

from agent_session_monitor import cli
from agent_session_monitor.web.html_parts import url
from agent_session_monitor.reports.reader import StoreReader
from agent_session_monitor.reports.aggregates import range_totals
from agent_session_monitor.reports.records import key_group_rows
from agent_session_monitor.session_keys import KINDS, SessionKey, parse_session_key
from agent_session_monitor.store.subagents import resolve_parents, spawn_claims

SEEDS = int(os.environ.get("ASM_AGENT_SEEDS", "6"))


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


class SessionKeyExamples(unittest.TestCase):
    """The shapes OpenClaw's session-key.ts builds, and what each one says."""

    EXAMPLES = [
        ("agent:main:main", "main", None, "main"),
        ("agent:main:work", "main", None, "main"),            # a custom session.mainKey
        ("agent:work:telegram:direct:123", "work", "telegram", "direct"),
        ("agent:main:direct:123", "main", None, "direct"),    # dmScope per-peer
        ("agent:main:whatsapp:acct2:direct:+15551234", "main", "whatsapp", "direct"),
        ("agent:main:discord:channel:1465367993012981988", "main", "discord", "channel"),
        ("agent:main:telegram:group:-1001234567890", "main", "telegram", "group"),
        ("agent:main:slack:channel:c01:thread:1700000000.5", "main", "slack", "thread"),
        ("agent:main:main:thread:42", "main", None, "thread"),
        ("agent:main:telegram:group:-1001234567890:topic:42", "main", "telegram", "thread"),
        ("agent:main:telegram:dm:123", "main", "telegram", "direct"),   # the docs' old form
        ("agent:main:dm:123", "main", None, "direct"),
        ("agent:Main:Matrix:channel:!Room:matrix.org", "main", "matrix", "channel"),
        ("agent:main:subagent:6f1c2d4e-0000-4000-8000-000000000001", "main", None, "subagent"),
        ("agent:work:subagent:x:thread:y", "work", None, "subagent"),   # opaque id
        ("agent:main:cron:daily-digest", "main", None, "cron"),
        ("agent:main:cron:job1:run:run7", "main", None, "cron"),
        ("cron:daily-digest", None, None, "cron"),
        ("agent:main:hook:9b2e", "main", None, "hook"),
        ("hook:9b2e", None, None, "hook"),
        ("main", None, None, "main"),
        ("MAIN", None, None, "main"),
        ("6f1c2d4e-0000-4000-8000-000000000001", None, None, "other"),   # Claude Code
        ("support:web:abc", None, None, "other"),
        ("agent:main:discord:weird:1", "main", None, "other"),
        ("agent:main:acp:1234", "main", None, "other"),
        ("agent::x", None, None, "other"),
        ("agent:main::x", None, None, "other"),
        ("agent:bad id:main", None, None, "other"),
        ("agent:main:discord:channel:", None, None, "other"),
        ("cron:", None, None, "other"),
        ("", None, None, "other"),
    ]

    def test_every_documented_shape_parses_to_its_agent_channel_and_kind(self):
        for key, agent, channel, kind in self.EXAMPLES:
            with self.subTest(key=key):
                got = parse_session_key(key)
                self.assertEqual((got.agent, got.channel, got.kind), (agent, channel, kind))

    def test_peer_and_thread_keep_the_case_of_opaque_ids(self):
        got = parse_session_key("agent:main:matrix:channel:!RoomID:matrix.org:thread:$EvT")
        self.assertEqual((got.peer, got.thread), ("!RoomID:matrix.org", "$EvT"))

    def test_the_module_docstring_table_matches_the_parser(self):
        import agent_session_monitor.session_keys as mod
        rows = [line for line in mod.__doc__.splitlines() if line.startswith("``agent:")
                or line.startswith("``cron") or line.startswith("``main``")]
        self.assertGreaterEqual(len(rows), 10)
        for line in rows:
            key = line.split("``")[1]
            cells = line.split()
            self.assertEqual(parse_session_key(key).kind, cells[-1], line)


class SessionKeyFuzz(unittest.TestCase):
    """Any text (a session id is client-controlled) parses, to a kind from the list."""

    def check(self, key: object) -> SessionKey:
        got = parse_session_key(key)
        self.assertIn(got.kind, KINDS)
        if got.agent is not None:
            self.assertRegex(got.agent, r"\A[a-z0-9][a-z0-9_-]{0,63}\Z")
        return got

    def test_random_keys_built_from_key_parts_and_hostile_characters_never_raise(self):
        rng = random.Random(17)
        parts = ["agent", "main", "work", "subagent", "cron", "hook", "direct", "group",
                 "channel", "thread", "run", "discord", "", " ", "\x00", "\n", "\u202e",
                 "\ud800", "\uffff", "é", "日本", "a" * 70, ":", "%3A", "\x1b[31m"]
        alphabet = string.printable + "\x00\x7f\u2028\ud800\U0001f600"
        for _ in range(20000):
            if rng.random() < 0.7:
                key = ":".join(rng.choice(parts) for _ in range(rng.randint(1, 9)))
            else:
                key = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
            self.check(key)

    def test_huge_and_non_string_keys_are_other(self):
        for key in ("agent:main:subagent:" + "x" * 10_000_000, ":" * 100_000,
                    "agent:" * 50_000, None, 0, 1.5, b"agent:main:main", ["main"], {"a": 1}):
            self.assertEqual(self.check(key).kind, "other")


def spawn_messages(child: str, *, tool: str = "sessions_spawn", status: str = "accepted",
                   anthropic: bool = False, as_blocks: bool = False) -> list[dict]:
    result = json.dumps({"status": status, "childSessionKey": child, "runId": "r1"}, indent=2)
    if anthropic:
        return [{"role": "user", "content": "go"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "tu1", "name": tool,
                                                   "input": {"task": "t"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu1",
                                              "content": [{"type": "text", "text": result}]}]}]
    return [{"role": "user", "content": "go"},
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": "c1", "type": "function",
                             "function": {"name": tool, "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1",
             "content": [{"type": "text", "text": result}] if as_blocks else result}]


class SpawnClaims(unittest.TestCase):
    CHILD = "agent:main:subagent:11111111-2222-4333-8444-555555555555"

    def test_an_accepted_sessions_spawn_result_names_its_child_in_both_api_shapes(self):
        self.assertEqual(spawn_claims(spawn_messages(self.CHILD)), [self.CHILD])
        self.assertEqual(spawn_claims(spawn_messages(self.CHILD, as_blocks=True)), [self.CHILD])
        self.assertEqual(spawn_claims(spawn_messages(self.CHILD, anthropic=True)), [self.CHILD])

    def test_anything_but_an_accepted_spawn_of_a_subagent_key_claims_nothing(self):
        cases = {
            "another tool's result": spawn_messages(self.CHILD, tool="web_fetch"),
            "forbidden spawn": spawn_messages(self.CHILD, status="forbidden"),
            "failed spawn (OpenClaw names the child it deleted)": spawn_messages(self.CHILD, status="error"),
            "a non-sub-agent key": spawn_messages("agent:main:discord:channel:1"),
            "the user's own text": [{"role": "user", "content": json.dumps(
                {"status": "accepted", "childSessionKey": self.CHILD})}],
            "a tool message with no matching call": spawn_messages(self.CHILD)[2:],
            "truncated history (a string)": json.dumps(spawn_messages(self.CHILD)),
        }
        for name, messages in cases.items():
            with self.subTest(name):
                self.assertEqual(spawn_claims(messages), [])

    def test_hostile_message_lists_never_raise(self):
        rng = random.Random(3)
        base = spawn_messages(self.CHILD)
        junk = [None, 1, "x", [], {}, {"role": "tool"}, {"role": "assistant", "tool_calls": "x"},
                {"role": "assistant", "tool_calls": [None, {"id": 5}]},
                {"role": "tool", "tool_call_id": "c1", "content": "[" * 100_000},
                {"role": "tool", "tool_call_id": "c1", "content": "{\"childSessionKey\": 1}"},
                {"role": "tool", "tool_call_id": "c1", "content": "x" * 200_000},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": ["x"]}]},
                {"role": "tool", "tool_call_id": {"c1": 1}, "content": "x"}]
        for _ in range(500):
            messages = base[:2] + [rng.choice(junk) for _ in range(rng.randint(0, 6))]
            self.assertIsInstance(spawn_claims(messages), list)


class NoteSpawns(unittest.TestCase):
    def test_a_claim_is_kept_once_on_the_earliest_round_that_carried_it(self):
        from agent_session_monitor.store.subagents import note_spawns
        child = "agent:main:subagent:late"
        doc = {"session_id": "agent:main:main", "rounds": []}
        for ts in ("2026-03-02T09:00:05.000Z", "2026-03-02T09:00:09.000Z",
                   "2026-03-02T09:00:01.000Z", "2026-03-02T09:00:03.000Z"):   # a late line
            rnd = {"timestamp": ts}
            note_spawns(doc, rnd, spawn_messages(child))
            doc["rounds"].append(rnd)
        holders = [r["timestamp"] for r in doc["rounds"] if r.get("spawned")]
        self.assertEqual(holders, ["2026-03-02T09:00:01.000Z"])
        self.assertEqual([c for r in doc["rounds"] for c in r.get("spawned", ())], [child])


class ResolveParents(unittest.TestCase):
    def test_the_earliest_claim_by_event_time_wins_whatever_the_reading_order(self):
        claims = [("forger", "agent:main:subagent:c", "2026-03-02T09:00:05.000Z"),
                  ("parent", "agent:main:subagent:c", "2026-03-02T09:00:01.000Z"),
                  ("z-late", "agent:main:subagent:c", "2026-03-02T09:00:01.000Z")]
        for _ in range(10):
            random.shuffle(claims)
            self.assertEqual(resolve_parents(claims), {"agent:main:subagent:c": "parent"})

    def test_no_session_is_its_own_ancestor(self):
        a, b, c = "agent:main:subagent:a", "agent:main:subagent:b", "agent:main:subagent:c"
        claims = [(a, a, "1"), (a, b, "2"), (b, c, "3"), (c, a, "4"), (b, a, "5")]
        parents = resolve_parents(claims)
        self.assertEqual(parents, {b: a, c: b})
        for child in parents:   # walking up always ends
            seen, node = set(), child
            while node in parents:
                self.assertNotIn(node, seen)
                seen.add(node)
                node = parents[node]


class ScenarioCase(TempDirTest):
    """The issue's example traffic in a log (tests/openclaw_logs.scenario)."""

    def setUp(self) -> None:
        super().setUp()
        self.truth = scenario()
        self.log = self.tmp / "access.log"
        self.log.write_bytes(b"".join(self.truth.sorted_lines()))
        self.main = "agent:main:main"
        self.children = sorted(c for c, p in self.truth.parent.items() if p == self.main)

    def cli_json(self, *argv: str):
        code, out, err = run_cli("--data-dir", str(self.out), *argv, "--json")
        self.assertEqual(code, 0, err)
        return json.loads(out)

    def assert_store_matches_truth(self) -> None:
        family = self.cli_json("show", self.main)["subagents"]
        self.assertEqual(sorted(c["session_id"] for c in family["children"]), self.children)
        self.assertAlmostEqual(family["cost_usd"], self.truth.own(self.main), places=12)
        self.assertAlmostEqual(family["cost_with_subagents_usd"],
                               self.truth.with_subagents(self.main), places=12)
        for child in self.children:
            shown = self.cli_json("show", child)["subagents"]
            self.assertEqual(shown["parent"], self.main)
            self.assertAlmostEqual(shown["cost_usd"], self.truth.own(child), places=12)


class Scenario(ScenarioCase):
    """The issue's example, through main.py, every command and the index rebuild."""

    def test_the_log_in_tests_data_is_this_scenario(self):
        # README.md shows output from tests/data/openclaw-subagents.log: it must stay
        # what tests/openclaw_logs.py writes (regenerate it from there when that changes).
        from tests.helpers import DATA
        self.assertEqual((DATA / "openclaw-subagents.log").read_bytes(), self.log.read_bytes())

    def test_children_are_listed_with_their_cost_and_the_parent_with_and_without_them(self):
        ingest(self.out, self.log)
        self.assert_store_matches_truth()
        code, text, _ = run_cli("--data-dir", str(self.out), "show", self.main)
        self.assertIn("with 2 sub-agents", text)
        for child in self.children:
            self.assertIn(child, text)

    def test_stats_agent_and_channel_split_the_total_once_and_show_the_sub_agent_share(self):
        ingest(self.out, self.log)
        total = sum(self.truth.own(s) for s in self.truth.costs)
        agents = {r["agent"]: r for r in self.cli_json("stats-agent")}
        self.assertEqual(set(agents), {"main", "work"})
        self.assertAlmostEqual(sum(r["cost_usd"] for r in agents.values()), total, places=12)
        subs = sum(self.truth.own(c) for c in self.children)
        self.assertAlmostEqual(agents["main"]["subagent_cost_usd"], subs, places=12)
        self.assertEqual(agents["main"]["subagent_sessions"], 2)
        channels = {r["channel"]: r for r in self.cli_json("stats-channel")}
        self.assertEqual(set(channels), {None, "discord", "telegram"})
        self.assertAlmostEqual(sum(r["cost_usd"] for r in channels.values()), total, places=12)
        # agent:main:main names no channel, nor do its sub-agents: already in "(none)".
        self.assertEqual(channels[None]["spawned_subagent_cost_usd"], 0)
        # The Discord channel's sub-agent (on agent work) is shown beside discord.
        ops = next(c for c, p in self.truth.parent.items() if p.startswith("agent:main:discord"))
        self.assertAlmostEqual(channels["discord"]["spawned_subagent_cost_usd"],
                               self.truth.own(ops), places=12)
        self.assertAlmostEqual(channels["discord"]["cost_with_subagents_usd"],
                               self.truth.with_subagents(self.truth.parent[ops]), places=12)
        self.assertAlmostEqual(agents["work"]["subagent_cost_usd"], self.truth.own(ops), places=12)
        code, text, _ = run_cli("--data-dir", str(self.out), "stats-agent")
        self.assertIn("SUB-AGENTS", text)
        self.assertIn(f"{100 * subs / agents['main']['cost_usd']:.1f}%", text)

    def test_list_sorts_by_the_cost_with_sub_agents(self):
        ingest(self.out, self.log)
        rows = self.cli_json("list", "--sort-by", "cost-with-subagents", "--limit", "2")
        self.assertEqual(rows[0]["session_id"], self.main)
        self.assertAlmostEqual(rows[0]["cost_with_subagents_usd"],
                               self.truth.with_subagents(self.main), places=12)
        every = self.cli_json("list", "--sort-by", "cost-with-subagents", "--limit", "0")
        values = [r["cost_with_subagents_usd"] for r in every]
        self.assertEqual(values, sorted(values, reverse=True))
        self.assertEqual(len(every), len(self.truth.costs))

    def test_children_read_before_their_parent_in_an_older_rotated_file_still_link(self):
        # The children's lines in access.log.1 (read first), the rest in access.log,
        # in two separate passes: the claim arrives after the child's rounds.
        kids = set(self.children)
        ordered = sorted(self.truth.lines, key=lambda t: t[0])
        older = [line for _, sid, line in ordered if sid in kids]
        rest = [line for _, sid, line in ordered if sid not in kids]
        self.assertEqual(len(older), sum(len(self.truth.costs[k]) for k in kids))
        (self.tmp / "access.log.1").write_bytes(b"".join(older))
        self.log.write_bytes(b"")
        ingest(self.out, self.tmp / "access.log.1", self.log)
        self.log.write_bytes(b"".join(rest))
        ingest(self.out, self.tmp / "access.log.1", self.log)
        self.assert_store_matches_truth()

    def test_links_survive_a_lost_index_and_a_rebuild(self):
        ingest(self.out, self.log)
        (self.out / ".index.sqlite").unlink()
        for suffix in ("-wal", "-shm"):
            (self.out / f".index.sqlite{suffix}").unlink(missing_ok=True)
        self.assert_store_matches_truth()         # a reader indexes the files in memory
        code, _, err = self.run_monitor(self.log, extra=["--rebuild-index"])
        self.assertEqual(code, 0, err)
        self.assert_store_matches_truth()

    def test_privacy_mode_keeps_no_messages_but_still_links_children(self):
        code, _, err = self.run_monitor(self.log, extra=["--no-content"])
        self.assertEqual(code, 0, err)
        self.assert_store_matches_truth()
        raw = b"".join(p.read_bytes() for p in self.out.iterdir() if p.suffix == ".json")
        self.assertNotIn(b"childSessionKey", raw)

    def test_the_claim_is_stored_once_however_often_the_parent_re_logs_it(self):
        ingest(self.out, self.log)
        doc = StoreReader.open(self.out).load_session(self.main)
        stored = [c for r in doc["rounds"] for c in r.get("spawned") or ()]
        self.assertEqual(sorted(stored), self.children)


class ModelBasedRollup(TempDirTest):
    """Random forests of parents, children and grandchildren plus unrelated sessions
    (seeded): every total equals the sum of the rounds' own costs, each once; every
    session's cost with sub-agents is its own plus its true descendants'; the roots'
    costs with sub-agents add up to the grand total exactly."""

    def check_seed(self, seed: int, forged: bool) -> None:
        truth = mix(seed, parents=3 + seed % 3, unrelated=3, forged=forged)
        out = self.tmp / f"s{seed}{forged}"
        log = self.tmp / f"a{seed}{forged}.log"
        lines = truth.sorted_lines()
        if seed % 2:   # lines of one writer can arrive late: shuffle them a little
            random.Random(seed).shuffle(lines)
        log.write_bytes(b"".join(lines))
        ingest(out, log)
        reader = StoreReader.open(out)
        grand = math.fsum(c for costs in truth.costs.values() for c in costs)
        totals = range_totals(reader)
        self.assertAlmostEqual(totals["cost"], grand, places=12)
        self.assertEqual(totals["rounds"], sum(len(c) for c in truth.costs.values()))
        for by in ("agent", "channel", "kind"):
            rows = key_group_rows(reader, by)
            self.assertAlmostEqual(math.fsum(r["cost"] or 0 for r in rows), grand, places=12, msg=by)
            self.assertEqual(sum(r["rounds"] for r in rows), totals["rounds"], by)
            # The whole store is read from the sessions table, a window from the usage
            # rows: the same figures either way.
            ranged = {r["key"]: r for r in key_group_rows(reader, by, since="2000-01-01T00:00:00.000Z")}
            self.assertEqual(set(ranged), {r["key"] for r in rows}, by)
            for r in rows:
                other = ranged[r["key"]]
                for f in ("sessions", "rounds", "input", "output", "unpriced_rounds",
                          "subagent_rounds", "subagent_sessions", "spawned_rounds"):
                    self.assertEqual(r[f], other[f], (by, r["key"], f))
                for f in ("cost", "subagent_cost", "spawned_cost", "cost_with_subagents"):
                    self.assertAlmostEqual(r[f] or 0, other[f] or 0, places=12, msg=(by, f))
        for by in ("model", "day", "consumer", "session"):
            rows = reader.aggregate(by)
            self.assertAlmostEqual(math.fsum(r["cost"] or 0 for r in rows), grand, places=12, msg=by)
        links = reader.parent_links()
        present = {c: p for c, p in links.items() if c in truth.costs}
        self.assertEqual(present, truth.parent, f"seed {seed}: links differ from the truth")
        roots_sum = []
        for sid in truth.costs:
            family = reader.rollup(sid)
            self.assertAlmostEqual(family["cost_usd"], truth.own(sid), places=12)
            self.assertAlmostEqual(family["cost_with_subagents_usd"], truth.with_subagents(sid),
                                   places=12, msg=f"seed {seed} {sid}")
            if family["parent"] is None:
                roots_sum.append(family["cost_with_subagents_usd"])
        self.assertAlmostEqual(math.fsum(roots_sum), grand, places=12)
        reader.close()

    def test_random_forests_count_every_round_once(self):
        for seed in range(SEEDS):
            with self.subTest(seed=seed):
                self.check_seed(seed, forged=False)

    def test_forged_spawn_results_change_no_total_and_no_earlier_link(self):
        for seed in range(SEEDS):
            with self.subTest(seed=seed):
                self.check_seed(seed, forged=True)


class WebPages(ScenarioCase):
    """The overview's agent and channel tables, the session page's sub-agents."""

    def setUp(self) -> None:
        super().setUp()
        ingest(self.out, self.log)
        from tests.test_web import Running
        self.web = Running(self.out, token="t0ken-" + "x" * 20, link_secret="s" * 32)
        self.addCleanup(self.web.close)
        self.auth = {"Authorization": "Bearer t0ken-" + "x" * 20}

    def get(self, path: str) -> str:
        status, _, body = self.web.get(path, headers=self.auth)
        self.assertEqual(status, 200, body[:300])
        return body.decode()

    def test_overview_and_api_stats_group_by_agent_and_channel(self):
        page = self.get("/")
        for table in ("t-agents", "t-channels"):
            self.assertIn(f'id="{table}"', page)
        status, _, body = self.web.get("/api/stats", headers=self.auth)
        stats = json.loads(body)
        main = next(r for r in stats["by_agent"] if r["agent"] == "main")
        share = 100 * main["subagent_cost_usd"] / main["cost_usd"]
        self.assertIn(f"<td class=\"num\">{share:.1f}%</td>", page)   # as stats-agent says
        self.assertEqual({r["agent"] for r in stats["by_agent"]}, {"main", "work"})
        self.assertAlmostEqual(sum(r["cost_usd"] for r in stats["by_channel"]),
                               stats["totals"]["cost_usd"], places=12)

    def test_the_session_page_lists_children_and_a_child_names_its_parent(self):
        from urllib.parse import quote
        page = self.get("/session?id=" + quote(self.main, safe=""))
        self.assertIn('id="t-children"', page)
        for child in self.children:
            self.assertIn(f'href="{url("/session", id=child)}"', page)
        self.assertIn("Cost with sub-agents", page)
        child_page = self.get("/session?id=" + quote(self.children[0], safe=""))
        self.assertIn("Spawned by", child_page)
        self.assertIn(self.main, child_page)

    def test_the_session_list_sorts_by_the_cost_with_sub_agents(self):
        status, _, body = self.web.get("/api/sessions?sort=cost-with-subagents&view=1",
                                       headers=self.auth)
        data = json.loads(body)
        self.assertEqual(data["sessions"][0]["session_id"], self.main)
        self.assertIn("with sub-agents", data["view"]["rows"][0]["cells"][6])
        self.assertIn('value="cost-with-subagents"', self.get("/"))

    def test_a_signed_link_shows_the_children_without_opening_them(self):
        from agent_session_monitor import links
        path = links.session_url(self.main, "http://h", "s" * 32)[len("http://h"):]
        status, _, body = self.web.get(path)
        page = body.decode()
        self.assertEqual(status, 200)
        self.assertIn(self.children[0], page)
        self.assertNotIn(f'href="{url("/session", id=self.children[0])}"', page)


class ForgedClaims(TempDirTest):
    """A client writes fake sessions_spawn results into its own requests: to move its
    cost onto someone else's tree, to hide it, to adopt someone's sub-agent, to make a
    cycle. Totals never change; only the 'with sub-agents' view may, by the rule."""

    T0 = "2026-03-02T09:00:00.000Z"

    def line(self, n: int, session: str, second: int, claims: list[str] = (), cost_tokens: int = 1000) -> bytes:
        messages = [{"role": "user", "content": "go"}]
        for i, child in enumerate(claims):
            call = f"c{n}-{i}"
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": call, "type": "function", "function": {"name": "sessions_spawn", "arguments": "{}"}}]})
            messages.append({"role": "tool", "tool_call_id": call, "content": json.dumps(
                {"status": "accepted", "childSessionKey": child, "runId": f"r{n}"})})
        ai = {"session_id": session, "model": "gpt-4o-2024-08-06", "input_token": cost_tokens,
              "output_token": 10, "messages": messages}
        # start_time before the raw X-Request-Id: a time after a raw header in a format
        # not declared is never used (test_attack_client_dated_rounds).
        return json.dumps({"ai_log": json.dumps(ai),
                           "start_time": f"2026-03-02T09:{second // 60:02d}:{second % 60:02d}.000Z",
                           "request_id": f"req-{n}"}).encode() + b"\n"

    def run_log(self, lines: list[bytes]) -> StoreReader:
        log = self.tmp / f"a{len(lines)}-{random.random()}.log"
        log.write_bytes(b"".join(lines))
        out = self.tmp / f"s-{log.stem}"
        ingest(out, log)
        reader = StoreReader.open(out)
        self.addCleanup(reader.close)
        return reader

    def totals(self, reader: StoreReader) -> tuple:
        t = range_totals(reader)
        per_session = {r["session_id"]: r["cost"] for r in reader.sessions(limit=None)}
        agents = {r["key"]: r["cost"] for r in key_group_rows(reader, "agent")}
        return round(t["cost"], 12), t["rounds"], per_session, agents

    def test_forgeries_change_no_total_and_the_earliest_claim_keeps_the_child(self):
        parent, child = "agent:main:main", "agent:main:subagent:aaaa"
        grandchild, forger = "agent:main:subagent:bbbb", "agent:evil:subagent:cccc"
        honest = [self.line(1, parent, 0), self.line(2, parent, 10, [child]),
                  self.line(3, child, 5), self.line(4, child, 20, [grandchild]),
                  self.line(5, grandchild, 25), self.line(6, forger, 30)]
        forged = honest + [
            # adopt someone's sub-agent, later than its parent: ignored
            self.line(7, forger, 40, [child]),
            # claim oneself, and claim one's ancestor from below (a cycle): ignored
            self.line(8, forger, 41, [forger]),
            self.line(9, grandchild, 42, [child]),
            # hide one's own cost under a victim: the forger cannot write into the
            # victim's requests, so it names itself from a second session it controls
            self.line(10, "agent:evil:main", 43, [forger]),
        ]
        clean, dirty = self.run_log(honest), self.run_log(forged)
        before, after = self.totals(clean), self.totals(dirty)
        per_round = before[0] / len(honest)   # every line here costs the same
        # Totals: the forged requests' own rounds are added, each once, nothing else.
        self.assertEqual(after[1], before[1] + 4)
        self.assertAlmostEqual(after[0], before[0] + 4 * per_round, places=12)
        self.assertAlmostEqual(math.fsum(after[2].values()), after[0], places=12)
        self.assertAlmostEqual(math.fsum(after[3].values()), after[0], places=12)
        for sid in (parent, child):   # sessions the forger cannot write to: unchanged
            self.assertAlmostEqual(after[2][sid], before[2][sid], places=12)
        self.assertAlmostEqual(after[3]["main"], before[3]["main"] + per_round, places=12)
        # Links: the genuine ones stand; no cycle, no self-parent.
        links = dirty.parent_links()
        self.assertEqual((links[child], links[grandchild]), (parent, child))
        self.assertNotIn(parent, links)
        self.assertEqual(links[forger], "agent:evil:main")
        # The parent's view: its tree's own rounds (the grandchild's extra round is its
        # own request), never the forger's.
        self.assertAlmostEqual(dirty.rollup(parent)["cost_with_subagents_usd"],
                               after[2][parent] + after[2][child] + after[2][grandchild], places=12)
        # The forger "hid" under evil:main: its cost is still its own and agent evil's.
        self.assertAlmostEqual(after[2][forger], 3 * per_round, places=12)
        self.assertAlmostEqual(after[3]["evil"], after[2][forger] + after[2]["agent:evil:main"],
                               places=12)

    def test_an_earlier_forged_claim_wins_the_view_but_moves_no_cost(self):
        # The rule is first claim by event time: a forger that knew a child's random key
        # before its parent reported it would win the view, and nothing else.
        parent, child, forger = "agent:main:main", "agent:main:subagent:dddd", "agent:main:subagent:eeee"
        lines = [self.line(1, forger, 1, [child]), self.line(2, parent, 5, [child]),
                 self.line(3, child, 3), self.line(4, parent, 0)]
        reader = self.run_log(lines)
        self.assertEqual(reader.parent_links()[child], forger)
        self.assertAlmostEqual(range_totals(reader)["cost"],
                               sum(reader.find(s)["cost"] for s in (parent, child, forger)), places=12)

    def test_hostile_child_keys_and_ten_thousand_claims_are_stored_and_answered(self):
        hostile = ["agent:main:subagent:\ud800", "agent:main:subagent:a\x00b", "agent:main:subagent:" + "z" * 3000,
                   "agent:main:subagent:../../etc/passwd", "agent:main:subagent:<script>"]
        many = [f"agent:main:subagent:{i:05d}" for i in range(10_000)]
        lines = [self.line(1, "agent:main:main", 0, hostile + many)] + [
            self.line(2 + i, key, 10 + i) for i, key in enumerate(hostile)]
        reader = self.run_log(lines)
        family = reader.rollup("agent:main:main")
        self.assertEqual(len(family["children"]), len(hostile) + len(many))
        self.assertEqual(sum(1 for c in family["children"] if c["in_store"]), len(hostile))
        self.assertAlmostEqual(family["cost_with_subagents_usd"], range_totals(reader)["cost"], places=12)
        code, out, err = run_cli("--data-dir", str(reader.directory), "show", "agent:main:main")
        self.assertEqual(code, 0, err)
        self.assertNotIn("\x00", out)


class FollowMode(TempDirTest):
    """One long-lived monitor (as --follow runs it): the children's rounds arrive in one
    pass, their parent's claim in a later one; the link appears when the claim does."""

    def test_a_claim_arriving_passes_after_its_child_links_it_in_the_running_monitor(self):
        from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig

        truth = scenario()
        kids = {c for c, p in truth.parent.items() if p == "agent:main:main"}
        ordered = sorted(truth.lines, key=lambda t: t[0])
        first = [line for _, sid, line in ordered if sid in kids]
        rest = [line for _, sid, line in ordered if sid not in kids]
        log = self.tmp / "access.log"
        log.write_bytes(b"".join(first))
        with Monitor(MonitorConfig(log_paths=[str(log)], output_dir=self.out),
                     err=io.StringIO()) as monitor:
            monitor.poll_once()
            reader = StoreReader.open(self.out)
            self.assertEqual(reader.parent_links(), {})
            self.assertIsNone(reader.rollup("agent:main:main"))   # not in the store yet
            reader.close()
            with open(log, "ab") as f:
                f.write(b"".join(rest))
            monitor.poll_once()
            reader = StoreReader.open(self.out)
            self.addCleanup(reader.close)
            family = reader.rollup("agent:main:main")
        self.assertEqual(sorted(c["session_id"] for c in family["children"]), sorted(kids))
        self.assertAlmostEqual(family["cost_with_subagents_usd"],
                               truth.with_subagents("agent:main:main"), places=12)
